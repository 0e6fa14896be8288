"""A PostgreSQL 15 image built here from Debian's packages, never pulled.

``debootstrap --variant=minbase --include=postgresql-15 bookworm`` makes the root file
system, the host's busybox-static is added (its ``httpd`` serves the demo's web page), and
``docker import`` turns it into an image. The demo's database and web nodes run it, and so
does the benchmark ``freeze-postgres``: one builder for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from services.docker import DockerClient
from services.errors import DockerFailed

MIRROR = "http://deb.debian.org/debian"
BIN = "/usr/lib/postgresql/15/bin"
BUSYBOX = "/usr/local/bin/busybox"  # beside Debian's tools, not in place of them
# what a node never reads, left out of the image: about 220 MB of the 630 debootstrap makes
_LEFT_OUT = (
    "./var/cache/apt/archives/*.deb",
    "./var/lib/apt/lists/*",
    "./usr/share/doc/*",
    "./usr/share/man/*",
    "./usr/share/locale/*",
)


def _ignore(_: str) -> None:
    return None


async def ensure_postgres_image(
    docker: DockerClient,
    *,
    image: str,
    busybox: Path,
    mirror: str = MIRROR,
    say: Callable[[str], None] = _ignore,
) -> bool:
    """Build ``image`` unless the engine has it; True when it was built (a few minutes)."""
    if await docker.inspect_image(image) is not None:
        return False
    _check_tools(image=image, busybox=busybox)
    say(f"building {image} from Debian's packages with debootstrap (a few minutes, once)")
    root = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="clonebot-pg-"))
    rootfs = root / "rootfs"
    try:
        await _run("debootstrap", "--variant=minbase", "--include=postgresql-15", "bookworm",
                   str(rootfs), mirror)  # fmt: skip
        await asyncio.to_thread(shutil.copy2, busybox, rootfs / BUSYBOX.lstrip("/"))
        excludes = [f"--exclude={pattern}" for pattern in _LEFT_OUT]
        tar = await _run("tar", "-C", str(rootfs), *excludes, "-c", ".")
        repo, _, tag = image.rpartition(":")
        await docker.import_image(tar=tar, repo=repo or image, tag=tag or "latest")
    finally:
        await _remove_root(root)
    return True


def _check_tools(*, image: str, busybox: Path) -> None:
    if not shutil.which("debootstrap"):
        raise DockerFailed(
            f"the image {image} is missing and debootstrap is not installed to build it "
            "(scripts/ensure-deps.sh installs it)"
        )
    if not busybox.is_file():
        raise DockerFailed(
            f"the image {image} is missing and {busybox} (busybox-static) is not there to "
            "build it; install busybox-static or set CLONEBOT_BUSYBOX"
        )


async def _run(*argv: str) -> bytes:
    """A program's standard output; its last lines of errors in the exception if it fails."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await proc.communicate()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        tail = " / ".join(err.decode(errors="replace").strip().splitlines()[-3:])
        raise DockerFailed(f"{argv[0]} exited {proc.returncode} building the image: {tail}")
    return out


async def _remove_root(root: Path) -> None:
    """Remove the build directory; first unmount what debootstrap left mounted in it (a
    failed run may leave /proc there, whose files must never be walked for removal)."""
    for point in sorted(await asyncio.to_thread(_mounts_under, root), reverse=True):
        with contextlib.suppress(DockerFailed):
            await _run("umount", "-l", point)
    if not await asyncio.to_thread(_mounts_under, root):
        await asyncio.to_thread(shutil.rmtree, root, True)


def _mounts_under(root: Path) -> list[str]:
    lines = Path("/proc/mounts").read_text().splitlines()
    return [p for line in lines if (p := line.split()[1]).startswith(f"{root}/")]
