"""Exact snapshots (issue 9, points 12-14): the clone's volume equals the source's at the freeze.

Every comparison is one listing of both volumes made by a container of the helper image
(GNU find and getfattr): name, type, mode, owner, mtime in ns, size, link target, hard-link
group, every extended attribute (POSIX ACLs are the ``system.posix_acl_*`` ones), and the
clone's allocated blocks at most the source's.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from services.docker import DockerClient
from services.environments import OWNER, PROJECT
from services.freeze import pause
from services.lifecycle import clone_environment
from services.settings import Settings
from services.volumes import (
    FinalPass,
    Watch,
    copy_helper,
    ensure_helper_image,
    measure_volumes,
    pre_copy,
)
from tests.conftest import IMAGE, TICKS, compose_labels, exec_output, remove_projects
from tests.conftest import OWNER as TEST_OWNER

# What each source volume holds before the copy. Old mtimes (2020) so that a rename keeps a
# time older than any pre-copy; a 256 MiB file with 4 KiB written; a name with a newline;
# hard links; xattrs and an ACL (set by the helper image, busybox has no setfattr).
_SEED = r"""
set -e
cd /v0
mkdir -p a churn/a churn/b attrs
for i in $(seq 1 50); do echo "old $i" > a/f$i; done
touch -d '2020-01-02 03:04:05' a/* a
for i in $(seq 1 300); do echo "file $i" > churn/a/$i; done
for f in mode owner stamp same; do echo "content of $f" > $f; done
touch -d '2020-01-02 03:04:05' mode owner stamp same
echo linked > old; ln old old-link
echo newline > 'new
line'
head -c 4194304 /dev/urandom > big; touch -d '2020-01-02 03:04:05' big
truncate -s 256M sparse; echo data | dd of=sparse bs=4096 seek=1000 conv=notrunc 2>/dev/null
echo x > attrs/x
cd /v1
for d in $(seq 1 30); do mkdir d$d; for i in $(seq 1 100); do echo "$d $i" > d$d/f$i; done; done
"""
_ATTRS = r"""
set -e
setfattr -n user.colour -v blue /v0/attrs/x
setfattr -n user.empty /v0/attrs
setfacl -m u:1234:rw,g:99:r /v0/attrs/x
setfacl -d -m u:1234:rx /v0/attrs
"""
# The writer renames and deletes files all the time (log rotation, Maildir, temp files).
_CHURN = (
    TICKS
    + r"""
cd /v0/churn; i=0
while :; do
  i=$((i + 1)); k=$((i % 300 + 1))
  if [ -e a/$k ]; then mv a/$k b/$k; else mv b/$k a/$k; fi
  echo t > tmp.$k; rm tmp.$k; read -t 0.001 -u 3 _t
done
"""
)
# Changes made while the other volume is pre-copied: none of them moves an mtime forward.
_DURING_PRE_COPY = r"""
set -e
cd /v0
mv a b
touch -d '2019-05-06 07:08:09' stamp
chmod 0604 mode
chown 1234:99 owner
cp -p same same.tmp; echo 'CONTENT of same' > same.tmp; touch -r same same.tmp; mv same.tmp same
ln old new-link
setfattr -n user.colour -v red attrs/x 2>/dev/null || true
echo again > attrs/new; touch -d '2018-01-01 00:00:00' attrs/new
perl -e 'open(my $f, "+<", "big") or die; seek($f, 2 << 20, 0); print $f "in place"'
touch -d '2020-01-02 03:04:05' big
perl -e 'open(my $f, "+<", "sparse") or die; seek($f, 100 << 20, 0); print $f "in place"'
touch -r big sparse
"""
# Changes between the arming of the final pass and the freeze.
_BEFORE_FREEZE = r"""
set -e
cd /v0
mkdir -p fresh/deep; echo fresh > fresh/deep/f; touch -d '2017-01-01 00:00:00' fresh/deep/f
mv b c
rm 'new
line'
echo other > 'new
line2'
"""
# The names of the files whose bytes are equal in /s and /d (the helper has perl, not cmp).
_SAME_BYTES = r"""
perl -e 'F: for my $f (@ARGV) {
  open(my $s, "<", "/s/$f") or die; open(my $d, "<", "/d/$f") or die;
  while (read($s, my $x, 1 << 20)) { read($d, my $y, 1 << 20); next F if $x ne $y }
  print "$f\n" unless read($d, my $y, 1);
}' big sparse
"""


@dataclass
class Source:
    volumes: list[str]
    container: str  # runs beside the volumes at /v0 and /v1, as a database would


@pytest.fixture
async def source(docker: DockerClient, settings: Settings) -> AsyncIterator[Source]:
    tag = secrets.token_hex(3)
    made: list[str] = []
    cid = ""
    try:
        for i in range(2):
            made.append(await docker.create_volume(name=f"texact{tag}_{i}", labels={}))
        binds = [f"{v}:/v{i}" for i, v in enumerate(made)]
        cid = await docker.create_container(
            name=f"texact{tag}",
            config={
                "Image": IMAGE,
                "Cmd": ["sleep", "100000"],
                "HostConfig": {"Binds": binds, "NetworkMode": "none"},
            },
        )
        await docker.start_container(cid)
        await exec_output(docker, cid, _SEED)
        await ensure_helper_image(docker, image=settings.helper_image, busybox=settings.busybox)
        await in_helper(docker, settings, binds, _ATTRS)
        yield Source(volumes=made, container=cid)
    finally:
        if cid:
            await docker.remove_container(cid)
        for volume in made:
            await docker.remove_volume(volume)


async def in_helper(docker: DockerClient, settings: Settings, binds: list[str], script: str) -> str:
    """A script's output in a throwaway container of the helper image (rsync, getfattr, …)."""
    cid = await docker.create_container(
        name=None,
        config={
            "Image": settings.helper_image,
            "Cmd": ["sh", "-c", script],
            "HostConfig": {"Binds": binds, "NetworkMode": "none"},
        },
    )
    try:
        await docker.start_container(cid)
        code = await docker.wait_container(cid)
        out = await docker.container_logs(cid)
        assert code == 0, out
        return out
    finally:
        await docker.remove_container(cid)


@dataclass
class Listing:
    entries: dict[str, tuple[str, ...]]  # path -> what must be equal
    blocks: dict[str, int]  # path -> 512-byte blocks allocated
    xattrs: str  # getfattr's dump of every attribute, ACLs included


async def listing(
    docker: DockerClient, settings: Settings, volume: str, *, under: str = ""
) -> Listing:
    """One exact listing of a volume (see the module's docstring), or of one folder of it."""
    top, path = (under, "%p") if under else (".", "%P")
    script = (
        f"cd /m && /usr/bin/find {top} -printf '{path}"
        r"\0%y\0%m\0%U\0%G\0%T@\0%s\0%b\0%i\0%n\0%l\0' && "
        f"printf '\\001XATTRS\\001' && getfattr -R -P -h -d -m - -e hex {top} 2>&1"
    )
    out = await in_helper(docker, settings, [f"{volume}:/m:ro"], script)
    found, _, xattrs = out.partition("\x01XATTRS\x01")
    fields = found.split("\0")[:-1]
    rows = [fields[i : i + 11] for i in range(0, len(fields), 11)]
    first_of_inode: dict[str, str] = {}
    for path, kind, *_, inode, links, _target in sorted(rows):
        if kind != "d" and int(links) > 1:
            first_of_inode.setdefault(inode, path)
    entries, blocks = {}, {}
    for path, kind, mode, uid, gid, mtime, size, used, inode, _links, target in rows:
        group = first_of_inode.get(inode, "") if kind != "d" else ""
        # a directory's size depends on its history, not on what it holds
        entries[path] = (kind, mode, uid, gid, mtime, "" if kind == "d" else size, target, group)
        blocks[path] = int(used)
    return Listing(entries=entries, blocks=blocks, xattrs=xattrs)


def assert_same(source: Listing, clone: Listing) -> None:
    assert clone.entries.keys() == source.entries.keys(), "the clone lacks or adds paths"
    differ = {p: (source.entries[p], clone.entries[p]) for p in source.entries}
    assert {p: d for p, d in differ.items() if d[0] != d[1]} == {}
    assert clone.xattrs == source.xattrs
    assert [p for p in source.blocks if clone.blocks[p] > source.blocks[p]] == []


@pytest.mark.slow
@pytest.mark.parametrize("watch", ["inotify", "scan"])
async def test_a_copy_under_renames_deletes_and_quiet_changes_equals_the_frozen_source(
    watch: Watch, docker: DockerClient, settings: Settings, source: Source
) -> None:
    """Renames of old files, touch -d, chmod, chown, a same-size same-mtime rewrite, new hard
    links and xattrs during the pre-copy, a writer renaming and deleting all along: the copy
    equals the source at the freeze (``scan`` is what inotify's limits fall back to)."""
    tag = secrets.token_hex(3)
    targets = [await docker.create_volume(name=f"texact{tag}_to{i}", labels={}) for i in (0, 1)]
    past_sparse = asyncio.Event()

    def on_bytes(copied: int) -> None:
        if copied >= 256 << 20:  # the sparse file is copied: the rest of the pre-copy is left
            past_sparse.set()

    churn = asyncio.create_task(exec_output(docker, source.container, _CHURN))
    try:
        pairs = list(zip(source.volumes, targets, strict=True))
        name = f"texact{tag}-helper"
        async with copy_helper(
            docker, image=settings.helper_image, name=name, pairs=pairs, labels={}
        ) as helper:
            copying = asyncio.create_task(
                pre_copy(docker, helper=helper, count=2, on_bytes=on_bytes, watch=watch)
            )
            # during the pre-copy, or right after if it was too quick for the container
            waiting = asyncio.create_task(past_sparse.wait())
            await asyncio.wait([copying, waiting], timeout=60, return_when="FIRST_COMPLETED")
            waiting.cancel()
            await in_helper(docker, settings, [f"{source.volumes[0]}:/v0"], _DURING_PRE_COPY)
            await copying
            warnings: list[str] = []
            async with FinalPass(
                docker, helper=helper, count=2, on_warning=warnings.append
            ) as final:
                await exec_output(docker, source.container, _BEFORE_FREEZE)
                await pause(docker, source.container)  # the freeze, as a clone's
                try:
                    await final.fire()
                    for src, dst in pairs:
                        assert_same(
                            await listing(docker, settings, src),
                            await listing(docker, settings, dst),
                        )
                finally:
                    await docker.unpause_container(source.container)
            # a busy machine may let the kernel's event queue overflow: said, and compared
            assert [w for w in warnings if not w.startswith("too many changes at once")] == []
        # the user-visible results, said plainly
        clone0 = await listing(docker, settings, targets[0])
        assert "a/f1" not in clone0.entries and "b/f1" not in clone0.entries
        assert clone0.entries["c/f1"][4].startswith("1577934245.")  # 2020-01-02 03:04:05
        assert clone0.entries["new\nline2"][0] == "f" and "new\nline" not in clone0.entries
        assert clone0.entries["new-link"][7] == clone0.entries["old"][7] != ""
        assert clone0.blocks["sparse"] <= 64, "the sparse file was inflated"
        # changed in place during the pre-copy with the mtime set back: patched page by page
        assert clone0.entries["big"][4].startswith("1577934245.")
        same = await in_helper(
            docker, settings, [f"{source.volumes[0]}:/s:ro", f"{targets[0]}:/d:ro"], _SAME_BYTES
        )
        assert same.split() == ["big", "sparse"], "a file changed in place was not copied"
        assert "user.colour=0x726564" in clone0.xattrs  # red
        assert "system.posix_acl_access" in clone0.xattrs
    finally:
        churn.cancel()
        for volume in targets:
            await docker.remove_volume(volume)


async def test_each_of_twelve_volumes_gets_its_own_size(
    docker: DockerClient, settings: Settings
) -> None:
    """Sizes measured in the volumes' order (a glob of /from/*/ put /from/10 before /from/2)."""
    tag = secrets.token_hex(3)
    volumes = [await docker.create_volume(name=f"tsize{tag}_{i}", labels={}) for i in range(12)]
    try:
        binds = [f"{v}:/v{i}" for i, v in enumerate(volumes)]
        script = "for i in $(seq 0 11); do head -c $(((i + 1) * 65536)) /dev/zero > /v$i/f; done"
        await ensure_helper_image(docker, image=settings.helper_image, busybox=settings.busybox)
        await in_helper(docker, settings, binds, script)
        sizes = await measure_volumes(
            docker, image=settings.helper_image, volumes=volumes, labels={}
        )
        kib = [sizes.used[v] // 1024 for v in volumes]
        assert kib == sorted(kib) and len(set(kib)) == 12, kib
        assert all(64 * (i + 1) <= k <= 64 * (i + 1) + 16 for i, k in enumerate(kib)), kib
    finally:
        for volume in volumes:
            await docker.remove_volume(volume)


# The source's database: exact data beside a writer that renames files and a directory of old
# files, and deletes temp files, all the time.
_DB = (
    TICKS
    + r"""
cd /data
if [ ! -e ready ]; then
  mkdir -p churn/a churn/d1 static
  for i in $(seq 1 300); do echo "file $i" > churn/a/$i; done
  for i in $(seq 1 50); do echo "old $i" > churn/d1/f$i; done
  touch -d '2020-01-02 03:04:05' churn/d1/* churn/a/*
  truncate -s 256M static/sparse; echo data | dd of=static/sparse bs=4096 seek=9 conv=notrunc
  echo linked > static/one; ln static/one static/two
  echo nl > 'static/new
line'
  touch ready
fi
cd churn; mkdir -p b; i=0
while :; do
  i=$((i + 1)); k=$((i % 300 + 1))
  if [ -e a/$k ]; then mv a/$k b/$k; else mv b/$k a/$k; fi
  echo t > tmp.$k; rm tmp.$k
  if [ -d d1 ]; then mv d1 d2; else mv d2 d1; fi
  read -t 0.002 -u 3 _t  # about the pace it had with usleep 1000 and its fork
done
"""
)


@pytest.mark.slow
async def test_a_clone_of_a_source_that_renames_and_deletes_all_along_is_exact(
    docker: DockerClient, settings: Settings
) -> None:
    """Through a whole clone: it succeeds, every renamed file is there exactly once, the
    directory renamed back and forth is there once with its 50 files, and the rest (sparse,
    hard links, a newline in a name, xattrs, an ACL) equals the source's."""
    name = f"t{secrets.token_hex(3)}"
    try:
        volume = await docker.create_volume(
            name=f"{name}_data", labels={PROJECT: name, "com.docker.compose.volume": "data"}
        )
        await docker.create_network({"Name": f"{name}_default", "Labels": {PROJECT: name}})
        cid = await docker.create_container(
            name=f"{name}_db_1",
            config={
                "Image": IMAGE,
                "Cmd": ["sh", "-c", _DB],
                "Labels": {OWNER: TEST_OWNER, **compose_labels(name, "db", 1)},
                "HostConfig": {
                    "NetworkMode": f"{name}_default",
                    "Mounts": [{"Type": "volume", "Source": volume, "Target": "/data"}],
                },
            },
        )
        await docker.start_container(cid)
        for _ in range(100):  # bounded: the seed takes well under a second
            if "ready" in await exec_output(docker, cid, "ls /data"):
                break
            await asyncio.sleep(0.1)
        await ensure_helper_image(docker, image=settings.helper_image, busybox=settings.busybox)
        await in_helper(
            docker,
            settings,
            [f"{volume}:/data"],
            "setfattr -n user.kept -v yes /data/static/one && setfacl -m u:7:r /data/static/one",
        )
        result = await clone_environment(
            docker, settings, source=name, name=f"{name}-c", snapshot=True
        )
        assert result.state == "succeeded", result.error
        print(f"\n  clone {result.elapsed_ms} ms, freeze {result.freeze_ms} ms")

        clone = await listing(docker, settings, f"{result.environment}_data")
        # what does not churn is unchanged since the freeze
        source = await listing(docker, settings, volume, under="static")
        files = sorted(p.split("/")[-1] for p in clone.entries if p[:8] in {"churn/a/", "churn/b/"})
        assert files == sorted(str(k) for k in range(1, 301)), "a renamed file is lost or doubled"
        moved = [p for p in clone.entries if p in {"churn/d1", "churn/d2"}]
        assert len(moved) == 1, moved
        assert len([p for p in clone.entries if p.startswith(f"{moved[0]}/")]) == 50
        static = {p: e for p, e in source.entries.items() if p.startswith("static")}
        assert {p: e for p, e in clone.entries.items() if p.startswith("static")} == static
        assert clone.blocks["static/sparse"] <= source.blocks["static/sparse"] <= 64
        assert clone.entries["static/two"][7] == "static/one"
        assert "user.kept=0x796573" in clone.xattrs and "system.posix_acl_access" in clone.xattrs
    finally:
        await remove_projects(docker, {name, f"{name}-c"})
