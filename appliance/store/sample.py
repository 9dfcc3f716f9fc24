"""A sample: the latest value of one point, when it was measured, and how far to trust it."""

from __future__ import annotations

import enum
from dataclasses import dataclass

Value = float | int | bool


class Quality(enum.Enum):
    """Trust in a sample, mapped by each face (OPC UA StatusCode, Modbus not-implemented)."""

    GOOD = "good"
    STALE = "stale"  # older than the point's staleness limit; value kept, not to be acted on
    BAD = "bad"  # the device is down; value kept for display only
    WAITING = "waiting_for_initial_data"  # nothing received since start

    @property
    def usable(self) -> bool:
        return self is Quality.GOOD


@dataclass(frozen=True, slots=True)
class Sample:
    value: Value | None
    timestamp: float  # UTC seconds since the epoch of the measurement (0.0 if none yet)
    quality: Quality
    received: float  # monotonic seconds when the store received it (for staleness)


WAITING_SAMPLE = Sample(None, 0.0, Quality.WAITING, float("-inf"))
