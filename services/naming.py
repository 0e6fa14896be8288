"""Environment names, clone node names and the rewriting of names inside configuration."""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.errors import InvalidName

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


def default_clone_name(source: str, taken: set[str]) -> str:
    """``<source>-clone<N>`` with the first free N from 1."""
    n = 1
    while f"{source}-clone{n}" in taken:
        n += 1
    return f"{source}-clone{n}"


def twin_name(*, name: str, source: str, clone: str) -> str:
    """The clone's name for a source network or volume: its project prefix swapped."""
    for sep in ("_", "-"):
        if name.startswith(f"{source}{sep}"):
            return f"{clone}{sep}{name.removeprefix(source + sep)}"
    return f"{clone}_{name}"


@dataclass(frozen=True)
class Rewrite:
    """One value of an environment variable that named the source, and its clone's version."""

    node: str
    variable: str
    old: str
    new: str


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
        out: list[str] = []
        rewrites: list[Rewrite] = []
        for item in env:
            key, sep, value = item.partition("=")
            new = self.rewrite(value) if sep else value
            if new != value:
                rewrites.append(Rewrite(node=node, variable=key, old=value, new=new))
            out.append(f"{key}{sep}{new}")
        return out, rewrites
