"""The Docker port: the few engine operations clonebot needs, over aiodocker.

Library errors are translated here, once, into ``DockerFailed``/``DockerUnavailable``.
Large data never passes through this process: volume data is copied by a helper
container (see ``volumes.py``); only small file-system deltas are streamed, chunk by chunk.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import ipaddress
import json
import posixpath
import socket
import ssl
import tarfile
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError

from services.errors import DockerFailed, DockerUnavailable
from services.ssh_engine import CONNECT_S, SSHConnector, SSHTarget

T = TypeVar("T")
# aiodocker reports a connection failure as this pseudo HTTP status
_UNREACHABLE = 900
_NOT_FOUND = 404
_CONFLICT = 409
JSON = dict[str, Any]


def _tcp_socket(addr: Any) -> socket.socket:
    """A socket to a remote engine that notices a partition (which sends no reset) within
    about 30 s: keep-alive probes while a call waits for an answer, and a limit on data left
    unacknowledged while it sends. Without, a call would wait for the kernel's retries,
    about 15 minutes."""
    family, kind, proto, *_ = addr
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 30_000)
    return sock


def host_address(url: str, ssh: SSHTarget | None = None) -> str:
    """The host of an engine's URL, where its published ports are; 127.0.0.1 for a socket of
    this host."""
    if ssh is not None:
        return ssh.host
    host = urlsplit(url).hostname
    return host if host and not url.startswith("unix:") else "127.0.0.1"


async def _translate(what: str, call: Awaitable[T]) -> T:
    try:
        return await call
    except DockerError as exc:
        if exc.status == _UNREACHABLE:
            raise DockerUnavailable(f"cannot reach the Docker engine: {exc.message}") from exc
        raise DockerFailed(f"{what}: {exc.message}", status=exc.status) from exc
    except (aiohttp.ClientConnectionError, FileNotFoundError, ConnectionRefusedError) as exc:
        raise DockerUnavailable(f"cannot reach the Docker engine ({what}): {exc}") from exc


async def _or_none(what: str, call: Awaitable[T]) -> T | None:
    """Like ``_translate``, but a 404 (no such object) is None."""
    try:
        return await _translate(what, call)
    except DockerFailed as exc:
        if exc.status == _NOT_FOUND:
            return None
        raise


# a stream that long without a byte is taken for an engine cut off (a partition sends no
# reset): a copy fails, saying so, rather than wait for ever
_STALL = aiohttp.ClientTimeout(sock_connect=10, sock_read=120)
_HEADERS = 64 * 1024  # enough for a directory's tar header, with its PAX records
_EXIT_POLLS = 40  # 2 s of waiting for an ended command's exit code


@dataclass(frozen=True)
class FileRead:
    """A file read from a container: ``data`` is None when it was not read (too big, or
    ``kind`` "other": not a regular file)."""

    kind: Literal["file", "other"]
    size: int
    data: bytes | None


class ExecSession:
    """A command running in a container, with its stdin and output streams attached."""

    def __init__(self, stream: Any, exec_: Any) -> None:
        self._stream = stream
        self._exec = exec_
        self.errors = b""  # the end of its standard error, as ``stdout`` read it

    async def send(self, data: bytes) -> None:
        try:
            await self._stream.write_in(data)
        except (AssertionError, RuntimeError, OSError) as exc:
            # aiodocker asserts that its connection is there: gone once the command's
            # container, or the engine itself, stopped
            raise DockerFailed(
                "the command in the container is gone: the container or the engine stopped"
            ) from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield output (stdout and stderr) as it arrives, until the command ends: for output
        of any size, where ``lines`` would hold a line without end in memory."""
        while (msg := await self._stream.read_out()) is not None:
            yield msg.data

    async def stdout(self) -> AsyncIterator[bytes]:
        """Yield standard output alone, as it arrives, until the command ends; the last
        4 KiB of its standard error are kept in ``errors``."""
        while (msg := await self._stream.read_out()) is not None:
            if msg.stream == 1:
                yield msg.data
            else:
                self.errors = (self.errors + msg.data)[-4096:]

    async def lines(self) -> AsyncIterator[str]:
        """Yield output lines (stdout and stderr) until the command ends."""
        pending = b""
        async for data in self.chunks():
            pending += data
            *complete, pending = pending.split(b"\n")
            for line in complete:
                yield line.decode(errors="replace")
        if pending:
            yield pending.decode(errors="replace")

    async def exit_code(self) -> int:
        """The command's exit code, once its output ended; -1 when the engine has none."""
        for _ in range(_EXIT_POLLS):
            info = await _translate("exec inspect", self._exec.inspect())
            # the output can end a moment before the engine has reaped the command
            if not info.get("Running"):
                break
            await asyncio.sleep(0.05)
        code = info.get("ExitCode")
        return -1 if code is None else int(code)


class DockerClient:
    """Async client for one Docker engine."""

    def __init__(
        self,
        url: str | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        ssh: SSHTarget | None = None,
    ) -> None:
        self._url = url
        self._ssl = ssl_context
        self._ssh = ssh
        self._docker: aiodocker.Docker | None = None
        self._connector: aiohttp.BaseConnector | None = None

    async def __aenter__(self) -> DockerClient:
        self._docker = self._open()
        return self

    def _open(self) -> aiodocker.Docker:
        if self._ssh is not None:  # another host's engine, through ``docker system dial-stdio``
            self._connector = SSHConnector(self._ssh)
            timeout = aiohttp.ClientTimeout(sock_connect=CONNECT_S)
            # the URL only names the API's paths: every connection is the connector's
            return aiodocker.Docker(
                url="unix://localhost", connector=self._connector, timeout=timeout
            )
        if self._ssl is not None:
            # another host's engine (services/fleet.py): a connection to it fails once the
            # host is cut off
            self._connector = aiohttp.TCPConnector(ssl=self._ssl, socket_factory=_tcp_socket)
            timeout = aiohttp.ClientTimeout(sock_connect=10)
            return aiodocker.Docker(url=self._url, connector=self._connector, timeout=timeout)
        return aiodocker.Docker(url=self._url, ssl_context=self._ssl)

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._docker is not None:
            await self._docker.close()
            self._docker = None
        if self._connector is not None:  # ours: aiodocker closes only the one it made
            await self._connector.close()
            self._connector = None

    @property
    def remote(self) -> bool:
        """An engine on another host (reached over TCP with TLS, or SSH: see
        ``services/fleet.py``)."""
        return self._ssl is not None or self._ssh is not None

    @property
    def host_address(self) -> str:
        """Where this engine's published ports are reached from here: the host of its URL (an
        SSH engine's host), or this host's loopback for a socket here."""
        return host_address(self._url or "", self._ssh)

    async def host_ip(self) -> str:
        """``host_address`` as an IP address (a name resolved now, IPv4 first): what a node
        published for the router binds to, and what HAProxy is given. DockerUnavailable if
        the name does not resolve."""
        host = self.host_address
        with contextlib.suppress(ValueError):
            return str(ipaddress.ip_address(host))
        try:
            found = await asyncio.get_running_loop().getaddrinfo(
                host, None, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise DockerUnavailable(f"the engine's host {host} does not resolve: {exc}") from exc
        found.sort(key=lambda entry: entry[0] != socket.AF_INET)
        return str(found[0][4][0])

    @property
    def api(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = self._open()
        return self._docker

    # -- engine ---------------------------------------------------------------------------
    async def ping(self) -> JSON:
        return await _translate("version", self.api.version())

    async def info(self) -> JSON:
        """``docker info``: the storage driver, data root, address pools, ..."""
        return dict(await _translate("info", self.api.system.info()))

    # -- Swarm (services/swarm.py) --------------------------------------------------------
    async def list_services(self, *, labels: list[str]) -> list[JSON]:
        """A manager's services with these labels; DockerFailed (503) on an engine that is no
        Swarm manager."""
        return list(await self._list("services", labels=labels))

    async def list_tasks(self, *, service: str) -> list[JSON]:
        query = {"filters": json.dumps({"service": [service]})}
        call = self.api._query_json("tasks", params=query)
        return list(await _translate(f"list the tasks of {service}", call))

    async def running_tasks(self) -> list[JSON]:
        """The Swarm's tasks meant to run (of every service)."""
        query = {"filters": json.dumps({"desired-state": ["running"]})}
        return list(await _translate("list the tasks", self.api._query_json("tasks", params=query)))

    async def list_nodes(self) -> list[JSON]:
        return list(await _translate("list the nodes", self.api._query_json("nodes")))

    async def inspect_service(self, ref: str) -> JSON | None:
        return await _or_none(f"inspect service {ref}", self.api._query_json(f"services/{ref}"))

    async def create_service(self, spec: JSON) -> str:
        call = self.api._query_json("services/create", method="POST", data=spec)
        created = await _translate(f"create service {spec.get('Name')}", call)
        return str(created["ID"])

    async def update_service(self, ref: str, *, version: int, spec: JSON) -> None:
        """Replace a service's spec; refused (409/500) if it changed since ``version``."""
        call = self.api._query_json(
            f"services/{ref}/update", method="POST", params={"version": version}, data=spec
        )
        await _translate(f"update service {spec.get('Name', ref)}", call)

    async def remove_service(self, ref: str) -> None:
        call = self.api._query(f"services/{ref}", method="DELETE")
        await _translate(f"remove service {ref}", _drain(call))

    # -- containers -----------------------------------------------------------------------
    async def list_containers(self, *, labels: list[str] | None = None) -> list[JSON]:
        return list(await self._list("containers/json", labels=labels or [], all="1"))

    async def _list(self, path: str, *, labels: list[str], **params: str) -> Any:
        """GET a collection filtered by labels (``key`` or ``key=value``, all must match)."""
        query = {"filters": json.dumps({"label": labels}), **params}
        return await _translate(f"list {path}", self.api._query_json(path, params=query))

    async def inspect_container(self, ref: str) -> JSON:
        call = self.api._query_json(f"containers/{ref}/json")
        result: JSON = await _translate(f"inspect container {ref}", call)
        return result

    async def find_container(self, ref: str) -> JSON | None:
        """``inspect_container``, or None when there is no such container."""
        return await _or_none(
            f"inspect container {ref}", self.api._query_json(f"containers/{ref}/json")
        )

    async def create_container(self, *, name: str | None, config: JSON) -> str:
        """Create a container. Cancelled while the engine makes it, the container is removed
        (once made) before the cancellation goes on: its caller never learnt its id, and
        would leave it behind (a helper holding a source's volumes, say)."""
        creating = asyncio.ensure_future(
            _translate(f"create container {name}", self.api.containers.create(config, name=name))
        )
        try:
            container = await asyncio.shield(creating)
        except asyncio.CancelledError:
            await asyncio.shield(self._remove_made(creating))
            raise
        return str(container.id)

    async def _remove_made(self, creating: asyncio.Future[Any]) -> None:
        with contextlib.suppress(Exception):
            made = await creating
            await self.remove_container(str(made.id))

    async def start_container(self, ref: str) -> None:
        await _translate(f"start container {ref}", self.api.containers.container(ref).start())

    async def stop_container(self, ref: str, *, timeout_s: int = 10) -> None:
        call = self.api._query(f"containers/{ref}/stop", method="POST", params={"t": timeout_s})
        await _translate(f"stop container {ref}", _drain(call))

    async def wait_container(self, ref: str) -> int:
        result = await _translate(
            f"wait container {ref}", self.api.containers.container(ref).wait()
        )
        return int(result.get("StatusCode", -1))

    async def container_logs(self, ref: str) -> str:
        call = self.api.containers.container(ref).log(stdout=True, stderr=True)
        return "".join(await _translate(f"logs of {ref}", call))

    async def remove_container(self, ref: str) -> None:
        call = self.api._query(
            f"containers/{ref}", method="DELETE", params={"force": "1", "v": "0"}
        )
        await _translate(f"remove container {ref}", _drain(call))

    async def rename_container(self, ref: str, name: str) -> None:
        call = self.api._query(f"containers/{ref}/rename", method="POST", params={"name": name})
        await _translate(f"rename container {ref}", _drain(call))

    async def pause_container(self, ref: str) -> None:
        await _translate(f"pause container {ref}", self.api.containers.container(ref).pause())

    async def unpause_container(self, ref: str) -> None:
        await _translate(f"unpause container {ref}", self.api.containers.container(ref).unpause())

    async def diff_container(self, ref: str) -> list[JSON]:
        result = await _translate(f"diff {ref}", self.api._query_json(f"containers/{ref}/changes"))
        return list(result or [])

    async def commit_container(
        self, ref: str, *, repo: str, tag: str, labels: dict[str, str]
    ) -> str:
        changes = [f"LABEL {json.dumps(k)}={json.dumps(v)}" for k, v in labels.items()]
        # the source may already be frozen by us; commit must not pause/unpause it itself
        call = self.api.containers.container(ref).commit(
            repository=repo, tag=tag, changes=changes, pause=False
        )
        result = await _translate(f"commit {ref}", call)
        return str(result["Id"])

    async def stat_path(self, ref: str, path: str) -> JSON | None:
        """Stat a path inside a container's file system; None when it does not exist."""

        async def head() -> str:
            call = self.api._query(
                f"containers/{ref}/archive", method="HEAD", params={"path": path}
            )
            async with call as resp:
                return str(resp.headers.get("X-Docker-Container-Path-Stat", ""))

        header = await _or_none(f"stat {path} in {ref}", head())
        if header is None:
            return None
        stat: JSON = json.loads(base64.b64decode(header)) if header else {}
        return stat

    async def copy_path(
        self, *, src: str, dst: str, path: str, into: str, to: DockerClient | None = None
    ) -> None:
        """Stream ``path`` of container ``src`` as a tar into directory ``into`` of ``dst``,
        a container of this engine or of ``to``'s."""

        async def body() -> AsyncIterator[bytes]:
            call = self.api._query(f"containers/{src}/archive", params={"path": path})
            async with call as resp:
                async for chunk in resp.content.iter_chunked(256 * 1024):
                    yield chunk

        put = (to or self).api._query(
            f"containers/{dst}/archive",
            method="PUT",
            params={"path": into},
            data=body(),
            headers={"Content-Type": "application/x-tar"},
        )
        await _translate(f"copy {path} from {src} to {dst}", _drain(put))

    async def read_file(self, ref: str, path: str, *, limit: int) -> FileRead | None:
        """A small file of a container (which need not have run: its mounts are there too);
        None when there is nothing at ``path``. Past ``limit`` bytes, or when it is not a
        regular file (a link, a directory), nothing of it is read."""

        async def fetch() -> FileRead:
            call = self.api._query(f"containers/{ref}/archive", params={"path": path})
            head = b""
            async with call as resp:  # a file too big is never read to its end
                while len(head) < _HEADERS + limit and (more := await resp.content.read(_HEADERS)):
                    head += more
            try:
                with tarfile.open(fileobj=io.BytesIO(head), mode="r|") as tar:
                    info = tar.next()
                    if info is None or not info.isreg():
                        return FileRead(kind="other", size=info.size if info else 0, data=None)
                    if info.size > limit:
                        return FileRead(kind="file", size=info.size, data=None)
                    stream = tar.extractfile(info)
                    data = stream.read() if stream is not None else b""
            except tarfile.TarError as exc:
                raise DockerFailed(f"the engine's archive of {path} is unreadable: {exc}") from exc
            return FileRead(kind="file", size=info.size, data=data)

        return await _or_none(f"read {path} in {ref}", fetch())

    async def copy_attributes(
        self, *, src: str, dst: str, path: str, to: DockerClient | None = None
    ) -> None:
        """Give the existing directory ``path`` of ``dst`` (on ``to``'s engine, if given) the
        mode, owner and times it has in ``src``, leaving its entries alone: the engine sets a
        directory's times from its tar header after extracting, so a tar of that header alone
        is put in its parent."""

        async def first_header() -> tarfile.TarInfo:
            call = self.api._query(f"containers/{src}/archive", params={"path": path})
            head = b""
            async with call as resp:  # the rest of the directory is never read
                while len(head) < _HEADERS and (more := await resp.content.read(_HEADERS)):
                    head += more
            try:
                with tarfile.open(fileobj=io.BytesIO(head), mode="r|") as tar:
                    info = tar.next()
            except tarfile.TarError as exc:
                raise DockerFailed(f"the engine's archive of {path} is unreadable: {exc}") from exc
            if info is None or not info.isdir():
                raise DockerFailed(f"{path} in {src} is not a directory")
            return info

        info = await _translate(f"stat {path} in {src}", first_header())
        info.name = posixpath.basename(path)
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(info)
        put = (to or self).api._query(
            f"containers/{dst}/archive",
            method="PUT",
            params={"path": posixpath.dirname(path)},
            data=out.getvalue(),
            headers={"Content-Type": "application/x-tar"},
        )
        await _translate(f"set the attributes of {path} in {dst}", _drain(put))

    @asynccontextmanager
    async def exec_session(
        self, ref: str, cmd: list[str], *, stdin: bool = True
    ) -> AsyncIterator[ExecSession]:
        """Run ``cmd`` in a running container; without ``stdin`` the command reads an empty
        input (one that reads it would otherwise wait for it forever)."""
        container = self.api.containers.container(ref)
        try:
            exec_ = await _translate(f"exec in {ref}", container.exec(cmd, stdin=stdin))
        except DockerFailed as exc:
            if exc.status != _CONFLICT:
                raise
            # Docker's words name the container by its id: say what happened instead
            state = "paused" if "is paused" in exc.message else "not running"
            raise DockerFailed(
                f"a command could not start: its container is {state} (it, or the engine, stopped)",
                status=exc.status,
            ) from exc
        stream = exec_.start(detach=False)
        try:
            await _translate(f"exec in {ref}", stream._init())
            yield ExecSession(stream, exec_)
        finally:
            await stream.close()

    # -- images ---------------------------------------------------------------------------
    async def inspect_image(self, ref: str) -> JSON | None:
        return await _or_none(f"inspect image {ref}", self.api.images.inspect(ref))

    async def import_image(self, *, tar: bytes, repo: str, tag: str) -> None:
        params = {"fromSrc": "-", "repo": repo, "tag": tag}
        call = self.api._query(
            "images/create",
            method="POST",
            params=params,
            data=io.BytesIO(tar),  # a file: aiohttp streams it (raw bytes would block the loop)
            headers={"Content-Type": "application/x-tar"},
        )
        await _translate(f"import image {repo}:{tag}", _drain(call))

    async def carry_image(self, ref: str, *, to: DockerClient) -> None:
        """``docker save REF | docker -H OTHER load``, streamed: the image, by its ID, on the
        engine of ``to`` (never pulled there); one chunk at a time in this process."""

        what = f"carry image {ref[:19]} to another engine"
        if await self.inspect_image(ref) is None:
            raise DockerFailed(f"{what}: there is no such image", status=_NOT_FOUND)
        failed: list[DockerError] = []  # the save's own error: the load only sees its end

        async def saved() -> AsyncGenerator[bytes]:
            try:
                async with self.api._query(f"images/{ref}/get", timeout=_STALL) as resp:
                    async for chunk in resp.content.iter_chunked(1 << 20):
                        yield chunk
            except DockerError as exc:
                failed.append(exc)
                raise

        # not quiet: the engine's progress keeps the answer's stream alive while it unpacks
        try:
            async with contextlib.aclosing(saved_stream := saved()):  # closed on any end
                load = to.api._query(
                    "images/load",
                    method="POST",
                    data=saved_stream,
                    headers={"Content-Type": "application/x-tar"},
                    timeout=_STALL,
                )
                await _translate(what, _loaded(load))
        except DockerUnavailable:
            if failed:
                raise DockerFailed(f"{what}: {failed[0].message}") from failed[0]
            raise

    async def remove_image(self, ref: str) -> bool:
        """Remove an image; False when Docker keeps it (409: a container, running or stopped,
        or a child image uses it). Never forced: forcing would take it from under them."""
        try:
            await _translate(f"remove image {ref}", self.api.images.delete(ref))
        except DockerFailed as exc:
            if exc.status == _CONFLICT:
                return False
            raise
        return True

    async def list_images(self, *, labels: list[str]) -> list[JSON]:
        return list(await self._list("images/json", labels=labels))

    # -- networks -------------------------------------------------------------------------
    async def inspect_network(self, ref: str) -> JSON | None:
        return await _or_none(f"inspect network {ref}", self.api._query_json(f"networks/{ref}"))

    async def list_networks(self, *, labels: list[str]) -> list[JSON]:
        return list(await self._list("networks", labels=labels))

    async def create_network(self, config: JSON) -> str:
        network = await _translate(
            f"create network {config.get('Name')}", self.api.networks.create(config)
        )
        return str(network.id)

    async def connect_network(self, *, network: str, container: str, aliases: list[str]) -> None:
        body = {"Container": container, "EndpointConfig": {"Aliases": aliases}}
        call = self.api._query_json(f"networks/{network}/connect", method="POST", data=body)
        await _translate(f"connect {container} to {network}", call)

    async def remove_network(self, ref: str) -> None:
        """Remove a network, disconnecting what is still on it first (an HAProxy container
        clonebot connected to reach the environment)."""
        info = await self.inspect_network(ref)
        for container in (info or {}).get("Containers") or {}:
            body = {"Container": container, "Force": True}
            disconnect = self.api._query_json(
                f"networks/{ref}/disconnect", method="POST", data=body
            )
            await _or_none(f"disconnect {container} from {ref}", disconnect)
        call = self.api._query(f"networks/{ref}", method="DELETE")
        await _translate(f"remove network {ref}", _drain(call))

    # -- volumes --------------------------------------------------------------------------
    async def inspect_volume(self, name: str) -> JSON | None:
        return await _or_none(f"inspect volume {name}", self.api._query_json(f"volumes/{name}"))

    async def list_volumes(self, *, labels: list[str]) -> list[JSON]:
        result = await self._list("volumes", labels=labels)
        return list(result.get("Volumes") or [])

    async def create_volume(self, *, name: str | None, labels: dict[str, str]) -> str:
        body: JSON = {"Labels": labels}
        if name:
            body["Name"] = name
        result = await _translate(
            f"create volume {name or ''}",
            self.api._query_json("volumes/create", method="POST", data=body),
        )
        return str(result["Name"])

    async def remove_volume(self, name: str) -> None:
        call = self.api._query(f"volumes/{name}", method="DELETE", params={"force": "1"})
        await _translate(f"remove volume {name}", _drain(call))


async def _loaded(call: Any) -> None:
    """The end of an image load, whose errors come in its body (JSON lines), not its status."""
    async with call as resp:
        body = await resp.read()
    for line in body.splitlines():
        with contextlib.suppress(ValueError):
            if message := (json.loads(line).get("errorDetail") or {}).get("message"):
                raise DockerFailed(f"loading an image: {message}")


async def _drain(call: Any) -> None:
    async with call as resp:
        await resp.read()


async def gather_all(*calls: Awaitable[T]) -> list[T]:
    """Run calls concurrently; if one fails, wait for the others before raising the first error."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return list(results)  # type: ignore[arg-type]
