"""A child process stops when the process that started it is gone.

The faces and simulated-site processes are started by the core. If the core is killed
(SIGKILL, OOM), nothing else would tell them, and they would go on holding the OPC UA,
Modbus and device ports that the core's restart needs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time

log = logging.getLogger(__name__)

PARENT_CHECK_S = 0.5


def stop_when_parent_exits(
    parent_pid: int, loop: asyncio.AbstractEventLoop, stop: asyncio.Event, who: str
) -> threading.Thread:
    """Set `stop` (on `loop`) once this process's parent is no longer `parent_pid`.

    `parent_pid` comes from the parent itself: read here with os.getppid() at start-up, it
    would already be the reaper's if the parent died while this process was starting.
    A thread, not a task: it must work while the event loop or a reader thread is stuck.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_S)
        log.error("%s: the core process went away; stopping", who)
        loop.call_soon_threadsafe(stop.set)

    thread = threading.Thread(target=watch, name=f"{who}-parent", daemon=True)
    thread.start()
    return thread
