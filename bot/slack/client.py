"""The Slack Web API client the bot uses: slack_sdk's, with its calls measured.

Each call's time (retries included) goes to ``clonebot_slack_api_seconds{method}``; each
attempt that failed to ``clonebot_slack_api_errors_total{method,reason}``, counted by a retry
handler that never retries but sees every attempt (a 429 that a later handler retried is
counted too). The method label is one of ``METHODS``, the Web API methods clonebot calls,
or ``other``.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import BasicAuth, FormData
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from services import metrics

METHODS = frozenset(
    {
        "auth.test",
        "chat.postMessage",
        "chat.postEphemeral",
        "chat.update",
        "conversations.info",
        "views.open",
        "views.publish",
        "views.update",
    }
)


def method_label(api_method: str) -> str:
    return metrics.bounded(api_method, METHODS)


class MeasuredWebClient(AsyncWebClient):
    """``AsyncWebClient`` whose calls and failed attempts are counted in ``services.metrics``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # first, so that it sees each attempt before a handler that retries it
        self.retry_handlers = [_AttemptCounter(), *self.retry_handlers]

    async def api_call(
        self,
        api_method: str,
        *,
        http_verb: str = "POST",
        files: dict[str, Any] | None = None,
        data: dict[str, Any] | FormData | None = None,
        params: dict[str, Any] | None = None,
        json: dict[str, Any] | None = None,
        headers: dict[str, Any] | None = None,
        auth: dict[str, Any] | BasicAuth | None = None,
    ) -> AsyncSlackResponse:
        method = method_label(api_method)
        started = time.monotonic()
        try:
            return await super().api_call(
                api_method, http_verb=http_verb, files=files, data=data, params=params,
                json=json, headers=headers, auth=auth,  # type: ignore[arg-type]
            )  # fmt: skip
        except SlackApiError as exc:
            if exc.response.status_code < 400:  # answered, with ok: false
                metrics.SLACK_API_ERROR_COUNT.labels(method, "api").inc()
            raise
        finally:
            metrics.SLACK_API_SECONDS.labels(method).observe(time.monotonic() - started)


class _AttemptCounter(AsyncRetryHandler):
    """Counts each failed attempt by its reason; never asks for a retry itself."""

    async def can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        reason = _reason(response, error)
        if reason is not None:
            method = method_label(request.url.rstrip("/").rpartition("/")[2])
            metrics.SLACK_API_ERROR_COUNT.labels(method, reason).inc()
        return False


def _reason(response: HttpResponse | None, error: Exception | None) -> str | None:
    if error is not None:
        return "connection"
    status = response.status_code if response is not None else 0
    if status == 429:
        return "ratelimited"
    if status >= 500:
        return "server_error"
    if status >= 400:
        return "client_error"
    return None
