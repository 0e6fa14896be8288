"""Named places where a test can make clonebot hang, to kill it there (crash-recovery tests).

``CLONEBOT_FAILPOINT=freeze`` makes the process wait forever when it reaches the ``freeze``
point; with ``CLONEBOT_FAILPOINT_RELEASE=/some/file`` it waits only until that file exists
(a fault is brought on meanwhile, then the job goes on). Unset (always, outside tests), a
failpoint costs one dictionary look-up.
"""

from __future__ import annotations

import asyncio
import logging
import os

log = logging.getLogger(__name__)
POINTS = ("pre-copy", "freeze", "start", "rename", "rename-cleanup")


async def failpoint(name: str) -> None:
    if os.environ.get("CLONEBOT_FAILPOINT") == name:
        log.warning("failpoint %s reached: hanging until killed or released", name)
        print(f"failpoint {name} reached", flush=True)
        release = os.environ.get("CLONEBOT_FAILPOINT_RELEASE")
        if release is None:
            await asyncio.Event().wait()
            return
        while not os.path.exists(release):  # noqa: ASYNC110, ASYNC240 (made by the test)
            await asyncio.sleep(0.1)
        log.warning("failpoint %s released", name)
