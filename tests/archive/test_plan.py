"""Pure parts of the archive: line protocol, what is archived when, tags, back-off, classification."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from appliance.archive.forwarder import Backoff
from appliance.archive.influx import WriteOutcome, classify
from appliance.archive.lineproto import FieldType, encode_line, format_field
from appliance.archive.plan import (
    STATUS_MEASUREMENT,
    ArchiveTarget,
    Sampler,
    StatusRecorder,
    archive_targets,
    encode_samples,
)
from appliance.runtime.site_table import site_point_table
from appliance.store import Quality, Sample
from tests.archive import simdata


def good(value: float | int | bool, t: float) -> Sample:
    return Sample(value, t, Quality.GOOD, 0.0)


@pytest.mark.parametrize(
    ("value", "kind", "text"),
    [
        (0, FieldType.FLOAT, "0.0"),  # a float point reading 0 must not become an integer
        (1234.5, FieldType.FLOAT, "1234.5"),
        (1e16, FieldType.FLOAT, "1e+16"),
        (-3, FieldType.INTEGER, "-3i"),
        (True, FieldType.INTEGER, "1i"),
        (False, FieldType.INTEGER, "0i"),
        (2.6, FieldType.INTEGER, "3i"),
        (math.nan, FieldType.FLOAT, None),
        (math.inf, FieldType.FLOAT, None),
        (math.inf, FieldType.INTEGER, None),
    ],
)
def test_field_values_take_the_type_of_the_point(
    value: float, kind: FieldType, text: str | None
) -> None:
    assert format_field(value, kind) == text


def test_names_and_tag_values_are_escaped() -> None:
    line = encode_line(
        "my meas,x", [("dev ice", "a=b,c"), ("empty", ""), ("site", "s")], [("f 1", "1.0")], 5
    )
    assert line == r"my\ meas\,x,dev\ ice=a\=b\,c,site=s f\ 1=1.0 5"


def test_a_line_without_fields_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one field"):
        encode_line("m", [], [], 1)


def test_targets_follow_the_point_table_archive_settings() -> None:
    config = simdata.site_config(Path("/x"), site_id="home")
    targets = archive_targets(config, site_point_table(config))
    soc = targets["battery.2.soc"]
    assert soc == ArchiveTarget(
        "battery.2.soc",
        "battery",
        "soc",
        FieldType.FLOAT,
        (("device", "node2"), ("node", "2"), ("site", "home")),
        5.0,
    )
    assert targets["grid.import_energy"].every_s == 60.0  # per-point override
    assert targets["grid.active_power"].tags == (("device", "grid_meter"), ("site", "home"))
    assert targets["surplus.1.active"].tags[0] == ("device", "boiler")
    assert targets["controller.mode"].field_type is FieldType.INTEGER
    assert "appliance.alive_counter" not in targets  # archive: false
    assert "heartbeat.last_time" not in targets


def test_one_sample_per_point_and_aligned_bucket_is_archived() -> None:
    target = ArchiveTarget("p", "m", "f", FieldType.FLOAT, (("site", "s"),), 5.0)
    sampler = Sampler({"p": target})
    picked = [
        [s.timestamp_s for s in sampler.select({"p": good(1.0, t)})]
        for t in (100.0, 101.0, 104.9, 105.2, 103.0, 110.0, 121.0)
    ]
    # 105.2 opens the bucket [105, 110); 103.0 is older than what was written.
    assert picked == [[100.0], [], [], [105.2], [], [110.0], [121.0]]


def test_a_clock_set_back_restarts_the_buckets_instead_of_pausing_the_archive() -> None:
    target = ArchiveTarget("p", "m", "f", FieldType.FLOAT, (("site", "s"),), 1.0)
    sampler = Sampler({"p": target})
    assert len(sampler.select({"p": good(1.0, 10_000.0)})) == 1
    assert sampler.select({"p": good(1.0, 9_800.0)}) == []  # 200 s back: a late sample
    assert len(sampler.select({"p": good(1.0, 6_400.0)})) == 1  # an hour back: the clock
    assert len(sampler.select({"p": good(1.0, 6_401.0)})) == 1
    recorder = StatusRecorder("home", 10.0)
    mirror = {"cluster.soc": good(50.0, 1.0)}
    assert recorder.due(10_000.0, mirror) is not None
    assert recorder.due(9_990.0, mirror) is None
    assert recorder.due(6_400.0, mirror) is not None


def test_stale_bad_and_unknown_samples_are_not_archived() -> None:
    target = ArchiveTarget("p", "m", "f", FieldType.FLOAT, (("site", "s"),), 1.0)
    sampler = Sampler({"p": target})
    changes = {
        "p": Sample(1.0, 10.0, Quality.STALE, 0.0),
        "other": good(2.0, 10.0),
    }
    assert sampler.select(changes) == []
    assert sampler.select({"p": Sample(1.0, 11.0, Quality.BAD, 0.0)}) == []
    assert sampler.select({"p": Sample(None, 12.0, Quality.GOOD, 0.0)}) == []
    assert len(sampler.select({"p": good(3.0, 13.0)})) == 1


def test_fields_of_one_device_at_one_instant_share_a_line() -> None:
    tags = (("device", "d"), ("site", "s"))
    a = ArchiveTarget("a", "grid", "a", FieldType.FLOAT, tags, 1.0)
    b = ArchiveTarget("b", "grid", "b", FieldType.INTEGER, tags, 1.0)
    c = ArchiveTarget("c", "pv", "c", FieldType.FLOAT, tags, 1.0)
    sampler = Sampler({"a": a, "b": b, "c": c})
    picked = sampler.select({"a": good(1.5, 7.0), "b": good(2, 7.0), "c": good(3.0, 7.0)})
    assert sorted(encode_samples(picked)) == [
        "grid,device=d,site=s a=1.5,b=2i 7000",
        "pv,device=d,site=s c=3.0 7000",
    ]


def test_the_status_record_is_written_once_per_interval_at_its_start() -> None:
    recorder = StatusRecorder("home", 10.0)
    mirror = {
        "cluster.active_power": good(-1500.0, 99.0),
        "cluster.soc": good(55.5, 99.0),
        "controller.mode": good(2, 50.0),
    }
    assert recorder.due(103.5, mirror) == (
        f"{STATUS_MEASUREMENT},site=home active_power=-1500.0,soc=55.5,mode=2i 100000"
    )
    assert recorder.due(109.5, mirror) is None
    mirror["cluster.soc"] = Sample(55.5, 110.0, Quality.STALE, 0.0)
    assert recorder.due(110.0, mirror) == (
        f"{STATUS_MEASUREMENT},site=home active_power=-1500.0,mode=2i 110000"
    )


def test_no_status_record_before_anything_is_known() -> None:
    recorder = StatusRecorder("home", 10.0)
    assert recorder.due(100.0, {}) is None
    assert recorder.due(0.0, {"cluster.soc": good(50.0, 1.0)}) is None
    assert recorder.due(101.0, {"cluster.soc": good(50.0, 1.0)}) is not None


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (204, WriteOutcome.WRITTEN),
        (400, WriteOutcome.REJECTED),
        (413, WriteOutcome.REJECTED),
        (422, WriteOutcome.REJECTED),
        (401, WriteOutcome.RETRY),
        (404, WriteOutcome.RETRY),
        (429, WriteOutcome.RETRY),
        (500, WriteOutcome.RETRY),
        (503, WriteOutcome.RETRY),
    ],
)
def test_answers_are_classified_for_store_and_forward(status: int, outcome: WriteOutcome) -> None:
    assert classify(status) is outcome


def test_back_off_doubles_with_jitter_up_to_the_maximum_and_honours_retry_after() -> None:
    backoff = Backoff(1.0, 8.0, random.Random(3))
    delays = [backoff.next_delay() for _ in range(6)]
    for delay, base in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert 0.8 * base <= delay <= 1.2 * base
    assert backoff.next_delay(retry_after_s=5.0) == 5.0
    assert backoff.next_delay(retry_after_s=600.0) == 8.0
    assert backoff.next_delay(retry_after_s=0.0) == 1.0
    backoff.reset()
    assert backoff.next_delay() <= 1.2
