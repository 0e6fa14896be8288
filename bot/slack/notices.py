"""Team notifications: to an environment's notify channel, or CLONEBOT_NOTIFY_CHANNEL.

A notification that cannot be sent is logged, never raised: the action it reports is done.
"""

from __future__ import annotations

import logging

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.slack.messages import Message
from services.context import Services
from storage import repositories as repo

log = logging.getLogger(__name__)


class Notices:
    def __init__(self, svc: Services, client: AsyncWebClient) -> None:
        self._svc, self._client = svc, client

    async def channel_for(self, *names: str | None) -> str | None:
        """The first of the environments' notify channels that is set, else the default."""
        async with self._svc.sessions() as session:
            for name in names:
                record = await repo.get_environment(session, name) if name else None
                if record is not None and record.notify_channel:
                    return record.notify_channel
        return self._svc.settings.notify_channel

    async def send(self, message: Message, *, about: tuple[str | None, ...]) -> None:
        """Tell the team of the first environment of ``about`` that has a notify channel."""
        try:
            channel = await self.channel_for(*about)
        except Exception:
            log.exception("no notify channel found for %s", about)
            return
        await self.send_to(channel, message)

    @property
    def default_channel(self) -> str | None:
        return self._svc.settings.notify_channel

    async def send_to(self, channel: str | None, message: Message) -> None:
        if channel is not None:
            await self._post(channel, message)

    async def direct(self, user: str, message: Message) -> None:
        """A direct message (in the app's Messages tab of ``user``)."""
        await self._post(user, message)

    async def _post(self, channel: str, message: Message) -> None:
        try:
            await self._client.chat_postMessage(channel=channel, **message.to_dict())
        except SlackApiError as exc:
            log.warning("notification to %s not sent: %s", channel, exc.response.get("error"))
        except Exception:
            log.exception("notification to %s not sent", channel)
