"""Stopping tasks when a library swallows a cancellation (asyncio.wait_for on Python 3.11)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from appliance.aio import cancel_and_wait
from appliance.clock import ManualClock
from appliance.points.table import shipped_point_table
from appliance.runtime.poller import Measurement, Poller
from appliance.store import DataStore


async def swallow_one_cancel(stopped: list[str]) -> None:
    """Like pymodbus under 3.11's wait_for: the first cancel becomes a normal return."""
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(10)
    try:
        await asyncio.sleep(10)
    finally:
        stopped.append("second cancel")


async def test_a_swallowed_cancel_is_repeated_until_the_task_ends() -> None:
    stopped: list[str] = []
    task = asyncio.create_task(swallow_one_cancel(stopped))
    await asyncio.sleep(0)
    assert await cancel_and_wait([task], timeout_s=2.0) == set()
    assert task.cancelled()
    assert stopped == ["second cancel"]


async def test_a_task_that_never_stops_is_reported_not_waited_for(
    caplog: pytest.LogCaptureFixture,
) -> None:
    released = asyncio.Event()

    async def stubborn() -> None:
        while not released.is_set():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with caplog.at_level(logging.ERROR):
        stuck = await cancel_and_wait([task], timeout_s=0.3)
    assert stuck == {task}
    assert loop.time() - started < 1.0
    assert "task stubborn did not stop" in caplog.text
    released.set()
    assert await cancel_and_wait([task]) == set()


async def test_a_poller_whose_read_swallows_the_cancel_ends_after_one_cancel() -> None:
    store = DataStore(shipped_point_table().for_site({"battery": 1}), clock=ManualClock())
    reading = asyncio.Event()

    async def read() -> Measurement:
        reading.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(10)  # the answer "arrives" together with the cancel
        return Measurement({"grid.active_power": 1.0})

    poller = Poller("grid_meter", read, store, ["grid.active_power"], interval_s=0.5)
    task = asyncio.create_task(poller.run())
    await reading.wait()
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=2.0)
    assert done == {task}
    assert task.cancelled()
