"""Named places where a test can make clonebot hang, to kill it there (crash-recovery tests).

``CLONEBOT_FAILPOINT=freeze`` makes the process wait forever when it reaches the ``freeze``
point. Unset (always, outside tests), a failpoint costs one dictionary look-up.
"""

from __future__ import annotations

import asyncio
import logging
import os

log = logging.getLogger(__name__)
POINTS = ("pre-copy", "freeze", "start", "rename", "rename-cleanup")


async def failpoint(name: str) -> None:
    if os.environ.get("CLONEBOT_FAILPOINT") == name:
        log.warning("failpoint %s reached: hanging until killed", name)
        print(f"failpoint {name} reached", flush=True)
        await asyncio.Event().wait()
