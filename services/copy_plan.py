"""The copy helper's bookkeeping of changes, a Perl script run inside the helper container.

Perl because the helper has no Python and busybox's shell and awk cannot hold file names with
newlines; the script uses no Perl module (the helper image carries the host's ``perl`` binary
without its library). Its state lives in ``/tmp/cb`` of the helper container.

* ``start COUNT inotify|scan|off``: before the pre-copy. Starts a watcher (inotify through
  Perl's ``syscall``) on every directory of every ``/from/<i>`` (and on ``/tmp/cb/sync``, for the
  drain markers) and waits until its watches are set; then records every entry's inode, mode,
  links, owner, size, mtime and ctime (the base). If inotify cannot watch (its limits),
  changes are found by comparing with the base instead.
* ``armed COUNT``: while the source runs, passes repeated until little is left (iterative
  pre-copy), then ``ready``; a line read on stdin (the source is frozen now) starts the final
  pass, then ``done``. One process throughout, so the freeze waits for no program to start.
* ``rootfs``: lists ``/rootfs`` (a source container's overlay2 upper directory, read-only):
  ``entry KIND SIG HEXPATH`` per path, KIND ``w`` for a whiteout (a removed path), ``o`` for a
  directory that hides the one below it (opaque, or redirected by a rename), ``d`` for another
  directory, ``f`` for the rest (see ``rootfs.py``).

A pass drains the watcher (it creates a marker file and reads the events up to the marker's),
lists every path an event named (and its parent, whose mtime the change moved), every path
under a directory created or moved in (files made in it before its watch existed), and every
other link of a hard-linked file it lists; then rsync copies exactly those paths
(``--delete-missing-args`` removes what is gone), and a second rsync sets the listed
directories' times, which the first moved by writing into them. Copying a path that did not
change is harmless; missing one is not.
"""

PLAN = r"""
$| = 1;
my $S = '/tmp/cb';
my ($cmd, $n, $how) = @ARGV;
my @vols = (0 .. $n - 1);
my @RSYNC = ('rsync', '-aHAXS', '--numeric-ids', '--modify-window=-1');
# the copy's side: /to here, or another engine's helper through rsync's remote shell (relay.py)
my $TO = $ENV{CLONEBOT_TO} || '/to';
my $REMOTE = $TO ne '/to';
my %SWEEP;  # volumes whose copy may hold paths the source no longer has (see from_scan)
push @RSYNC, '-e', $ENV{CLONEBOT_RSH} if $REMOTE;

sub slurp { local $/; open(my $f, '<', $_[0]) or return undef; my $d = <$f>; close $f; $d }
sub spit { open(my $f, '>', $_[0]) or die "cannot write $_[0]: $!\n"; print $f $_[1];
  close $f or die "cannot write $_[0]: $!\n" }
sub is_dir { ($_[0] & 0170000) == 0040000 }
sub parent { $_[0] =~ m{\A(.*)/[^/]*\z}s ? $1 : '.' }
sub full { my $top = $_[2] // '/from'; $_[1] eq '.' ? "$top/$_[0]" : "$top/$_[0]/$_[1]" }
# inode, mode, links, uid, gid, size, mtime, ctime: ctime moves on every change, and no
# program can set it back
sub sig { join '/', @_[1, 2, 3, 4, 5, 7, 9, 10] }

sub walk {  # calls $cb->($rel, lstat) for $rel and everything under it, parents first
  my ($v, $rel, $cb, $top) = @_;  # $top: /from (the default) or /to
  my @st = lstat full($v, $rel, $top) or return;  # vanished meanwhile
  $cb->($rel, @st);
  return unless is_dir($st[2]);
  opendir(my $d, full($v, $rel, $top)) or return;
  my @names = grep { $_ ne '.' && $_ ne '..' } readdir $d;
  closedir $d;
  walk($v, $rel eq '.' ? $_ : "$rel/$_", $cb, $top) for @names;
}

sub read_base {  # path -> sig, and the time the base was taken
  my ($v) = @_;
  my %base;
  my @recs = split /\0/, slurp("$S/base.$v") // '';
  my $t = shift(@recs) // 0;
  for (@recs) { my ($s, $p) = split /\t/, $_, 2; $base{$p} = $s }
  return ($t, \%base);
}

sub write_base {
  my ($v) = @_;
  my $t = time;
  my @out = ($t);
  walk($v, '.', sub { my $rel = shift; push @out, sig(@_) . "\t$rel" });
  spit("$S/base.$v", join("\0", @out) . "\0");
}

# inotify by syscall (inotifywait -r loses a directory's watch when directories are renamed
# while it walks: seen here); numbers per architecture: x86_64, aarch64
my %SYSCALLS = (x86_64 => [294, 254], aarch64 => [26, 27]);
my @FLAGS = ([0x2, 'MODIFY'], [0x4, 'ATTRIB'], [0x8, 'CLOSE_WRITE'], [0x40, 'MOVED_FROM'],
  [0x80, 'MOVED_TO'], [0x100, 'CREATE'], [0x200, 'DELETE'], [0x400, 'DELETE_SELF'],
  [0x800, 'MOVE_SELF'], [0x40000000, 'ISDIR']);
my $MASK = 0xFCE | 0x01000000 | 0x02000000;  # the events above; only directories, no symlinks

sub watch_tree {  # a watch on $dir and every directory under it: '' or what failed
  my ($fd, $add, $paths, $dir) = @_;
  my $wd = syscall($add, $fd, $dir, $MASK);
  if ($wd < 0) {
    my $errno = $! + 0;
    return '' if $errno == 2 || $errno == 20;  # gone or replaced: its move or delete is an event
    return $errno == 28 ? "the inotify watch limit is reached (fs.inotify.max_user_watches)"
      : "inotify cannot watch $dir: $!";
  }
  $paths->{$wd} = $dir;  # where it is now: after a move this corrects what was recorded
  opendir(my $d, $dir) or return '';
  my @names = grep { $_ ne '.' && $_ ne '..' } readdir $d;
  closedir $d;
  for (@names) {
    my @st = lstat "$dir/$_" or next;
    next unless is_dir($st[2]);
    my $err = watch_tree($fd, $add, $paths, "$dir/$_");
    return $err if $err;
  }
  return '';
}

sub watcher {  # the watcher process: appends "EVENTS\tPATH\0" to $S/events
  my $arch = `uname -m`;
  chomp $arch;
  my ($init, $add) = @{ $SYSCALLS{$arch} // [] };
  my $fail = sub { spit("$S/watch.err", $_[0]); exit 1 };
  $fail->("no inotify system call known for $arch") unless $init;
  my $fd = syscall($init, 0);
  $fail->("inotify: $!") if $fd < 0;
  open(my $in, '<&=', $fd) or $fail->("inotify: $!");
  open(my $out, '>>', "$S/events") or $fail->("cannot write $S/events: $!");
  select((select($out), $| = 1)[0]);
  my %paths;
  for ("$S/sync", map { "/from/$_" } @vols) {
    my $err = watch_tree($fd, $add, \%paths, $_);
    $fail->($err) if $err;
  }
  spit("$S/watch.ready", '');
  while (1) {
    my $n = sysread($in, my $buf, 1 << 16);
    next if !defined $n && $! + 0 == 4;  # EINTR
    $fail->("reading inotify: $!") unless $n;
    for (my $o = 0; $o < $n;) {
      my ($wd, $mask, $cookie, $len) = unpack('iIII', substr($buf, $o, 16));
      my $name = substr($buf, $o + 16, $len);
      $o += 16 + $len;
      $name =~ s/\0+\z//;
      if ($mask & 0x4000) { print $out "Q_OVERFLOW\t\0"; next }
      if ($mask & 0x8000) { delete $paths{$wd}; next }  # the watch is gone
      my $dir = $paths{$wd} // next;
      my $path = $name eq '' ? "$dir/" : "$dir/$name";
      print $out join(',', map { $_->[1] } grep { $mask & $_->[0] } @FLAGS) . "\t$path\0";
      if (($mask & 0x40000000) && ($mask & 0x180)) {  # a directory made or moved in
        my $err = watch_tree($fd, $add, \%paths, $path);
        print $out "WATCH_FAILED\t$err\0" if $err;
      }
    }
  }
}

sub start_watch {
  my $pid = fork;
  return 'fork failed' unless defined $pid;
  if (!$pid) {
    open STDIN, '<', '/dev/null'; open STDOUT, '>', '/dev/null'; open STDERR, '>&STDOUT';
    watcher();
  }
  spit("$S/watch.pid", $pid);
  for (1 .. 60000) {  # up to 10 minutes to set a watch on every directory
    return '' if -e "$S/watch.ready";
    if (waitpid($pid, 1) == $pid) { return slurp("$S/watch.err") // 'the watcher stopped' }
    select(undef, undef, undef, 0.01);
  }
  kill 'TERM', $pid;
  return 'the watcher took over 10 minutes to set its watches';
}

sub watcher_alive {  # its parent is the container's sleep, which never reaps: a zombie is dead
  my $pid = slurp("$S/watch.pid") // 0;
  my $stat = slurp("/proc/$pid/stat") // return 0;
  return $stat !~ /\) [ZX] /;
}

sub drain {  # the events up to a marker made now: undef when the watcher is gone
  my $seq = (slurp("$S/seq") // 0) + 1;
  spit("$S/seq", $seq);
  my $marker = "$S/sync/m$seq";
  spit($marker, '');
  my $off = (slurp("$S/offset") // 0) + 0;
  open(my $f, '<', "$S/events") or return undef;
  seek($f, $off, 0);
  my ($buf, $found, @recs) = ('', 0);
  my $deadline = time + 60;
  while (!$found) {
    if (read($f, my $chunk, 1 << 20)) {
      my @parts = split /\0/, $buf . $chunk, -1;
      $buf = pop @parts;  # an event not written whole yet
      for my $rec (@parts) {
        $off += length($rec) + 1;
        my ($ev, $path) = split /\t/, $rec, 2;
        if ($path eq $marker) { $found = 1; last }
        push @recs, [$ev, $path];
      }
      next;
    }
    return undef unless watcher_alive() && time < $deadline;
    select(undef, undef, undef, 0.002);
    seek($f, 0, 1);  # forget the end of file seen
  }
  spit("$S/offset", $off);
  unlink $marker;
  return \@recs;
}

sub from_events {  # 0 when the events are incomplete (the kernel's queue overflowed)
  my ($recs, $list, $expand) = @_;
  for (@$recs) {
    my ($ev, $path) = @$_;
    return 0 if $ev eq 'Q_OVERFLOW';
    return -1 if $ev eq 'WATCH_FAILED';
    next unless $path =~ m{\A/from/(\d+)/(.*)\z}s;
    my ($v, $rel) = ($1, $2);
    $rel =~ s{/\z}{};
    $rel = '.' if $rel eq '';
    $list->{$v}{$rel} = 1;
    $list->{$v}{parent($rel)} = 1;
    $expand->{$v}{$rel} = 1 if $ev =~ /ISDIR/ && $ev =~ /CREATE|MOVED_TO/;
  }
  return 1;
}

sub from_scan {  # every path whose stat differs from the base's, then the base is now
  my ($v, $list) = @_;
  my ($t, $base) = read_base($v);
  my $now = time;
  my @out = ($now);
  walk($v, '.', sub {
    my $rel = shift;
    my $s = sig(@_);
    push @out, "$s\t$rel";
    my $was = delete $base->{$rel};
    # a change in the second the base was taken may have kept its ctime's second
    return if defined $was && $was eq $s && $_[10] < $t - 1;
    $list->{$v}{$rel} = 1;
    $list->{$v}{parent($rel)} = 1;
  });
  for (keys %$base) { $list->{$v}{$_} = 1; $list->{$v}{parent($_)} = 1 }
  # what the copy holds and the source no longer does, though the base never saw it (made and
  # copied after the base was taken, then removed)
  my %now = map { (split /\t/, $_, 2)[1] => 1 } @out[1 .. $#out];
  walk($v, '.', sub { $list->{$v}{$_[0]} = 1 unless $now{$_[0]} }, '/to') unless $REMOTE;
  # on another engine the copy cannot be walked from here: rsync removes what it has extra
  $SWEEP{$v} = 1 if $REMOTE;
  spit("$S/base.$v", join("\0", @out) . "\0");
}

sub add_links {  # every link of a listed hard-linked file, so rsync -H keeps the group
  my ($v, $paths) = @_;
  my %want;  # inode -> [links, listed]
  for (keys %$paths) {
    my @st = lstat full($v, $_) or next;
    next if is_dir($st[2]) || $st[3] < 2;
    $want{$st[1]} //= [$st[3], 0];
    $want{$st[1]}[1]++;
  }
  my @short = grep { $want{$_}[1] < $want{$_}[0] } keys %want;
  return unless @short;
  my %ino = map { $_ => 1 } @short;
  my $take = sub {
    my ($rel, @st) = @_;
    return unless $ino{$st[1]} && !$paths->{$rel} && !is_dir($st[2]);
    $paths->{$rel} = 1;
    $paths->{parent($rel)} = 1;
    $want{$st[1]}[1]++;
  };
  my (undef, $base) = read_base($v);
  my @known = keys %$base;
  push @known, split /\0/, slurp("$S/seen.$v") // '';
  for (@known) { my @st = lstat full($v, $_) or next; $take->($_, @st) }
  # a link made since the base to a file nothing listed: only a walk finds the others
  walk($v, '.', $take) if grep { $want{$_}[1] < $want{$_}[0] } @short;
}

sub copy {  # false when rsync could not copy some path (a delta pass tries them again)
  my ($v, $paths, $final) = @_;
  # "." in a list would copy everything at the top (rsync -d copies a "." folder's entries):
  # the top folder's own attributes are set last, alone
  my @all = sort grep { $_ ne '.' } keys %$paths;
  my $top = exists $paths->{'.'};
  # what the copy has and the source no longer does (another engine's, found by rsync): only
  # removed, nothing sent
  my $ok = !delete $SWEEP{$v} || rsync($final, @RSYNC, '-r', '--delete', '--force', '--existing',
    '--ignore-existing', "/from/$v/", "$TO/$v/");
  return $ok unless @all || $top;
  my @dirs = grep { my @st = lstat full($v, $_); @st && is_dir($st[2]) } @all;
  open(my $seen, '>>', "$S/seen.$v") or die "cannot write $S/seen.$v: $!\n";
  print $seen join("\0", @all) . "\0";
  close $seen;
  # big files are patched in place while rsync copies the rest whole beside it (-I: an
  # in-place change with its mtime set back must not be skipped)
  my %big = map { $_ => 1 } grep { patchable(full($v, $_), full($v, $_, '/to')) } @all;
  my @whole = grep { !$big{$_} } @all;
  spit("$S/list.$v", join("\0", @whole) . "\0");
  my $copying = @whole && spawn(@RSYNC, '--from0', "--files-from=$S/list.$v",
    '--delete-missing-args', '--force', '-I', "/from/$v/", "$TO/$v/");
  my @unpatched = patch_all($v, sort keys %big);
  $ok = (!$copying || rsync_done($final, $copying)) && $ok;
  delete @big{@unpatched};
  spit("$S/list.$v", join("\0", @unpatched) . "\0");
  $ok = rsync($final, @RSYNC, '--from0', "--files-from=$S/list.$v", '--delete-missing-args',
    '--force', '-I', "/from/$v/", "$TO/$v/") && $ok if @unpatched;
  # then, in one run: the patched files' attributes (their size matches now, so --size-only
  # sends no data) and the listed directories' times, which writing into them moved
  my @attrs = (sort(keys %big), @dirs);
  spit("$S/attrs.$v", join("\0", @attrs) . "\0");
  $ok = rsync($final, @RSYNC, '--from0', "--files-from=$S/attrs.$v", '--size-only',
    "/from/$v/", "$TO/$v/") && $ok if @attrs;
  $ok = rsync($final, @RSYNC, '-d', '--exclude=*', "/from/$v/", "$TO/$v/") && $ok if $top;
  return $ok;
}

my $PAGE = 4096;  # a file system block (a PostgreSQL page is two): no hole is filled
my $CHUNK = 64 << 10;  # read in pieces that stay in the cache: 4x faster here than 1 MiB
my $BIG = 1 << 20;  # smaller files are copied whole
my $SLICE = 16 << 20;  # the part of a big file one patching process compares at a time

sub patchable {  # single-link regular files of 1 MiB or more on both sides (hard-link
  my ($from, $to) = @_;  # groups stay rsync's)
  my @s = lstat $from or return 0;
  my @d = lstat $to or return 0;
  return ($s[2] & 0170000) == 0100000 && ($d[2] & 0170000) == 0100000
    && $s[3] == 1 && $d[3] == 1 && $s[7] >= $BIG;
}

sub cpus {
  open(my $f, '<', '/proc/cpuinfo') or return 1;
  my $n = grep { /^processor\s*:/ } <$f>;
  return $n || 1;
}

sub patch_all {  # patches the big files, in slices shared by up to 4 processes: the unpatched
  my ($v, @files) = @_;
  return () unless @files;
  my (%size, @slices);
  for my $rel (@files) {
    my @s = lstat full($v, $rel) or next;
    my @d = lstat full($v, $rel, '/to') or next;
    $size{$rel} = [$s[7], $d[7]];
    for (my $at = 0; $at < $s[7]; $at += $SLICE) { push @slices, [$rel, $at] }
  }
  my $n = cpus();
  $n = 4 if $n > 4;
  $n = @slices if @slices < $n;
  my @pids;
  for my $w (0 .. $n - 1) {
    my @mine = @slices[grep { $_ % $n == $w } 0 .. $#slices];
    my $pid = fork // die "fork failed: $!\n";
    if (!$pid) {
      my %bad;
      for (@mine) {
        my ($rel, $at) = @$_;
        $bad{$rel} = 1 unless patch_slice(full($v, $rel), full($v, $rel, '/to'), $at,
          $size{$rel}[1]);
      }
      spit("$S/unpatched.$w", join("\0", keys %bad));
      exit 0;
    }
    push @pids, $pid;
  }
  my %bad = map { $_ => 1 } grep { !$size{$_} } @files;  # vanished: rsync deletes them
  for my $w (0 .. $#pids) {
    waitpid($pids[$w], 0);
    my $out = slurp("$S/unpatched.$w");
    my @failed = $? == 0 && defined $out ? split(/\0/, $out) : map { $_->[0] } @slices;
    $bad{$_} = 1 for @failed;
    unlink "$S/unpatched.$w";
  }
  for my $rel (keys %size) {  # its length now, whatever the slices wrote past it
    next if $bad{$rel};
    $bad{$rel} = 1 unless truncate(full($v, $rel, '/to'), $size{$rel}[0]);
  }
  return sort keys %bad;
}

sub patch_slice {  # true when $to holds $from's bytes from $at for a slice, written block by
  my ($from, $to, $at, $old) = @_;  # block where they differ; $old: $to's length before
  open(my $src, '<:raw', $from) or return 0;
  open(my $dst, '+<:raw', $to) or return 0;
  for (my $off = $at; $off < $at + $SLICE; $off += $CHUNK) {
    sysseek($src, $off, 0) or return 0;
    my $n = sysread($src, my $x, $CHUNK);
    return 0 unless defined $n;
    last if $n == 0;
    sysseek($dst, $off, 0) or return 0;
    my $m = sysread($dst, my $y, $n) // return 0;
    next if $m == $n && $x eq $y;
    for (my $i = 0; $i < $n; $i += $PAGE) {
      my $page = substr($x, $i, $PAGE);
      next if $i + length($page) <= $m && $page eq substr($y, $i, $PAGE);
      next if $off + $i >= $old && $page !~ /[^\0]/;  # a hole stays a hole (see truncate)
      sysseek($dst, $off + $i, 0) or return 0;
      (syswrite($dst, $page) // -1) == length($page) or return 0;
    }
    last if $n < $CHUNK;
  }
  return close $dst;
}

sub spawn {  # a command started beside this one: its pid
  my $pid = fork // die "fork failed: $!\n";
  exec(@_) or exit 127 unless $pid;
  return $pid;
}

sub rsync_done {  # waits for a spawned rsync: see rsync
  my ($final, $pid) = @_;
  waitpid($pid, 0);
  return rsync_status($final, $? >> 8);
}

sub rsync { my ($final, @cmd) = @_; return rsync_status($final, system(@cmd) >> 8) }

sub rsync_status {  # 24: a file vanished; 23 while the source runs: one changed under its feet
  my ($final, $rc) = @_;
  return 1 if $rc == 0 || $rc == 24;
  return 0 if $rc == 23 && !$final;
  die "error copying the changed paths (rsync exit $rc)\n";
}

sub one_pass {  # the number of paths copied
  my ($final) = @_;
  my $how = slurp("$S/mode");
  die "no change was recorded: the pre-copy ran without following changes\n" if $how eq 'off';
  my (%list, %expand);
  if ($how eq 'inotify') {
    my $recs = drain();
    if (!$recs) {
      print "warning the change watcher stopped: every file was compared\n";
      spit("$S/mode", 'scan');
      $how = 'scan';
    } elsif ((my $whole = from_events($recs, \%list, \%expand)) < 1) {
      # from now on every pass compares every file: a directory made or moved while events
      # were lost has no watch (or an old path), so later events could not be trusted
      if ($whole < 0) {
        print "warning inotify cannot watch every directory: every file is compared\n";
      } else {
        print "warning too many changes at once for inotify: every file is compared\n";
      }
      spit("$S/mode", 'scan');
      $how = 'scan';
    }
  }
  my $count = 0;
  for my $v (@vols) {
    from_scan($v, \%list) if $how eq 'scan';
    my $paths = $list{$v} // {};
    # what a pass could not copy while the source ran is copied again
    $paths->{$_} = 1 for split /\0/, slurp("$S/retry.$v") // '';
    unlink "$S/retry.$v";
    for my $dir (keys %{ $expand{$v} // {} }) { walk($v, $dir, sub { $paths->{$_[0]} = 1 }) }
    add_links($v, $paths);
    spit("$S/retry.$v", join("\0", keys %$paths)) unless copy($v, $paths, $final);
    $count += keys %$paths;
  }
  print "changed $count\n";
  return $count;
}

my %LGETXATTR = (x86_64 => 192, aarch64 => 9);
my @HIDING = map { ("trusted.overlay.$_", "user.overlay.$_") } qw(opaque redirect);

sub has_xattr {  # lgetxattr by syscall (no module): ERANGE means it is there, only long
  my ($nr, $path, $name) = @_;
  my $buf = "\0" x 256;
  return syscall($nr, $path, $name, $buf, length $buf) >= 0 || $! + 0 == 34;
}

sub list_rootfs {
  my $arch = `uname -m`;
  chomp $arch;
  my $nr = $LGETXATTR{$arch} or die "no lgetxattr system call known for $arch\n";
  walk('rootfs', '.', sub {
    my ($rel, @st) = @_;
    return if $rel eq '.';
    my $kind = ($st[2] & 0170000) == 0020000 && $st[6] == 0 ? 'w'
      : !is_dir($st[2]) ? 'f'
      : (grep { has_xattr($nr, "/rootfs/$rel", $_) } @HIDING) ? 'o' : 'd';
    print "entry $kind " . sig(@st) . ' ' . unpack('H*', $rel) . "\n";
  }, '');
}

if ($cmd eq 'start') {
  mkdir $S; mkdir "$S/sync";
  if ($how eq 'inotify') {
    my $err = start_watch();
    if ($err) {
      print "warning changes are found by comparing every file during the freeze ($err)\n";
      $how = 'scan';
    }
  }
  spit("$S/mode", $how);
  if ($how ne 'off') { write_base($_) for @vols }
} elsif ($cmd eq 'armed') {
  for (1 .. 4) { last if one_pass() < 1000 }  # little is left for the freeze: stop
  print "ready\n";
  defined(<STDIN>) or die "no word to start the final pass\n";
  one_pass(1);
  print "done\n";
} elsif ($cmd eq 'rootfs') {
  list_rootfs();
} else {
  die "unknown command $cmd\n";
}
"""
