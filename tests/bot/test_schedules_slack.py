"""`/env schedule` through the real HTTP endpoint (signed requests, the Slack emulator), and
the schedule run by that same `clonebot serve`: its sweep refreshes the clone when it is due."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from sqlalchemy import update

from services.access import Request
from services.context import Services, open_services
from services.jobs import run_job, submit_clone
from services.schedules import Outcome, list_schedules
from services.settings import Settings
from storage.models import RefreshSchedule, utcnow
from tests.conftest import OWNER, MakeSource, exec_output
from tests.serving import STRANGER, Serving
from tests.slack.emulator import SlackEmulator


async def _clone(svc: Services, source: str) -> str:
    job = await submit_clone(svc, Request(OWNER), source=source, name=f"{source}-c")
    assert (await run_job(svc, job.id)).state == "succeeded"
    return job.environment


async def test_env_schedule_sets_shows_and_removes_and_serve_runs_it_when_due(
    routed: Settings, slack: SlackEmulator, tmp_path: Path, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1, db_nodes=1)
    serving = Serving(routed, slack, tmp_path, CLONEBOT_EXPIRY_CHECK="0.3")
    async with serving as bot, open_services(routed, migrate=False) as svc:
        clone = await _clone(svc, source.name)

        await bot.command(STRANGER, "/env", f"schedule {clone} refresh daily 03:00")
        refused = await bot.reply(lambda r: "Nothing was done" in r["text"])
        assert f"{clone} belongs to <@{OWNER}>" in refused["text"]
        await bot.command(OWNER, "/env", f"schedule {clone} refresh daily 25:00")
        await bot.reply(lambda r: "'25:00' is not a time of day" in r["text"])
        await bot.command(OWNER, "/env", f"schedule {clone} refresh daily")
        usage = await bot.reply(lambda r: r["text"].startswith("Usage: `/env schedule"))
        assert usage["response_type"] == "ephemeral"
        assert await list_schedules(svc) == []

        await bot.command(OWNER, "/env", f"schedule {clone} refresh weekly Tue 03:15")
        set_reply = await bot.reply(lambda r: ":calendar:" in r["text"])
        assert set_reply["text"].startswith(
            f":calendar: *{clone}* is refreshed from its source weekly tue 03:15 UTC, "
            f"in the name of <@{OWNER}>; next <!date^"
        )
        [schedule] = await list_schedules(svc)
        assert (schedule.environment, schedule.cron) == (clone, "15 3 * * 2")

        # time moves: the occurrence is due, and serve's sweep refreshes the clone
        await exec_output(svc.docker, f"{source.name}_db_1", "echo new > /data/fresh")
        async with svc.sessions() as session, session.begin():
            await session.execute(
                update(RefreshSchedule).values(next_run=utcnow() - timedelta(minutes=1))
            )
        async with asyncio.timeout(60):
            while (await list_schedules(svc))[0].last_outcome is None:  # noqa: ASYNC110
                await asyncio.sleep(0.2)  # serve's sweep, in another process
        [ran] = await list_schedules(svc)
        assert ran.last_outcome is Outcome.REFRESHED, ran.last_reason
        assert await exec_output(svc.docker, f"{clone}-db-1", "cat /data/fresh") == "new"

        await bot.command(OWNER, "/env", f"schedule {clone}")
        shown = await bot.reply(lambda r: "Last: refreshed" in r["text"])
        assert f"*{clone}* is refreshed from its source weekly tue 03:15 UTC" in shown["text"]
        await bot.command(OWNER, "/env", f"schedule {clone} off")
        await bot.reply(lambda r: r["text"] == f"*{clone}* is refreshed on no schedule now.")
        assert await list_schedules(svc) == []
