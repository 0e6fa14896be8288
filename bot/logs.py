"""How ``clonebot serve`` logs: readable text at a terminal, or one JSON object a line.

``CLONEBOT_LOG_FORMAT=text`` (the default) writes ``TIME LEVEL LOGGER: MESSAGE`` as before,
followed by ``[job=… request=…]`` when the line was logged while a job ran or a Slack request
was answered. ``json`` writes ``{"time", "level", "logger", "message", "job_id",
"request_id"}`` and ``"exc"`` (the formatted traceback) when there is one; the message and the
traceback have Slack tokens and URL passwords taken out (``bot.health.redact``), as a log
collector keeps and shows what it is sent.

The standard library's logging, not structlog: clonebot and every library it runs (Bolt,
aiohttp, SQLAlchemy, alembic) already log through it, and a filter and a formatter are all
this needs; structlog would have to be bridged to the same handlers.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import IO, Any

from bot.health import redact
from services.log_context import JOB_ID, REQUEST_ID

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class ContextFilter(logging.Filter):
    """Puts the job id and request id of the code logging on its record (None: not in one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.job_id = JOB_ID.get()
        record.request_id = REQUEST_ID.get()
        return True


class TextFormatter(logging.Formatter):
    """The format clonebot has always written, with the ids after the message when any."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        ids = [
            f"{name}={value}"
            for name, value in (("job", _job_id(record)), ("request", _request_id(record)))
            if value
        ]
        line = super().formatMessage(record)
        return f"{line} [{' '.join(ids)}]" if ids else line


class JsonFormatter(logging.Formatter):
    """One JSON object a line, secrets taken out of the message and the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            "job_id": _job_id(record),
            "request_id": _request_id(record),
        }
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exc"] = redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False)


def log_handler(fmt: str, stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing ``fmt`` ("text" or "json") to ``stream`` (stderr by default)."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    return handler


def configure_logging(fmt: str) -> None:
    """INFO and above from every logger to stderr, as ``fmt`` ("text" or "json") says; as
    ``logging.basicConfig``, nothing changes when the root logger has handlers already."""
    logging.basicConfig(level=logging.INFO, handlers=[log_handler(fmt)])


def _job_id(record: logging.LogRecord) -> str | None:
    return getattr(record, "job_id", None)


def _request_id(record: logging.LogRecord) -> str | None:
    return getattr(record, "request_id", None)
