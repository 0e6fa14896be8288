"""Log lines as ``clonebot serve`` writes them: text for a terminal, or JSON."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Callable

import pytest

from bot.logs import TEXT_FORMAT, log_handler
from services.log_context import job_logged, request_logged

TOKEN = "xoxb-1234-5678-abcdefghijkl"
TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) ([\w.]+): (.*)")


def _logged(fmt: str, emit: Callable[[logging.Logger], None]) -> list[str]:
    """The lines a logger named ``clonebot.test`` wrote while ``emit(logger)`` ran."""
    stream = io.StringIO()
    logger = logging.getLogger("clonebot.test")
    handler = log_handler(fmt, stream)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        emit(logger)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue().splitlines()


def test_text_is_the_format_clonebot_always_wrote_with_ids_only_when_there_are_some() -> None:
    def emit(logger: logging.Logger) -> None:
        logger.info("router: HAProxy on %s", "127.0.0.1:8080")
        with request_logged() as request, job_logged("0a1b2c3d4e5f"):
            logger.warning("a line in a job (request %s)", request)

    plain, in_job = _logged("text", emit)
    assert TEXT_FORMAT == "%(asctime)s %(levelname)s %(name)s: %(message)s"
    match = TEXT_LINE.fullmatch(plain)
    assert match is not None, plain
    assert match.groups() == ("INFO", "clonebot.test", "router: HAProxy on 127.0.0.1:8080")
    match = TEXT_LINE.fullmatch(in_job)
    assert match is not None, in_job
    request = re.search(r"request ([0-9a-f]{16})\)", in_job)
    assert request is not None
    assert match.group(3).endswith(f" [job=0a1b2c3d4e5f request={request.group(1)}]")


def test_json_lines_parse_and_carry_ids_level_logger_and_a_redacted_traceback() -> None:
    def emit(logger: logging.Logger) -> None:
        logger.info("outside")
        with job_logged("feedbeef0001"):
            logger.info("inside the job")
            try:
                raise RuntimeError(f"Slack refused {TOKEN}")
            except RuntimeError:
                logger.exception("posting failed with %s", TOKEN)
        logger.error("postgresql+asyncpg://clonebot:s3cret@db/clonebot unreachable")

    outside, inside, failed, url = (json.loads(line) for line in _logged("json", emit))
    assert set(outside) == {"time", "level", "logger", "message", "job_id", "request_id"}
    assert (outside["level"], outside["logger"], outside["message"]) == (
        "INFO",
        "clonebot.test",
        "outside",
    )
    assert outside["time"].endswith("+00:00")
    assert (outside["job_id"], outside["request_id"]) == (None, None)
    assert (inside["job_id"], inside["message"]) == ("feedbeef0001", "inside the job")
    assert failed["level"] == "ERROR" and failed["job_id"] == "feedbeef0001"
    assert failed["message"] == "posting failed with (redacted)"
    assert failed["exc"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: Slack refused (redacted)" in failed["exc"]
    assert TOKEN not in json.dumps(failed)
    assert url["message"] == "postgresql+asyncpg://(redacted)@db/clonebot unreachable"
    assert url["job_id"] is None  # the job's block ended


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_ids_follow_a_request_into_the_tasks_it_starts_and_no_further(fmt: str) -> None:
    logger = logging.getLogger("clonebot.test")

    async def work() -> None:
        logger.info("in a task the request started")

    stream = io.StringIO()
    handler = log_handler(fmt, stream)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with request_logged():
            task = asyncio.create_task(work())
        logger.info("after the request")
        await task
    finally:
        logger.removeHandler(handler)
    after, in_task = stream.getvalue().splitlines()
    if fmt == "json":
        assert json.loads(after)["request_id"] is None
        assert re.fullmatch(r"[0-9a-f]{16}", json.loads(in_task)["request_id"])
    else:
        assert "request=" not in after
        assert re.search(r" \[request=[0-9a-f]{16}\]$", in_task)
