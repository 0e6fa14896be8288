"""Our private engine leaves the host's own Docker alone (issue 9, point 17).

A developer's Docker owns ``docker0`` and its iptables chains. ``scripts/dockerd.sh`` starts
our engine beside it: that engine's bridge must survive (dockerd 20.10 deleted the interface
named ``docker0`` at every start of ours but the first), it must still start containers on its
default network, and our start and stop may change iptables only by our one FORWARD rule.

Both engines run in a network namespace of the test's own (a process holds it), so the
literal ``docker0`` the bug is about can be used without touching this machine's links or
iptables: dockerd and our script run there exactly as they would on the host.
"""

from __future__ import annotations

import io
import os
import re
import secrets
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# it starts engines of its own and watches the whole machine's links and iptables
pytestmark = [pytest.mark.slow, pytest.mark.alone, pytest.mark.own_engines]

DOCKERD_SH = Path(__file__).resolve().parents[1] / "scripts" / "dockerd.sh"
BUSYBOX = os.environ.get("CLONEBOT_BUSYBOX", "/bin/busybox")
IMAGE = "clonebot-host-test/busybox:latest"


@dataclass(frozen=True)
class Namespace:
    """A network and mount namespace held by one process; commands run in it by nsenter."""

    pid: int

    def command(self, *args: str) -> list[str]:
        return ["nsenter", f"--target={self.pid}", "--net", "--mount", *args]

    def run(self, *args: str, env: dict[str, str] | None = None, stdin: bytes | None = None) -> str:
        done = subprocess.run(
            self.command(*args), input=stdin, capture_output=True, timeout=90, env=env
        )
        assert done.returncode == 0, f"{' '.join(args)}: {done.stderr.decode(errors='replace')}"
        return done.stdout.decode()

    def iptables(self) -> list[str]:
        """The rules, without comments and packet counters (they move with traffic)."""
        text = self.run("iptables-save")
        return [re.sub(r" \[\d+:\d+\]$", "", line) for line in text.splitlines() if line[:1] != "#"]

    def links(self) -> set[str]:
        """Names of the links but a container's (its veth may outlive `docker run --rm` briefly)."""
        names = (line.split(":")[1].strip() for line in self.run("ip", "-o", "link").splitlines())
        return {name.split("@")[0] for name in names if not name.startswith("veth")}


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 30 s: by pid, only a process this test started."""
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    holder = subprocess.Popen(
        ["unshare", "--net", "--mount", "--propagation", "slave", "sleep", "600"]
    )
    try:
        ours = os.readlink("/proc/self/ns/net")
        for _ in range(100):  # unshare(2) happens just after the fork: up to 10 s
            if os.readlink(f"/proc/{holder.pid}/ns/net") != ours:
                break
            time.sleep(0.1)
        else:
            pytest.fail("unshare did not enter a network namespace within 10 s")
        ns = Namespace(holder.pid)
        ns.run("ip", "link", "set", "lo", "up")
        yield ns
    finally:
        holder.kill()
        holder.wait(timeout=10)


def _busybox_tar() -> bytes:
    """A root file system of the static busybox alone: enough for `busybox ip`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(BUSYBOX, arcname="bin/busybox")
    return buffer.getvalue()


@pytest.fixture
def host_engine(namespace: Namespace) -> Iterator[str]:
    """The user's own Docker: default settings (docker0, iptables on), its own paths."""
    name = f"clonebot-hosttest-{secrets.token_hex(3)}"
    sock = f"unix:///run/{name}.sock"
    config = Path(f"/run/{name}.json")
    config.write_text("{}\n")  # never /etc/docker/daemon.json
    paths = [Path(f"/var/lib/{name}"), Path(f"/run/{name}"), Path(f"/run/{name}.pid"), config]
    log = open(f"/run/{name}.log", "wb")  # noqa: SIM115 - closed in finally
    paths.append(Path(log.name))
    # a pull fails at once: the proxies are a closed port
    env = {**os.environ, "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    dockerd = subprocess.Popen(
        namespace.command(
            "/usr/sbin/dockerd",
            f"--config-file={config}",
            f"--data-root=/var/lib/{name}",
            f"--exec-root=/run/{name}",
            f"--host={sock}",
            f"--pidfile=/run/{name}.pid",
            f"--containerd-namespace={name}",
            f"--containerd-plugins-namespace={name}-plugins",
        ),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        for _ in range(60):  # up to about 30 s
            answer = subprocess.run(["docker", "-H", sock, "info"], capture_output=True, timeout=15)
            if answer.returncode == 0:
                break
            assert dockerd.poll() is None, f"the host engine died; see {log.name}"
            time.sleep(0.5)
        else:
            pytest.fail(f"the host engine did not answer within 30 s; see {log.name}")
        namespace.run("docker", "-H", sock, "import", "-", IMAGE, stdin=_busybox_tar())
        yield sock
    finally:
        _stop(dockerd)
        log.close()
        for path in paths:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def _host_runs_a_container(ns: Namespace, sock: str) -> None:
    """What broke: a container of the host engine on its default network (docker0)."""
    run = ("docker", "-H", sock, "run", "--rm", IMAGE)
    out = ns.run(*run, "/bin/busybox", "ip", "-4", "-o", "addr", "show", "eth0")
    assert " 172.17." in out, out  # an address of docker0's network


def test_our_engine_leaves_the_host_engine_alone(namespace: Namespace, host_engine: str) -> None:
    _host_runs_a_container(namespace, host_engine)
    rules, links = namespace.iptables(), namespace.links()
    assert "docker0" in links and any(":DOCKER " in r for r in rules), rules

    name = f"clonebot-t{secrets.token_hex(3)}"
    bridge = f"cbt{name[-6:]}"
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    env |= {
        "CLONEBOT_DOCKERD_NAME": name,
        "CLONEBOT_DOCKERD_BRIDGE": bridge,
        "CLONEBOT_DOCKERD_BRIDGE_IP": "10.218.0.1/24",
        "CLONEBOT_DOCKERD_POOL": "10.218.0.0/16",
    }
    our_rule = f"-A FORWARD -s 10.218.0.0/16 -d 10.218.0.0/16 -m comment --comment {name} -j ACCEPT"
    try:
        # twice: the second start finds the first one's networks in its data root, as any
        # `make test` after the first does (that is when docker0 went)
        for start in ("first", "second"):
            out = namespace.run("bash", str(DOCKERD_SH), "start", env=env)
            assert f"export DOCKER_HOST=unix:///run/{name}.sock" in out, out
            assert "docker0" in namespace.links(), f"docker0 is gone after our {start} start"
            _host_runs_a_container(namespace, host_engine)
            assert sorted(namespace.iptables()) == sorted([*rules, our_rule])
            # live-restore is only for our start: a stop still stops our containers
            info = ["docker", "-H", f"unix:///run/{name}.sock", "info", "--format"]
            assert namespace.run(*info, "{{.LiveRestoreEnabled}}").strip() == "false"

            namespace.run("bash", str(DOCKERD_SH), "stop", env=env)
            assert namespace.iptables() == rules, f"iptables changed by our {start} start+stop"
            assert namespace.links() == links, f"links changed by our {start} start+stop"
        _host_runs_a_container(namespace, host_engine)
    finally:
        # a no-op once stopped; checked above, so not here (it would hide the first failure)
        stop = namespace.command("bash", str(DOCKERD_SH), "stop")
        subprocess.run(stop, env=env, capture_output=True, timeout=90)
        for path in (Path(f"/var/lib/{name}"), Path(f"/run/{name}")):
            shutil.rmtree(path, ignore_errors=True)
        for suffix in (".log", ".pid", ".json", ".started-by-us"):
            Path(f"/run/{name}{suffix}").unlink(missing_ok=True)
