"""Fixtures of the fleet: three Docker hosts on this machine (tests/fleet/hosts.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fleet.hosts import Fleet, root_state


@pytest.fixture(scope="module")
def root_before() -> dict[str, set[str]]:
    """The root namespace before the module's fleet: the fleet must leave it so."""
    return root_state()


@pytest.fixture(scope="module")
def fleet_hosts(root_before: dict[str, set[str]]) -> Iterator[Fleet]:
    """Three hosts with their engines and the test images, no Swarm; removed after the module
    (a test may have removed them already: ``stop`` twice is harmless)."""
    with Fleet() as fleet:
        yield fleet
