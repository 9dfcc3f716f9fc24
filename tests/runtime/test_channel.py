"""The core/faces boundary over real multiprocessing queues: never blocks, coalesces, round-trips."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from appliance.clock import ManualClock
from appliance.control.command_types import CommandResult
from appliance.points.table import shipped_point_table
from appliance.runtime.channel import UPDATE_QUEUE_DEPTH, CoreEnd, FacesChannel, FacesEnd, from_wire
from appliance.store import DataStore, Quality


@pytest.fixture
def channel() -> Iterator[FacesChannel]:
    ch = FacesChannel()
    yield ch
    ch.close()


def test_publish_never_blocks_and_coalesces_when_faces_do_not_read(channel: FacesChannel) -> None:
    clock = ManualClock()
    store = DataStore(shipped_point_table().for_site({"battery": 1}), clock=clock)
    sub = store.subscribe("faces")
    core = CoreEnd(channel)
    for i in range(50):
        store.put("grid.active_power", float(i))
        assert isinstance(core.publish(sub.collect()), bool)
    # The queue held its depth; every later cycle was merged into one pending batch.
    assert core.batches_sent == UPDATE_QUEUE_DEPTH
    assert core.batches_coalesced == 50 - UPDATE_QUEUE_DEPTH
    faces = FacesEnd(channel)
    received: dict[str, float | None] = {}
    while (batch := faces.next_batch(0.5)) is not None:
        for item in batch:
            point_id, sample = from_wire(item)
            received[point_id] = float(sample.value) if sample.value is not None else None
        core.publish({})  # the next cycle flushes what was held back
    # Nothing lost that matters: the latest value arrives, once.
    assert received["grid.active_power"] == 49.0


def test_samples_keep_value_timestamp_and_quality_across_the_boundary(
    channel: FacesChannel,
) -> None:
    clock = ManualClock()
    store = DataStore(shipped_point_table().for_site({"battery": 1}), clock=clock)
    store.put("grid.active_power", 12.5, timestamp=1_700_000_000.25)
    clock.advance(3)
    CoreEnd(channel).publish({"grid.active_power": store.get("grid.active_power")})
    batch = FacesEnd(channel).next_batch(2.0)
    assert batch is not None
    point_id, sample = from_wire(batch[0])
    assert (point_id, sample.value, sample.timestamp, sample.quality) == (
        "grid.active_power", 12.5, 1_700_000_000.25, Quality.STALE,
    )  # fmt: skip


def test_command_round_trip_with_request_id(channel: FacesChannel) -> None:
    faces, core = FacesEnd(channel), CoreEnd(channel)
    sent = faces.submit("modbus:127.0.0.1", "set_grid_target", "controller.grid_target", 100.0)
    taken: list = []  # type: ignore[type-arg]
    for _ in range(50):
        taken = core.take_commands()
        if taken:
            break
        import time  # noqa: PLC0415

        time.sleep(0.02)
    assert [r.request_id for r in taken] == [sent.request_id]
    core.answer(CommandResult.accept(taken[0]))
    result = faces.next_result(2.0)
    assert result is not None
    assert result.accepted
    assert result.request_id == sent.request_id
