"""The audit log as its readers get it: `clonebot audit` exported as a table, JSON, JSON lines
or CSV (through the real command line, on SQLite and PostgreSQL), and `/env audit ENV` in
Slack (through the real HTTP endpoint, signed, against the Slack emulator)."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import timedelta
from typing import Any

from bot.audit_export import CSV_COLUMNS, TABLE_ROWS
from services.audit import stream_entries
from services.context import Services, open_services
from services.settings import Settings
from storage.models import AuditEntry, EnvironmentRecord, utcnow
from tests.cli import clonebot
from tests.conftest import OWNER, MakeSource
from tests.serving import STRANGER, Bot

DAY = timedelta(days=1)


async def _write(svc: Services, *entries: dict[str, Any]) -> None:
    """Entries written straight to the database, in order (ids rising), ``at`` as given."""
    async with svc.sessions() as session, session.begin():
        for fields in entries:
            session.add(AuditEntry(**({"channel": None, "reason": "", "detail": {}} | fields)))


def _entry(actor: str, *, ago: timedelta, env: str = "shop", **fields: Any) -> dict[str, Any]:
    return {
        "actor": actor, "action": "clone", "environment": env, "allowed": True,
        "at": utcnow() - ago, **fields,
    }  # fmt: skip


def _ok(settings: Settings, *args: str) -> str:
    done = clonebot("audit", *args, settings=settings)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def _a_week_of_entries(svc: Services) -> None:
    await _write(
        svc,
        _entry("UOLD00001", ago=8 * DAY),
        _entry(OWNER, ago=2 * DAY, channel="CTEAM0001", detail={"job": "j-1", "name": "shop-2"}),
        _entry("UBLOG0001", ago=DAY, env="blog", action="delete", detail={"job": "j-2"}),
        _entry(
            "UEVIL0001", ago=timedelta(hours=1), action="share", allowed=False,
            reason='=HYPERLINK("http://evil.test","click")', detail={"user": "@everyone"},
        ),
    )  # fmt: skip


async def test_csv_is_one_row_an_entry_safe_for_spreadsheets(
    svc: Services, db_settings: Settings
) -> None:
    await _a_week_of_entries(svc)
    rows = list(csv.reader(io.StringIO(_ok(db_settings, "--since", "7d", "--format", "csv"))))
    assert rows[0] == list(CSV_COLUMNS)
    found = [dict(zip(CSV_COLUMNS, row, strict=True)) for row in rows[1:]]
    assert [r["actor"] for r in found] == ["UEVIL0001", "UBLOG0001", OWNER], "8 days is too old"
    evil, _, owner = found
    assert evil["reason"] == '\'=HYPERLINK("http://evil.test","click")', "never a formula"
    assert evil["detail"] == '{"user":"@everyone"}', "compact JSON, starting with {"
    assert (evil["allowed"], evil["action"]) == ("false", "share")
    assert json.loads(owner["detail"]) == {"job": "j-1", "name": "shop-2"}
    assert (owner["channel"], owner["environment"], owner["allowed"]) == (
        "CTEAM0001",
        "shop",
        "true",
    )
    assert owner["at"].endswith("+00:00"), "ISO 8601, UTC"


async def test_json_jsonl_and_the_json_alias_give_the_same_entries(
    svc: Services, db_settings: Settings
) -> None:
    await _a_week_of_entries(svc)
    array = json.loads(_ok(db_settings, "--since", "7d", "--format", "json"))
    assert json.loads(_ok(db_settings, "--since", "7d", "--json")) == array
    lines = _ok(db_settings, "--since", "7d", "--format", "jsonl").splitlines()
    assert [json.loads(line) for line in lines] == array
    assert [e["actor"] for e in array] == ["UEVIL0001", "UBLOG0001", OWNER]
    assert array[2]["detail"] == {"job": "j-1", "name": "shop-2"}
    assert array[0]["allowed"] is False
    everything = json.loads(_ok(db_settings, "--json"))
    assert [e["actor"] for e in everything][-1] == "UOLD00001", "no --since: no limit"
    only_blog = [
        json.loads(line)
        for line in _ok(db_settings, "--env", "blog", "--format", "jsonl").splitlines()
    ]
    assert [(e["actor"], e["environment"]) for e in only_blog] == [("UBLOG0001", "blog")]


async def test_the_table_shows_each_entry_in_utc_newest_first(
    svc: Services, db_settings: Settings
) -> None:
    await _a_week_of_entries(svc)
    rows = _table_rows(_ok(db_settings, "--since", "7d"))
    assert [r[1] for r in rows] == ["UEVIL0001", "UBLOG0001", OWNER], "newest first, 8 days out"
    evil, _, owner = rows
    when = (utcnow() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:")
    assert evil[0].startswith(when) and evil[0].endswith("Z") and len(evil[0]) == 20
    assert evil[5:] == ["refused", '=HYPERLINK("http://evil.test","click")'], "folded, not cut"
    assert owner[2:6] == ["clone", "shop", "CTEAM0001", "allowed"]
    assert "UOLD00001" in [r[1] for r in _table_rows(_ok(db_settings, "--since", "never"))]


def _table_rows(table: str) -> list[list[str]]:
    """The table's rows, each cell's lines joined (a row whose first cell is blank goes on the
    row above: a long cell folded)."""
    rows: list[list[str]] = []
    for line in table.splitlines():
        if not line.startswith("│"):
            continue
        cells = [c.strip() for c in line.strip("│").split("│")]
        if cells[0]:
            rows.append(cells)
        else:
            rows[-1] = [a + b for a, b in zip(rows[-1], cells, strict=True)]
    return rows


async def test_a_large_log_is_exported_whole_page_by_page(
    svc: Services, db_settings: Settings
) -> None:
    many = 1234  # more than two of the export's pages (500)
    await _write(svc, *(_entry(f"U{n:08d}", ago=timedelta(minutes=5)) for n in range(many)))
    lines = _ok(db_settings, "--format", "jsonl").splitlines()
    assert [json.loads(line)["actor"] for line in lines] == [
        f"U{n:08d}" for n in reversed(range(many))
    ]
    rows = list(csv.reader(io.StringIO(_ok(db_settings, "--format", "csv", "--since", "1h"))))
    assert len(rows) == many + 1
    table = _ok(db_settings)
    shown = [f"U{n:08d}" for n in reversed(range(many - TABLE_ROWS, many))]
    assert [r[1] for r in _table_rows(table)] == shown, "the table shows the newest 200"
    assert f"the newest {TABLE_ROWS} shown: --since narrows" in table
    # pages of 7: every entry once, newest first, the window kept on every page
    await _write(svc, *(_entry("UOLD00001", ago=3 * DAY) for _ in range(3)))
    since = utcnow() - DAY
    paged = [e.actor async for e in stream_entries(svc, since=since, page=7)]
    assert paged == [f"U{n:08d}" for n in reversed(range(many))]


def test_a_bad_since_or_two_formats_are_refused_in_one_line(settings: Settings) -> None:
    for args, message in [
        (
            ("--since", "3x"),
            "refused: --since is a whole number with s, m, h, d or w (like 3d or 12h), "
            "or never; not '3x'",
        ),
        (("--since", "0d", "--format", "csv"), "refused: --since must be longer than 0"),
        (
            ("--json", "--format", "csv"),
            "refused: --json is --format json: give one of --json and --format csv",
        ),
    ]:
        done = clonebot("audit", *args, settings=settings)
        assert (done.returncode, done.stderr.strip(), done.stdout) == (2, message, ""), args


async def test_env_audit_shows_the_last_20_to_who_may_view_it(
    bot: Bot, make_source: MakeSource
) -> None:
    name = (await make_source(web_nodes=1, db_nodes=0)).name
    async with open_services(bot.settings, migrate=False) as svc:
        async with svc.sessions() as session, session.begin():  # seen an hour ago
            made = utcnow() - timedelta(hours=1)
            session.add(EnvironmentRecord(name=name, owner=OWNER, created_at=made))
        await _write(
            svc,
            *(_entry(f"UACTOR{n:03d}", ago=timedelta(minutes=30 - n), env=name) for n in range(24)),
            _entry(
                "UACTOR024", ago=timedelta(minutes=6), env=name, allowed=False,
                reason=f"<!channel> & <@{OWNER}> said <b>no</b>",
            ),
            _entry(
                "UACTOR999", ago=timedelta(minutes=1), env="elsewhere",
                reason="about another environment",
            ),
        )  # fmt: skip

    await bot.command(STRANGER, "/env", f"audit {name}")
    refused = await bot.reply(lambda r: "Nothing was done" in r["text"])
    assert f"{name} belongs to <@{OWNER}>" in refused["text"]
    assert "UACTOR" not in refused["text"]

    await bot.command(OWNER, "/env", f"audit {name}")
    reply = await bot.reply(lambda r: "Audit of" in r["text"])
    assert reply["response_type"] == "ephemeral"
    head, *lines = reply["text"].splitlines()
    assert head == f"*Audit of {name}*: the last 20, newest first"
    # the stranger's refusal, audited, first; then the newest 19 of the 25
    assert f"<@{STRANGER}> view · *refused*: {name} belongs to <@{OWNER}>;" in lines[0]
    assert all(re.match(r"`\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ` <@", line) for line in lines)
    assert [line.split()[2] for line in lines[1:]] == [
        f"<@UACTOR{n:03d}>" for n in reversed(range(6, 25))
    ]
    # Slack markup in a reason is shown as typed (no @channel ping); a mention stays one
    assert lines[1].endswith(
        f"clone · *refused*: &lt;!channel&gt; &amp; <@{OWNER}> said &lt;b&gt;no&lt;/b&gt;"
    )
    assert all(line.endswith(" clone · allowed") for line in lines[2:])
    assert "UACTOR999" not in reply["text"]
