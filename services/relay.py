"""rsync from a helper on one engine to a helper on another, relayed by clonebot.

The two engines need not reach each other, and no port is opened: each rsync connection runs
over the engines' own API connections (TLS for a remote engine), through this process, which
holds one chunk per direction at a time (flat memory, whatever the volume's size).

In the source helper, rsync's remote shell (``-e RSH``, ``x:/to/0/`` as its target) is a small
Perl program: it announces the server command rsync wants (``rsync --server …``) to the
switchboard, a long-lived command of the helper whose output clonebot reads, and waits on a
socket of its own. For each announcement clonebot runs that command in the target helper and
a bridge to the waiting socket in the source helper, and pumps bytes between the two.

Perl, with no module (the helper carries the host's ``perl`` without its library): sockets by
number (``AF_UNIX`` and ``SOCK_STREAM`` are 1 on Linux), no FIFO (``mkfifo`` is POSIX's).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from types import TracebackType

import aiohttp

from services.docker import DockerClient, ExecSession
from services.errors import ClonebotError, DockerFailed

log = logging.getLogger(__name__)

RSH = "/tmp/relay/rsh"  # rsync's -e in the source helper
DEST = "x:"  # the host rsync names its server by; the relay ignores it

_COMMON = r"""
$| = 1;
sub addr { pack('S Z108', 1, $_[0]) }
sub put {  # all of $_[1] to handle $_[0], or false
  my ($fh, $buf) = @_;
  my $off = 0;
  while ($off < length $buf) {
    my $w = syswrite($fh, $buf, length($buf) - $off, $off);
    return 0 unless defined $w;
    $off += $w;
  }
  return 1;
}
sub pump {  # copies $_[0] to $_[1] until the end of $_[0]
  my ($in, $out) = @_;
  while (1) {
    my $n = sysread($in, my $buf, 65536);
    return unless $n;
    put($out, $buf) or return;
  }
}
sub both {  # a child copies $_[0] to $_[1], this process $_[2] to $_[3]; then the child ends
  my ($a, $b, $c, $d) = @_;
  my $pid = fork // die "fork: $!\n";
  if (!$pid) { pump($a, $b); shutdown($b, 1) if -S $b; exit 0 }
  pump($c, $d);
  kill 'TERM', $pid;
  waitpid $pid, 0;
}
"""

# rsync's remote shell: ``RSH HOST rsync --server ...``
_RSH = (
    "#!/usr/bin/perl\n"
    + _COMMON
    + r"""
my (undef, @cmd) = @ARGV;
my $me = "/tmp/relay/$$.sock";
unlink $me;  # an earlier process's of the same pid
my ($l, $c);  # declared first: a "my" is seen from the next statement only
socket($l, 1, 1, 0) && bind($l, addr($me)) && listen($l, 1) or die "relay: $me: $!\n";
socket($c, 1, 1, 0) && connect($c, addr('/tmp/relay/calls.sock'))
  or die "relay: no switchboard: $!\n";
put($c, join("\t", $$, @cmd) . "\n");
close $c;
alarm 60;  # no bridge: clonebot is gone, or refused the command; rsync then fails, saying so
accept(my $s, $l) or die "relay: accept: $!\n";
alarm 0;
unlink $me;
both(\*STDIN, $s, $s, \*STDOUT);
"""
)

# the switchboard: writes the relay (its argument), then prints each announcement
_SWITCHBOARD = (
    _COMMON
    + r"""
mkdir '/tmp/relay', 0700;
open(my $f, '>', '/tmp/relay/rsh') or die "switchboard: $!\n";
print $f $ARGV[0];
close $f;
chmod 0700, '/tmp/relay/rsh';
unlink '/tmp/relay/calls.sock';
my $l;
socket($l, 1, 1, 0) && bind($l, addr('/tmp/relay/calls.sock')) && listen($l, 64)
  or die "switchboard: $!\n";
print "ready\n";
while (accept(my $c, $l)) { my $line = <$c>; print $line if defined $line; close $c }
"""
)

# one session's bridge: its stdin to the relay's socket, the socket to its stdout
_BRIDGE = (
    _COMMON
    + r"""
my $s;
socket($s, 1, 1, 0) && connect($s, addr("/tmp/relay/$ARGV[0].sock")) or die "bridge: $!\n";
both(\*STDIN, $s, $s, \*STDOUT);
"""
)

# what rsync may ask the other side to run: its server receiving into one of the target's
# /to/<i>, with the options of ours (never a daemon, a config, a log, a batch or a backup: the
# source helper mounts users' data, and is not trusted to choose what runs in the target)
_ARG = re.compile(r"-[A-Za-z0-9.@-]+|--[a-z0-9-]+(=[A-Za-z0-9.,-]+)?")  # -@-1: --modify-window
_OPTIONS = frozenset(
    ("--server", "--delete", "--numeric-ids", "--force", "--delete-missing-args", "--from0",
     "--size-only", "--existing", "--ignore-existing", "--inplace", "--partial")
)  # fmt: skip
_TARGET = re.compile(r"/to/[0-9]+/")
_PID = re.compile(r"[0-9]{1,10}")


def _server_command(cmd: list[str]) -> bool:
    """``rsync --server [options] . /to/<i>/``, each option one clonebot's copies use."""
    if cmd[:2] != ["rsync", "--server"] or len(cmd) < 4 or cmd[-2] != ".":
        return False
    if not _TARGET.fullmatch(cmd[-1]):
        return False
    for arg in cmd[2:-2]:
        if not _ARG.fullmatch(arg):
            return False
        long = arg.startswith("--")
        if long and arg.split("=", 1)[0] not in _OPTIONS:
            return False
    return True


_GRACE_S = 30.0  # the server's end after the client's, before it is closed


class RsyncRelay:
    """While entered, rsync in ``source_helper`` with ``-e RSH`` and a target ``x:/to/...``
    writes into ``target_helper`` on the other engine."""

    def __init__(
        self, source: DockerClient, source_helper: str, target: DockerClient, target_helper: str
    ) -> None:
        self.source, self.source_helper = source, source_helper
        self.target, self.target_helper = target, target_helper
        self._sessions: set[asyncio.Task[None]] = set()
        self._board: contextlib.AbstractAsyncContextManager[ExecSession] | None = None
        self._listening: asyncio.Task[None] | None = None
        self.failure: str | None = None

    async def __aenter__(self) -> RsyncRelay:
        cmd = ["perl", "-e", _SWITCHBOARD, _RSH]
        self._board = self.source.exec_session(self.source_helper, cmd, stdin=False)
        board = await self._board.__aenter__()
        lines = board.lines()
        try:
            first = await anext(lines, "")
            if first != "ready":
                raise DockerFailed(f"the copy relay did not start: {first[-300:]}")
        except BaseException:
            await asyncio.shield(self._board.__aexit__(None, None, None))
            raise
        self._listening = asyncio.create_task(self._listen(lines))
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        tasks = [t for t in (self._listening, *self._sessions) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._board is not None:
            await self._board.__aexit__(kind, exc, tb)

    async def _listen(self, lines: AsyncIterator[str]) -> None:
        async for line in lines:
            pid, *cmd = line.split("\t")
            if not _PID.fullmatch(pid):
                self._fail(f"the copy relay was told something else: {line[:200]!r}")
                continue
            if not _server_command(cmd):
                self._fail(f"the copy relay refused to run {' '.join(cmd)[:200]!r}")
                cmd = []  # its bridge ends at once: the relay, then rsync, fail
            task = asyncio.create_task(self._session(pid, cmd))
            self._sessions.add(task)
            task.add_done_callback(self._sessions.discard)

    def _fail(self, why: str) -> None:
        log.error("%s", why)
        self.failure = self.failure or why

    async def _session(self, pid: str, cmd: list[str]) -> None:
        """One rsync connection: the server in the target, the bridge in the source."""
        bridge_cmd = ["perl", "-e", _BRIDGE, pid]
        try:
            if not cmd:
                async with self.source.exec_session(self.source_helper, bridge_cmd):
                    return
            async with contextlib.AsyncExitStack() as stack:
                # both at once: each is a process started on its engine (the final pass,
                # during the freeze, waits for them)
                server, bridge = await _entered(
                    stack,
                    self.target.exec_session(self.target_helper, cmd),
                    self.source.exec_session(self.source_helper, bridge_cmd),
                )
                sending = asyncio.create_task(_pump(bridge, server))
                receiving = asyncio.create_task(_pump(server, bridge))
                await asyncio.wait({sending, receiving}, return_when=asyncio.FIRST_COMPLETED)
                # the server's output ended: it is done, and takes nothing more (the client
                # sees its end once the bridge closes). The client's ended first: the server
                # is given a while to finish what it received.
                if not receiving.done():
                    await asyncio.wait({receiving}, timeout=_GRACE_S)
                for task in (sending, receiving):
                    task.cancel()
                await asyncio.gather(sending, receiving, return_exceptions=True)
                for task in (sending, receiving):
                    if not task.cancelled() and (exc := task.exception()) is not None:
                        raise exc
        except ClonebotError as exc:  # the rsync client in the source sees its end, and says
            self._fail(f"the copy relay lost a connection: {exc.message}")
        except (aiohttp.ClientError, OSError) as exc:  # a stream cut mid-read
            self._fail(f"the copy relay lost a connection: {exc}")


async def _entered(
    stack: contextlib.AsyncExitStack,
    *sessions: contextlib.AbstractAsyncContextManager[ExecSession],
) -> list[ExecSession]:
    """Enter the sessions concurrently, each one entered left to ``stack`` to exit (also when
    this is cancelled meanwhile); the first failure raised once every one has ended."""
    tasks = [asyncio.ensure_future(s.__aenter__()) for s in sessions]
    try:
        await asyncio.wait(tasks)
    finally:
        for task in tasks:
            task.cancel()  # only those still entering
        await asyncio.wait(tasks)
        for session, task in zip(sessions, tasks, strict=True):
            if not task.cancelled() and task.exception() is None:
                stack.push_async_exit(session)
    for task in tasks:
        if (exc := task.exception()) is not None:
            raise exc
    return [task.result() for task in tasks]


async def _pump(reader: ExecSession, writer: ExecSession) -> None:
    """The standard output of ``reader`` into the input of ``writer``, a chunk at a time;
    what ``reader`` says on standard error is logged."""
    async for chunk in reader.stdout():
        await writer.send(chunk)
    if reader.errors:
        log.warning("copy relay: %s", reader.errors.decode(errors="replace").strip()[-500:])
