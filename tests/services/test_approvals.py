"""Protected environments: a change waits for a second person's approval, bound to that
change, used once, lapsing. Real Docker sources, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta

import pytest
from sqlalchemy import select

from services.access import Request
from services.approvals import decide, pending_approvals, perform, set_protected
from services.context import Services
from services.environments import get_environment
from services.errors import ApprovalNeeded, BadRequest, EnvironmentNotFound, Forbidden
from services.jobs import run_job, submit_clone, submit_delete
from services.ownership import share_environment
from services.traffic import routing
from storage import repositories as repo
from storage.models import Approval, DomainBinding
from tests.conftest import ADMIN, OWNER, MakeSource

TEAMMATE, STRANGER = "UTEAMMATE", "USTRANGER"


async def _pair(svc: Services, make_source: MakeSource) -> tuple[str, str]:
    """A protected source with a domain, and its clone, both shared with TEAMMATE."""
    source = await make_source(web_nodes=1, db_nodes=0)
    clone = f"{source.name}-c"
    job = await submit_clone(svc, Request(OWNER), source=source.name, name=clone)
    assert (await run_job(svc, job.id)).state == "succeeded"
    await routing.add_domain(svc, Request(OWNER), env=source.name, domain=f"{source.name}.test")
    for name in (source.name, clone):
        await share_environment(svc, Request(OWNER), name=name, user=TEAMMATE, role="operator")
    await set_protected(svc, Request(OWNER), name=source.name, protected=True)
    return source.name, clone


async def _domains(svc: Services) -> dict[str, int]:
    async with svc.sessions() as session:
        return {b.domain: b.environment_id for b in (await session.scalars(select(DomainBinding)))}


async def test_only_its_owner_or_an_admin_protects_an_environment(
    svc: Services, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1, db_nodes=0)
    await share_environment(svc, Request(OWNER), name=source.name, user=TEAMMATE, role="operator")
    for user in (STRANGER, TEAMMATE):
        with pytest.raises(Forbidden):
            await set_protected(svc, Request(user), name=source.name, protected=True)
    await set_protected(svc, Request(ADMIN), name=source.name, protected=True)
    async with svc.sessions() as session:
        record = await repo.get_environment(session, source.name)
    assert record is not None and record.protected


async def test_a_swap_waits_for_a_second_person_then_is_made_once(
    svc: Services, make_source: MakeSource
) -> None:
    prod, clone = await _pair(svc, make_source)
    before = await _domains(svc)

    with pytest.raises(ApprovalNeeded) as needed:
        await routing.swap_domains(svc, Request(OWNER), first=prod, second=clone)
    with pytest.raises(ApprovalNeeded) as again:  # asked twice: the same approval
        await routing.swap_domains(svc, Request(OWNER), first=prod, second=clone)

    assert await _domains(svc) == before, "nothing changed while it waits"
    assert needed.value.new and not again.value.new
    assert again.value.approval == needed.value.approval
    assert f"to swap the domains of {prod} and {clone}" in needed.value.message
    assert [a.id for a in await pending_approvals(svc)] == [needed.value.approval]
    approval_id = needed.value.approval
    with pytest.raises(Forbidden, match="someone else must approve"):
        await decide(svc, Request(OWNER), approval_id=approval_id, approve=True)
    with pytest.raises(Forbidden):
        await decide(svc, Request(STRANGER), approval_id=approval_id, approve=True)

    approved = await decide(svc, Request(TEAMMATE), approval_id=approval_id, approve=True)
    performed = await perform(svc, approved)

    assert performed.traffic
    assert await _domains(svc) != before, "the swap was made"
    with pytest.raises(BadRequest, match="used"):
        await perform(svc, approved)
    with pytest.raises(BadRequest, match="was used already"):
        await decide(svc, Request(ADMIN), approval_id=approval_id, approve=True)
    async with svc.sessions() as session:
        actions = {a.action for a in await repo.list_audit(session, environment=prod)}
    assert {"approval asked", "approval approved", "approval used", "swap"} <= actions


async def test_an_approval_is_bound_to_its_change_and_its_asker(
    svc: Services, make_source: MakeSource
) -> None:
    prod, clone = await _pair(svc, make_source)
    with pytest.raises(ApprovalNeeded) as needed:
        await routing.swap_domains(svc, Request(OWNER), first=prod, second=clone)
    approved = await decide(svc, Request(TEAMMATE), approval_id=needed.value.approval, approve=True)

    with pytest.raises(Forbidden, match="another change"):
        await routing.set_split(
            svc, Request(OWNER, approval=approved.id), domain=f"{prod}.test",
            weights={prod: 50, clone: 50}, sticky=False,
        )  # fmt: skip
    with pytest.raises(Forbidden, match="not one of yours"):
        await routing.swap_domains(
            svc, Request(TEAMMATE, approval=approved.id), first=prod, second=clone
        )
    await routing.swap_domains(svc, Request(OWNER, approval=approved.id), first=prod, second=clone)


async def test_a_rejected_or_lapsed_approval_changes_nothing(
    svc: Services, make_source: MakeSource
) -> None:
    prod, clone = await _pair(svc, make_source)
    before = await _domains(svc)
    with pytest.raises(ApprovalNeeded) as needed:
        await routing.swap_domains(svc, Request(OWNER), first=prod, second=clone)
    rejected = await decide(
        svc, Request(TEAMMATE), approval_id=needed.value.approval, approve=False
    )
    with pytest.raises(BadRequest, match="rejected"):
        await perform(svc, rejected)
    assert await _domains(svc) == before

    brief = dataclasses.replace(
        svc, settings=svc.settings.model_copy(update={"approval_ttl": timedelta(seconds=1)})
    )
    with pytest.raises(ApprovalNeeded) as lapsing:
        await routing.swap_domains(brief, Request(OWNER), first=prod, second=clone)
    await asyncio.sleep(1.2)
    with pytest.raises(BadRequest, match="lapsed"):
        await decide(brief, Request(TEAMMATE), approval_id=lapsing.value.approval, approve=True)
    assert await _domains(svc) == before
    async with svc.sessions() as session:
        assert await session.get(Approval, lapsing.value.approval) is not None


async def test_deleting_and_unprotecting_a_protected_clone_wait_for_approval(
    svc: Services, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1, db_nodes=0)
    clone = f"{source.name}-c"
    await run_job(svc, (await submit_clone(svc, Request(OWNER), source=source.name, name=clone)).id)
    await set_protected(svc, Request(OWNER), name=clone, protected=True)

    with pytest.raises(ApprovalNeeded) as unprotect:
        await set_protected(svc, Request(OWNER), name=clone, protected=False)
    with pytest.raises(ApprovalNeeded) as delete:
        await submit_delete(svc, Request(OWNER), name=clone, force=False)
    assert await get_environment(svc.docker, clone)

    approved = await decide(svc, Request(ADMIN), approval_id=delete.value.approval, approve=True)
    performed = await perform(svc, approved)
    assert performed.job is not None
    assert (await run_job(svc, performed.job.id)).state == "succeeded"
    with pytest.raises(EnvironmentNotFound):
        await get_environment(svc.docker, clone)
    with pytest.raises(BadRequest, match="no approval"):
        await decide(svc, Request(ADMIN), approval_id="0000ffff", approve=True)
    assert unprotect.value.approval != delete.value.approval


async def test_unbinding_a_protected_environments_domain_waits_for_approval(
    svc: Services, make_source: MakeSource
) -> None:
    """Not a side door: unbinding prod's domain then binding it to a clone is a swap."""
    prod, _ = await _pair(svc, make_source)
    before = await _domains(svc)

    with pytest.raises(ApprovalNeeded) as needed:
        await routing.remove_domain(svc, Request(TEAMMATE), env=prod, domain=f"{prod}.test")

    assert await _domains(svc) == before
    assert f"to unbind {prod}.test from {prod}" in needed.value.message
    approved = await decide(svc, Request(OWNER), approval_id=needed.value.approval, approve=True)
    assert (await perform(svc, approved)).traffic
    assert f"{prod}.test" not in await _domains(svc)


async def test_a_job_asked_before_its_environment_was_protected_is_refused_when_it_runs(
    svc: Services, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1, db_nodes=0)
    clone = f"{source.name}-c"
    await run_job(svc, (await submit_clone(svc, Request(OWNER), source=source.name, name=clone)).id)
    queued = await submit_delete(svc, Request(OWNER), name=clone, force=False)
    await set_protected(svc, Request(OWNER), name=clone, protected=True)

    with pytest.raises(BadRequest, match="was protected since this was asked"):
        await run_job(svc, queued.id)
    assert await get_environment(svc.docker, clone)


async def test_a_change_nobody_else_may_approve_is_refused_at_once(
    svc: Services, make_source: MakeSource
) -> None:
    """Without admins, only the owner may delete: nobody could approve their delete."""
    alone = dataclasses.replace(
        svc, settings=svc.settings.model_copy(update={"admins": frozenset()})
    )
    source = await make_source(web_nodes=1, db_nodes=0)
    clone = f"{source.name}-c"
    await run_job(
        alone, (await submit_clone(alone, Request(OWNER), source=source.name, name=clone)).id
    )
    await share_environment(alone, Request(OWNER), name=clone, user=TEAMMATE, role="operator")
    await set_protected(alone, Request(OWNER), name=clone, protected=True)

    with pytest.raises(BadRequest, match="nobody but you may approve this"):
        await submit_delete(alone, Request(OWNER), name=clone, force=False)
    assert await pending_approvals(alone) == []
    with pytest.raises(ApprovalNeeded):  # an operator may approve a change of traffic
        await routing.add_domain(alone, Request(OWNER), env=clone, domain=f"{clone}.test")
        await routing.remove_domain(alone, Request(OWNER), env=clone, domain=f"{clone}.test")
