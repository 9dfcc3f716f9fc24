"""Stopping asyncio tasks reliably.

One ``task.cancel()`` is not always enough on Python 3.11: ``asyncio.wait_for`` (which
pymodbus uses around every request and connect) returns the awaited result instead of
raising when the cancellation arrives in the same loop iteration as the answer (CPython
gh-86296, fixed in 3.12). The task then carries on as if never cancelled, and whoever awaits
it waits forever. So a stop here re-cancels until the task has ended, within a bound, and
reports what would not stop instead of hanging.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

RECANCEL_INTERVAL_S = 0.1


_Awaited = TypeVar("_Awaited", bound="asyncio.Future[Any]")


async def cancel_and_wait(tasks: Iterable[_Awaited], timeout_s: float = 5.0) -> set[_Awaited]:
    """Cancel `tasks` and wait until they have ended; returns those still running after
    `timeout_s` (logged at ERROR). Never raises the tasks' exceptions."""
    pending: set[_Awaited] = {t for t in tasks if not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=min(RECANCEL_INTERVAL_S, left))
    for task in pending:
        name = task.get_name() if isinstance(task, asyncio.Task) else repr(task)
        log.error("task %s did not stop within %.1f s", name, timeout_s)
    return pending


def raise_if_cancelled() -> None:
    """Raise CancelledError if the current task has a cancellation that a library swallowed.

    Called in a loop after each call into pymodbus, so the loop ends on the first stop.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
