"""A stateful master's own file system (outside its volumes): what changed since its commit.

The clone's first node starts from a commit of the master taken during the pre-copy. During
the freeze only the paths changed since are copied into it; when something was removed (a
copy cannot remove a path) the master is committed again instead. What changed is found by
comparing two listings of the container's changes, taken before the commit and during the
freeze:

* on overlay2 (the usual driver) the copy helper lists the container's upper directory,
  mounted read-only: it holds exactly the container's changes, so this takes milliseconds;
* with any other driver, ``docker diff`` and a stat of each path it names. The engine then
  compares the whole image with the container: 0.7 s for a Debian image here, too long for a
  freeze, but always possible.
"""

from __future__ import annotations

import asyncio
import posixpath
from dataclasses import dataclass

from services.docker import JSON, DockerClient, gather_all
from services.environments import Node
from services.errors import DockerFailed

_DIR = 1 << 31  # Go's os.ModeDir, in the mode ``docker cp``'s stat reports
_DELETED = 2  # a ``docker diff`` kind
_STAT_CONCURRENCY = 16
_LIST_ROOTFS = ["perl", "/usr/lib/clonebot/plan.pl", "rootfs"]


@dataclass(frozen=True)
class Entry:
    """One path the container changed: ``kind`` is ``f`` (a file, link, device…), ``d`` a
    directory, ``o`` a directory that hides the image's one (removed and made again, or
    renamed), ``w`` a path removed; ``sig`` changes whenever the path does."""

    kind: str
    sig: str


Listing = dict[str, Entry]  # absolute path in the container -> entry


def upper_dir(master: Node) -> str | None:
    """The host directory that holds the container's own changes, where the engine says so."""
    driver = master.attrs.get("GraphDriver") or {}
    upper = (driver.get("Data") or {}).get("UpperDir")
    if driver.get("Name") != "overlay2" or not isinstance(upper, str):
        return None
    return upper if posixpath.isabs(upper) and ".." not in upper.split("/") else None


async def list_changes(docker: DockerClient, *, master: str, helper: str | None) -> Listing:
    """The container's changes to its image, from the helper (see ``upper_dir``) or the engine."""
    if helper is not None:
        return await _list_upper(docker, helper=helper)
    return await _list_diff(docker, master=master)


def changed_paths(before: Listing, now: Listing) -> list[str] | None:
    """The top-most paths to copy from the source: new or changed files, whole new directories.

    None when something was removed or hidden since ``before``: only a new commit shows that.
    """
    for path, entry in before.items():
        if entry.kind != "w" and path not in now:
            return None  # made by the container and removed since: no whiteout says so
    for path, entry in now.items():
        if entry.kind in "wo" and before.get(path) != entry:
            return None
    chosen: list[str] = []
    for path in sorted(now):
        entry = now[path]
        if entry == before.get(path):
            continue
        if path in before and entry.kind == "d":
            continue  # an existing directory: its changed entries are listed themselves
        if any(path.startswith(parent.rstrip("/") + "/") for parent in chosen):
            continue
        chosen.append(path)
    return chosen


def changed_directories(before: Listing, now: Listing) -> list[str]:
    """The directories that were there before and changed since (their mode, owner or times;
    an entry made or removed in them moved their mtime): their attributes are copied last."""
    return sorted(p for p, e in now.items() if e.kind == "d" and before.get(p, e) != e)


async def _list_upper(docker: DockerClient, *, helper: str) -> Listing:
    listing: Listing = {}
    tail: list[str] = []
    async with docker.exec_session(helper, _LIST_ROOTFS) as ex:
        async for line in ex.lines():
            match line.split(" "):
                case ["entry", kind, sig, hexpath]:
                    path = bytes.fromhex(hexpath).decode(errors="surrogateescape")
                    listing[f"/{path}"] = Entry(kind, sig)
                case _:
                    tail = [*tail[-4:], line]
        code = await ex.exit_code()
    if code != 0:
        raise DockerFailed(f"listing the changes to the source's files failed: {' / '.join(tail)}")
    return listing


async def _list_diff(docker: DockerClient, *, master: str) -> Listing:
    diff = await docker.diff_container(master)
    listing = {str(e["Path"]): Entry("w", "") for e in diff if e["Kind"] == _DELETED}
    limit = asyncio.Semaphore(_STAT_CONCURRENCY)

    async def stat(path: str) -> tuple[str, JSON | None]:
        async with limit:
            return path, await docker.stat_path(master, path)

    paths = [str(e["Path"]) for e in diff if e["Kind"] != _DELETED]
    for path, st in await gather_all(*(stat(p) for p in paths)):
        if st is not None:  # gone since the diff: the next listing does not name it either
            mode = int(st.get("mode", 0))
            sig = f"{mode}/{st.get('size', 0)}/{st.get('mtime', '')}"
            listing[path] = Entry("d" if mode & _DIR else "f", sig)
    return listing
