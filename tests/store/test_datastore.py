"""Data store: qualities, staleness, the ingestion helper, history, change tracking, thread safety."""

from __future__ import annotations

import asyncio
import threading

import pytest

from appliance.clock import ManualClock
from appliance.points.table import PointTable, shipped_point_table
from appliance.store import DataStore, Quality, UnknownPointError


@pytest.fixture
def table() -> PointTable:
    return shipped_point_table().for_site({"battery": 2, "inverter": 2, "surplus": 1})


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store(table: PointTable, clock: ManualClock) -> DataStore:
    return DataStore(table, clock=clock)


def test_point_is_waiting_before_first_sample(store: DataStore) -> None:
    sample = store.get("grid.active_power")
    assert sample.quality is Quality.WAITING
    assert sample.value is None
    assert store.read_fresh("grid.active_power") == (False, None)


def test_fresh_sample_is_good_and_carries_measurement_time(
    store: DataStore, clock: ManualClock
) -> None:
    store.put("grid.active_power", 1234.5, timestamp=1_700_000_000.0)
    sample = store.get("grid.active_power")
    assert sample.quality is Quality.GOOD
    assert sample.value == 1234.5
    assert sample.timestamp == 1_700_000_000.0
    assert store.read_fresh("grid.active_power") == (True, 1234.5)


def test_grid_meter_turns_stale_after_two_seconds(store: DataStore, clock: ManualClock) -> None:
    store.put("grid.active_power", 500.0)
    clock.advance(2.0)
    assert store.get("grid.active_power").quality is Quality.GOOD
    clock.advance(0.01)
    stale = store.get("grid.active_power")
    assert stale.quality is Quality.STALE
    assert stale.value == 500.0  # kept for display
    assert store.read_fresh("grid.active_power") == (False, 500.0)


def test_point_without_staleness_limit_never_turns_stale(
    store: DataStore, clock: ManualClock
) -> None:
    store.put("controller.grid_target", 0.0)
    clock.advance(3600)
    assert store.get("controller.grid_target").quality is Quality.GOOD


def test_mark_bad_keeps_value_and_none_value_is_bad(store: DataStore) -> None:
    store.put("battery.1.soc", 55.0)
    store.mark_bad(["battery.1.soc"])
    bad = store.get("battery.1.soc")
    assert (bad.quality, bad.value) == (Quality.BAD, 55.0)
    store.put("battery.1.soh", None)
    assert store.get("battery.1.soh").quality is Quality.BAD
    store.put("battery.1.soc", 56.0)
    assert store.get("battery.1.soc").quality is Quality.GOOD


def test_unknown_point_is_an_error(store: DataStore) -> None:
    with pytest.raises(UnknownPointError):
        store.put("grid.nonsense", 1.0)
    with pytest.raises(UnknownPointError):
        store.get("battery.3.soc")  # not part of a 2-node site


def test_history_is_bounded_and_gives_rate_of_change(table: PointTable, clock: ManualClock) -> None:
    store = DataStore(table, clock=clock, history_len=5)
    for i in range(10):
        store.put("grid.active_power", 100.0 * i)
        clock.advance(0.5)
    history = store.history("grid.active_power")
    assert len(history) == 5
    assert [v for _, v in history] == [500.0, 600.0, 700.0, 800.0, 900.0]
    # 100 W every 0.5 s = 200 W/s
    rate = store.rate_of_change("grid.active_power", window_s=10.0)
    assert rate == pytest.approx(200.0)
    assert store.rate_of_change("pv.active_power", window_s=10.0) is None


def test_snapshot_is_consistent_and_limited_to_requested_points(
    store: DataStore, clock: ManualClock
) -> None:
    store.put_many({"grid.active_power": 10.0, "pv.active_power": 20.0})
    clock.advance(3.0)
    snap = store.snapshot(["grid.active_power", "pv.active_power"])
    assert set(snap) == {"grid.active_power", "pv.active_power"}
    assert snap["grid.active_power"].quality is Quality.STALE  # 2 s limit
    assert snap["pv.active_power"].quality is Quality.GOOD  # 5 s limit


def test_subscription_first_collect_is_full_image_then_only_changes(
    store: DataStore, table: PointTable
) -> None:
    sub = store.subscribe("face")
    assert len(sub.collect()) == len(table)
    assert sub.collect() == {}
    store.put("grid.active_power", 1.0)
    store.put("grid.active_power", 2.0)
    changes = sub.collect()
    assert list(changes) == ["grid.active_power"]  # coalesced: one sample per point
    assert changes["grid.active_power"].value == 2.0


def test_subscription_reports_turning_stale_without_a_write(
    store: DataStore, clock: ManualClock
) -> None:
    sub = store.subscribe("face")
    store.put("grid.active_power", 1.0)
    sub.collect()
    clock.advance(2.5)
    changes = sub.collect()
    assert changes["grid.active_power"].quality is Quality.STALE
    assert sub.collect() == {}


async def test_subscription_wait_wakes_on_write_from_another_thread(store: DataStore) -> None:
    sub = store.subscribe("face")
    sub.collect()
    writer = threading.Timer(0.05, store.put, args=("grid.active_power", 7.0))
    writer.start()
    async with asyncio.timeout(2.0):
        await sub.wait(timeout_s=2.0)
    writer.join()
    assert sub.collect()["grid.active_power"].value == 7.0
    sub.close()


def test_concurrent_writers_lose_nothing(table: PointTable) -> None:
    store = DataStore(table, history_len=100_000)
    sub = store.subscribe("check")
    sub.collect()
    writes_per_thread = 5_000
    point_ids = ["grid.active_power", "pv.active_power", "battery.1.soc", "battery.2.soc"]

    def writer(point_id: str) -> None:
        for i in range(writes_per_thread):
            store.put(point_id, float(i))

    def shared_writer(offset: int) -> None:
        for i in range(writes_per_thread):
            store.put("house.active_power", float(offset + i))

    threads = [threading.Thread(target=writer, args=(pid,)) for pid in point_ids]
    threads += [
        threading.Thread(target=shared_writer, args=(k * writes_per_thread,)) for k in range(4)
    ]
    for t in threads:
        t.start()
    snapshots = [store.snapshot(point_ids) for _ in range(200)]  # readers run alongside
    for t in threads:
        t.join()
    for pid in point_ids:
        assert len(store.history(pid)) == writes_per_thread
        assert store.get(pid).value == float(writes_per_thread - 1)
    assert len(store.history("house.active_power")) == 4 * writes_per_thread
    assert all(len(s) == len(point_ids) for s in snapshots)
    assert set(sub.collect()) == {*point_ids, "house.active_power"}


def test_staleness_counts_from_when_the_device_measured(
    store: DataStore, clock: ManualClock
) -> None:
    measured = clock.monotonic()
    clock.advance(1.5)  # an event-driven reading that is already 1.5 s old when polled
    store.put_many({"grid.active_power": 100.0}, measured_monotonic=measured)
    sample = store.get("grid.active_power")
    assert sample.quality is Quality.GOOD
    assert sample.timestamp == pytest.approx(clock.time() - 1.5)
    clock.advance(0.6)  # 2.1 s after the measurement, 0.6 s after the poll
    assert store.get("grid.active_power").quality is Quality.STALE
