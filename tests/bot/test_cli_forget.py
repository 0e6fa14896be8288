"""An environment that is down, on the command line: listed as down by `clonebot envs`, kept
until an admin's `clonebot forget`."""

from __future__ import annotations

import json

import pytest

from services.access import Request
from services.context import open_services
from services.docker import DockerClient
from services.environments import PROJECT
from services.ownership import share_environment
from services.settings import Settings
from tests.cli import clonebot
from tests.conftest import ADMIN, OWNER, MakeSource


@pytest.mark.slow  # four runs of the command line
async def test_a_down_environment_is_listed_as_down_until_an_admin_forgets_it(
    docker: DockerClient, settings: Settings, make_source: MakeSource
) -> None:
    down = (await make_source(web_nodes=1, db_nodes=0)).name
    up = (await make_source(web_nodes=1, db_nodes=0)).name
    async with open_services(settings) as svc:  # recorded, with its owner and a viewer
        await share_environment(svc, Request(OWNER), name=down, user="UFRIEND1", role="viewer")
    # `docker compose down`: containers and networks go, volumes stay
    for container in await docker.list_containers(labels=[f"{PROJECT}={down}"]):
        await docker.remove_container(container["Id"])
    for network in await docker.list_networks(labels=[f"{PROJECT}={down}"]):
        await docker.remove_network(network["Id"])

    listed = clonebot("envs", "--json", settings=settings)
    assert listed.returncode == 0, listed.stderr
    envs = {e["name"]: e for e in json.loads(listed.stdout)}
    assert (envs[down]["state"], envs[down]["owner"], envs[down]["layers"]) == ("down", OWNER, [])
    assert envs[up]["state"] == "up"
    table = clonebot("envs", settings=settings).stdout
    [row] = [line for line in table.splitlines() if f" {down} " in line]
    assert "down" in row and OWNER in row, row

    refused = clonebot("forget", down, "--as", OWNER, settings=settings)
    assert refused.returncode == 2
    assert refused.stderr.strip() == "refused: only an admin may forget an environment"
    forgot = clonebot("forget", down, "--as", ADMIN, settings=settings)
    assert forgot.returncode == 0, forgot.stderr
    assert forgot.stdout.splitlines() == [
        f"forgot {down}",
        f"  what is left of it still holds the name: volume {down}_data",
    ]
