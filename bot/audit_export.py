"""The audit log written out: a table for people, JSON, JSON lines or CSV for compliance tools.

The exports stream: each entry is written as it is read (``services.audit.stream_entries``
reads a page at a time), so a large log never sits in memory whole. The table, for people,
shows the newest ``TABLE_ROWS`` and says how to get the rest.
"""

from __future__ import annotations

import csv
import json
import textwrap
from collections.abc import AsyncIterator, Iterable
from datetime import UTC
from enum import StrEnum
from typing import TextIO

from rich.table import Column, Table
from rich.text import Text

from storage.models import AuditEntry

TABLE_ROWS = 200
CSV_COLUMNS = (
    "id", "at", "actor", "action", "environment", "channel", "allowed", "reason", "detail"
)  # fmt: skip
# a spreadsheet runs a cell that starts with one of these as a formula (CSV injection); a
# leading ' makes it text (OWASP's advice, which adds tab and carriage return to the four)
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class AuditFormat(StrEnum):
    TABLE = "table"
    JSON = "json"
    JSONL = "jsonl"
    CSV = "csv"


def entry_json(e: AuditEntry) -> dict[str, object]:
    """One entry as JSON: ``at`` in ISO 8601 (UTC), ``detail`` as recorded."""
    keys = ("actor", "action", "environment", "channel", "allowed", "reason", "detail")
    return {"at": e.at.isoformat(), **{k: getattr(e, k) for k in keys}, "id": e.id}


async def write_json(entries: AsyncIterator[AuditEntry], *, to: TextIO) -> None:
    """One JSON array (as ``json.dumps(…, indent=2)`` would print it), an entry at a time."""
    separator = "[\n"
    async for e in entries:
        to.write(separator + textwrap.indent(json.dumps(entry_json(e), indent=2), "  "))
        separator = ",\n"
    to.write("[]\n" if separator == "[\n" else "\n]\n")


async def write_jsonl(entries: AsyncIterator[AuditEntry], *, to: TextIO) -> None:
    """One JSON object a line."""
    async for e in entries:
        to.write(json.dumps(entry_json(e), separators=(",", ":")) + "\n")


async def write_csv(entries: AsyncIterator[AuditEntry], *, to: TextIO) -> None:
    """A header row, then one row an entry; ``detail`` as compact JSON in one cell."""
    writer = csv.writer(to)
    writer.writerow(CSV_COLUMNS)
    async for e in entries:
        writer.writerow(safe_cells(csv_row(e)))


def csv_row(e: AuditEntry) -> list[str]:
    detail = json.dumps(e.detail or {}, separators=(",", ":"), sort_keys=True)
    allowed = "true" if e.allowed else "false"
    return [
        str(e.id), e.at.isoformat(), e.actor, e.action, e.environment or "", e.channel or "",
        allowed, e.reason, detail,
    ]  # fmt: skip


def safe_cells(cells: Iterable[str]) -> list[str]:
    """Cells a spreadsheet shows as text, never runs as a formula."""
    return [f"'{c}" if c.startswith(_FORMULA_STARTS) else c for c in cells]


def audit_table(entries: Iterable[AuditEntry]) -> Table:
    """Newest first; the cells are text, never Rich markup (a reason may hold brackets). A
    narrow terminal folds a long cell rather than cut it: nothing of an entry is lost."""
    folded = [Column(h, overflow="fold") for h in ("actor", "action", "environment", "channel")]
    table = Table(
        Column("time (UTC)", no_wrap=True, min_width=len("2026-11-30T14:05:09Z")),
        *folded,
        Column("outcome", no_wrap=True),
        Column("reason", overflow="fold"),
    )
    for e in entries:
        outcome = Text("allowed") if e.allowed else Text("refused", style="red")
        table.add_row(
            Text(utc_time(e)), Text(e.actor), Text(e.action), Text(e.environment or ""),
            Text(e.channel or ""), outcome, Text(e.reason),
        )  # fmt: skip
    return table


def utc_time(e: AuditEntry) -> str:
    """``2026-11-30T14:05:09Z``."""
    return e.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
