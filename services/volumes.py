"""Copying volume data with a helper container, so no data passes through clonebot.

The helper image is built locally from the host's busybox-static (never pulled). A helper
container mounts the source volumes read-only at ``/from/<i>`` and the targets at ``/to/<i>``:

* ``pre_copy`` runs while the source works: it touches ``/marker`` then copies everything;
* ``FinalPass`` is started *before* the source is frozen and waits on its stdin, so the freeze
  costs only the copy of what changed since ``/marker`` (mtime) plus the removal of what vanished.
"""

from __future__ import annotations

import asyncio
import io
import secrets
import tarfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from services.docker import JSON, DockerClient, ExecSession
from services.errors import DockerFailed

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
]

# Every script writes its errors to stdout too: stdout and stderr arrive as two streams, and a
# line of one could land in the middle of the other's "done".
_PRE_COPY = r"""
exec 2>&1
# busybox find -newer compares whole seconds: the marker is set a second back, so that a
# file changed in the second the copy starts is seen (one changed just before is copied twice)
touch -d "@$(($(date +%s) - 1))" /marker
( while :; do echo "progress $(du -sk /to | cut -f1)"; usleep 400000; done ) & ticker=$!
for i in $(seq 0 $(($1 - 1))); do
  # a refresh copies into a used volume: start it empty
  rm -rf /to/$i/* /to/$i/.[!.]* /to/$i/..?*
  cp -a /from/$i/. /to/$i/ || { kill $ticker; echo "error copying volume $i"; exit 1; }
done
kill $ticker
echo "progress $(du -sk /to | cut -f1)"
echo done
"""

# Directories first (find lists a parent before its children); only files whose mtime is
# newer than the pre-copy marker are copied again. The target listing is taken before the
# freeze: only this job writes there.
_FINAL_PASS = r"""
exec 2>&1
for i in $(seq 0 $(($1 - 1))); do (cd /to/$i && find . | sort) > /tmp/to.$i; done
echo ready
read go
for i in $(seq 0 $(($1 - 1))); do
  cd /from/$i || exit 1
  find . | sort > /tmp/from.$i
  # what the target has and the source no longer has (busybox-static has no comm)
  awk 'NR == FNR { kept[$0] = 1; next } !($0 in kept)' /tmp/from.$i /tmp/to.$i |
    while IFS= read -r p; do rm -rf "/to/$i/$p"; done
  find . -newer /marker | while IFS= read -r p; do
    t="/to/$i/$p"
    if [ -d "$p" ] && [ ! -L "$p" ]; then
      [ -d "$t" ] && [ ! -L "$t" ] || { rm -rf "$t"; mkdir "$t"; }
      chown "$(stat -c %u:%g "$p")" "$t"; chmod "$(stat -c %a "$p")" "$t"
    else
      rm -rf "$t"; cp -a "$p" "$t" || { echo "error copying $p"; exit 1; }
    fi
  done || exit 1
done
echo done
"""


@dataclass(frozen=True)
class VolumeSizes:
    used: dict[str, int]  # bytes per volume name
    free: int  # bytes free on the file system that holds the volumes


async def ensure_helper_image(docker: DockerClient, *, image: str, busybox: Path) -> None:
    """Build the helper image from the host's busybox-static when the engine lacks it."""
    if await docker.inspect_image(image) is not None:
        return
    if not await asyncio.to_thread(busybox.is_file):
        raise DockerFailed(
            f"the helper image {image} is missing and {busybox} (busybox-static) is not there "
            "to build it; install busybox-static or set CLONEBOT_BUSYBOX"
        )
    repo, _, tag = image.rpartition(":")
    tar = await asyncio.to_thread(_helper_rootfs, busybox)
    await docker.import_image(tar=tar, repo=repo or image, tag=tag or "latest")


def _helper_rootfs(busybox: Path) -> bytes:
    buf = io.BytesIO()  # about 2 MB: busybox-static and its links
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for folder in ("bin", "tmp", "from", "to"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if folder == "tmp" else 0o755
            tar.addfile(info)
        tar.add(str(busybox), arcname="bin/busybox")
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
    return buf.getvalue()


async def measure_volumes(
    docker: DockerClient, *, image: str, volumes: list[str], labels: dict[str, str]
) -> VolumeSizes:
    """Bytes used by each volume and bytes free beside them, measured on the Docker host."""
    binds = [f"{v}:/from/{i}:ro" for i, v in enumerate(volumes)]
    script = 'for d in /from/*/; do du -sk "$d"; done; df -Pk /from | tail -n 1'
    cid = await docker.create_container(
        name=f"clonebot-measure-{secrets.token_hex(4)}",
        config=_helper_config(image, ["sh", "-c", script], binds, labels=labels),
    )
    try:
        await docker.start_container(cid)
        code = await docker.wait_container(cid)
        out = await docker.container_logs(cid)
        if code != 0:
            raise DockerFailed(f"measuring the volumes failed: {out.strip()[-300:]}")
    finally:
        await docker.remove_container(cid)
    lines = out.strip().splitlines()
    used = {v: int(lines[i].split()[0]) * 1024 for i, v in enumerate(volumes)}
    return VolumeSizes(used=used, free=int(lines[-1].split()[3]) * 1024)


@asynccontextmanager
async def copy_helper(
    docker: DockerClient,
    *,
    image: str,
    name: str,
    pairs: list[tuple[str, str]],
    labels: dict[str, str],
) -> AsyncIterator[str]:
    """A running helper container with ``(source, target)`` volume pairs mounted."""
    binds = [f"{src}:/from/{i}:ro" for i, (src, _) in enumerate(pairs)]
    binds += [f"{dst}:/to/{i}" for i, (_, dst) in enumerate(pairs)]
    config = _helper_config(image, ["sleep", "2147483647"], binds, labels=labels)
    cid = await docker.create_container(name=name, config=config)
    try:
        await docker.start_container(cid)
        yield cid
    finally:
        await docker.remove_container(cid)


async def pre_copy(
    docker: DockerClient, *, helper: str, count: int, on_bytes: Callable[[int], None]
) -> None:
    """Copy every pair in full; mark the instant it started for the final pass."""
    async with docker.exec_session(helper, ["sh", "-c", _PRE_COPY, "pre-copy", str(count)]) as ex:
        await _follow(ex, on_bytes=on_bytes, what="pre-copy")


class FinalPass:
    """The last, incremental pass: armed on entry (before the freeze), fired during it."""

    def __init__(self, docker: DockerClient, *, helper: str, count: int) -> None:
        self._session = docker.exec_session(helper, ["sh", "-c", _FINAL_PASS, "final", str(count)])
        self._exec: ExecSession | None = None
        self._lines: AsyncIterator[str] | None = None

    async def __aenter__(self) -> FinalPass:
        self._exec = await self._session.__aenter__()
        self._lines = self._exec.lines()
        async for line in self._lines:
            if line == "ready":
                return self
        await self._session.__aexit__(None, None, None)
        raise DockerFailed("the final copy pass ended before it was ready")

    async def __aexit__(self, *exc: object) -> None:
        await self._session.__aexit__(None, None, None)

    async def fire(self) -> None:
        assert self._exec is not None and self._lines is not None
        await self._exec.send(b"go\n")
        await _follow(self._exec, on_bytes=lambda _: None, what="final pass", lines=self._lines)


async def _follow(
    ex: ExecSession,
    *,
    on_bytes: Callable[[int], None],
    what: str,
    lines: AsyncIterator[str] | None = None,
) -> None:
    tail: list[str] = []
    async for line in lines if lines is not None else ex.lines():
        if line.startswith("progress "):
            on_bytes(int(line.split()[1] or 0) * 1024)
        elif line == "done":
            return
        else:
            tail = [*tail[-4:], line]
    raise DockerFailed(f"{what} failed: {' / '.join(tail) or 'the helper stopped'}")


def _helper_config(image: str, cmd: list[str], binds: list[str], *, labels: dict[str, str]) -> JSON:
    return {
        "Image": image,
        "Cmd": cmd,
        "Labels": {"clonebot.helper": "true", **labels},
        "HostConfig": {"Binds": binds, "NetworkMode": "none"},
    }
