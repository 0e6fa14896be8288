"""CLONEBOT_ENGINES: engines beside DOCKER_HOST's (``local``). One that clonebot could not
use stops it at start, naming the setting and the engine. No engine needed."""

from __future__ import annotations

from pathlib import Path

import asyncssh
import pytest
from pydantic import ValidationError

from bot.cli_common import bad_setting
from services.docker import DockerClient
from services.errors import DockerUnavailable
from services.fleet import TLS_FILES, EngineSpec
from services.settings import Settings
from services.ssh_engine import SSHTarget


def _refused(monkeypatch: pytest.MonkeyPatch, engines: str) -> str:
    monkeypatch.setenv("CLONEBOT_ENGINES", engines)
    with pytest.raises(ValidationError) as refused:
        Settings()
    return bad_setting(refused.value)


@pytest.mark.parametrize(
    ("engines", "said"),
    [
        ("west", "CLONEBOT_ENGINES: Value error, 'west' is not name=url"),
        ("local=unix:///run/other.sock", "local named twice (local is DOCKER_HOST)"),
        ("a=unix:///a.sock,a=unix:///b.sock", "a named twice"),
        ("West=unix:///a.sock", "invalid engine name 'West'"),
        ("west=tcp://10.0.0.5:2376", "lacks ca.pem, cert.pem, key.pem"),
        ("west=ssh://deploy@10.0.0.5", "west has no known_hosts: the engine host's key"),
        ("west=ssh://deploy:s3cret@10.0.0.5", "without a password, query or #"),
        ("west=ssh://10.0.0.5/var/run/docker.sock", "is not an engine URL"),
        ("west=http://10.0.0.5:2375/x", "is not an engine URL"),
        ("west=tcp://deploy:s3cret@10.0.0.5:2376", "without a password, query or #"),
        ("west=tcp://deploy@10.0.0.5:2376", "(a user: ssh:// only)"),
        ("west=tcp://10.0.0.5", "give the port of tcp://10.0.0.5"),
    ],
)
def test_an_engine_clonebot_cannot_use_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, engines: str, said: str
) -> None:
    monkeypatch.setenv("CLONEBOT_DATA_DIR", str(tmp_path))
    told = _refused(monkeypatch, engines)
    assert said in told, told
    assert told.startswith("CLONEBOT_ENGINES: "), told


def test_engines_come_after_local_with_their_tls_files_from_the_certs_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/here.sock")
    monkeypatch.setenv("CLONEBOT_ENGINE_CERTS", str(tmp_path / "certs"))
    (tmp_path / "certs" / "west").mkdir(parents=True)
    for name in TLS_FILES:
        (tmp_path / "certs" / "west" / name).write_text("-")
    monkeypatch.setenv("CLONEBOT_ENGINES", " west = tcp://10.0.0.5:2376 , build=unix:///b.sock")
    specs = Settings().engine_specs()
    assert [(s.name, s.url, s.keys_dir) for s in specs] == [
        ("local", "unix:///run/here.sock", None),
        ("west", "tcp://10.0.0.5:2376", tmp_path / "certs" / "west"),
        ("build", "unix:///b.sock", None),
    ]


def test_an_ssh_engine_needs_a_key_that_loads_and_the_hosts_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """clonebot reads no ~/.ssh and asks for no passphrase: the engine's folder holds an
    unencrypted private key and a known_hosts, or it is refused at start, saying which."""
    folder = tmp_path / "engines" / "west"
    folder.mkdir(parents=True)
    monkeypatch.setenv("CLONEBOT_DATA_DIR", str(tmp_path))
    (folder / "known_hosts").write_text("10.0.0.5 ssh-ed25519 AAAA\n")
    assert "has no private key (id_ed25519, id_ecdsa, id_rsa)" in _refused(
        monkeypatch, "west=ssh://deploy@10.0.0.5"
    )
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(folder / "id_ed25519", "pkcs8-pem", passphrase="hunter2")
    locked = _refused(monkeypatch, "west=ssh://deploy@10.0.0.5")
    assert "id_ed25519 does not load (a key without a passphrase)" in locked, locked
    key.write_private_key(folder / "id_ed25519")
    monkeypatch.setenv("CLONEBOT_ENGINES", "west=ssh://deploy@10.0.0.5:2222")
    west = Settings().engine_specs()[1]
    assert (west.url, west.keys_dir, west.address) == (str(west.url), folder, "10.0.0.5")
    assert west.connect().remote


def test_an_engines_published_ports_are_reached_at_its_urls_host() -> None:
    """The router reaches a node on another engine at the host of the engine's URL; one on
    a socket of this host, at this host's loopback."""
    assert EngineSpec("west", "tcp://10.0.0.5:2376", Path("/c")).address == "10.0.0.5"
    assert EngineSpec("east", "tcp://docker-east.internal:2376").address == "docker-east.internal"
    assert EngineSpec("here", "unix:///run/other.sock").address == "127.0.0.1"


async def test_an_engines_address_is_resolved_to_the_ip_its_nodes_bind_to() -> None:
    """What a node published for the router binds to, and what HAProxy is given: an IP,
    the engine's name resolved by clonebot (IPv4 first); a name that does not resolve says so."""
    assert await DockerClient("https://10.0.0.5:2376").host_ip() == "10.0.0.5"
    assert await DockerClient("https://localhost:2376").host_ip() == "127.0.0.1"
    assert await DockerClient("unix:///run/other.sock").host_ip() == "127.0.0.1"
    ssh = SSHTarget.of("ssh://deploy@10.0.0.7:2222", Path("/k"))
    assert await DockerClient(ssh=ssh).host_ip() == "10.0.0.7"
    with pytest.raises(DockerUnavailable, match=r"the engine's host nowhere\.invalid does not"):
        await DockerClient("https://nowhere.invalid:2376").host_ip()
