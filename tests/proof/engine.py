"""A Docker engine of a test's own, to restart or fill at will (never the one tests share).

Started by scripts/dockerd.sh under another name, bridge and address pool, its data root on
a small ext4 file system of its own (a loop-mounted file), so a test can fill that disk up
without touching the host's. The test images are imported into it from the host's files,
as scripts/build-test-images.sh and the product do: nothing is pulled.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from services.docker import DockerClient
from services.settings import Settings
from services.volumes import ensure_helper_image

ROOT = Path(__file__).parents[2]
POOL = "10.214.0.0/16"  # not the shared engine's 10.213.0.0/16


class Engine:
    def __init__(self, work: Path, size_mib: int) -> None:
        self.work, self.size_mib = work, size_mib
        self.name = f"clonebot-faults-{secrets.token_hex(3)}"
        self.disk = work / "disk.img"
        self.data_root = work / "root"
        self.host = f"unix:///run/{self.name}.sock"
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "DOCKER_HOST"},
            "CLONEBOT_DOCKERD_NAME": self.name,
            "CLONEBOT_DOCKERD_BRIDGE": f"cbf{self.name[-6:]}",
            "CLONEBOT_DOCKERD_BRIDGE_IP": "10.214.0.1/24",
            "CLONEBOT_DOCKERD_POOL": POOL,
            "CLONEBOT_DOCKERD_DATA_ROOT": str(self.data_root),
        }

    def _run(self, *cmd: str, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0, (cmd, done.stdout, done.stderr)
        return done.stdout

    def docker(self, *args: str) -> str:
        return self._run("docker", "-H", self.host, *args)

    def make_disk(self) -> None:
        with self.disk.open("wb") as f:
            f.truncate(self.size_mib << 20)
        self._run("mkfs.ext4", "-q", "-m", "0", str(self.disk))  # no blocks kept for root
        self.data_root.mkdir()
        self._run("mount", "-o", "loop", str(self.disk), str(self.data_root))

    def start(self) -> None:
        self._run("bash", str(ROOT / "scripts/dockerd.sh"), "start", env=self.env)

    def stop(self) -> None:
        self._run("bash", str(ROOT / "scripts/dockerd.sh"), "stop", env=self.env)

    def restart(self) -> None:
        self.stop()
        self.start()

    def free_bytes(self) -> int:
        stat = os.statvfs(self.data_root)
        return stat.f_bavail * stat.f_frsize

    def fill(self) -> Path:
        """Files taking every free byte of the engine's disk; remove the folder to give them
        back. Most at once (fallocate), the last few MiB written until the disk refuses."""
        filler = self.data_root / "filler"
        filler.mkdir()
        self._run("fallocate", "-l", str(self.free_bytes() - (8 << 20)), str(filler / "most"))
        rest = subprocess.run(
            ["dd", "if=/dev/zero", f"of={filler / 'rest'}", "bs=4K", "count=4096"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert "No space left on device" in rest.stderr, rest.stderr
        return filler

    def remove_disk(self) -> None:
        with contextlib.suppress(AssertionError):
            self._run("umount", "-l", str(self.data_root))
        shutil.rmtree(self.work, ignore_errors=True)

    def remove_bridges(self) -> None:
        """The bridges of the stopped engine's networks, which dockerd leaves behind when it
        stops (they come back with their networks when it starts); with its data root gone,
        nothing would remove them."""
        for name in pool_bridges():
            self._run("ip", "link", "del", name)

    def remove_run_files(self) -> None:
        """What the stopped engine leaves in /run: its exec root (a network namespace
        mounted in it) and log."""
        run = Path("/run") / self.name
        with contextlib.suppress(AssertionError):
            self._run("umount", str(run / "netns/default"))
        shutil.rmtree(run, ignore_errors=True)
        Path(f"{run}.log").unlink(missing_ok=True)


def pool_bridges() -> list[str]:
    """The host's network bridges of an engine's networks in POOL (only an engine of a
    test's own uses it, one at a time)."""
    done = subprocess.run(
        ["ip", "-j", "-4", "addr", "show", "type", "bridge"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    pool = ipaddress.ip_network(POOL)
    return [
        link["ifname"]
        for link in json.loads(done.stdout)
        if link.get("ifname", "").startswith("br-")
        and any(ipaddress.ip_address(a["local"]) in pool for a in link.get("addr_info", []))
    ]


@contextlib.asynccontextmanager
async def own_engine(settings: Settings, *, size_mib: int = 1024) -> AsyncIterator[Engine]:
    """An engine on a disk of ``size_mib``, with the test and helper images; stopped and its
    disk removed after, whatever happens."""
    engine = Engine(Path(tempfile.mkdtemp(prefix="clonebot-faults-")), size_mib)
    try:
        engine.make_disk()
        engine.start()
        engine._run(
            "bash", str(ROOT / "scripts/build-test-images.sh"),
            env={**engine.env, "DOCKER_HOST": engine.host},
        )  # fmt: skip
        async with DockerClient(engine.host) as docker:
            await ensure_helper_image(docker, image=settings.helper_image, busybox=settings.busybox)
        yield engine
    finally:
        try:
            engine.stop()
            engine.remove_bridges()
            engine.remove_run_files()
        finally:
            engine.remove_disk()
