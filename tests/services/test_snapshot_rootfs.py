"""A stateful master's own files (outside its volumes) are the clone's as they were frozen.

The clone's first node starts from a commit of the master made during the pre-copy; what the
master changes in its own file system after that commit and before the freeze must reach the
clone too: a changed file, new files and directories, a file of the image removed, a file the
container made and removed, a directory of the image removed and made again. Both ways of
listing those changes are run: the helper reading the container's overlay2 upper directory
(the default on this engine) and ``docker diff`` (any other storage driver).
"""

from __future__ import annotations

import pytest

from services import rootfs
from services.docker import JSON, DockerClient
from services.environments import get_environment
from services.lifecycle import clone_environment
from services.settings import Settings
from tests.conftest import MakeSource, exec_output

# made before the clone starts: these are in the commit
_BEFORE = """
set -e
mkdir -p /srv/keep /srv/gone
echo a > /srv/keep/a; echo b > /srv/gone/b; echo made > /srv/made-then-removed
echo www > /var/www/index.html
"""
# made after the commit, just before the freeze: each is copied into the clone's node
_CHANGES = """
set -e
echo changed > /srv/keep/a
echo new > /srv/keep/new; chmod 0640 /srv/keep/new; chown 12:34 /srv/keep/new
mkdir -p /srv/fresh/deep; echo deep > /srv/fresh/deep/f
echo profile > /root/.profile
"""
# ... and removals, each alone: only a new commit, made while frozen, shows them in the clone
_REMOVALS = {
    "made-then-removed": "rm /srv/made-then-removed",  # no whiteout: it was never in the image
    "image-file-removed": "rm /etc/group",
    "directory-removed": "rm -r /srv/gone",
    "image-directory-replaced": "rm -r /var/www; mkdir /var/www; echo new > /var/www/other",
}
_SCRIPTS = {"changes": _CHANGES} | {k: f"{_CHANGES}\n{v}" for k, v in _REMOVALS.items()}
# every path of the root file system with its type, mode, owner and mtime (and size, but for
# a directory), then the checksum of every regular file outside /bin. Left out: the volumes,
# and what the engine makes anew for each container: its mounts, and its "init" layer, which
# lies above the image and so gives / and /etc the time the container was created.
_ENGINE_MADE = "/proc /sys /dev /data /anon /.dockerenv /etc/hosts /etc/hostname /etc/resolv.conf"
_PRUNE = " -o ".join(f"-path {p}" for p in [*_ENGINE_MADE.split(), "/etc/mtab"])
_LISTING = rf"""
find / -mindepth 1 -xdev \( {_PRUNE} \) -prune -o -print | sort | while IFS= read -r p; do
  if [ "$p" = /etc ]; then stat -c '%n %F %a %u %g' "$p"
  elif [ -d "$p" ] && [ ! -L "$p" ]; then stat -c '%n %F %a %u %g %Y' "$p"
  else stat -c '%n %F %s %a %u %g %Y' "$p"; fi
done
find /srv /etc /root /var -xdev \( {_PRUNE} \) -prune -o -type f -exec md5sum {{}} + | sort
"""


class ChangingDocker(DockerClient):
    """The real engine; the source's master runs a script just before it is frozen."""

    def __init__(self, url: str, *, master: str, script: str) -> None:
        super().__init__(url)
        self.master, self.script = master, script
        self.diffs = 0

    async def pause_container(self, ref: str) -> None:
        if ref == self.master and self.script:
            await exec_output(self, ref, self.script)
            self.script = ""
        await super().pause_container(ref)

    async def diff_container(self, ref: str) -> list[JSON]:
        self.diffs += 1
        return await super().diff_container(ref)


@pytest.mark.parametrize("lister", ["upper directory", "docker diff"])
@pytest.mark.parametrize("script", _SCRIPTS.values(), ids=_SCRIPTS.keys())
async def test_the_masters_own_files_are_cloned_as_they_were_frozen(
    docker: DockerClient,
    settings: Settings,
    make_source: MakeSource,
    monkeypatch: pytest.MonkeyPatch,
    lister: str,
    script: str,
) -> None:
    if lister == "docker diff":  # as with any storage driver but overlay2
        monkeypatch.setattr(rootfs, "upper_dir", lambda master: None)
    source = await make_source(web_nodes=1)
    master = (await get_environment(docker, source.name)).layer("db").master
    await exec_output(docker, master.id, _BEFORE)

    async with ChangingDocker(settings.docker_host, master=master.id, script=script) as changing:
        result = await clone_environment(changing, settings, source=source.name)
    assert changing.script == "", "the source was never frozen"
    if lister == "upper directory":
        assert changing.diffs == 0, "docker diff was called: the upper directory was not read"

    clone = (await get_environment(docker, result.environment)).layer("db").master
    expected = await exec_output(docker, master.id, _LISTING)
    assert "/srv/fresh/deep/f" in expected and "/srv/keep/new" in expected
    assert await exec_output(docker, clone.id, _LISTING) == expected
