"""Time sources: a monotonic clock for control and staleness, UTC wall time for samples.

Everything that needs time takes a `Clock`, so tests drive time by hand (`ManualClock`)
instead of sleeping.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never jumps; only differences mean anything."""
        ...

    def time(self) -> float:
        """UTC wall time, seconds since the epoch."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


class ManualClock:
    """A clock that moves only when told to; wall time moves with it."""

    def __init__(self, monotonic: float = 1000.0, wall: float = 1_767_225_600.0) -> None:
        self._monotonic = monotonic
        self._offset = wall - monotonic

    def monotonic(self) -> float:
        return self._monotonic

    def time(self) -> float:
        return self._monotonic + self._offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a monotonic clock does not go back")
        self._monotonic += seconds
