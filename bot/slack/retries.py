"""How the bot's Web API client rides out Slack answering 429, 5xx or not at all.

slack_sdk's own retry handlers, bounded: every handler counts the same attempts (one
``RetryState`` per call), so a call is sent at most ``1 + ATTEMPTS`` times whatever mix of
failures it meets. A 429 is retried after its Retry-After; a 500/503 or a dropped
connection after an exponential back-off with jitter (0.5 s, 1 s, 2 s …).

A progress edit (``chat.update``) answered 429 is not retried here: its editor
(``bot.slack.progress``) drops it for a newer one and waits out the Retry-After itself,
where sleeping in the client would hold the job's message to a stale edit.

A Retry-After over ``LONGEST_WAIT_S`` (or not a whole number of seconds) is not waited out:
the call fails at once with Slack's 429, and its caller says so or gives up as for any other
failure, rather than hold a job's message, a notice or an answer for minutes.
"""

from __future__ import annotations

from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState

ATTEMPTS = 3  # retries of one call, all causes together
LONGEST_WAIT_S = 30
EDITS = "/chat.update"


class _RateLimitRetry(AsyncRateLimitErrorRetryHandler):
    """Slack's Retry-After waited out, except for progress edits (their editor waits)."""

    async def _can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if request.url.endswith(EDITS):
            return False
        if response is not None and response.status_code == 429:
            wait = _retry_after(response)
            if wait is None or wait > LONGEST_WAIT_S:
                return False
        return await super()._can_retry_async(
            state=state, request=request, response=response, error=error
        )


def _retry_after(response: HttpResponse) -> int | None:
    """Slack's Retry-After in seconds (1 when it sends none, as slack_sdk assumes); None
    when it is not a whole number, which slack_sdk's handler could not read."""
    for name, values in response.headers.items():
        if name.lower() == "retry-after":
            text = (values or [""])[0].strip()
            return int(text) if text.isdigit() else None
    return 1


def retry_handlers() -> list[AsyncRetryHandler]:
    """The handlers the bot's AsyncWebClient retries with."""
    return [
        AsyncConnectionErrorRetryHandler(max_retry_count=ATTEMPTS),
        _RateLimitRetry(max_retry_count=ATTEMPTS),
        AsyncServerErrorRetryHandler(max_retry_count=ATTEMPTS),
    ]
