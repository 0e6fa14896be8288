"""Docker engines reached over SSH, as the Docker CLI reaches an ``ssh://`` host: one SSH
connection per engine and, for each HTTP connection to its API, one ``docker system
dial-stdio`` on the engine's host, whose stdin and stdout are that connection.

Not aiodocker's ``SSHConnector``: it sends the whole local environment to the remote host
(clonebot's Slack tokens and database URL with it) and reads ``~/.ssh``. Here nothing but the
engine's own folder is used: its private key and ``known_hosts`` (the host's key must be in
it). No agent, no ssh config, no environment, no password, no forwarding, no terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncssh

log = logging.getLogger(__name__)

KEY_FILES = ("id_ed25519", "id_ecdsa", "id_rsa")  # the first one present is used
KNOWN_HOSTS = "known_hosts"
DIAL = "docker system dial-stdio"
CONNECT_S = 15
CHUNK = 256 * 1024
# a host cut off is noticed within about 15 s (the SSH keep-alives unanswered), failing the
# calls waiting on it, as a TCP engine's keep-alives do (services/docker.py)
KEEPALIVE_S, KEEPALIVE_COUNT = 5, 3


class SSHFolderError(ValueError):
    """The engine's folder lacks what an SSH connection needs; the message says what."""


@dataclass(frozen=True)
class SSHTarget:
    """An engine's host, the user clonebot logs in as there, and the folder of its key."""

    host: str
    port: int
    user: str | None
    folder: Path

    @classmethod
    def of(cls, url: str, folder: Path) -> SSHTarget:
        parts = urlsplit(url)
        assert parts.scheme == "ssh" and parts.hostname, url
        return cls(parts.hostname, parts.port or 22, parts.username, folder)

    def __str__(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"

    def key(self) -> Path:
        for name in KEY_FILES:
            if (self.folder / name).is_file():
                return self.folder / name
        raise SSHFolderError(f"{self.folder} has no private key ({', '.join(KEY_FILES)})")


def check_folder(folder: Path) -> None:
    """Raise SSHFolderError unless ``folder`` has a private key that loads without a
    passphrase and a ``known_hosts``."""
    if not (folder / KNOWN_HOSTS).is_file():
        raise SSHFolderError(
            f"{folder} has no {KNOWN_HOSTS}: the engine host's key must be in it "
            "(ssh-keyscan HOST >> known_hosts, checked by hand)"
        )
    try:
        asyncssh.read_known_hosts(str(folder / KNOWN_HOSTS))
    except (OSError, ValueError) as exc:
        raise SSHFolderError(f"{folder / KNOWN_HOSTS} does not read: {exc}") from exc
    key = SSHTarget("", 22, None, folder).key()
    try:
        asyncssh.read_private_key(key)
    except (OSError, ValueError, asyncssh.KeyImportError) as exc:
        raise SSHFolderError(f"{key} does not load (a key without a passphrase): {exc}") from exc


class SSHConnector(aiohttp.UnixConnector):
    """aiohttp's connections to an engine's API, each a ``docker system dial-stdio`` over an
    SSH connection (one, more when sshd's sessions per connection run out; made again when
    they drop). The Unix path is never opened: each
    connection is one end of a socket pair whose other end is pumped to the process.

    Pumped here rather than by asyncssh's redirection of a process's stdin and stdout to a
    stream: when the process ended first (an exec's hijacked connection does), the
    redirected stream's end raised inside asyncssh, which closed the whole SSH connection,
    every other call's with it (asyncssh 2.24)."""

    def __init__(self, target: SSHTarget) -> None:
        super().__init__(path=f"/nonexistent/ssh/{target}")
        self._target = target
        # sshd serves a connection this many sessions at most (MaxSessions, 10 by default):
        # more at once open another connection
        self._pool: list[asyncssh.SSHClientConnection] = []
        self._lock = asyncio.Lock()
        self._bridges: set[asyncio.Task[None]] = set()

    async def _process(self) -> asyncssh.SSHClientProcess[bytes]:
        """A ``dial-stdio`` on a connection that takes one more session; a new connection if
        none does."""
        async with self._lock:
            self._pool = [ssh for ssh in self._pool if not ssh.is_closed()]
            for ssh in self._pool:
                with contextlib.suppress(asyncssh.ChannelOpenError):
                    return await ssh.create_process(DIAL, encoding=None)
            ssh = await self._connect()
            self._pool.append(ssh)
        return await ssh.create_process(DIAL, encoding=None)

    async def _connect(self) -> asyncssh.SSHClientConnection:
        target = self._target
        return await asyncssh.connect(
            target.host,
            target.port,
            username=target.user or (),
            client_keys=[str(target.key())],
            known_hosts=str(target.folder / KNOWN_HOSTS),
            x509_trusted_certs=None,  # the host's key is in known_hosts, or it is refused
            x509_trusted_cert_paths=[],
            config=None,
            agent_path=None,
            env=None,
            send_env=None,
            password_auth=False,
            kbdint_auth=False,
            gss_host=None,
            agent_forwarding=False,
            x11_forwarding=False,
            request_pty=False,
            connect_timeout=CONNECT_S,
            keepalive_interval=KEEPALIVE_S,
            keepalive_count_max=KEEPALIVE_COUNT,
        )

    async def _create_connection(
        self,
        req: aiohttp.ClientRequest,
        traces: list[Any],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109
    ) -> Any:
        ours, theirs = socket.socketpair()
        process = None
        try:
            async with asyncio.timeout(timeout.sock_connect or CONNECT_S):
                process = await self._process()
            _, protocol = await self._loop.create_unix_connection(self._factory, sock=ours)
        except BaseException as exc:  # cancelled too: nothing of the connection is kept
            ours.close()
            theirs.close()
            if process is not None:
                process.close()
            if isinstance(exc, OSError | asyncssh.Error | ValueError | TimeoutError):
                why = _reason(exc)
                raise aiohttp.ClientConnectionError(f"ssh {self._target}: {why}") from exc
            raise
        bridge = asyncio.get_running_loop().create_task(self._bridge(process, theirs))
        self._bridges.add(bridge)
        bridge.add_done_callback(self._bridges.discard)
        return protocol

    async def _bridge(self, process: asyncssh.SSHClientProcess[bytes], sock: socket.socket) -> None:
        """Bytes both ways between the socket and the process, until both ends are done; then
        say why the process failed, if it did (no docker on the host, a socket it may not
        open: the API call itself only sees its connection closed)."""
        reader, writer = await asyncio.open_unix_connection(sock=sock)

        async def inward() -> None:  # the requests, to the engine
            with contextlib.suppress(OSError, asyncssh.Error):
                while data := await reader.read(CHUNK):
                    process.stdin.write(data)
                    await process.stdin.drain()
                process.stdin.write_eof()

        async def outward() -> None:  # the answers, from it
            try:
                while data := await process.stdout.read(CHUNK):
                    writer.write(data)
                    await writer.drain()
            except (OSError, asyncssh.Error):
                pass
            finally:
                writer.close()

        try:
            await asyncio.gather(inward(), outward())
            done = await process.wait(check=False, timeout=CONNECT_S)
        except (OSError, asyncssh.Error, TimeoutError):
            return
        finally:
            process.close()
            writer.close()
        if done.exit_status not in (0, None):
            stderr = done.stderr if isinstance(done.stderr, bytes) else b""
            log.warning(
                "ssh %s: %s exited %s: %s",
                self._target,
                DIAL,
                done.exit_status,
                stderr.decode(errors="replace").strip()[-300:],
            )

    async def close(self, *, abort_ssl: bool = False) -> None:
        await super().close(abort_ssl=abort_ssl)
        for bridge in list(self._bridges):
            bridge.cancel()
        pool, self._pool = self._pool, []
        for ssh in pool:
            ssh.close()
        for ssh in pool:
            with contextlib.suppress(Exception):
                await ssh.wait_closed()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return "the host's key is not in known_hosts (or does not match it)"
    if isinstance(exc, asyncssh.PermissionDenied):
        return "the key was refused (is its public half in the user's authorized_keys?)"
    if isinstance(exc, TimeoutError):
        return f"no answer in {CONNECT_S} s"
    if isinstance(exc, asyncssh.Error):
        return exc.reason or type(exc).__name__
    return str(exc) or type(exc).__name__
