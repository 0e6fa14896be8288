"""The copy helper's bookkeeping of changes, a Perl script run inside the helper container.

Perl because the helper has no Python and busybox's shell and awk cannot hold file names with
newlines; the script uses no Perl module (the helper image carries the host's ``perl`` binary
without its library). Its state lives in ``/tmp/cb`` of the helper container.

* ``start COUNT inotify|scan|off``: before the pre-copy. Starts ``inotifywait -m -r`` on every
  ``/from/<i>`` (and on ``/tmp/cb/sync``, for the drain markers) and waits until its watches are
  set; then records every entry's inode, mode, links, owner, size, mtime and ctime (the base).
  If inotify cannot watch (its limits), changes are found by comparing with the base instead.
* ``pass COUNT``: while the source runs, repeated until little is left (iterative pre-copy).
* ``final COUNT``: during the freeze, one pass.

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
my $EVENTS = 'modify,attrib,close_write,create,delete,delete_self,moved_from,moved_to,'
  . 'move_self,q_overflow';

sub slurp { local $/; open(my $f, '<', $_[0]) or return undef; my $d = <$f>; close $f; $d }
sub spit { open(my $f, '>', $_[0]) or die "cannot write $_[0]: $!\n"; print $f $_[1];
  close $f or die "cannot write $_[0]: $!\n" }
sub is_dir { ($_[0] & 0170000) == 0040000 }
sub parent { $_[0] =~ m{\A(.*)/[^/]*\z}s ? $1 : '.' }
sub full { $_[1] eq '.' ? "/from/$_[0]" : "/from/$_[0]/$_[1]" }
# inode, mode, links, uid, gid, size, mtime, ctime: ctime moves on every change, and no
# program can set it back
sub sig { join '/', @_[1, 2, 3, 4, 5, 7, 9, 10] }

sub walk {  # calls $cb->($rel, lstat) for $rel and everything under it, parents first
  my ($v, $rel, $cb) = @_;
  my @st = lstat full($v, $rel) or return;  # vanished meanwhile
  $cb->($rel, @st);
  return unless is_dir($st[2]);
  opendir(my $d, full($v, $rel)) or return;
  my @names = grep { $_ ne '.' && $_ ne '..' } readdir $d;
  closedir $d;
  walk($v, $rel eq '.' ? $_ : "$rel/$_", $cb) for @names;
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

sub start_watch {
  my $pid = fork;
  return 'fork failed' unless defined $pid;
  if (!$pid) {
    open STDIN, '<', '/dev/null'; open STDOUT, '>', "$S/watch.log"; open STDERR, '>&STDOUT';
    exec('inotifywait', '-m', '-r', '-e', $EVENTS, '--format', "%e\t%w%f%0", '--no-newline',
      '-o', "$S/events", "$S/sync", map { "/from/$_" } @vols) or exit 127;
  }
  spit("$S/watch.pid", $pid);
  for (1 .. 60000) {  # up to 10 minutes to set a watch on every directory
    my $log = slurp("$S/watch.log") // '';
    return '' if $log =~ /Watches established/;
    if (waitpid($pid, 1) == $pid) {  # 1: WNOHANG
      $log =~ s/Setting up watches\.[^\n]*\n//; $log =~ s/\s+/ /g;
      return "inotifywait: $log";
    }
    select(undef, undef, undef, 0.01);
  }
  kill 'TERM', $pid;
  return 'inotifywait took over 10 minutes to set its watches';
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
      $buf .= $chunk;
      while ((my $i = index($buf, "\0")) >= 0) {
        my $rec = substr($buf, 0, $i);
        substr($buf, 0, $i + 1) = '';
        $off += $i + 1;
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
    return 0 if $ev =~ /Q_OVERFLOW/;
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
  my @all = sort keys %$paths;
  return 1 unless @all;
  my @dirs = grep { my @st = lstat full($v, $_); @st && is_dir($st[2]) } @all;
  spit("$S/list.$v", join("\0", @all) . "\0");
  spit("$S/dirs.$v", join("\0", @dirs) . "\0");
  open(my $seen, '>>', "$S/seen.$v") or die "cannot write $S/seen.$v: $!\n";
  print $seen join("\0", @all) . "\0";
  close $seen;
  my $ok = rsync($final, @RSYNC, '--from0', "--files-from=$S/list.$v", '--delete-missing-args',
    '--force', '-I', "/from/$v/", "/to/$v/");
  # writing into a directory moved its mtime: set the listed directories' times again
  $ok = rsync($final, @RSYNC, '--from0', "--files-from=$S/dirs.$v", "/from/$v/", "/to/$v/")
    && $ok if @dirs;
  return $ok;
}

sub rsync {  # 24: a file vanished; 23 while the source runs: one changed under rsync's feet
  my ($final, @cmd) = @_;
  my $rc = system(@cmd) >> 8;
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
    } elsif (!from_events($recs, \%list, \%expand)) {
      print "warning too many changes at once for inotify: every file was compared\n";
      $how = 'scan';  # this pass only: the events after its marker are whole again
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
} elsif ($cmd eq 'pass') {
  for (1 .. 4) { last if one_pass() < 1000 }  # little is left for the freeze: stop
} elsif ($cmd eq 'final') {
  one_pass(1);
} else {
  die "unknown command $cmd\n";
}
"""
