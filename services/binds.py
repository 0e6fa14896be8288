"""Host directories (bind mounts) of a source, looked at on the Docker host before a clone.

A clone never runs on its source's host directories (two databases on one data directory
corrupt it): each one it copies becomes a volume of its own, filled like the source's
volumes (see ``freeze.py``). Here a helper container looks at each such directory first, so
that one that cannot be copied is refused, by path, before anything is made.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Literal

from services.docker import JSON, DockerClient
from services.errors import DockerFailed, Refused

# on a clone's volume: the container path of the source's host directory it holds
BIND_PATH = "clonebot.bind-path"

HostKind = Literal["directory", "file", "special", "unreadable"]
_KINDS: tuple[HostKind, ...] = ("directory", "file", "special", "unreadable")
_BAD_BIND = 400

_PROBE = r"""
exec 2>&1
for i in $(seq 0 $(($1 - 1))); do
  p=/from/$i
  if test -d $p; then
    if ls -A $p > /dev/null; then echo "$i directory"; else echo "$i unreadable"; fi
  elif test -f $p; then echo "$i file"
  else echo "$i special"; fi
done
echo done
"""


class BindUnusable(Refused):
    """A host directory a clone must copy cannot be (missing, unreadable, not a directory)."""

    def __init__(self, *, path: str, where: str, reason: str) -> None:
        super().__init__(f"cannot clone the host directory {path} ({where}): {reason}")
        self.path = path


async def probe_host_paths(
    docker: DockerClient, *, image: str, paths: dict[str, str], labels: dict[str, str]
) -> dict[str, HostKind]:
    """What each host path is on the Docker host. ``paths`` maps each to where it is mounted
    (for messages); one that does not exist is refused (``BindUnusable``).

    The paths are mounted as ``Mounts`` of type bind: unlike ``Binds``, a missing path is an
    error there, never created on the host.
    """
    ordered = sorted(paths)
    mounts = [
        {"Type": "bind", "Source": path, "Target": f"/from/{i}", "ReadOnly": True}
        for i, path in enumerate(ordered)
    ]
    config: JSON = {
        "Image": image,
        "Cmd": ["sh", "-c", _PROBE, "probe", str(len(ordered))],
        "Labels": {"clonebot.helper": "true", **labels},
        "StopSignal": "SIGKILL",  # as every helper: see volumes._helper_config
        "HostConfig": {"Mounts": mounts, "NetworkMode": "none"},
    }
    try:
        cid = await docker.create_container(
            name=f"clonebot-probe-{secrets.token_hex(4)}", config=config
        )
    except DockerFailed as exc:
        if exc.status == _BAD_BIND and (path := _named_path(exc.message, ordered)):
            reason = "it does not exist on the Docker host"
            raise BindUnusable(path=path, where=paths[path], reason=reason) from exc
        raise
    try:
        await docker.start_container(cid)
        code = await docker.wait_container(cid)
        out = await docker.container_logs(cid)
    finally:
        await docker.remove_container(cid)
    lines = out.strip().splitlines()
    if code != 0 or not lines or lines[-1] != "done":
        raise DockerFailed(f"looking at the host directories failed: {out.strip()[-300:]}")
    found: dict[str, HostKind] = {}
    for line in lines[:-1]:
        index, _, kind = line.partition(" ")
        found[ordered[int(index)]] = next(k for k in _KINDS if k == kind)
    return found


def _named_path(message: str, paths: list[str]) -> str | None:
    """The path Docker's refusal names (the longest that fits: /a/b before /a)."""
    return next((p for p in sorted(paths, key=len, reverse=True) if p in message), None)


def bind_volume_name(*, clone: str, layer: str, destination: str, host_path: str) -> str:
    """The name of a clone's volume for a host directory: readable, and one per directory."""
    digest = hashlib.sha256(f"{layer}\0{host_path}".encode()).hexdigest()[:6]
    return f"{clone}_{_slug(layer)[:32]}-{_slug(destination)[:48]}-{digest}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]+", "-", text).strip("-._") or "root"
