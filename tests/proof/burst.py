"""Slack's side of a burst, in a process of its own: slash commands posted to a bot's endpoint
at an even pace, each signed as Slack signs it, and how long each took to be acknowledged.

A process of its own so that the times are not those of a test process busy playing Slack's
Web API at the same moment. Reads ``{"url", "secret", "within_s", "commands": [payload…]}``
as JSON on stdin; writes one JSON line per command ``{"n", "sent_at", "status", "text",
"elapsed_s"}`` (``sent_at`` on the wall clock, for the other process to compare).

    python -m tests.proof.burst < burst.json
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from tests.slack.signing import SlackSender, command_request


async def send_burst(job: dict[str, Any]) -> list[dict[str, Any]]:
    commands: list[dict[str, str]] = job["commands"]
    pace = float(job["within_s"]) / len(commands)
    async with SlackSender(url=job["url"], signing_secret=job["secret"]) as sender:

        async def send(n: int) -> dict[str, Any]:
            await asyncio.sleep(n * pace)
            sent_at = time.time()
            reply = await sender.send(command_request(commands[n]))
            return {
                "n": n,
                "sent_at": sent_at,
                "status": reply.status,
                "text": reply.text,
                "elapsed_s": reply.elapsed_s,
            }

        return await asyncio.gather(*(send(n) for n in range(len(commands))))


def main() -> None:
    for result in asyncio.run(send_burst(json.load(sys.stdin))):
        print(json.dumps(result))


if __name__ == "__main__":
    main()
