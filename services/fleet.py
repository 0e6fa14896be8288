"""The Docker engines clonebot drives, and which of them holds an environment.

``local`` is the engine of DOCKER_HOST; more come from CLONEBOT_ENGINES (settings) or
``clonebot engine add`` (rows in the database). Every environment lives on one engine, and
its name is unique across all of them. An engine that does not answer leaves the others
working: what it holds is shown unreachable, and jobs that touch it fail, saying so.
"""

from __future__ import annotations

import asyncio
import math
import re
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from services.docker import DockerClient, host_address
from services.errors import BadRequest, DockerUnavailable
from services.ssh_engine import KEY_FILES, KNOWN_HOSTS, SSHFolderError, SSHTarget, check_folder

LOCAL = "local"
_NAME = re.compile(r"[a-z][a-z0-9-]{0,30}")
TLS_FILES = ("ca.pem", "cert.pem", "key.pem")  # as the Docker CLI's DOCKER_CERT_PATH holds
# an engine that takes longer than this to list its containers is taken for away: a list
# must not wait for it (a job's own calls have their own, longer, limits)
ANSWER_S = 5.0


class EngineUnreachable(DockerUnavailable):
    def __init__(self, name: str, cause: str) -> None:
        super().__init__(f"engine {name} does not answer: {cause}")
        self.engine = name


@dataclass(frozen=True)
class EngineSpec:
    """Where an engine is, and how to reach it."""

    name: str
    url: str
    # its credentials: TLS client files (tcp://), or a private key and known_hosts (ssh://)
    keys_dir: Path | None = None
    origin: Literal["setting", "added"] = "setting"

    @property
    def address(self) -> str:
        """Where its host's published ports are reached: the URL's host, or this host's
        loopback for an engine on a socket here."""
        return host_address(self.url)

    def connect(self) -> DockerClient:
        if self.keys_dir is None:
            return DockerClient(self.url)
        if self.url.startswith("ssh://"):
            return DockerClient(ssh=SSHTarget.of(self.url, self.keys_dir))
        https = "https://" + self.url.removeprefix("tcp://").removeprefix("https://")
        return DockerClient(https, ssl_context=client_tls(self.keys_dir))


def validate_engine_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise BadRequest(
            f"invalid engine name {name!r}: a lowercase letter, then up to 30 lowercase "
            "letters, digits and hyphens"
        )
    return name


def check_engine(name: str, url: str, keys_dir: Path | None) -> EngineSpec:
    """The engine's spec, if its name and URL are ones clonebot can use; else say why.

    A TCP engine needs TLS with a client certificate: its API unprotected would give anyone
    on the network root on its host. An SSH engine needs a key and the host's key known."""
    validate_engine_name(name)
    parts = urlsplit(url)
    if (
        parts.password
        or parts.query
        or parts.fragment
        or (parts.username and parts.scheme != "ssh")
    ):
        # a password in a URL would be kept, listed and logged: the folder's files are the
        # credential
        raise BadRequest(
            f"engine {name}: give the URL without a password, query or # (a user: ssh:// only)"
        )
    if parts.scheme == "unix" and parts.path.startswith("/") and not parts.netloc:
        if keys_dir is not None:
            raise BadRequest(f"engine {name}: a unix:// socket takes no folder of keys")
        return EngineSpec(name, url)
    if parts.scheme == "ssh" and parts.hostname and not parts.path.strip("/"):
        return _ssh_engine(name, url, keys_dir)
    if parts.scheme in ("tcp", "https") and parts.hostname and not parts.path.strip("/"):
        if parts.port is None:
            raise BadRequest(f"engine {name}: give the port of {url} (Docker's TLS port: 2376)")
        if keys_dir is None:
            raise BadRequest(
                f"engine {name}: {url} needs TLS: give the folder of its client files "
                f"({', '.join(TLS_FILES)}), as `docker --tlsverify` uses"
            )
        missing = [f for f in TLS_FILES if not (keys_dir / f).is_file()]
        if missing:
            raise BadRequest(f"engine {name}: {keys_dir} lacks {', '.join(missing)}")
        return EngineSpec(name, url, keys_dir)
    raise BadRequest(
        f"engine {name}: {url!r} is not an engine URL (unix:///path/docker.sock, "
        "tcp://host:2376 with TLS, or ssh://user@host)"
    )


def _ssh_engine(name: str, url: str, keys_dir: Path | None) -> EngineSpec:
    if keys_dir is None:
        raise BadRequest(
            f"engine {name}: {url} needs the folder of its SSH key ({' or '.join(KEY_FILES)}) "
            f"and {KNOWN_HOSTS} (the host's key); clonebot reads no ~/.ssh"
        )
    try:
        check_folder(keys_dir)
    except SSHFolderError as exc:
        raise BadRequest(f"engine {name}: {exc}") from None
    return EngineSpec(name, url, keys_dir)


def client_tls(folder: Path) -> ssl.SSLContext:
    """Verify the engine by the CA in ``folder`` (its name must be in its certificate), and
    show it our client certificate."""
    try:
        context = ssl.create_default_context(cafile=str(folder / "ca.pem"))
        context.load_cert_chain(str(folder / "cert.pem"), str(folder / "key.pem"))
    except (OSError, ssl.SSLError) as exc:
        raise BadRequest(f"the TLS files in {folder} do not load: {exc}") from exc
    return context


def parse_engines(text: str) -> list[EngineSpec]:
    """CLONEBOT_ENGINES: ``name=url,...``; a TCP or SSH engine's files are read from
    ``CLONEBOT_ENGINE_CERTS/<name>/``, given separately as ``certs``."""
    specs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, url = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r} is not name=url")
        specs.append(EngineSpec(name.strip(), url.strip()))
    return specs


class Fleet:
    """The engines, and one client per engine, opened when first used."""

    def __init__(self, specs: list[EngineSpec]) -> None:
        self._specs = {spec.name: spec for spec in specs}
        self._clients: dict[str, DockerClient] = {}
        self.loaded_at = -math.inf  # when the added engines were last read (replace_added)

    @property
    def names(self) -> list[str]:
        """``local`` first, then by name."""
        return sorted(self._specs, key=lambda n: (n != LOCAL, n))

    @property
    def single(self) -> bool:
        """Only ``local``: every lookup is the single-engine call (the swap's hot path)."""
        return len(self._specs) == 1

    def spec(self, name: str) -> EngineSpec:
        if name not in self._specs:
            raise BadRequest(f"no engine named {name!r} (see `clonebot engine list`)")
        return self._specs[name]

    def client(self, name: str) -> DockerClient:
        if name not in self._clients:
            self._clients[name] = self.spec(name).connect()
        return self._clients[name]

    def adopt(self, name: str, client: DockerClient) -> None:
        """Use an open client for ``name`` (``local``'s, opened by the caller)."""
        self._clients[name] = client

    async def replace_added(self, specs: list[EngineSpec]) -> None:
        """The engines added by hand are now ``specs``: clients of those removed or changed
        are closed."""
        self.loaded_at = time.monotonic()
        kept = {n: s for n, s in self._specs.items() if s.origin == "setting"}
        wanted = {s.name: s for s in specs if s.name not in kept}
        for name, spec in list(self._specs.items()):
            gone = spec.origin == "added" and wanted.get(name) != spec
            if gone and (client := self._clients.pop(name, None)) is not None:
                await client.close()
        self._specs = kept | wanted

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
