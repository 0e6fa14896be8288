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
        channel = await self.channel_for(*about)
        if channel is None:
            return
        try:
            await self._client.chat_postMessage(channel=channel, **message.to_dict())
        except SlackApiError as exc:
            log.warning("notification to %s not sent: %s", channel, exc.response.get("error"))

    async def direct(self, user: str, message: Message) -> None:
        """A direct message (in the app's Messages tab of ``user``)."""
        try:
            await self._client.chat_postMessage(channel=user, **message.to_dict())
        except SlackApiError as exc:
            log.warning("direct message to %s not sent: %s", user, exc.response.get("error"))
