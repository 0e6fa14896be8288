"""Limits per user: the number of clones, and the data copied into them. Real Docker sources,
SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses

import pytest

from services.access import Request
from services.context import Services
from services.environments import PROJECT
from services.errors import QuotaExceeded
from services.jobs import run_job, submit_clone, submit_delete
from storage import repositories as repo
from tests.conftest import ADMIN, OWNER, MakeSource

KIB = 1024


def _limited(svc: Services, **limits: int) -> Services:
    return dataclasses.replace(svc, settings=svc.settings.model_copy(update=limits))


async def _clone(svc: Services, source: str, name: str, *, user: str = OWNER) -> str:
    job = await run_job(svc, (await submit_clone(svc, Request(user), source=source, name=name)).id)
    assert job.state == "succeeded", job.error
    return name


async def test_a_clone_past_the_users_count_is_refused_naming_what_to_delete(
    svc: Services, make_source: MakeSource
) -> None:
    svc = _limited(svc, max_clones_per_user=2)
    source = await make_source(web_nodes=1, db_nodes=0)
    first = await _clone(svc, source.name, f"{source.name}-a")
    await _clone(svc, source.name, f"{source.name}-b")

    with pytest.raises(QuotaExceeded) as refused:
        await submit_clone(svc, Request(OWNER), source=source.name, name=f"{source.name}-c")

    message = refused.value.message
    assert "you have 2 clone(s)" in message and "CLONEBOT_MAX_CLONES_PER_USER=2" in message
    assert f"{source.name}-a" in message and f"{source.name}-b" in message
    async with svc.sessions() as session:
        assert await repo.get_environment(session, f"{source.name}-c") is None
        audit = await repo.list_audit(session, environment=source.name)
    assert any(not a.allowed and "CLONEBOT_MAX_CLONES_PER_USER" in a.reason for a in audit)
    await _clone(svc, source.name, f"{source.name}-d", user=ADMIN)  # admins may exceed

    await run_job(svc, (await submit_delete(svc, Request(OWNER), name=first, force=False)).id)
    await _clone(svc, source.name, f"{source.name}-e")


async def test_a_copy_past_the_users_bytes_is_refused_before_anything_is_made(
    svc: Services, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1, db_nodes=1, seed_kib=2048)
    probe = await _clone(svc, source.name, f"{source.name}-p")
    async with svc.sessions() as session:
        record = await repo.get_environment(session, probe)
    assert record is not None
    one = record.copied_bytes
    assert one >= 2048 * KIB, "the clone's record keeps what its copy wrote"
    await run_job(svc, (await submit_delete(svc, Request(OWNER), name=probe, force=False)).id)
    svc = _limited(svc, max_bytes_per_user=one + one // 2)
    await _clone(svc, source.name, f"{source.name}-a")
    second = f"{source.name}-b"

    job = await submit_clone(svc, Request(OWNER), source=source.name, name=second)
    with pytest.raises(QuotaExceeded) as refused:
        await run_job(svc, job.id)

    message = refused.value.message
    assert "your clones already hold" in message and "CLONEBOT_MAX_BYTES_PER_USER=" in message
    assert f"{source.name}-a (" in message, "the clone to delete, with its size"
    label = [f"{PROJECT}={second}"]
    assert await svc.docker.list_containers(labels=label) == []
    assert await svc.docker.list_volumes(labels=label) == []
    async with svc.sessions() as session:
        assert await repo.get_environment(session, second) is None
    await _clone(svc, source.name, f"{source.name}-c", user=ADMIN)  # admins may exceed
