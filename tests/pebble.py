"""A real ACME server for the tests: Debian's ``pebble``, its DNS answered by
``pebble-challtestsrv`` (every name is 127.0.0.1, no AAAA), its own HTTPS certificate issued by
the tests' CA (tests/tls.py). It validates HTTP-01 on the router's HTTP port; everything
listens on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import _free_port
from tests.tls import LocalCA


@dataclass(frozen=True)
class Pebble:
    directory: str  # the ACME directory URL
    ca_bundle: Path  # trusts pebble's own HTTPS (CLONEBOT_ACME_CA_BUNDLE)
    management: str  # https://localhost:PORT: its roots and intermediates
    log: Path

    async def issuing_root(self, path: Path) -> Path:
        """The root pebble issues under (made anew at each start), written to ``path``."""
        pem = await asyncio.to_thread(self._get, f"{self.management}/roots/0")
        await asyncio.to_thread(path.write_bytes, pem)
        return path

    def _get(self, url: str) -> bytes:
        context = ssl.create_default_context(cafile=str(self.ca_bundle))
        with urllib.request.urlopen(url, context=context, timeout=5) as answer:
            return answer.read()  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def run_pebble(
    folder: Path, *, http_port: int, validity_s: int | None = None
) -> AsyncIterator[Pebble]:
    """pebble and its DNS, validating HTTP-01 challenges on 127.0.0.1:``http_port``; its
    certificates last ``validity_s`` (None: pebble's five years)."""
    pebble, commands = await asyncio.to_thread(
        _configure, folder, http_port=http_port, validity_s=validity_s
    )
    env = {
        **os.environ,
        "PEBBLE_VA_NOSLEEP": "1",  # validate at once
        "PEBBLE_WFE_NONCEREJECT": "0",  # no bad nonces at random: a test is the same each run
        "PEBBLE_AUTHZREUSE": "0",  # every order, renewals too, is validated again
    }
    started: list[asyncio.subprocess.Process] = []
    try:
        with pebble.log.open("ab") as out:
            for argv in commands:
                started.append(
                    await asyncio.create_subprocess_exec(
                        *argv, stdout=out, stderr=out, stdin=asyncio.subprocess.DEVNULL, env=env
                    )
                )
        await _until_up(pebble, started)
        yield pebble
    finally:
        for process in started:
            if process.returncode is None:
                process.terminate()
            await process.wait()


def _configure(
    folder: Path, *, http_port: int, validity_s: int | None
) -> tuple[Pebble, list[list[str]]]:
    """pebble's files: its HTTPS certificate and key, its configuration; and the commands
    that start its DNS, then pebble."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = LocalCA()
    own = ca.issue("localhost")
    (folder / "cert.pem").write_bytes(own.cert_pem)
    (folder / "key.pem").write_bytes(own.key_pem)
    dns, acme, management = _free_port(), _free_port(), _free_port()
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{acme}",
            "managementListenAddress": f"127.0.0.1:{management}",
            "certificate": str(folder / "cert.pem"),
            "privateKey": str(folder / "key.pem"),
            "httpPort": http_port,
            "tlsPort": _free_port(),  # TLS-ALPN-01: never answered, never offered by clonebot
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
            **({"certificateValidityPeriod": validity_s} if validity_s else {}),
        }
    }
    (folder / "pebble.json").write_text(json.dumps(config))
    pebble = Pebble(
        f"https://localhost:{acme}/dir", ca.write(folder / "ca.pem"),
        f"https://localhost:{management}", folder / "pebble.log",
    )  # fmt: skip
    dns_server = [
        "pebble-challtestsrv", "-dns01", f"127.0.0.1:{dns}", "-http01", "", "-https01", "",
        "-tlsalpn01", "", "-defaultIPv6", "", "-management", f"127.0.0.1:{_free_port()}",
    ]  # fmt: skip
    server = ["pebble", "-config", str(folder / "pebble.json"), "-dnsserver", f"127.0.0.1:{dns}"]
    return pebble, [dns_server, server]


async def _until_up(pebble: Pebble, started: list[asyncio.subprocess.Process]) -> None:
    for _ in range(100):
        if any(p.returncode is not None for p in started):
            break
        try:
            await asyncio.to_thread(pebble._get, pebble.directory)
            return
        except OSError:
            await asyncio.sleep(0.1)
    log = await asyncio.to_thread(pebble.log.read_text)
    raise AssertionError(f"pebble did not start: {log[-2000:]}")
