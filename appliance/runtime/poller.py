"""The poll loop shared by every polled device: read, stamp, store; back off when down.

Drivers only read and return typed values; the poller writes them to the store, marks the
device's points BAD when it stops answering, and logs once when a device goes down and once
when it comes back (not once per failed poll: a dead meter must not flood the log).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from appliance.aio import raise_if_cancelled
from appliance.errors import DriverError, NotSupported
from appliance.store import DataStore, Value

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Measurement:
    """What one read gave: point values, and when the device measured them.

    `measured_monotonic` is None for devices that answer a request (the poll time is the
    measurement time) and the frame's arrival time for event-driven devices (CAN, SML,
    ZigBee), whose latest frame can be older than the read.
    """

    values: Mapping[str, Value | None]
    measured_monotonic: float | None = None


ReadFn = Callable[[], Awaitable[Measurement]]


def next_slot(previous: float, now: float, period_s: float) -> float:
    """The first slot of the schedule `previous + k * period_s` (k >= 1) that is not past."""
    k = max(1, math.floor((now - previous) / period_s) + 1)
    return previous + k * period_s


class Poller:
    """Polls one device every `interval_s`, retrying with jittered exponential back-off."""

    def __init__(
        self,
        name: str,
        read: ReadFn,
        store: DataStore,
        point_ids: Sequence[str],
        *,
        interval_s: float,
        comm_ok_point: str | None = None,
        max_backoff_s: float = 30.0,
        rng: random.Random | None = None,
        close: Callable[[], Awaitable[None]] | None = None,
        startup_grace_s: float = 0.0,
    ) -> None:
        self.name = name
        self._read = read
        self._store = store
        self._point_ids = list(point_ids)
        self.interval_s = interval_s
        self._comm_ok_point = comm_ok_point
        self._max_backoff_s = max_backoff_s
        self._close = close
        # Event-driven devices (CAN, SML, ZigBee) have nothing to give until their first frame
        # arrives; within this time after start that is waiting, not a failure.
        self._grace_until = store.clock.monotonic() + startup_grace_s
        self._rng = rng or random.Random()  # noqa: S311 - back-off jitter, not cryptography
        self.up = False
        self._down_logged = False  # one ERROR per outage, one INFO when it ends
        self.failures = 0  # consecutive failed polls
        self._last_good: float | None = None  # monotonic time of the last answered poll
        self.polls = 0
        self.errors = 0

    async def poll_once(self) -> bool:
        """One read; returns whether the device answered. Never raises a DriverError."""
        self.polls += 1
        started = self._store.clock.monotonic()
        try:
            measurement = await self._read()
        except NotSupported:
            raise
        except DriverError as exc:
            self._went_down(exc)
            return False
        values = dict(measurement.values)
        measured = measurement.measured_monotonic
        if self._comm_ok_point is not None:
            self._store.put(self._comm_ok_point, True)
        # A polled device measured when it was asked, not when its answer came back.
        self._store.put_many(values, measured_monotonic=started if measured is None else measured)
        if self._down_logged:
            log.info("%s: answering again after %d failed poll(s)", self.name, self.failures)
        elif not self.up:
            log.info("%s: first reading received", self.name)
        self._down_logged = False
        self.up = True
        self.failures = 0
        # An event-driven device's reading is as old as its frame, not as this poll.
        self._last_good = started if measured is None else measured
        return True

    def _went_down(self, exc: DriverError) -> None:
        """A failed poll; the device is declared down once its last values have gone stale.

        Until then a failed poll changes nothing: one lost answer does not disturb the
        control while the values are within their staleness limit. Past the limit the
        values read STALE (OPC UA: Uncertain) and the next failed poll marks them BAD, so a
        client sees Good -> Uncertain -> Bad when a device stops answering.
        """
        self.failures += 1
        now = self._store.clock.monotonic()
        if not self.up and not self._down_logged and now < self._grace_until:
            log.debug("%s: waiting for the first reading (%s)", self.name, exc)
            return
        self.errors += 1
        limit = self._store.stale_after_s(self._point_ids) or 0.0
        if self.up and self._last_good is not None and now - self._last_good <= limit:
            log.debug("%s: no answer (%s); last values still within %.1f s", self.name, exc, limit)
            return
        if not self._down_logged:
            log.error("%s: not answering (%s); its points are marked bad", self.name, exc)
            self._down_logged = True
        else:
            log.debug("%s: still not answering (%s)", self.name, exc)
        self.up = False
        self._store.mark_bad(self._point_ids)
        if self._comm_ok_point is not None:
            self._store.put(self._comm_ok_point, False)

    async def close(self) -> None:
        """Release the device link (called once at shutdown)."""
        if self._close is not None:
            try:
                await self._close()
            except DriverError as exc:
                log.warning("%s: error while closing: %s", self.name, exc)

    def next_delay_s(self) -> float:
        """Normal period while up; jittered exponential back-off while down."""
        if self.failures <= 1:
            return self.interval_s
        backoff = min(self._max_backoff_s, self.interval_s * 2.0 ** min(self.failures - 1, 10))
        return backoff * self._rng.uniform(0.5, 1.0)

    async def run(self) -> None:
        """Poll forever on a fixed schedule (a slow read does not shift later polls)."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            await self.poll_once()
            raise_if_cancelled()  # pymodbus can swallow a stop, see appliance.aio
            now = loop.time()
            if self.failures <= 1:
                # A read longer than the period skips slots instead of piling up, and keeps
                # the phase that the control cycle's schedule is set against.
                next_at = next_slot(next_at, now, self.interval_s)
            else:  # backing off, still on the schedule's slots for when it answers again
                next_at = next_slot(next_at, now + self.next_delay_s(), self.interval_s)
            await asyncio.sleep(next_at - now)
