"""Three Docker "hosts" on this one machine, for tests against a fleet of engines and a Swarm.

    root ns   cbr<tag>     10.215.0.1  ─┐
    cbh1-<tag> eth0        10.215.0.11 ─┤  switch ns cbsw-<tag>: one bridge; a host's
    cbh2-<tag> eth0        10.215.0.12 ─┤  switch-side veth down is a partition
    cbh3-<tag> eth0        10.215.0.13 ─┘

Each dockerd runs in its host's network namespace by ``nsenter --net`` (``ip netns exec``
remounts /sys and hides the cgroups) and a UTS namespace of its own (Swarm names nodes by
host name), with its own data root, exec root, containerd namespaces and config file, on a
unix socket and on tcp://<address>:2376 with TLS. Its iptables rules and docker0 stay in its
namespace. Images come from the shared engine by save | load: nothing is pulled. Each host
also runs an sshd on <address>:22 whose one key may only run ``docker system dial-stdio``
against that engine, as an ``ssh://`` engine is reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from services.docker import DockerClient
from services.settings import Settings
from services.volumes import ensure_helper_image

SUBNET = ipaddress.ip_network("10.215.0.0/24")  # shared engine 10.213/16, fault tests 10.214/16
GATEWAY = "10.215.0.1"  # the root namespace's end
PORT = 2376
# the test image, and the copy helper (made on the shared engine first if it lacks it)
IMAGES = ("clonebot-test/busybox:latest", Settings.model_fields["helper_image"].default)
STEP_S = 60  # one command
STOP_S = 20  # dockerd's SIGTERM, before SIGKILL
NETNS = Path("/run/netns")
T = TypeVar("T")


class FleetError(RuntimeError):
    """A step of the harness failed; the message says which and why."""


def run(*cmd: str, timeout: float = STEP_S, env: dict[str, str] | None = None) -> str:
    """``cmd``'s output; its stderr in the error when it fails or hangs."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        raise FleetError(f"{' '.join(cmd)}: no answer in {timeout} s") from exc
    if done.returncode != 0:
        raise FleetError(f"{' '.join(cmd)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def parallel(fn: Callable[[T], object], items: Iterable[T]) -> None:
    """``fn`` on every item at once; the first error raised after all have finished."""
    items = list(items)
    with ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        futures = [pool.submit(fn, item) for item in items]
    for future in futures:
        future.result()


def check_subnet_free() -> None:
    """Fail before touching anything if SUBNET meets an address or route of the root ns."""
    links = json.loads(run("ip", "-j", "-4", "addr"))
    used = [f"{a['local']}/{a['prefixlen']}" for link in links for a in link.get("addr_info", [])]
    used += [r["dst"] for r in json.loads(run("ip", "-j", "-4", "route")) if r["dst"] != "default"]
    for net in used:
        if ipaddress.ip_network(net, strict=False).overlaps(SUBNET):
            raise FleetError(f"{SUBNET} is taken in the root namespace ({net}): another fleet?")


@dataclass
class Host:
    """One engine in its own network namespace behind the fleet's switch."""

    index: int
    tag: str
    work: Path
    switch: str
    process: subprocess.Popen[bytes] | None = None
    sshd: subprocess.Popen[bytes] | None = None
    netns_inode: int = 0  # processes in it are this engine's

    @property
    def name(self) -> str:
        return f"cbh{self.index}-{self.tag}"

    @property
    def hostname(self) -> str:
        return f"cbh{self.index}"

    @property
    def address(self) -> str:
        return str(SUBNET.network_address + 10 + self.index)

    @property
    def unix_url(self) -> str:
        return f"unix:///run/{self.name}.sock"

    @property
    def tcp_url(self) -> str:
        return f"tcp://{self.address}:{PORT}"

    @property
    def tls_dir(self) -> Path:
        """The client's ca.pem, cert.pem and key.pem, as DOCKER_CERT_PATH wants them."""
        return self.work / self.name / "client"

    @property
    def ssh_url(self) -> str:
        return f"ssh://root@{self.address}"

    @property
    def ssh_dir(self) -> Path:
        """The client's id_ed25519 and known_hosts (this host's key), for ``ssh_url``."""
        return self.work / self.name / "ssh-client"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def data_root(self) -> Path:
        return self.work / self.name / "data"

    @property
    def exec_root(self) -> Path:
        return Path("/run") / self.name

    @property
    def log(self) -> Path:
        return self.work / self.name / "dockerd.log"

    def docker(self, *args: str, timeout: float = STEP_S) -> str:
        """The docker CLI against this engine's unix socket."""
        return run("docker", "-H", self.unix_url, *args, timeout=timeout, env=cli_env(self.work))

    def tls_env(self) -> dict[str, str]:
        """What the docker CLI (or clonebot) needs to reach this engine over TCP and TLS."""
        return {
            "DOCKER_HOST": self.tcp_url,
            "DOCKER_TLS_VERIFY": "1",
            "DOCKER_CERT_PATH": str(self.tls_dir),
        }

    def link_down(self) -> None:
        """Cut this host off the switch (both directions), as a partition would. Its unix
        socket still answers: a test of the partition reaches the engine by ``tcp_url``."""
        run("ip", "-n", self.switch, "link", "set", f"h{self.index}", "down")

    def link_up(self) -> None:
        run("ip", "-n", self.switch, "link", "set", f"h{self.index}", "up")


async def _helper_made(source: str) -> None:
    busybox = Path(os.environ.get("CLONEBOT_BUSYBOX", "/bin/busybox"))
    async with DockerClient(source) as docker:
        await ensure_helper_image(docker, image=IMAGES[1], busybox=busybox)


def cli_env(work: Path) -> dict[str, str]:
    """The caller's environment without its engine, with a CLI config of the fleet's own."""
    drop = {"DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, "DOCKER_CONFIG": str(work / "docker-config")}


@dataclass
class Fleet:
    """``size`` hosts (3) and their switch; ``stop`` undoes all ``start`` did, even half of it."""

    source: str = field(default_factory=lambda: os.environ.get("DOCKER_HOST", ""))
    size: int = 3
    images: tuple[str, ...] = IMAGES
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    work: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cbfleet-")))
    hosts: list[Host] = field(init=False)
    swarm: bool = False
    # hosts (by index) whose data root is a tmpfs of this size ("300m"): a host short of disk
    small_disk: dict[int, str] = field(default_factory=dict)
    # /run/netns before us (`ip netns add` makes the folder and bind-mounts it on itself)
    netns_before: tuple[bool, bool] = (True, True)  # it existed, it was a mount point
    made_privsep: bool = False  # /run/sshd, for the hosts' sshd

    def __post_init__(self) -> None:
        self.hosts = [Host(i, self.tag, self.work, self.switch) for i in range(1, self.size + 1)]

    @property
    def switch(self) -> str:
        return f"cbsw-{self.tag}"

    @property
    def root_link(self) -> str:
        return f"cbr{self.tag}"

    def __enter__(self) -> Fleet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Network, certificates, engines (at once) and their images; undone on any failure."""
        try:
            if not self.source:
                raise FleetError("DOCKER_HOST is not set: the engine to copy the images from")
            check_subnet_free()
            self.netns_before = (NETNS.exists(), _mounted(NETNS))
            self._make_network()
            make_certificates(self.work, self.hosts)
            for host in self.hosts:
                self._launch(host)
            make_ssh_keys(self.work, self.hosts)
            for host in self.hosts:
                self._launch_sshd(host)
            images = self.work / "images.tar"
            asyncio.run(_helper_made(self.source))
            run("docker", "-H", self.source, "save", "-o", str(images), *self.images)
            parallel(lambda h: self._ready(h, images), self.hosts)
        except BaseException:
            self.stop()
            raise

    def _make_network(self) -> None:
        sw = self.switch
        run("ip", "netns", "add", sw)
        run("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", sw, "link", "set", "br0", "up")
        run("ip", "link", "add", self.root_link, "type", "veth", "peer", "name", "root",
            "netns", sw)  # fmt: skip
        run("ip", "addr", "add", f"{GATEWAY}/{SUBNET.prefixlen}", "dev", self.root_link)
        run("ip", "link", "set", self.root_link, "up")
        run("ip", "-n", sw, "link", "set", "root", "master", "br0", "up")
        for host in self.hosts:
            ns, port = host.name, f"h{host.index}"
            run("ip", "netns", "add", ns)
            host.netns_inode = (NETNS / ns).stat().st_ino
            run("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port,
                "netns", sw)  # fmt: skip
            run("ip", "-n", sw, "link", "set", port, "master", "br0", "up")
            run("ip", "-n", ns, "addr", "add", f"{host.address}/{SUBNET.prefixlen}", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            run("ip", "-n", ns, "route", "add", "default", "via", GATEWAY)

    def _launch(self, host: Host) -> None:
        host.data_root.mkdir(parents=True)
        if size := self.small_disk.get(host.index):  # unmounted by stop, as the engine's own
            run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(host.data_root))
        config = self.work / host.name / "daemon.json"
        # Without a config file of its own dockerd reads the host's /etc/docker/daemon.json,
        # and its identity key would be written beside it.
        config.write_text(json.dumps({"deprecated-key-path": str(host.data_root / "key.json")}))
        tls = self.work / host.name / "server"
        # The proxies point at a closed port: a pull fails at once. Not the fleet's addresses:
        # Swarm's gRPC would go through them too.
        env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARS}
        env |= {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
                "NO_PROXY": str(SUBNET),
                # a Swarm task's image is pulled first, even when the engine has it: a
                # 10 s wait for the failing pull, unless this says to use the engine's copy
                "DOCKER_SERVICE_PREFER_OFFLINE_IMAGE": "1"}  # fmt: skip
        with host.log.open("ab") as log:
            host.process = subprocess.Popen(
                ["nsenter", f"--net={NETNS / host.name}", "unshare", "--uts",
                 "sh", "-c", 'hostname "$0" && exec "$@"', host.hostname,
                 "/usr/sbin/dockerd", "--config-file", str(config),
                 "--data-root", str(host.data_root), "--exec-root", str(host.exec_root),
                 "--pidfile", f"/run/{host.name}.pid",
                 "-H", host.unix_url, "-H", host.tcp_url, "--tlsverify",
                 "--tlscacert", str(tls / "ca.pem"), "--tlscert", str(tls / "cert.pem"),
                 "--tlskey", str(tls / "key.pem"),
                 "--containerd-namespace", host.name,
                 "--containerd-plugins-namespace", f"{host.name}-plugins"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                start_new_session=True,  # setsid: a ^C of the test run does not reach it
            )  # fmt: skip

    def _launch_sshd(self, host: Host) -> None:
        """sshd on the host's address, root's one authorized key forced to dial this engine."""
        folder = self.work / host.name / "sshd"
        config = folder / "sshd_config"
        config.write_text(SSHD_CONFIG.format(address=host.address, folder=folder))
        if not SSHD_PRIVSEP.exists():  # Debian's sshd needs it; removed by stop
            SSHD_PRIVSEP.mkdir(mode=0o755)
            self.made_privsep = True
        with (folder / "sshd.log").open("ab") as log:
            host.sshd = subprocess.Popen(
                ["nsenter", f"--net={NETNS / host.name}", "/usr/sbin/sshd", "-D", "-e",
                 "-f", str(config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip

    def _ready(self, host: Host, images: Path) -> None:
        deadline = time.monotonic() + 30
        while True:
            assert host.process is not None
            if host.process.poll() is not None:
                raise FleetError(f"dockerd of {host.name} exited: {_tail(host.log)}")
            with contextlib.suppress(FleetError):
                host.docker("version", timeout=5)
                break
            if time.monotonic() > deadline:
                raise FleetError(f"dockerd of {host.name} not ready in 30 s: {_tail(host.log)}")
            time.sleep(0.2)
        host.docker("load", "-q", "-i", str(images), timeout=120)

    def join_swarm(self, *, managers: bool = False) -> None:
        """Host 1 makes a Swarm, the others join as workers (or managers); back when all are
        Ready."""
        first, rest = self.hosts[0], self.hosts[1:]
        self.swarm = True
        first.docker("swarm", "init", "--advertise-addr", first.address,
                     "--listen-addr", f"{first.address}:2377")  # fmt: skip
        token = first.docker("swarm", "join-token", "-q", "manager" if managers else "worker")

        def join(host: Host) -> None:
            host.docker("swarm", "join", "--token", token.strip(), "--advertise-addr",
                        host.address, "--listen-addr", f"{host.address}:2377",
                        f"{first.address}:2377")  # fmt: skip

        if managers:  # one at a time: each grows the Raft group the next joins
            for host in rest:
                join(host)
        else:
            parallel(join, rest)
        wait_for(lambda: first.docker("node", "ls", "--format", "{{.Status}}").split()
                 == ["Ready"] * len(self.hosts), what="every node Ready", seconds=30)  # fmt: skip

    def stop(self) -> None:
        """Everything undone, in an order that works from any half-made state; again is a
        no-op. A step that fails does not keep the next ones from running: its error is
        raised at the end."""
        errors = []
        for step in (self._leave_swarm, self._stop_sshd, self._stop_engines,
                     self._remove_network, self._remove_files):  # fmt: skip
            try:
                step()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def _leave_swarm(self) -> None:
        if self.swarm:
            parallel(_leave_swarm, [h for h in self.hosts if h.pid])
            self.swarm = False

    def _stop_sshd(self) -> None:
        for host in self.hosts:
            if host.sshd is not None:
                host.sshd.terminate()
                host.sshd.wait(timeout=STOP_S)
                host.sshd = None
        if self.made_privsep:
            SSHD_PRIVSEP.rmdir()
            self.made_privsep = False

    def _stop_engines(self) -> None:
        parallel(_stop_engine, self.hosts)
        _unmount_under([self.work, *(h.exec_root for h in self.hosts)])

    def _remove_network(self) -> None:
        for ns in [*(h.name for h in self.hosts), self.switch]:
            if (NETNS / ns).exists():
                run("ip", "netns", "delete", ns)
        if Path("/sys/class/net", self.root_link).exists():  # gone with the switch, normally
            run("ip", "link", "del", self.root_link)
        _restore_netns_dir(*self.netns_before)
        self.netns_before = (True, True)

    def _remove_files(self) -> None:
        for host in self.hosts:
            shutil.rmtree(host.exec_root, ignore_errors=True)
            for path in (f"/run/{host.name}.sock", f"/run/{host.name}.pid"):
                Path(path).unlink(missing_ok=True)
        shutil.rmtree(self.work, ignore_errors=True)


PROXY_VARS = {"http_proxy", "https_proxy", "no_proxy", "all_proxy"}


def _restore_netns_dir(existed: bool, was_mounted: bool) -> None:
    """/run/netns as before the fleet, if no one else's namespace is in it now."""
    if not NETNS.exists() or any(NETNS.iterdir()):
        return
    if not was_mounted and _mounted(NETNS):
        run("umount", str(NETNS))
    if not existed:
        with contextlib.suppress(OSError):  # someone's `ip netns add` just now
            NETNS.rmdir()


def _leave_swarm(host: Host) -> None:
    # a node whose engine no longer answers leaves with it: nothing to undo
    with contextlib.suppress(FleetError):
        host.docker("swarm", "leave", "--force", timeout=STOP_S)


def _stop_engine(host: Host) -> None:
    """SIGTERM to dockerd (it stops its containers and containerd), SIGKILL after STOP_S; then
    whatever of it is left: containerd, shims, containers' processes."""
    if host.process is None:
        return
    if host.process.poll() is None:
        host.process.send_signal(signal.SIGTERM)
        try:
            host.process.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            host.process.kill()
            host.process.wait(timeout=10)
    wait_for(lambda: not _kill(engine_pids(host)), what=f"{host.name}'s processes gone",
             seconds=STOP_S)  # fmt: skip
    host.process = None


def engine_pids(host: Host) -> list[int]:
    """Processes of this engine: those in its host's network namespace (containerd, shims,
    docker-proxy) and its containers' (their cgroups are named by the ids in its data root)."""
    ids = {p.name for p in (host.data_root / "containers").glob("*")}
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            in_ns = (proc / "ns/net").stat().st_ino == host.netns_inode
            cgroups = (proc / "cgroup").read_text() if ids else ""
            if in_ns or any(i in cgroups for i in ids):
                found.append(int(proc.name))
    return found


def _kill(pids: list[int]) -> list[int]:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def _unmount_under(roots: list[Path]) -> None:
    """What dockerd leaves mounted under its roots (overlays, network namespaces), deepest
    first; detached if busy."""
    for _ in range(3):  # a mount may hide another at the same place
        points = [p for p in mount_points() if any(p.is_relative_to(r) for r in roots)]
        if not points:
            return
        for point in sorted(points, key=lambda p: len(p.parts), reverse=True):
            if subprocess.run(["umount", str(point)], capture_output=True, timeout=30).returncode:
                run("umount", "-l", str(point))
    raise FleetError(f"still mounted: {points}")


def mount_points() -> list[Path]:
    """The root mount namespace's mount points, as /proc/self/mountinfo spells them."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [Path(_unescape(line.split()[4])) for line in lines]


def _unescape(field: str) -> str:
    """Octal escapes of mountinfo (``\\040`` for a space) undone."""
    return re.sub(r"\\(\d{3})", lambda m: chr(int(m[1], 8)), field)


def _mounted(path: Path) -> bool:
    return path in mount_points()


def wait_for(check: Callable[[], bool], *, what: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise FleetError(f"not {what} after {seconds} s")
        time.sleep(0.2)


def _tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-15:])


SSHD_PRIVSEP = Path("/run/sshd")
SSHD_CONFIG = """\
ListenAddress {address}:22
HostKey {folder}/host_ed25519
AuthorizedKeysFile {folder}/authorized_keys
PidFile {folder}/sshd.pid
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowTcpForwarding no
AllowStreamLocalForwarding no
X11Forwarding no
PermitUserEnvironment no
LogLevel VERBOSE
"""


def make_ssh_keys(work: Path, hosts: list[Host]) -> None:
    """A host key per host, one client key; each host's authorized_keys lets that key run
    only ``docker system dial-stdio`` against its own engine (as a careful operator sets it)."""
    client = work / "ssh-client-key"
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "clonebot", "-f", str(client))
    public = Path(f"{client}.pub").read_text().strip()
    for host in hosts:
        folder = work / host.name / "sshd"
        folder.mkdir(parents=True)
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / "host_ed25519"))
        forced = f"docker -H {host.unix_url} system dial-stdio"
        (folder / "authorized_keys").write_text(f'restrict,command="{forced}" {public}\n')
        host.ssh_dir.mkdir(parents=True)
        shutil.copy(client, host.ssh_dir / "id_ed25519")
        host_key = (folder / "host_ed25519.pub").read_text().split()[:2]
        (host.ssh_dir / "known_hosts").write_text(f"{host.address} {' '.join(host_key)}\n")


OPENSSL_CNF = """\
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
"""


def make_certificates(work: Path, hosts: list[Host]) -> None:
    """One CA; per host a server certificate for its address and the client's files (one
    client certificate, copied), with openssl."""
    pki = work / "pki"
    pki.mkdir()
    (pki / "openssl.cnf").write_text(OPENSSL_CNF)
    _openssl(pki, "ca", "/CN=clonebot fleet CA")
    _openssl(pki / "client", "client", "/CN=clonebot", ca=pki)
    for host in hosts:
        san = f"subjectAltName=IP:{host.address},DNS:{host.hostname}"
        _openssl(work / host.name / "server", "server", f"/CN={host.hostname}", ca=pki, san=san)
        host.tls_dir.mkdir()
        for name in ("cert.pem", "key.pem"):
            shutil.copy(pki / "client" / name, host.tls_dir / name)
        for folder in (host.tls_dir, work / host.name / "server"):
            shutil.copy(pki / "ca.pem", folder / "ca.pem")


def _openssl(out: Path, kind: str, subject: str, *, ca: Path | None = None, san: str = "") -> None:
    out.mkdir(parents=True, exist_ok=True)
    name = "ca" if kind == "ca" else "cert"
    cmd = ["openssl", "req", "-x509", "-config", str((ca or out) / "openssl.cnf"),
           "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
           "-days", "2", "-subj", subject, "-extensions", kind,
           "-keyout", str(out / f"{'ca-' if kind == 'ca' else ''}key.pem"),
           "-out", str(out / f"{name}.pem")]  # fmt: skip
    if ca is not None:
        cmd += ["-CA", str(ca / "ca.pem"), "-CAkey", str(ca / "ca-key.pem")]
    if san:
        cmd += ["-addext", san]
    run(*cmd)


# Other engines' links, routes, mounts and rules come and go with their containers (the
# shared engine's clonebot0, its containers' veths and networks' br-*, a fault test's cbf*).
OTHER_LINKS = re.compile(r"^(veth|br-|clonebot|cbf)")
OTHER_MOUNTS = ("/var/lib/clonebot-", "/run/clonebot-", "/tmp/clonebot-faults-", "/run/docker/")
SYSCTLS = ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables")


def root_state() -> dict[str, set[str]]:
    """What the fleet must leave in the root namespace as it found it. Other engines' links,
    routes, mounts and rules do not count: they come and go with those engines' containers
    (tests beside these ones use them), and the fleet makes none of their kind."""
    links = set()
    for line in run("ip", "-br", "link").splitlines():
        if not OTHER_LINKS.match(line.split()[0].split("@")[0]):
            links.add(" ".join(line.split()))
    routes = {r for r in run("ip", "route").splitlines() if not _other_route(r)}
    rules = {re.sub(r" \[\d+:\d+\]$", "", line) for line in run("iptables-save").splitlines()
             if line[:1] != "#" and "clonebot-faults-" not in line}  # fmt: skip
    mounts = {str(p) for p in mount_points() if not str(p).startswith(OTHER_MOUNTS)}
    sysctls = {f"{s}={Path('/proc/sys', s).read_text().strip()}" for s in SYSCTLS}
    netns = set(run("ip", "netns", "list").splitlines())
    return {"links": links, "routes": routes, "iptables": rules, "mounts": mounts,
            "sysctls": sysctls, "netns": netns}  # fmt: skip


def _other_route(route: str) -> bool:
    words = route.split()
    return "dev" in words and bool(OTHER_LINKS.match(words[words.index("dev") + 1]))


def fleet_pids(fleet: Fleet) -> list[int]:
    """Processes whose command line names one of the fleet's engines (dockerd, containerd,
    shims all carry its name or exec root)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if f"-{fleet.tag}".encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
    return found
