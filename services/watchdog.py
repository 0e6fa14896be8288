"""A freeze guarded on the source's own engine, for an engine on another host.

clonebot resumes what it froze, whatever fails, as long as it reaches the engine. A remote
engine may be cut off from clonebot in the middle of a freeze (a partition, clonebot's host
gone): nothing would resume the source until clonebot reaches it again. So before freezing
on a remote engine, a watchdog container is started there: it finds the engine's own socket
on its host, reports that it is armed, and, unless clonebot removes it first (the freeze is
over and the source resumed), resumes the frozen containers itself once the freeze has
lasted ``CLONEBOT_FREEZE_TIMEOUT`` and a margin, then exits (the engine removes it).

The socket is found by its answer, not its name: the ``*.sock`` sockets under the host's
``/run`` (read-only at ``/h/run``, one folder deep; Docker's by name first) are asked
``GET /info``, and the one that answers with the engine's ID is used. Perl with no module,
as the rest of the helper (``relay.py``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from services.docker import DockerClient
from services.errors import ClonebotError, DockerFailed

log = logging.getLogger(__name__)

MARGIN_S = 5.0  # past clonebot's own timeout, which resumes the source when it can
_ARMING_S = 10.0
_GONE = (404, 409)
_TRY_S = 5.0

_WATCHDOG = r"""
my ($id, $secs, @frozen) = @ARGV;
$| = 1;
sub addr { pack('S Z108', 1, $_[0]) }
sub call {  # one HTTP/1.0 request to the engine's socket: its whole answer, or ''
  my ($path, $method, $url) = @_;
  my ($s, $out) = (undef, '');
  eval {
    local $SIG{ALRM} = sub { die "timeout\n" };
    alarm 3;
    socket($s, 1, 1, 0) && connect($s, addr($path)) or die "connect\n";
    syswrite($s, "$method $url HTTP/1.0\r\nHost: docker\r\nContent-Length: 0\r\n\r\n");
    while (sysread($s, my $buf, 65536)) { $out .= $buf; last if length($out) > 1 << 20 }
    alarm 0;
  };
  alarm 0;
  close $s if $s;
  return $out;
}
sub sockets_in {
  my ($dir) = @_;
  opendir(my $d, $dir) or return ();
  my @found = map { "$dir/$_" } grep { $_ ne '.' && $_ ne '..' } readdir $d;
  closedir $d;
  return @found;
}
my @candidates;
for my $path (sockets_in('/h/run')) {
  if (-S $path) { push @candidates, $path }
  elsif (-d $path && !-l $path) { push @candidates, grep { -S $_ } sockets_in($path) }
}
# only the *.sock ones, Docker's by name first
@candidates = sort { ($b =~ /docker/) <=> ($a =~ /docker/) || $a cmp $b }
  grep { /\.sock$/ } @candidates;
my $sock;
for my $c (@candidates) {
  if (call($c, 'GET', '/info') =~ /"ID":"\Q$id\E"/) { $sock = $c; last }
}
if (!defined $sock) { print "unarmed\n"; select(undef, undef, undef, 60); exit 0 }
print "armed\n";
select(undef, undef, undef, $secs);
for my $entry (@frozen) {
  my ($how, $cid) = split /:/, $entry, 2;
  my $verb = $how eq 'stopped' ? 'start' : 'unpause';
  my ($status) = call($sock, 'POST', "/containers/$cid/$verb") =~ m{^HTTP/\S+ (\d+)};
  print "resumed $cid ", ($status // 'no answer'), "\n";
}
"""


@asynccontextmanager
async def guarded(
    docker: DockerClient,
    *,
    image: str,
    how: dict[str, str],
    timeout_s: float,
    labels: dict[str, str],
) -> AsyncIterator[str | None]:
    """While entered, a watchdog on ``docker``'s engine resumes the containers of ``how``
    (id: ``paused`` or ``stopped``) once ``timeout_s`` and a margin have passed. Yields None
    when armed, else why not (no watchdog then: the freeze goes on, guarded by clonebot
    alone). Leaving removes it: the freeze is over."""
    if not how:
        yield None
        return
    engine_id = str((await docker.info())["ID"])
    frozen = [f"{way}:{cid}" for cid, way in sorted(how.items())]
    seconds = f"{timeout_s + MARGIN_S:g}"
    config = {
        "Image": image,
        "Cmd": ["perl", "-e", _WATCHDOG, engine_id, seconds, *frozen],
        "Labels": {"clonebot.helper": "true", "clonebot.watchdog": "true", **labels},
        "StopSignal": "SIGKILL",
        "HostConfig": {
            # /run alone (not what is mounted under it), read-only; no capability, no
            # privilege to gain, a read-only root, a few processes: it reads and connects
            "Mounts": [
                {
                    "Type": "bind", "Source": "/run", "Target": "/h/run", "ReadOnly": True,
                    "BindOptions": {"NonRecursive": True},
                }
            ],
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "ReadonlyRootfs": True,
            "PidsLimit": 16,
            "NetworkMode": "none",
            "AutoRemove": True,  # gone once it has done its work, even if clonebot is
        },
    }  # fmt: skip
    name = f"clonebot-watchdog-{secrets.token_hex(4)}"
    try:
        cid = await docker.create_container(name=name, config=config)
    except DockerFailed as exc:  # refused (by an authorization plugin, say): unguarded
        yield f"it could not be made: {exc.message}"
        return
    # it resumes the sources once this long has passed since it was started, at the latest
    fires_at = asyncio.get_running_loop().time() + timeout_s + MARGIN_S + _ARMING_S
    try:
        try:
            await docker.start_container(cid)
            why = await _armed(docker, cid)
        except DockerFailed as exc:
            why = f"it did not start: {exc.message}"
        yield why
    finally:
        await asyncio.shield(_removed(docker, cid, name, fires_at))


async def _removed(docker: DockerClient, cid: str, name: str, fires_at: float) -> None:
    """The watchdog removed, or past the time it would resume the sources. Not before: a
    watchdog left behind (its engine did not answer the removal) would resume the sources in
    the middle of the next freeze of them, which the job's hold on them keeps out meanwhile.
    A cut-off engine that never answers: the watchdog does its work, and the wait ends then."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            # each try bounded: a wedged engine must not hold the job past the deadline
            async with asyncio.timeout(max(1.0, min(_TRY_S, fires_at - loop.time()))):
                await docker.remove_container(cid)
            return
        except TimeoutError:
            if loop.time() >= fires_at:
                log.warning("the freeze's watchdog %s stays: its engine does not answer", name)
                return
            continue
        except ClonebotError as exc:
            # gone, or going: it did its work (or gave up), and the engine removes it
            if getattr(exc, "status", 0) in _GONE:
                return
            if loop.time() >= fires_at:
                log.warning("the freeze's watchdog %s stays: %s", name, exc.message)
                return
        await asyncio.sleep(min(1.0, max(0.0, fires_at - loop.time())))


async def _armed(docker: DockerClient, cid: str) -> str | None:
    """None once the watchdog says it is armed; why not, else."""
    deadline = asyncio.get_running_loop().time() + _ARMING_S
    while asyncio.get_running_loop().time() < deadline:
        said = await docker.container_logs(cid)
        if "armed\n" in said.splitlines(keepends=True):
            return None
        if "unarmed" in said:
            return "the engine's socket was not found under its host's /run"
        if said.strip():
            return f"it said {said.strip()[-200:]!r}"
        await asyncio.sleep(0.05)
    return f"it did not report within {_ARMING_S:g} s"
