"""The data store: the latest sample per point, a short history, and change tracking.

Writers are the pollers, which may run in threads (serial and CAN readers) or on the
event loop; readers are the control step (snapshot) and the faces (subscriptions). One
lock guards everything and is held only for dictionary work, never for I/O, so the event
loop never waits on it for long. Staleness is computed when a sample is read, from the
point's `stale_after_s` and a monotonic clock, so a reading that simply stops arriving turns
stale without anyone having to write to the store.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from appliance.clock import Clock, SystemClock
from appliance.points.table import PointTable
from appliance.store.sample import WAITING_SAMPLE, Quality, Sample, Value


class UnknownPointError(KeyError):
    """A point id that is not in the store's point table."""


@dataclass(slots=True)
class _Entry:
    sample: Sample = WAITING_SAMPLE
    seq: int = 0  # store sequence number of the last change
    stale_after_s: float | None = None
    history: deque[tuple[float, float]] = field(default_factory=deque)


class DataStore:
    """Latest `Sample` per point of a point table; thread-safe."""

    def __init__(
        self, table: PointTable, *, clock: Clock | None = None, history_len: int = 64
    ) -> None:
        self.table = table
        self.clock: Clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._seq = 0
        self._entries: dict[str, _Entry] = {
            p.id: _Entry(stale_after_s=p.stale_after_s, history=deque(maxlen=history_len))
            for p in table
        }
        self._subscriptions: list[Subscription] = []

    def set_staleness(self, point_ids: Iterable[str], stale_after_s: float | None) -> None:
        """Override the table's staleness limit for points a configured device fills."""
        with self._lock:
            for point_id in point_ids:
                self._entry(point_id).stale_after_s = stale_after_s

    def stale_after_s(self, point_ids: Iterable[str]) -> float | None:
        """The shortest staleness limit among these points (None: none of them has one)."""
        with self._lock:
            limits = [
                e.stale_after_s
                for e in (self._entry(p) for p in point_ids)
                if e.stale_after_s is not None
            ]
        return min(limits) if limits else None

    # -- writing -----------------------------------------------------------------

    def put(self, point_id: str, value: Value | None, timestamp: float | None = None) -> None:
        """Record a fresh measurement (GOOD). `timestamp` is the UTC measurement time."""
        self.put_many({point_id: value}, timestamp)

    def put_many(
        self,
        values: Mapping[str, Value | None],
        timestamp: float | None = None,
        *,
        measured_monotonic: float | None = None,
    ) -> None:
        """Record several measurements taken at one instant, under one lock acquisition.

        A value of None means the device answered without this quantity: it is recorded
        as BAD so that nobody acts on the previous value. `measured_monotonic` is when the
        device produced the values (for event-driven devices whose latest frame may be older
        than the read): staleness counts from then, and the UTC timestamp is derived from it
        unless one is given.
        """
        now = self.clock.monotonic()
        received = now if measured_monotonic is None else min(measured_monotonic, now)
        stamp = timestamp if timestamp is not None else self.clock.time() - (now - received)
        with self._lock:
            for point_id, value in values.items():
                entry = self._entry(point_id)
                self._seq += 1
                entry.seq = self._seq
                if value is None:
                    old = entry.sample
                    entry.sample = Sample(old.value, stamp, Quality.BAD, received)
                    continue
                entry.sample = Sample(value, stamp, Quality.GOOD, received)
                if not isinstance(value, bool):
                    entry.history.append((received, float(value)))
        self._notify()

    def mark_bad(self, point_ids: Iterable[str]) -> None:
        """The device behind these points is down: keep the last values, flag them BAD."""
        now = self.clock.time()
        received = self.clock.monotonic()
        changed = False
        with self._lock:
            for point_id in point_ids:
                entry = self._entry(point_id)
                if entry.sample.quality is Quality.BAD:
                    continue
                old = entry.sample
                # The timestamp becomes the time of detection, as OPC UA clients expect.
                entry.sample = Sample(old.value, now, Quality.BAD, received)
                self._seq += 1
                entry.seq = self._seq
                changed = True
        if changed:
            self._notify()

    # -- reading -----------------------------------------------------------------

    def get(self, point_id: str) -> Sample:
        now = self.clock.monotonic()
        with self._lock:
            entry = self._entry(point_id)
            return _aged(entry, now)

    def read_fresh(self, point_id: str) -> tuple[bool, Value | None]:
        """The ingestion helper of the specification: `(ok, value)`.

        `ok` is False when the reading is missing, stale or bad; the value is then the last
        known one (or None), for display, never for control.
        """
        sample = self.get(point_id)
        return sample.quality is Quality.GOOD, sample.value

    def snapshot(self, point_ids: Iterable[str] | None = None) -> dict[str, Sample]:
        """A consistent view of many points at one instant, for the control step."""
        now = self.clock.monotonic()
        with self._lock:
            ids = self._entries.keys() if point_ids is None else point_ids
            return {pid: _aged(self._entry(pid), now) for pid in ids}

    def history(self, point_id: str) -> list[tuple[float, float]]:
        """Recent (monotonic time, value) pairs, oldest first."""
        with self._lock:
            return list(self._entry(point_id).history)

    def rate_of_change(self, point_id: str, window_s: float) -> float | None:
        """Units per second over the last `window_s` of history; None with fewer than 2 samples."""
        now = self.clock.monotonic()
        with self._lock:
            recent = [(t, v) for t, v in self._entry(point_id).history if now - t <= window_s]
        if len(recent) < 2 or recent[-1][0] == recent[0][0]:
            return None
        (t0, v0), (t1, v1) = recent[0], recent[-1]
        return (v1 - v0) / (t1 - t0)

    # -- change tracking for the faces --------------------------------------------

    def subscribe(self, name: str) -> Subscription:
        """A cursor over changes; each `collect()` returns what changed since the last one."""
        subscription = Subscription(self, name)
        with self._lock:
            self._subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)

    def _collect(self, subscription: Subscription) -> dict[str, Sample]:
        now = self.clock.monotonic()
        changed: dict[str, Sample] = {}
        with self._lock:
            last_seq = subscription.seq
            reported = subscription.reported
            for point_id, entry in self._entries.items():
                sample = _aged(entry, now)
                # The first collect reports every point (the consumer's initial image);
                # later ones report writes and quality changes (e.g. turning stale).
                if entry.seq > last_seq or reported.get(point_id) is not sample.quality:
                    changed[point_id] = sample
                    reported[point_id] = sample.quality
            subscription.seq = self._seq
            subscription.signalled = False
        return changed

    def _notify(self) -> None:
        with self._lock:
            waiting = [s for s in self._subscriptions if s.waiter is not None and not s.signalled]
            for subscription in waiting:
                subscription.signalled = True
        for subscription in waiting:
            subscription.wake()

    def _entry(self, point_id: str) -> _Entry:
        try:
            return self._entries[point_id]
        except KeyError:
            raise UnknownPointError(point_id) from None


def _aged(entry: _Entry, now: float) -> Sample:
    sample = entry.sample
    if (
        sample.quality is Quality.GOOD
        and entry.stale_after_s is not None
        and now - sample.received > entry.stale_after_s
    ):
        return Sample(sample.value, sample.timestamp, Quality.STALE, sample.received)
    return sample


class Subscription:
    """Changes of the store since the last `collect()`, coalesced per point.

    Coalescing is what keeps a slow consumer from queueing without bound: however long it
    waits, it gets at most one sample per point, the latest.
    """

    def __init__(self, store: DataStore, name: str) -> None:
        self.name = name
        self.seq = 0
        self.reported: dict[str, Quality] = {}
        self.signalled = False
        self.waiter: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        self._store = store

    def collect(self) -> dict[str, Sample]:
        return self._store._collect(self)

    async def wait(self, timeout_s: float | None = None) -> None:
        """Return when something was written since the last collect (or after the timeout)."""
        loop = asyncio.get_running_loop()
        if self.waiter is None or self.waiter[0] is not loop:
            self.waiter = (loop, asyncio.Event())
        event = self.waiter[1]
        if self._store._seq > self.seq:
            return
        try:
            async with asyncio.timeout(timeout_s):
                await event.wait()
        except TimeoutError:
            pass
        event.clear()

    def wake(self) -> None:
        if self.waiter is not None:
            loop, event = self.waiter
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)

    def close(self) -> None:
        self._store.unsubscribe(self)
