"""Copying volume data with a helper container, so no data passes through clonebot.

The helper image is built locally from the host's busybox-static, rsync and perl (never
pulled). A helper container mounts the sources read-only at ``/from/<i>`` and the targets
at ``/to/<i>``:

* ``pre_copy`` runs while the source works: it starts recording every change (inotify), then
  copies everything with ``rsync -aHAXS`` (holes, hard links, ACLs, xattrs, times in ns); a file
  that vanishes meanwhile is normal;
* ``FinalPass`` is entered *before* the source is frozen: it copies what changed during the
  pre-copy, again while it changes less, and waits; fired during the freeze it copies only the
  paths changed since, so the freeze does not scan every file (see ``copy_plan.py``).
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
import shutil
import subprocess
import tarfile
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from services import metrics
from services.copy_plan import PLAN
from services.docker import JSON, DockerClient, ExecSession
from services.errors import DockerFailed
from services.relay import DEST, RSH

log = logging.getLogger(__name__)

# A change here needs a new tag for the helper image (CLONEBOT_HELPER_IMAGE's default): an
# engine keeps the image it built once.
APPLETS = [
    "sh",
    "cp",
    "mv",
    "rm",
    "mkdir",
    "find",
    "sort",
    "awk",
    "du",
    "df",
    "cut",
    "touch",
    "date",
    "usleep",
    "sleep",
    "kill",
    "stat",
    "chown",
    "chmod",
    "seq",
    "cat",
    "echo",
    "test",
    "true",
    "wc",
    "ls",
    "tr",
    "head",
    "tail",
    "ln",
    "uname",
]
# Host programs copied into the helper with the libraries they link (Debian packages rsync,
# acl, attr, findutils, perl-base). getfattr/getfacl/find also let a test list a volume
# exactly with the same image.
TOOLS = ["rsync", "perl", "getfattr", "setfattr", "getfacl", "setfacl", "find"]
PLAN_PATH = "usr/lib/clonebot/plan.pl"
# How changes during the pre-copy are followed: inotify (the default), a comparison of every
# file's stat during the freeze (what inotify's limits leave), or not at all (no final pass)
Watch = Literal["inotify", "scan", "off"]

# Every script writes its errors to stdout too: stdout and stderr arrive as two streams, and a
# line of one could land in the middle of the other's "done". rsync exit 24 is "some source
# files vanished": normal while the source runs.
_PRE_COPY = r"""
exec 2>&1
perl /usr/lib/clonebot/plan.pl start "$1" "$2" || exit 1
to=${3:-/to}  # or another engine's helper, through the remote shell $4 (relay.py)
total=0
for i in $(seq 0 $(($1 - 1))); do
  # rsync exit 23 while the source runs: a file changed under its feet (an xattr read of a
  # file just deleted); a second run copies what the first could not
  for attempt in 1 2 3; do
    # --delete: a refresh copies into a used volume; progress2 prints bytes sent so far
    { rsync -aHAXS --numeric-ids --modify-window=-1 --delete --info=progress2 ${4:+-e "$4"} \
        /from/$i/ $to/$i/ 2>&1; echo "rc $?"; } | tr "\r" "\n" | awk -v base="$total" '
      /^rc [0-9]+$/ { rc = $2; next }
      /^ *[0-9,]+ +[0-9]+% / { b = $1; gsub(",", "", b); last = b + 0
        print "progress " int((base + last) / 1024); fflush(); next }
      NF { print; fflush() }
      END { print base + last > "/tmp/cb/total"; exit rc == 24 ? 0 : rc }
    '
    rc=$?
    [ $rc = 23 ] || break
  done
  [ $rc = 0 ] || { echo "error copying volume $i (rsync exit $rc)"; exit 1; }
  total=$(cat /tmp/cb/total)
done
echo done
"""

_FINAL_PASS = r"""
exec 2>&1
CLONEBOT_TO=$2 CLONEBOT_RSH=$3 exec perl /usr/lib/clonebot/plan.pl armed "$1"
"""


@dataclass(frozen=True)
class VolumeSizes:
    used: dict[str, int]  # bytes per volume name
    free: int  # bytes free on the file system that holds the volumes


async def ensure_helper_image(docker: DockerClient, *, image: str, busybox: Path) -> None:
    """Build the helper image from the host's programs when the engine lacks it."""
    if await docker.inspect_image(image) is not None:
        return
    if not await asyncio.to_thread(busybox.is_file):
        raise DockerFailed(
            f"the helper image {image} is missing and {busybox} (busybox-static) is not there "
            "to build it; install busybox-static or set CLONEBOT_BUSYBOX"
        )
    tools = {name: shutil.which(name) for name in TOOLS}
    if missing := sorted(name for name, path in tools.items() if path is None):
        raise DockerFailed(
            f"the helper image {image} is missing and {', '.join(missing)} not installed to "
            "build it; install rsync acl attr (scripts/ensure-deps.sh)"
        )
    repo, _, tag = image.rpartition(":")
    paths = [Path(p) for p in tools.values() if p]
    tar = await asyncio.to_thread(_helper_rootfs, busybox, paths)
    await docker.import_image(tar=tar, repo=repo or image, tag=tag or "latest")


def _helper_rootfs(busybox: Path, tools: list[Path]) -> bytes:
    buf = io.BytesIO()  # about 20 MB: busybox, the tools and the libraries they link
    files = {f"usr/bin/{tool.name}": tool for tool in tools}
    for tool in tools:
        files.update({lib.lstrip("/"): Path(lib) for lib in _linked_libraries(tool)})
    folders = {"bin", "tmp", "from", "to", "rootfs", "usr/lib/clonebot"}
    for path in files:
        parent = Path(path).parent
        folders.update(str(p) for p in [parent, *parent.parents] if str(p) != ".")
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for folder in sorted(folders):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if folder == "tmp" else 0o755
            tar.addfile(info)
        tar.add(str(busybox), arcname="bin/busybox")
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        for arcname, source in sorted(files.items()):
            data = source.resolve().read_bytes()  # a library's name is often a symlink
            info = tarfile.TarInfo(arcname)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
        script = PLAN.encode()
        info = tarfile.TarInfo(PLAN_PATH)
        info.size, info.mode = len(script), 0o644
        tar.addfile(info, io.BytesIO(script))
    return buf.getvalue()


def _linked_libraries(binary: Path) -> list[str]:
    """The absolute paths ``ldd`` names for a dynamically linked program (the loader too)."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
    return [w for line in out.stdout.splitlines() for w in line.split() if w.startswith("/")]


async def measure_volumes(
    docker: DockerClient, *, image: str, volumes: list[str], labels: dict[str, str]
) -> VolumeSizes:
    """Bytes used by each volume and bytes free beside them, measured on the Docker host."""
    mounts = [_mount(v, f"/from/{i}", read_only=True) for i, v in enumerate(volumes)]
    # in the volumes' order: a glob of /from/*/ sorts 10 before 2
    # a file vanishing under du is normal in a running source: its complaint is not a size
    script = f"for i in $(seq 0 {len(volumes) - 1}); do "
    script += "s=$(du -sk /from/$i 2>/dev/null | tail -n 1 | cut -f1); echo ${s:-0}; done; "
    script += "df -Pk /from | tail -n 1"
    out = await run_helper(
        docker,
        image=image,
        script=script,
        mounts=mounts,
        labels=labels,
        what="measuring the volumes",
    )
    lines = out.strip().splitlines()
    used = {v: int(lines[i].split()[0]) * 1024 for i, v in enumerate(volumes)}
    return VolumeSizes(used=used, free=int(lines[-1].split()[3]) * 1024)


async def free_disk(
    docker: DockerClient, *, image: str, busybox: Path, labels: dict[str, str]
) -> int:
    """Bytes free beside the engine's volumes (its helper image built first if it lacks it)."""
    await ensure_helper_image(docker, image=image, busybox=busybox)
    sizes = await measure_volumes(docker, image=image, volumes=[], labels=labels)
    return sizes.free


async def run_helper(
    docker: DockerClient,
    *,
    image: str,
    script: str,
    labels: dict[str, str],
    mounts: list[JSON] | None = None,
    network: str = "none",
    what: str = "a helper on the Docker host",
) -> str:
    """Run a shell script in a throw-away helper container: its output, or DockerFailed."""
    config = _helper_config(image, ["sh", "-c", script], mounts or [], labels=labels)
    config["HostConfig"]["NetworkMode"] = network
    cid = await docker.create_container(name=f"clonebot-run-{secrets.token_hex(4)}", config=config)
    try:
        await docker.start_container(cid)
        code = await docker.wait_container(cid)
        out = await docker.container_logs(cid)
    finally:
        # even under a second cancellation: a helper left behind holds the source's volumes
        await asyncio.shield(docker.remove_container(cid))
    if code != 0:
        raise DockerFailed(f"{what} failed: {out.strip()[-300:]}")
    return out


@asynccontextmanager
async def copy_helper(
    docker: DockerClient,
    *,
    image: str,
    name: str,
    pairs: list[tuple[str, str]],
    labels: dict[str, str],
    rootfs: str | None = None,
) -> AsyncIterator[str]:
    """A running helper container with ``(source, target)`` volume pairs mounted, and a
    source container's upper directory (see ``rootfs.py``) read-only at ``/rootfs``."""
    async with half_helper(
        docker, image=image, name=name, sources=[src for src, _ in pairs],
        targets=[dst for _, dst in pairs], labels=labels, rootfs=rootfs,
    ) as cid:  # fmt: skip
        yield cid


@asynccontextmanager
async def half_helper(
    docker: DockerClient,
    *,
    image: str,
    name: str,
    sources: Sequence[str] = (),
    targets: Sequence[str] = (),
    labels: dict[str, str],
    rootfs: str | None = None,
) -> AsyncIterator[str]:
    """A running helper with ``sources`` read-only at ``/from/<i>`` and ``targets`` at
    ``/to/<i>``: both for a copy on one engine, one side each for a copy between two
    (``relay.py``)."""
    mounts = [_mount(src, f"/from/{i}", read_only=True) for i, src in enumerate(sources)]
    mounts += [_mount(dst, f"/to/{i}", read_only=False) for i, dst in enumerate(targets)]
    if rootfs is not None:
        mounts.append(_mount(rootfs, "/rootfs", read_only=True))
    config = _helper_config(image, ["sleep", "2147483647"], mounts, labels=labels)
    cid = await docker.create_container(name=name, config=config)
    try:
        await docker.start_container(cid)
        yield cid
    finally:
        await asyncio.shield(docker.remove_container(cid))


async def pre_copy(
    docker: DockerClient,
    *,
    helper: str,
    count: int,
    on_bytes: Callable[[int], None],
    watch: Watch = "inotify",
    on_warning: Callable[[str], None] | None = None,
    remote: bool = False,
) -> None:
    """Copy every pair in full, recording the changes made meanwhile for ``FinalPass``.

    ``watch="off"`` is for a source that holds still (no final pass follows); ``remote``
    copies to the helper on another engine that an ``RsyncRelay`` reaches.
    """
    cmd = ["sh", "-c", _PRE_COPY, "pre-copy", str(count), watch, *_remote(remote)]
    meter = metrics.CopyMeter(on_bytes)
    async with docker.exec_session(helper, cmd) as ex:
        await _follow(ex, on_bytes=meter, what="pre-copy", on_warning=on_warning)
    meter.done()


class FinalPass:
    """The last, incremental pass: armed on entry (before the freeze), fired during it.

    Entering copies what changed during the pre-copy (repeatedly, until little is left)
    while the source runs; ``fire`` copies only the paths changed since.
    """

    def __init__(
        self,
        docker: DockerClient,
        *,
        helper: str,
        count: int,
        on_warning: Callable[[str], None] | None = None,
        remote: bool = False,
    ) -> None:
        self._on_warning = on_warning
        cmd = ["sh", "-c", _FINAL_PASS, "final", str(count), *_remote(remote)]
        self._session = docker.exec_session(helper, cmd)
        self._exec: ExecSession | None = None
        self._lines: AsyncIterator[str] | None = None

    async def __aenter__(self) -> FinalPass:
        self._exec = await self._session.__aenter__()
        self._lines = self._exec.lines()
        tail: list[str] = []
        try:
            async for line in self._lines:
                if line == "ready":
                    return self
                if not _warned(line, self._on_warning):
                    tail = [*tail[-4:], line]
        except BaseException:
            await asyncio.shield(self._session.__aexit__(None, None, None))
            raise
        await self._session.__aexit__(None, None, None)
        raise DockerFailed(f"the copy of the changes failed: {' / '.join(tail) or 'no output'}")

    async def __aexit__(self, *exc: object) -> None:
        await self._session.__aexit__(None, None, None)

    async def fire(self) -> None:
        assert self._exec is not None and self._lines is not None
        await self._exec.send(b"go\n")
        await _follow(
            self._exec,
            on_bytes=lambda _: None,
            what="final pass",
            lines=self._lines,
            on_warning=self._on_warning,
        )


def _remote(remote: bool) -> list[str]:
    """The copy scripts' arguments that send the copy to another engine's helper."""
    return [f"{DEST}/to", RSH] if remote else []


async def _follow(
    ex: ExecSession,
    *,
    on_bytes: Callable[[int], None],
    what: str,
    lines: AsyncIterator[str] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> None:
    tail: list[str] = []
    async for line in lines if lines is not None else ex.lines():
        if line.startswith("progress "):
            on_bytes(int(line.split()[1] or 0) * 1024)
        elif line == "done":
            return
        elif not _warned(line, on_warning):
            tail = [*tail[-4:], line]
    raise DockerFailed(f"{what} failed: {' / '.join(tail) or 'the helper stopped'}")


def _warned(line: str, on_warning: Callable[[str], None] | None) -> bool:
    """Pass on a helper's ``warning …`` line; False for any other line."""
    if not line.startswith("warning "):
        return False
    warning = line.removeprefix("warning ")
    log.warning("copy helper: %s", warning)
    if on_warning is not None:
        on_warning(warning)
    return True


def _helper_config(
    image: str, cmd: list[str], mounts: list[JSON], *, labels: dict[str, str]
) -> JSON:
    return {
        "Image": image,
        "Cmd": cmd,
        "Labels": {"clonebot.helper": "true", **labels},
        # it has nothing to save, and its sleep, the container's PID 1, ignores SIGTERM: a
        # stopping engine waited 10 s for each helper before killing it
        "StopSignal": "SIGKILL",
        "HostConfig": {"Mounts": mounts, "NetworkMode": "none"},
    }


def _mount(source: str, target: str, *, read_only: bool) -> JSON:
    """A volume, or a host directory (an absolute path): as ``Mounts``, not ``Binds``, so a
    path holding ``:`` is read whole and a host directory that went away since the plan fails
    the helper instead of being created empty by Docker."""
    kind = "bind" if source.startswith("/") else "volume"
    return {"Type": kind, "Source": source, "Target": target, "ReadOnly": read_only}
