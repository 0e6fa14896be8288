"""What the copy relay runs in the target engine's helper when the source's helper asks
(services/relay.py): rsync's server receiving into one of /to/<i>, with clonebot's options.
The source helper mounts users' data, so anything else it announces is refused. No engine."""

from __future__ import annotations

import pytest

from services.relay import _server_command

SEEN = [  # what the copies ask for (read from the relay's announcements)
    "rsync --server -lHogDtpAXrSe.iLsfxCIvu --delete -@-1 --numeric-ids . /to/0/",
    "rsync --server -lHogDtpAXrSe.iLsfxCIvu -@-1 --numeric-ids . /to/12/",
    "rsync --server -lHogDtpAXrSIe.iLsfxCIvu --force --delete-missing-args -@-1 --numeric-ids"
    " --from0 . /to/1/",
    "rsync --server -lHogDtpAXrSe.iLsfxCIvu --delete --existing --ignore-existing --force"
    " -@-1 --numeric-ids . /to/0/",
]


@pytest.mark.parametrize("command", SEEN)
def test_the_copies_commands_are_run(command: str) -> None:
    assert _server_command(command.split())


@pytest.mark.parametrize(
    "command",
    [
        "rsync --server --daemon --config=/to/0/x.conf . /to/0/",
        "rsync --server -lr --log-file=/to/0/log . /to/0/",
        "rsync --server -lr --write-batch=b . /to/0/",
        "rsync --server -lr --backup-dir=/etc . /to/0/",
        "rsync --server -lr . /etc/",
        "rsync --server -lr . /to/0/../../etc/",
        "rsync --server -lr . /to/0",
        "rsync --server -lr /to/0/ . /to/0/",
        "sh -c reboot . /to/0/",
        "rsync --sender --server -lr . /to/0/",
        "rsync --server",
    ],
)
def test_anything_else_is_refused(command: str) -> None:
    assert not _server_command(command.split())
