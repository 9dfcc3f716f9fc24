"""Setpoint writers: never block the caller, keep only the latest value, write 0 W at shutdown."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from appliance.errors import DeviceTimeout
from appliance.runtime.actuators import LatestValueWriter


class SlowInverter:
    def __init__(self) -> None:
        self.written: list[float] = []
        self.release = asyncio.Event()
        self.fail = False

    async def write(self, watts: float) -> None:
        await self.release.wait()
        if self.fail:
            raise DeviceTimeout("no answer")
        self.written.append(watts)


async def test_values_submitted_during_a_slow_write_collapse_to_the_latest() -> None:
    inverter = SlowInverter()
    writer = LatestValueWriter("inv1", inverter.write)
    task = asyncio.create_task(writer.run())
    try:
        writer.submit(100.0)
        await asyncio.sleep(0)  # the writer takes 100 and waits on the slow device
        for watts in (200.0, 300.0, 400.0):
            writer.submit(watts)  # returns at once although the device is busy
        inverter.release.set()
        for _ in range(20):
            await asyncio.sleep(0)
        assert inverter.written == [100.0, 400.0]
        assert writer.replaced == 2
        assert writer.last_written == 400.0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_failures_are_counted_and_safe_write_reports_the_outcome(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inverter = SlowInverter()
    inverter.release.set()
    inverter.fail = True
    writer = LatestValueWriter("inv1", inverter.write)
    assert await writer.write_safe(0.0) is False
    assert await writer.write_safe(0.0) is False
    assert writer.failures == 2
    assert sum("not written" in r.message for r in caplog.records) == 1  # logged once, not per try
    inverter.fail = False
    assert await writer.write_safe(0.0) is True
    assert inverter.written == [0.0]


async def test_non_finite_setpoint_is_refused() -> None:
    inverter = SlowInverter()
    writer = LatestValueWriter("inv1", inverter.write)
    writer.submit(float("nan"))
    assert writer._pending is None
