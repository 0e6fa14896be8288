"""A delete checks again, when its job runs, that the environment serves no traffic."""

from __future__ import annotations

import pytest

from services.access import Request
from services.context import Services
from services.docker import DockerClient
from services.environments import get_environment
from services.errors import BadRequest
from services.jobs import run_job, submit_delete
from services.traffic.routing import add_domain
from tests.conftest import OWNER, MakeSource


@pytest.mark.slow
async def test_a_domain_bound_while_a_delete_waits_stops_the_delete(
    svc: Services, docker: DockerClient, make_source: MakeSource
) -> None:
    source = await make_source(web_nodes=1)
    job = await submit_delete(svc, Request(OWNER), name=source.name, force=True)
    # bound after the delete was accepted, before its job runs (it may wait for a slot)
    await add_domain(svc, Request(OWNER), env=source.name, domain="shop.example.com")

    with pytest.raises(BadRequest, match=r"serves shop\.example\.com"):
        await run_job(svc, job.id)

    env = await get_environment(docker, source.name)
    assert {n.state for n in env.nodes} == {"running"}, "production is still there"
