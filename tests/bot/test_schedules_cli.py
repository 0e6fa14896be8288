"""`clonebot schedule` and `clonebot schedules` as a person runs them: a process of its own,
real output and exit codes (see tests/cli.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import json

from services.access import Request
from services.context import Services
from services.jobs import run_job, submit_clone
from services.settings import Settings
from tests.cli import clonebot
from tests.conftest import OWNER, MakeSource
from tests.serving import STRANGER


async def _clone(svc: Services, make_source: MakeSource) -> str:
    source = await make_source(web_nodes=1, db_nodes=0)
    job = await submit_clone(svc, Request(OWNER), source=source.name, name=f"{source.name}-c")
    assert (await run_job(svc, job.id)).state == "succeeded"
    return job.environment


def _schedules(settings: Settings) -> list[dict[str, object]]:
    done = clonebot("schedules", "--json", settings=settings)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


async def test_a_bad_cron_or_time_zone_is_one_line_and_exit_2_and_nothing_is_kept(
    svc: Services, db_settings: Settings, make_source: MakeSource
) -> None:
    clone = await _clone(svc, make_source)
    for option, value, message in [
        ("--cron", "0 3 * *", "'0 3 * *' is not a cron schedule: five fields, minute hour day "
         'month weekday, like "0 3 * * *"'),
        ("--cron", "0 25 * * *", "'0 25 * * *' is not a cron schedule"),
        ("--tz", "Mars/Base", "'Mars/Base' is not a time zone: an IANA name like Europe/Paris"),
    ]:  # fmt: skip
        args = ["schedule", clone, "refresh", "--as", OWNER, "--cron", "0 3 * * *"]
        args[args.index(option) + 1 if option in args else len(args) :] = (
            [value] if option in args else [option, value]
        )
        done = clonebot(*args, settings=db_settings)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert done.stderr.startswith(f"refused: {message}"), done.stderr
        assert done.stderr.count("\n") == 1 and done.stdout == ""
    missing = clonebot("schedule", clone, "refresh", "--as", OWNER, settings=db_settings)
    assert (missing.returncode, missing.stdout) == (2, "")
    assert missing.stderr.startswith("usage: say `clonebot schedule CLONE refresh --cron")
    assert _schedules(db_settings) == []


async def test_schedules_lists_what_was_set_until_it_is_turned_off(
    svc: Services, db_settings: Settings, make_source: MakeSource
) -> None:
    clone = await _clone(svc, make_source)
    refused = clonebot(
        "schedule", clone, "refresh", "--cron", "0 3 * * *", "--as", STRANGER, settings=db_settings
    )
    assert refused.returncode == 2 and refused.stderr.startswith("refused: ")

    done = clonebot(
        "schedule", clone, "refresh", "--cron", "30 2 * * 1", "--tz", "Europe/Paris",
        "--as", OWNER, settings=db_settings,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{clone} is refreshed weekly mon 02:30 Europe/Paris; next 20")
    [listed] = _schedules(db_settings)
    assert {k: listed[k] for k in ("environment", "cron", "timezone", "set_by")} == {
        "environment": clone, "cron": "30 2 * * 1", "timezone": "Europe/Paris", "set_by": OWNER,
    }  # fmt: skip
    table = clonebot("schedules", settings=db_settings).stdout
    # a narrow terminal wraps the cells: each word is there
    assert all(word in table for word in (clone, "weekly mon", "02:30", "Europe/Paris", OWNER))
    shown = clonebot("schedule", clone, "--as", OWNER, settings=db_settings)
    assert shown.stdout.startswith(f"{clone} is refreshed weekly mon 02:30 Europe/Paris")

    off = clonebot("schedule", clone, "--off", "--as", OWNER, settings=db_settings)
    assert (off.returncode, off.stdout.strip()) == (0, f"{clone}: no schedule now")
    assert _schedules(db_settings) == []
