"""Environment names (valid, free or held), clone node names and the rewriting of names
inside configuration."""

from __future__ import annotations

import re
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass

from services.docker import JSON, DockerClient
from services.environments import PROJECT
from services.errors import InvalidName, NameTaken

_NAME = re.compile(r"[a-z][a-z0-9-]*")
MAX_NAME = 63


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid environment name, else raise ``InvalidName``.

    It must be both a Docker name and a DNS label, so that ``<name>.<base domain>`` works.
    """
    if not name:
        raise InvalidName(name, "it is empty")
    if len(name) > MAX_NAME:
        raise InvalidName(name, f"at most {MAX_NAME} characters")
    if not name[0].isascii() or not name[0].isalpha() or not name[0].islower():
        raise InvalidName(name, "it must start with a lowercase letter")
    if not _NAME.fullmatch(name):
        raise InvalidName(name, "use only lowercase letters, digits and hyphens")
    if name.endswith("-"):
        raise InvalidName(name, "it must not end with a hyphen")
    return name


def node_name(*, env: str, layer: str, number: int) -> str:
    return f"{env}-{layer}-{number}"


def default_clone_name(source: str, taken: Container[str]) -> str:
    """``<source>-clone<N>`` with the first free N from 1 (``taken``: a set, or ``HeldNames``)."""
    n = 1
    while f"{source}-clone{n}" in taken:
        n += 1
    return f"{source}-clone{n}"


@dataclass(frozen=True)
class Holder:
    """Something in Docker that holds an environment name: ``volume qa_data``."""

    kind: str  # "container", "network" or "volume"
    name: str
    project: str | None  # its com.docker.compose.project label

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


class HeldNames:
    """The names held by Docker's containers, networks and volumes, and by the database.

    Anything of a Compose project holds its name: a container, network or volume labelled
    with it, or a volume or network named ``<name>_…`` (a ``docker compose down`` keeps the
    volumes, and they may hold the only copy of its data); and so does the record of an
    environment that is down. Nothing may be created into a held name.
    """

    def __init__(self, holders: Sequence[Holder], *, recorded: Iterable[str] = ()) -> None:
        self._holders = holders
        self._recorded = frozenset(recorded)

    def holders(self, name: str) -> list[Holder]:
        """What in Docker holds ``name``: volumes first, then networks, then containers."""
        found = [
            h
            for h in self._holders
            if h.project == name or (h.kind != "container" and h.name.startswith(f"{name}_"))
        ]
        # named volumes first: "qa_data" says more than an anonymous volume's 64 hex digits
        return sorted(found, key=lambda h: (_KIND_ORDER.index(h.kind), _anonymous(h), h.name))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._recorded or bool(self.holders(name)))


_KIND_ORDER = ("volume", "network", "container")


async def held_names(
    docker: DockerClient, *, renaming: str | None = None, recorded: Iterable[str] = ()
) -> HeldNames:
    """What holds names now, from one listing of each kind of Docker object.

    With ``renaming``, the networks and volumes that environment's containers use are its own:
    they hold no name it is renamed to (renamed back, it finds its ``<old name>_data`` again).
    """
    containers = await docker.list_containers()
    own = [c for c in containers if renaming and _project(c) == renaming]
    own_volumes = {m.get("Name") for c in own for m in c.get("Mounts") or []}
    own_networks = {net for c in own for net in _networks_of(c)}
    holders = [Holder("container", _container_name(c), _project(c)) for c in containers]
    holders += [
        Holder("network", net["Name"], _project(net))
        for net in await docker.list_networks(labels=[])
        if net["Name"] not in own_networks
    ]
    holders += [
        Holder("volume", vol["Name"], _project(vol))
        for vol in await docker.list_volumes(labels=[])
        if vol["Name"] not in own_volumes
    ]
    return HeldNames(holders, recorded=recorded)


async def check_name_free(docker: DockerClient, *, name: str, renaming: str | None = None) -> None:
    """Raise ``NameTaken`` when anything in Docker holds ``name``, saying what holds it."""
    holders = (await held_names(docker, renaming=renaming)).holders(name)
    if any(h.kind == "container" for h in holders):
        raise NameTaken(name)  # an environment: "an environment named 'qa' already exists"
    if holders:
        raise NameTaken(name, describe_holders(holders))


def describe_holders(holders: Sequence[Holder]) -> str:
    """``volume qa_data, network qa_default`` (three at most, then how many more)."""
    shown = ", ".join(str(h) for h in holders[:3])
    return shown + (f" and {len(holders) - 3} more" if len(holders) > 3 else "")


def _anonymous(holder: Holder) -> bool:
    return len(holder.name) == 64 and all(c in "0123456789abcdef" for c in holder.name)


def _project(item: JSON) -> str | None:
    return (item.get("Labels") or {}).get(PROJECT)


def _container_name(summary: JSON) -> str:
    return str((summary.get("Names") or [summary["Id"][:12]])[0]).lstrip("/")


def _networks_of(summary: JSON) -> set[str]:
    return set((summary.get("NetworkSettings") or {}).get("Networks") or {})


def twin_name(*, name: str, source: str, clone: str) -> str:
    """The clone's name for a source network or volume: its project prefix swapped."""
    for sep in ("_", "-"):
        if name.startswith(f"{source}{sep}"):
            return f"{clone}{sep}{name.removeprefix(source + sep)}"
    return f"{clone}_{name}"


@dataclass(frozen=True)
class Rewrite:
    """An environment variable of a clone's node whose value named the source, by its name, and
    which of the source's names it now has in their clone's place. Never the value itself:
    values hold passwords (``DATABASE_URL=postgres://app:PASSWORD@prod_db_1/app``), and a
    rewrite is shown in Slack, stored in the job record and printed by the command line."""

    node: str
    variable: str
    # (the source's name, the clone's), each once, in order; none in a record written before
    # rewrites lost their values (it had ``old`` and ``new``: never read, never shown again)
    hosts: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        """``DATABASE_URL: prod_db_1 → dev-db-1`` (``DATABASE_URL`` alone for an old record)."""
        if not self.hosts:
            return self.variable
        changes = ", ".join(f"{old} → {new}" for old, new in self.hosts)
        return f"{self.variable}: {changes}"


class NameRewriter:
    """Rewrites whole-word mentions of source container names and the source's domain."""

    def __init__(self, replacements: dict[str, str]) -> None:
        self._replacements = replacements
        # longest first, so that prod-db-10 is not read as prod-db-1 followed by 0
        words = sorted(replacements, key=len, reverse=True)
        alternatives = "|".join(re.escape(w) for w in words) or r"(?!x)x"
        self._pattern = re.compile(rf"(?<![A-Za-z0-9_-])(?:{alternatives})(?![A-Za-z0-9_-])")

    def rewrite(self, value: str) -> str:
        return self._pattern.sub(lambda m: self._replacements[m.group(0)], value)

    def rewrite_env(self, *, node: str, env: list[str]) -> tuple[list[str], list[Rewrite]]:
        """The variables with the source's names replaced, and what was replaced in each: the
        names, not the values (which stay in the container's configuration)."""
        out: list[str] = []
        rewrites: list[Rewrite] = []
        for item in env:
            key, sep, value = item.partition("=")
            found = [m.group(0) for m in self._pattern.finditer(value)] if sep else []
            hosts = tuple(
                (old, self._replacements[old])
                for old in dict.fromkeys(found)
                if self._replacements[old] != old
            )
            if hosts:
                rewrites.append(Rewrite(node=node, variable=key, hosts=hosts))
                value = self.rewrite(value)
            out.append(f"{key}{sep}{value}")
        return out, rewrites
