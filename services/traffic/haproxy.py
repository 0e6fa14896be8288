"""The HAProxy port: configuration rendered from routes, and changes made at run time.

HAProxy runs in master-worker mode. Its runtime API (an admin socket) replaces the host map
atomically (``prepare map`` / ``add map @ver`` / ``commit map``) and changes server weights;
a structural change (a backend added or removed) is a seamless reload: the master starts a new
worker that takes the listening sockets over (``expose-fd listeners``), so no request is refused.
Every change is also written to the files, so a restart comes back the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from services import metrics
from services.errors import ClonebotError
from services.priority import as_started


class RouterFailed(ClonebotError):
    """HAProxy refused a configuration or a runtime command, or did not start."""


class RouterDown(RouterFailed):
    """No HAProxy answers on its runtime API: none runs, or a reload is between workers."""


@dataclass(frozen=True)
class Server:
    name: str
    address: str
    port: int
    weight: int = 100  # 0..256; 0 takes the server out of the rotation
    backup: bool = False  # used only when every non-backup server is down
    # a stopped node has no address: it stays listed, in maintenance (``disabled``), so its
    # backend and the route through it stay, and a failover backend sends to its backup
    running: bool = True


@dataclass(frozen=True)
class Page:
    """What a backend without servers answers to every request: an HTML page, status 503."""

    html: str  # one line, without a single quote (it is quoted with them in the configuration)
    retry_after_s: int | None = None  # sent as Retry-After: when the visitor may try again

    def __post_init__(self) -> None:
        if "'" in self.html or "\n" in self.html:
            raise ValueError("a page is one line without a single quote")


@dataclass(frozen=True)
class Backend:
    name: str
    servers: tuple[Server, ...]
    sticky: bool = False  # a cookie keeps each visitor on the server first chosen
    # failover: HTTP checks (GET / with this Host) and what real traffic shows move the
    # traffic to the backup servers within seconds, requests in flight with it
    health_check: bool = False
    check_host: str = "localhost"
    page: Page | None = None  # answered by HAProxy itself: no server is asked


@dataclass(frozen=True)
class TLS:
    """How the router terminates HTTPS, on a second bind of the same frontend: routing stays
    by Host, so a domain's certificate (chosen by SNI) is served whichever environment it
    reaches."""

    bind: str
    crt_list: str  # the text of certs/crt-list.txt: written before HAProxy reads it
    # of the crt-list (and the operator's wildcard file): another one changes the
    # configuration, so a domain given its first certificate is a reload; a domain's
    # certificate replaced is not, it goes through the runtime API (``RuntimeAPI.replace_cert``)
    digest: str
    strict_sni: bool = False


@dataclass(frozen=True)
class RouterFiles:
    """Where one HAProxy keeps its configuration, host map, sockets and pid file."""

    directory: Path

    @property
    def config(self) -> Path:
        return self.directory / "haproxy.cfg"

    @property
    def hosts(self) -> Path:
        return self.directory / "hosts.map"

    @property
    def lock(self) -> Path:
        return self.directory / "router.lock"

    @property
    def listed(self) -> Path:
        """When the container listing HAProxy's backends last came from began (ns)."""
        return self.directory / "listed"

    @property
    def master(self) -> Path:
        """The master CLI (``haproxy -W -S``): reloads, and whether HAProxy runs at all."""
        return self.directory / "master.sock"

    @property
    def api(self) -> Path:
        return self.directory / "api.sock"

    @property
    def pidfile(self) -> Path:
        return self.directory / "haproxy.pid"

    @property
    def log(self) -> Path:
        return self.directory / "haproxy.log"

    @property
    def certs(self) -> Path:
        """Certificates with their keys (mode 700; each file mode 600)."""
        return self.directory / "certs"

    @property
    def crt_list(self) -> Path:
        return self.certs / "crt-list.txt"

    @property
    def default_cert(self) -> Path:
        """Self-signed: what HAProxy needs to start before any certificate is added."""
        return self.certs / "default.pem"

    @property
    def wildcard_cert(self) -> Path:
        """``*.<base domain>``, copied from CLONEBOT_TLS_WILDCARD_CERT."""
        return self.certs / "wildcard.pem"

    @property
    def acme_map(self) -> Path:
        """ACME HTTP-01 challenges the router answers itself: the path of each
        (``/.well-known/acme-challenge/<token>``) to its key authorization."""
        return self.directory / "acme.map"

    @property
    def redirects(self) -> Path:
        """Domains whose plain HTTP is redirected to HTTPS (``traffic/domain_https.py``)."""
        return self.directory / "https-redirect.map"

    @property
    def hsts(self) -> Path:
        """Domains whose HTTPS answers carry HSTS, each with its max-age."""
        return self.directory / "hsts.map"

    def cert_of(self, domain: str) -> Path:
        """A custom domain's chain and key (a domain as ``routing.validate_domain`` keeps it:
        letters, digits, hyphens and dots, so a file name of its own)."""
        return self.certs / f"{domain}.pem"


NO_ROUTE = "no_route"


def render_config(
    *, files: RouterFiles, bind: str, backends: Sequence[Backend], tls: TLS | None = None
) -> str:
    """The whole configuration: one frontend routing by Host through the map, the backends;
    with ``tls``, the frontend also listens for HTTPS."""
    lines = [
        "global",
        "    master-worker",
        f"    stats socket {files.api} mode 600 level admin expose-fd listeners",
        f"    pidfile {files.pidfile}",
        "    hard-stop-after 30s",  # an old worker after a reload lives at most this long
        "defaults",
        "    mode http",
        # on a reload, an idle keep-alive connection of the old worker answers its next
        # request, with "Connection: close", instead of being closed under the client
        "    option idle-close-on-response",
        "    timeout connect 3s",
        "    timeout client 30s",
        "    timeout server 30s",
        # an upgraded connection (WebSocket) may stay quiet this long; client and server
        # timeouts stop applying once it is a tunnel
        "    timeout tunnel 1h",
        "    option redispatch",
        "    retries 2",
        "frontend web",
        f"    bind {bind}",
        *_tls_lines(files, tls),
        *_acme_lines(files, tls),
        *_https_lines(files, tls),
        f"    use_backend %[req.hdr(host),field(1,:),lower,map({files.hosts},{NO_ROUTE})]",
        f"backend {NO_ROUTE}",
        '    http-request return status 404 content-type text/plain string "no environment here"',
    ]
    for backend in backends:
        lines += _render_backend(backend)
    return "\n".join(lines) + "\n"


def _tls_lines(files: RouterFiles, tls: TLS | None) -> list[str]:
    if tls is None:
        return []
    line = (
        f"    bind {tls.bind} ssl crt {files.default_cert} crt-list {files.crt_list}"
        " alpn h2,http/1.1"
    )
    return [
        line + (" strict-sni" if tls.strict_sni else ""),
        f"    # certificates {tls.digest}",
    ]


ACME_PATH = "/.well-known/acme-challenge/"


def _acme_lines(files: RouterFiles, tls: TLS | None) -> list[str]:
    """HTTP-01 challenges answered before any other rule, whichever environment holds the
    domain (or none); a path the map does not have goes on to the environment, so one that
    gets its own certificates still can. With HTTPS only: a certificate is of no use without."""
    if tls is None:
        return []
    found = f"path,map({files.acme_map})"
    return [
        f'    http-request return status 200 content-type text/plain lf-string "%[{found}]"'
        f" if {{ path_beg {ACME_PATH} }} {{ {found} -m found }}"
    ]


_HTTPS_HOST = "txn.https_host"
_HSTS_AGE = "txn.hsts_max_age"


REDIRECT_CODE = 307


def _https_lines(files: RouterFiles, tls: TLS | None) -> list[str]:
    """Plain HTTP redirected to HTTPS, and HSTS sent over HTTPS, for the domains in their maps
    (changed at run time: no reload). The Location names the host without its port: HTTPS on
    443 as visitors reach it. ACME's challenges are never redirected (plain HTTP by nature).

    307, not 301: a browser keeps a 301 for good, so turning the redirect off would not bring
    back the visitors who met it; a 307 is asked again each time, as a 302, and unlike a 302
    a POST stays a POST. Only a host the host map routes is acted on: a domain unbound
    (changed in that map at once) is neither redirected nor given HSTS, whatever these maps
    still say."""
    if tls is None:
        return []
    host = f"var({_HTTPS_HOST})"
    routed = f"{{ {host},map({files.hosts}) -m found }}"
    redirected = f"{{ {host},map({files.redirects}) -m found }}"
    return [
        f"    http-request set-var({_HTTPS_HOST}) req.hdr(host),field(1,:),lower",
        f"    http-request redirect location https://%[{host}]%[pathq] code {REDIRECT_CODE}"
        f" if !{{ ssl_fc }} !{{ path_beg {ACME_PATH} }} {routed} {redirected}",
        f"    http-request set-var({_HSTS_AGE}) {host},map({files.hsts}) if {{ ssl_fc }} {routed}",
        f'    http-response set-header Strict-Transport-Security "max-age=%[var({_HSTS_AGE})]"'
        f" if {{ var({_HSTS_AGE}) -m found }}",
    ]


def tls_of(config: str) -> tuple[str, bool] | None:
    """Where a configuration listens for HTTPS, and whether strict-sni; None if it does not."""
    for line in config.splitlines():
        words = line.split()
        if words[:1] == ["bind"] and "ssl" in words[2:]:
            return words[1], "strict-sni" in words
    return None


def _render_backend(backend: Backend) -> list[str]:
    lines = [f"backend {backend.name}", "    balance roundrobin"]
    if backend.page is not None:
        lines.append(_render_page(backend.page))
    if backend.sticky:
        lines.append("    cookie CLONEBOT_SIDE insert indirect nocache")
    if backend.health_check:
        lines += _failover_lines(backend.check_host)
    for server in backend.servers:
        lines.append(_render_server(server, backend))
    return lines


def _render_page(page: Page) -> str:
    # single quotes: HAProxy expands environment variables ($NAME) between double quotes
    retry = f" hdr Retry-After {page.retry_after_s}" if page.retry_after_s is not None else ""
    return (
        "    http-request return status 503 content-type 'text/html; charset=utf-8'"
        f" hdr Cache-Control no-store{retry} string '{page.html}'"
    )


def _failover_lines(host: str) -> list[str]:
    """What makes a failover fail over (measured: python -m bench failover).

    A stopped node refuses or drops connections, a paused one accepts them and never
    answers, a broken one answers 5xx: an HTTP check catches all three within
    ``fall`` x ``inter``; ``observe layer7`` marks a server down on the errors real requests
    meet, sooner; a GET that met one is sent again (``retry-on``), to another server
    (``redispatch 1``): once the primary is down, that is the backup.
    """
    return [
        "    option httpchk",
        f"    http-check send meth GET uri / ver HTTP/1.1 hdr Host {host}",
        "    http-check expect status 200-399",
        "    option redispatch 1",
        "    retries 3",
        "    retry-on conn-failure empty-response response-timeout 500 502 503 504",
        # a POST may have done its work before failing: only a GET is sent twice
        "    http-request disable-l7-retry unless METH_GET",
        "    timeout connect 1s",
        # a hung node holds a request this long before it is sent elsewhere
        "    timeout server 5s",
        "    timeout check 1s",
        "    default-server inter 1s fastinter 500ms downinter 1s fall 2 rise 2",
    ]


def _render_server(server: Server, backend: Backend) -> str:
    address = server.address if server.running else "0.0.0.0"  # never used: disabled
    line = f"    server {server.name} {address}:{server.port} weight {server.weight}"
    if not server.running:
        line += " disabled"
    elif backend.health_check and not server.backup:
        # not the backup's: the last resort is never taken out (on a loaded host its checks
        # time out now and then, and a backup marked down is a 503 for every request)
        line += " check observe layer7 error-limit 3 on-error mark-down"
    if backend.sticky:
        line += f" cookie {server.name}"
    if server.backup:
        line += " backup"
    return line


def bind_of(config: str) -> str | None:
    """The address a configuration listens on (its ``bind`` line); None without one."""
    for line in config.splitlines():
        words = line.split()
        if words[:1] == ["bind"] and len(words) == 2:
            return words[1]
    return None


def render_map(hosts: Mapping[str, str]) -> str:
    return "".join(f"{host} {backend}\n" for host, backend in sorted(hosts.items()))


def read_map(text: str) -> dict[str, str]:
    """The hosts of a map ``render_map`` wrote (a line it could not have written is skipped)."""
    pairs = (line.split() for line in text.splitlines())
    return {words[0]: words[1] for words in pairs if len(words) == 2}


async def apply_map(
    files: RouterFiles, *, hosts: Mapping[str, str], current: Mapping[str, str]
) -> bool:
    """Bring a running HAProxy's map from ``current`` (its file's) to ``hosts``, in one atomic
    step, then the file: for a change that moves domains and leaves backends alone. False
    when none runs (the file is written all the same). Call it holding the router's lock.

    The runtime API is asked first, the master only when it does not answer: a swap waits on
    each round trip, and each waits for a CPU under load. The file is a few hundred bytes,
    written in the event loop: a thread would wait for a CPU too.
    """
    if hosts == current:
        return await MasterCLI(files.master).alive()
    started, api = time.monotonic(), RuntimeAPI(files.api)
    try:
        await api.replace_map(files.hosts, hosts)
    except RouterDown:  # none runs, or a reload is between two workers
        if not await MasterCLI(files.master).alive():
            replace_files({files.hosts: render_map(hosts)})  # what an HAProxy started reads
            return False
        # the new worker (it may have read the file already); the file is written only once
        # HAProxy has the map: a keeper comparing with the file must see what HAProxy lacks
        await api.replace_map(files.hosts, hosts)
    metrics.observe_route_change(how="runtime", seconds=time.monotonic() - started)
    replace_files({files.hosts: render_map(hosts)})
    return True


_COMMANDS_A_LINE = 50


@dataclass(frozen=True)
class BackendCount:
    requests: int  # HTTP requests it got (req_tot)
    up: bool  # a server of it is up; a backend answering a page has none, and is UP


@dataclass(frozen=True)
class Counters:
    worker: str  # the pid of the worker that counted: another one counts from 0 again
    backends: dict[str, BackendCount]


class RuntimeAPI:
    """HAProxy's admin socket: one line of commands a connection."""

    def __init__(self, socket: Path) -> None:
        self._socket = socket

    async def command(self, line: str) -> str:
        try:
            reader, writer = await asyncio.open_unix_connection(str(self._socket))
        except OSError as exc:
            raise RouterDown(f"HAProxy's runtime API does not answer: {exc}") from exc
        try:
            writer.write(line.encode() + b"\n")
            await writer.drain()
            return (await reader.read()).decode()
        except OSError as exc:  # a worker stopping (killed, or replaced by a reload) resets it
            raise RouterFailed(f"HAProxy's runtime API broke off: {exc}") from exc
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def replace_map(self, path: Path, entries: Mapping[str, str]) -> None:
        """Replace the whole map in one atomic step: readers see the old or the new, never a mix."""
        answer = await self.command(f"prepare map {path}")
        if "New version created:" not in answer:
            raise RouterFailed(f"prepare map {path}: {answer.strip()}")
        version = answer.split(":", 1)[1].strip()
        lines = [
            f"add map @{version} {path} {host} {backend}"
            for host, backend in sorted(entries.items())
        ]
        lines.append(f"commit map @{version} {path}")
        # several commands a connection, separated by ";": a swap is two round trips, not one
        # an entry (a line must stay well within HAProxy's buffer)
        for start in range(0, len(lines), _COMMANDS_A_LINE):
            await self._ok("; ".join(lines[start : start + _COMMANDS_A_LINE]))

    async def crt_list(self, path: Path) -> str:
        """The crt-list at ``path`` as the worker loaded it (``show ssl crt-list``): what it
        serves, whatever the file says now; one line an entry, ``<certificate> <SNI>``, after a
        ``# <path>`` line. Empty when it loaded no such list."""
        answer = await self.command(f"show ssl crt-list {path}")
        return answer if answer.startswith("#") else ""

    async def show_map(self, path: Path) -> dict[str, str]:
        answer = await self.command(f"show map {path}")
        pairs = (line.split()[1:3] for line in answer.splitlines() if line.strip())
        return {host: backend for host, backend in pairs}

    async def backend_requests(self) -> Counters:
        """Every backend's HTTP requests since the worker answering started (a reload or a
        restart starts a new one, from 0), and whether it has a server up."""
        # one connection, the worker's pid and its counters read together
        answer = await self.command("show info; show stat -1 2 -1")  # backends only
        info, _, stat = answer.partition("\n# ")
        pids = [ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("Pid:")]
        lines = stat.splitlines()
        if not pids or not lines:
            raise RouterFailed(f"show info; show stat: {answer.strip()[:200]}")
        fields = lines[0].split(",")
        name, kind, requests, status = (
            fields.index(f) for f in ("pxname", "svname", "req_tot", "status")
        )
        counts: dict[str, BackendCount] = {}
        for line in lines[1:]:
            row = line.split(",")
            if len(row) == len(fields) and row[kind] == "BACKEND":
                counts[row[name]] = BackendCount(int(row[requests] or 0), row[status] == "UP")
        return Counters(pids[0], counts)

    async def set_map_entry(self, path: Path, *, key: str, value: str) -> None:
        """One entry of a map set (an entry of the same key replaced). The caller checks that
        neither has a space, a ";" or a newline."""
        answer = await self.command(f"del map {path} {key}; add map {path} {key} {value}")
        self._map_ok(f"add map {path}", answer)

    async def delete_map_entry(self, path: Path, *, key: str) -> None:
        """An entry of a map taken away (none there is no error)."""
        self._map_ok(f"del map {path}", await self.command(f"del map {path} {key}"))

    @staticmethod
    def _map_ok(what: str, answer: str) -> None:
        rest = answer.replace("Key not found.", "").strip()
        if rest:
            raise RouterFailed(f"{what}: {rest.splitlines()[0][:200]}")

    async def replace_cert(self, path: Path, pem: str) -> None:
        """A certificate HAProxy loaded from ``path`` replaced in memory by ``pem`` (chain and
        key, as the file has them), for the connections to come; those open keep theirs.

        No reload: the runtime API's transaction (``set ssl cert``, ``commit ssl cert``).
        The key is in the command, never in an error: those quote HAProxy's first line only.
        """
        payload = "\n".join(line for line in pem.strip().splitlines() if line.strip())
        committed = False
        try:
            answer = await self.command(f"set ssl cert {path} <<\n{payload}\n")
            if "Transaction" not in answer:  # "created" or "updated"
                raise RouterFailed(f"set ssl cert {path}: {_first_line(answer)}")
            answer = await self.command(f"commit ssl cert {path}")
            if "Success!" not in answer:
                raise RouterFailed(f"commit ssl cert {path}: {_first_line(answer)}")
            committed = True
        finally:
            if not committed:
                # HAProxy has one certificate transaction at a time: one left open (an error,
                # a cancel between set and commit) would refuse every later replacement
                await asyncio.shield(self._abort_cert(path))

    async def _abort_cert(self, path: Path) -> None:
        with contextlib.suppress(RouterFailed):  # none open, or HAProxy gone: nothing to end
            await self.command(f"abort ssl cert {path}")

    async def set_weight(self, *, backend: str, server: str, weight: int) -> None:
        await self._ok(f"set server {backend}/{server} weight {weight}")

    async def _ok(self, line: str) -> None:
        answer = (await self.command(line)).strip()
        if answer and not answer.startswith("New") and "done" not in answer.lower():
            raise RouterFailed(f"{line}: {answer}")


def _first_line(answer: str) -> str:
    lines = answer.strip().splitlines()
    return lines[0][:200] if lines else "no answer"


class MasterCLI:
    """The master process's socket: the same for an HAProxy clonebot started and for one
    run by others (on the host, or in a container with the router folder mounted)."""

    def __init__(self, socket: Path) -> None:
        self._socket = socket

    async def alive(self, *, patience_s: float = 0.5) -> bool:
        """Whether a master answers. One re-executing itself for a reload does not, for a
        moment: it is asked again for ``patience_s`` before the answer is no (measured: a
        swap landing just after a reload found "no HAProxy", python -m bench routing)."""
        deadline = time.monotonic() + patience_s
        while True:
            try:
                if "master" in await self._command("show proc"):
                    return True
            except OSError:
                if not self._socket.exists():
                    return False
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)

    async def reload(self, api: RuntimeAPI, *, timeout_s: float = 10) -> None:
        """A seamless reload: the new worker takes the listening sockets from the old one.

        Returns once a new worker answers on the runtime API. A reload asked while the master
        is still busy with the previous one can be lost: it is asked again every two seconds.
        """
        previous = await worker_pid(api)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                await self._command("reload")  # the master answers by re-executing itself
            except OSError as exc:
                raise RouterFailed(f"HAProxy's master does not answer: {exc}") from exc
            ask_again_at = min(time.monotonic() + 2, deadline)
            while time.monotonic() < ask_again_at:
                current = await worker_pid(api)
                if current is not None and current != previous:
                    return
                await asyncio.sleep(0.02)
        raise RouterFailed(f"HAProxy did not reload within {timeout_s:g} s")

    async def _command(self, line: str) -> str:
        async with asyncio.timeout(5):
            reader, writer = await asyncio.open_unix_connection(str(self._socket))
            try:
                # the master keeps a connection open after a command unless told to quit
                writer.write(f"{line}; quit\n".encode())
                await writer.drain()
                return (await reader.read()).decode()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()


class EmbeddedHAProxy:
    """An HAProxy of clonebot's own, started, reloaded and stopped by it."""

    def __init__(self, *, files: RouterFiles, binary: str = "haproxy") -> None:
        self.files = files
        self.binary = binary
        self.api = RuntimeAPI(files.api)
        self.master = MasterCLI(files.master)
        self._master: asyncio.subprocess.Process | None = None

    async def start(
        self, *, config: str, hosts: Mapping[str, str], crt_list: str | None = None
    ) -> None:
        await write_files(
            self.files, config=config, hosts=hosts, binary=self.binary, crt_list=crt_list
        )
        with self.files.log.open("ab") as log:
            argv = [self.binary, "-W", "-S", str(self.files.master), "-f", str(self.files.config)]
            self._master = await asyncio.create_subprocess_exec(
                *as_started(argv), stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,
            )  # fmt: skip
        await self._wait_for_worker(previous=None)

    async def apply(
        self, *, config: str, hosts: Mapping[str, str], crt_list: str | None = None
    ) -> bool:
        """Bring HAProxy to this configuration and map; True when it had to reload."""
        self._require_master()
        return await apply_to_running(
            self.files, self.api, self.master, config=config, hosts=hosts, binary=self.binary,
            crt_list=crt_list,
        )  # fmt: skip

    async def set_hosts(self, hosts: Mapping[str, str]) -> None:
        """Point hosts at backends: in the file (for a restart), then at once, atomically."""
        await _atomic_write(self.files.hosts, render_map(hosts))
        await self.api.replace_map(self.files.hosts, hosts)

    async def reload(self) -> None:
        """A seamless reload: the new worker takes the listening sockets from the old one."""
        self._require_master()
        await self.master.reload(self.api)

    async def stop(self) -> None:
        if self._master is None or self._master.returncode is not None:
            return
        self._master.terminate()
        try:
            await asyncio.wait_for(self._master.wait(), timeout=10)
        except TimeoutError:
            self._master.kill()
            await self._master.wait()

    @property
    def master_pid(self) -> int | None:
        return self._master.pid if self._master and self._master.returncode is None else None

    def _require_master(self) -> asyncio.subprocess.Process:
        if self._master is None or self._master.returncode is not None:
            raise RouterFailed("HAProxy is not running")
        return self._master

    async def _worker_pid(self) -> str | None:
        return await worker_pid(self.api)

    async def _wait_for_worker(self, *, previous: str | None, timeout_s: float = 10) -> None:
        """Until a worker other than ``previous`` answers on the runtime API."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._master is not None and self._master.returncode is not None:
                raise RouterFailed(
                    f"HAProxy exited with status {self._master.returncode}; see {self.files.log}"
                )
            pid = await self._worker_pid()
            if pid is not None and pid != previous:
                return
            await asyncio.sleep(0.05)
        raise RouterFailed(f"HAProxy did not answer within {timeout_s:g} s")


_WEIGHT = re.compile(r" weight (\d+)")


def structure_of(config: str) -> str:
    """The configuration without server weights: what only a reload can change."""
    return _WEIGHT.sub("", config)


def weights_in(config: str) -> dict[tuple[str, str], int]:
    """(backend, server) -> weight, as the configuration sets them."""
    weights, backend = {}, ""
    for line in config.splitlines():
        words = line.split()
        if words[:1] == ["backend"]:
            backend = words[1]
        elif words[:1] == ["server"] and (found := _WEIGHT.search(line)):
            weights[(backend, words[1])] = int(found.group(1))
    return weights


async def apply_to_running(
    files: RouterFiles,
    api: RuntimeAPI,
    master: MasterCLI,
    *,
    config: str,
    hosts: Mapping[str, str],
    binary: str = "haproxy",
    crt_list: str | None = None,
) -> bool:
    """Bring a running HAProxy to ``config`` and ``hosts``; True when it had to reload.

    Only a change of structure (backends, servers, options, certificates) is a reload; a
    map or weight change goes through the runtime API, in a few milliseconds, and to the
    files. ``crt_list``: the text of the crt-list the configuration names, if it names one.
    """
    started = time.monotonic()
    previous, previous_map = await asyncio.to_thread(
        lambda: (_read(files.config), _read(files.hosts))
    )
    if structure_of(previous) != structure_of(config):
        await write_files(files, config=config, hosts=hosts, binary=binary, crt_list=crt_list)
        await master.reload(api)
        metrics.observe_route_change(how="reload", seconds=time.monotonic() - started)
        return True
    # HAProxy first, the files right after (under the same lock): a swap is seen sooner, and
    # a reload can only come once the files are written
    new_map = render_map(hosts)
    if changed := previous_map != new_map:
        await api.replace_map(files.hosts, hosts)
    before = weights_in(previous)
    for (backend, server), weight in weights_in(config).items():
        if before.get((backend, server)) != weight:
            await api.set_weight(backend=backend, server=server, weight=weight)
            changed = True
    if changed:  # traffic moved now; the files follow
        metrics.observe_route_change(how="runtime", seconds=time.monotonic() - started)
    # the same structure HAProxy accepted before, only other weights: no check needed
    await asyncio.to_thread(replace_files, {files.hosts: new_map, files.config: config})
    return False


def replace_files(texts: Mapping[Path, str]) -> None:
    """Each file replaced by its text, atomically; those that have it already left alone."""
    for path, text in texts.items():
        if _read(path) == text:
            continue
        tmp = _write_beside(path, text)
        try:
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


async def worker_pid(api: RuntimeAPI) -> str | None:
    """The pid of the worker answering the runtime API, or None when none answers."""
    try:
        info = await api.command("show info")
    except RouterFailed:
        return None
    pids = (ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("Pid:"))
    return next(pids, None)


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def write_files(
    files: RouterFiles,
    *,
    config: str,
    hosts: Mapping[str, str],
    binary: str = "haproxy",
    crt_list: str | None = None,
) -> None:
    """Write the configuration and the map, once HAProxy has accepted the configuration.

    ``crt_list`` (the configuration's, with TLS) is written first, for the check to read;
    the previous one is put back if the configuration is refused.
    """
    if shutil.which(binary) is None:
        raise RouterFailed(f"HAProxy is not installed: no {binary!r} on PATH")
    await asyncio.to_thread(files.directory.mkdir, parents=True, exist_ok=True)
    if not await asyncio.to_thread(files.hosts.exists):
        await _atomic_write(files.hosts, render_map(hosts))  # the check needs one
    previous_list = await asyncio.to_thread(_read, files.crt_list)
    if crt_list is not None:
        await _atomic_write(files.crt_list, crt_list)
    candidate = await asyncio.to_thread(_write_beside, files.config, config)
    try:
        check = await asyncio.create_subprocess_exec(
            binary, "-c", "-f", str(candidate),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await check.communicate()
        if check.returncode != 0:
            alerts = [ln for ln in out.decode().splitlines() if "[ALERT]" in ln]
            reason = "; ".join(alerts) or out.decode().strip() or f"status {check.returncode}"
            if crt_list is not None and previous_list != crt_list:
                await _atomic_write(files.crt_list, previous_list)
            raise RouterFailed(f"HAProxy refused the configuration: {reason}")
        await _atomic_write(files.hosts, render_map(hosts))
        await asyncio.to_thread(os.replace, candidate, files.config)
    finally:
        await asyncio.to_thread(candidate.unlink, missing_ok=True)


@contextlib.asynccontextmanager
async def locked(files: RouterFiles) -> AsyncIterator[None]:
    """Hold the router's files for one change, against every other process and task.

    `clonebot serve` and a command run beside it both bring HAProxy to the routes; each
    reads the routes and writes the files under this lock, so the last to write wrote the
    latest routes, and no one checks a half-written configuration.
    """
    # in the event loop: a few microseconds, where a thread would wait for a CPU under load
    files.directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(files.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        # polled, not waited for in a thread: waiters must not use up the thread pool
        # that the holder needs to write its files
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(0.005)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _write_beside(path: Path, text: str) -> Path:
    """``text`` in a new file of its own next to ``path``: no other writer can touch it."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".new")
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return Path(name)


async def _atomic_write(path: Path, text: str) -> None:
    tmp = await asyncio.to_thread(_write_beside, path, text)
    try:
        await asyncio.to_thread(os.replace, tmp, path)
    except BaseException:
        await asyncio.to_thread(tmp.unlink, missing_ok=True)
        raise
