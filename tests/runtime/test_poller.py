"""The poll loop: stores readings, marks a silent device bad, logs once per transition, backs off."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from appliance.aio import cancel_and_wait
from appliance.clock import ManualClock
from appliance.errors import DeviceTimeout
from appliance.points.table import shipped_point_table
from appliance.runtime.poller import Measurement, Poller, next_slot
from appliance.store import DataStore, Quality


class Meter:
    def __init__(self) -> None:
        self.down = False
        self.power_w = 500.0

    async def read(self) -> Measurement:
        if self.down:
            raise DeviceTimeout("no answer")
        return Measurement({"grid.active_power": self.power_w})


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store(clock: ManualClock) -> DataStore:
    return DataStore(shipped_point_table().for_site({"battery": 1}), clock=clock)


async def test_down_and_back_marks_points_and_logs_once_each_way(
    store: DataStore, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    meter = Meter()
    poller = Poller(
        "grid_meter",
        meter.read,
        store,
        ["grid.active_power"],
        interval_s=0.5,
        comm_ok_point="grid.comm_ok",
    )
    assert await poller.poll_once()
    assert store.read_fresh("grid.active_power") == (True, 500.0)
    assert store.get("grid.comm_ok").value is True
    meter.down = True
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="appliance.runtime.poller"):
        for _ in range(5):
            clock.advance(0.5)
            assert not await poller.poll_once()
    assert store.get("grid.active_power").quality is Quality.BAD
    assert store.get("grid.active_power").value == 500.0  # kept for display
    assert store.get("grid.comm_ok").value is False
    errors = [
        r
        for r in caplog.records
        if r.levelno == logging.ERROR and r.name == "appliance.runtime.poller"
    ]
    assert len(errors) == 1
    assert "grid_meter" in errors[0].getMessage()
    meter.down, meter.power_w = False, 650.0
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="appliance.runtime.poller"):
        assert await poller.poll_once()
    mine = [r.getMessage() for r in caplog.records if r.name == "appliance.runtime.poller"]
    assert mine == ["grid_meter: answering again after 5 failed poll(s)"]
    assert store.read_fresh("grid.active_power") == (True, 650.0)


async def test_back_off_grows_with_jitter_and_is_capped(store: DataStore) -> None:
    meter = Meter()
    meter.down = True
    poller = Poller(
        "m",
        meter.read,
        store,
        ["grid.active_power"],
        interval_s=0.5,
        max_backoff_s=4.0,
        rng=random.Random(1),
    )
    delays = []
    for _ in range(8):
        await poller.poll_once()
        delays.append(poller.next_delay_s())
    assert delays[0] == 0.5  # the first failure retries at the normal period
    assert 0.5 <= delays[1] <= 1.0  # 2 x 0.5 s with jitter in [0.5, 1.0]
    assert all(d <= 4.0 for d in delays)
    assert delays[-1] >= 2.0  # capped at 4 s, jitter keeps at least half


async def test_event_driven_device_waits_quietly_for_its_first_frame(
    store: DataStore, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    meter = Meter()
    meter.down = True
    poller = Poller(
        "bms", meter.read, store, ["grid.active_power"], interval_s=0.5, startup_grace_s=5.0
    )
    with caplog.at_level(logging.INFO, logger="appliance.runtime.poller"):
        assert not await poller.poll_once()
        clock.advance(4.0)
        assert not await poller.poll_once()
    assert store.get("grid.active_power").quality is Quality.WAITING  # not yet a failure
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    clock.advance(1.5)  # the grace is over: now it is a device that does not answer
    with caplog.at_level(logging.INFO, logger="appliance.runtime.poller"):
        assert not await poller.poll_once()
    assert store.get("grid.active_power").quality is Quality.BAD
    assert [r.levelno for r in caplog.records].count(logging.ERROR) == 1


async def test_a_silent_device_reads_good_then_uncertain_then_bad(
    store: DataStore, clock: ManualClock
) -> None:
    """One lost answer changes nothing; past the staleness limit (2 s for the grid power)
    the values are STALE, and the next failed poll declares the device down."""
    meter = Meter()
    poller = Poller("grid_meter", meter.read, store, ["grid.active_power"], interval_s=0.5)
    assert await poller.poll_once()
    meter.down = True
    qualities = []
    for _ in range(6):
        clock.advance(0.5)
        qualities.append(store.get("grid.active_power").quality)
        await poller.poll_once()
    assert qualities == [Quality.GOOD] * 4 + [Quality.STALE, Quality.BAD]
    assert poller.up is False
    assert poller.errors == 6  # every failed poll counted, one declared outage


def test_next_slot_keeps_the_phase_and_skips_missed_slots() -> None:
    assert next_slot(10.0, 10.2, 0.5) == 10.5  # on time: the next slot
    assert next_slot(10.0, 10.5, 0.5) == 11.0  # exactly at a slot: that one is taken, go on
    assert next_slot(10.0, 11.7, 0.5) == 12.0  # three slots missed: skipped, not piled up
    assert next_slot(10.0, 9.0, 0.5) == 10.5  # never the same or an earlier slot


async def test_a_slow_read_does_not_shift_the_later_polls(store: DataStore) -> None:
    """The control cycle's phase is set against the pollers' slots: they must keep them."""
    loop = asyncio.get_running_loop()
    starts: list[float] = []
    six = asyncio.Event()

    async def read() -> Measurement:
        starts.append(loop.time())
        if len(starts) == 6:
            six.set()
        if len(starts) == 2:
            await asyncio.sleep(0.13)  # longer than two periods
        return Measurement({"grid.active_power": 1.0})

    poller = Poller("grid_meter", read, store, ["grid.active_power"], interval_s=0.05)
    task = asyncio.create_task(poller.run())
    await asyncio.wait_for(six.wait(), 5)
    assert not await cancel_and_wait([task])
    origin = starts[0]
    for at in starts[2:]:
        offset = (at - origin) % 0.05
        assert min(offset, 0.05 - offset) < 0.015, [round(s - origin, 3) for s in starts]
    assert starts[2] - starts[1] > 0.13  # the slots during the slow read were skipped
