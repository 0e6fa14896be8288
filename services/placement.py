"""Where a clone goes when its source's engine lacks room: the engine with the most free disk."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from services.context import Services
from services.environments import JOB
from services.errors import ClonebotError
from services.fleet import ANSWER_S
from services.volumes import free_disk

log = logging.getLogger(__name__)

_MEASURE_S = 4 * ANSWER_S  # the helper image may have to be built there first


@dataclass(frozen=True)
class Room:
    engine: str
    free: int  # bytes free beside the engine's volumes


async def roomiest_engine(svc: Services, *, besides: str, needed: int, job: str) -> Room | None:
    """The engine other than ``besides`` with the most free disk, if it has ``needed`` bytes
    free (ties go to the first by name); engines that do not answer are passed over."""
    others = [e for e in svc.fleet.names if e != besides]
    rooms = await asyncio.gather(*(_room(svc, e, job=job) for e in others))
    fitting = [r for r in rooms if r is not None and r.free >= needed]
    return max(fitting, key=lambda r: r.free, default=None)


async def _room(svc: Services, engine: str, *, job: str) -> Room | None:
    settings = svc.settings
    try:
        docker = svc.on(engine).docker
        async with asyncio.timeout(_MEASURE_S):
            free = await free_disk(
                docker, image=settings.helper_image, busybox=settings.busybox, labels={JOB: job}
            )
    except (ClonebotError, TimeoutError) as exc:
        log.warning("engine %s: its free disk is unknown (%s)", engine, exc)
        return None
    return Room(engine, free)
