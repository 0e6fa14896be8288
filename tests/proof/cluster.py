"""A PostgreSQL cluster of a test's own, to stop and start at will (never the shared one).

Made the way scripts/postgres.sh makes the tests' one: Debian's server binaries, run as the
postgres user, trust auth on 127.0.0.1 only, a free port and a throw-away data dir.
"""

from __future__ import annotations

import contextlib
import glob
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import _free_port


class Cluster:
    def __init__(self, data: Path, port: int) -> None:
        self.data, self.port = data, port
        self.bin = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))[-1]).parent
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{port}/clonebot"

    def _as_postgres(self, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *args],
            cwd="/", check=True, capture_output=True, timeout=60,
        )  # fmt: skip

    def init(self) -> None:
        self._as_postgres(
            str(self.bin / "initdb"), "-D", str(self.data / "db"), "-U", "postgres",
            "--auth=trust", "--no-locale", "-E", "UTF8", "--no-instructions",
        )  # fmt: skip
        self.start()
        subprocess.run(
            ["psql", "-X", "-w", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
             "-c", "create database clonebot"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip

    def start(self) -> None:
        opts = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories="
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data / "db"), "-l", str(self.data / "log"),
            "-w", "-t", "30", "-o", opts, "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """``fast`` ends every session (what a restart does); ``immediate`` is a crash."""
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data / "db"), "-m", mode, "-w", "-t", "30",
            "stop",
        )  # fmt: skip


@contextlib.contextmanager
def own_cluster() -> Iterator[Cluster]:
    """A new cluster with an empty ``clonebot`` database; stopped and removed after."""
    data = Path(tempfile.mkdtemp(prefix="clonebot-pg-"))
    shutil.chown(data, "postgres", "postgres")
    cluster = Cluster(data, _free_port())
    try:
        cluster.init()
        yield cluster
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            cluster.stop("immediate")
        shutil.rmtree(data, ignore_errors=True)
