"""A child process notices that the process that started it is gone."""

from __future__ import annotations

import asyncio
import os

from appliance.runtime.parent import PARENT_CHECK_S, stop_when_parent_exits


async def test_a_parent_gone_before_the_watch_started_is_noticed() -> None:
    # The core can be killed while the child is still importing: the pid the core passed
    # is then already not this process's parent.
    stop = asyncio.Event()
    gone = os.getppid() + 1_000_000  # no process has this pid
    stop_when_parent_exits(gone, asyncio.get_running_loop(), stop, "test")
    async with asyncio.timeout(2 * PARENT_CHECK_S + 1):
        await stop.wait()


async def test_a_living_parent_keeps_the_child_running() -> None:
    stop = asyncio.Event()
    stop_when_parent_exits(os.getppid(), asyncio.get_running_loop(), stop, "test")
    await asyncio.sleep(3 * PARENT_CHECK_S)
    assert not stop.is_set()
