"""The playground's fixed workspace: its team, channels and people (protocol of issue 10)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from bot.playground.workspace import BOT_USER_ID

TEAM_ID = "T0PLAYGRND"
TEAM_DOMAIN = "playground"
CHANNEL = "C0PLAYGRND"  # where commands are typed
TEAM_CHANNEL = "C0TEAMNEWS"  # the notifications channel (CLONEBOT_NOTIFY_CHANNEL)
CHANNELS = {CHANNEL: "playground", TEAM_CHANNEL: "team"}
BOT_USER = BOT_USER_ID

OWNER = "U0OWNER01"  # owns the demo environment
COLLABORATOR = "U0COLLAB01"
STRANGER = "U0STRANGR1"
ADMIN = "U0ADMIN001"  # in CLONEBOT_ADMINS while the playground plays Slack


@dataclass(frozen=True)
class Person:
    id: str
    name: str
    role: str  # what the page says of them: owner, collaborator, stranger, admin

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


PEOPLE = (
    Person(OWNER, "olivia", "owner"),
    Person(COLLABORATOR, "carlos", "collaborator"),
    Person(STRANGER, "sam", "stranger"),
    Person(ADMIN, "ada", "admin"),
)
