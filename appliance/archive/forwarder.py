"""Store and forward: sends the spool's batches to InfluxDB, oldest first, with back-off.

A batch leaves the spool only when the server took it (removed) or refused it as bad data
(quarantined, reported once as an ERROR). Any other failure leaves it at the head of the
queue and the loop waits: exponential back-off with jitter from `retry_initial_s` up to
`retry_max_s`, or the server's Retry-After if it sent one. Logging is latched like the
pollers': one WARNING when the server becomes unreachable, one INFO when writes succeed again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from appliance.archive.influx import InfluxWriter, WriteOutcome
from appliance.archive.spool import DamagedBatch, Spool, SpooledBatch
from appliance.clock import Clock

log = logging.getLogger(__name__)

T = TypeVar("T")


class SpoolCall(Protocol):
    """Runs a function with the spool on the database thread."""

    def __call__(self, fn: Callable[[Spool], T], /) -> Awaitable[T]: ...


class Backoff:
    """Delays for consecutive failures: initial x 2^n up to maximum, each jittered by +-20 %."""

    def __init__(self, initial_s: float, maximum_s: float, rng: random.Random) -> None:
        self.initial_s = initial_s
        self.maximum_s = maximum_s
        self._rng = rng
        self.failures = 0

    def next_delay(self, retry_after_s: float | None = None) -> float:
        base = min(self.maximum_s, self.initial_s * (2.0**self.failures))
        self.failures += 1
        if retry_after_s is not None:
            # The server said when; never hammer it sooner, never wait beyond our own maximum.
            return min(max(retry_after_s, self.initial_s), self.maximum_s)
        return base * self._rng.uniform(0.8, 1.2)

    def reset(self) -> None:
        self.failures = 0


@dataclass(slots=True)
class ForwardCounters:
    points_written: int = 0
    write_failures: int = 0
    batches_quarantined: int = 0
    points_quarantined: int = 0
    last_success_s: float | None = None


class Forwarder:
    def __init__(
        self,
        spool: SpoolCall,
        writer: InfluxWriter,
        *,
        clock: Clock,
        backoff: Backoff,
        on_change: Callable[[], Awaitable[None]],
    ) -> None:
        self._spool = spool
        self._writer = writer
        self._clock = clock
        self._backoff = backoff
        self._on_change = on_change  # refreshes the depth the metrics show
        self._wake = asyncio.Event()
        self.counters = ForwardCounters()
        self._failing = False

    async def close(self) -> None:
        """Close the writer's connections; the spool belongs to the caller."""
        await self._writer.close()

    def wake(self) -> None:
        """A new batch is in the spool."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            # Cleared before looking, so a batch committed meanwhile is never missed.
            self._wake.clear()
            try:
                batch = await self._spool(lambda s: s.oldest())
                if batch is None:
                    await self._wake.wait()
                    continue
                await self._send(batch)
            except DamagedBatch as damaged:
                # Retrying cannot mend it, and it would hold back every batch behind it.
                await self._quarantine_damaged(damaged)
            except (OSError, sqlite3.Error) as exc:
                # The spool's disk failed under us: nothing is lost yet, try again later.
                log.error("archive: spool error while forwarding: %s", exc)
                await asyncio.sleep(self._backoff.next_delay())
            except Exception:  # a library bug must not end archiving for good (logged)
                # The batch stays at the head of the spool; it is retried after the back-off.
                log.exception("archive: unexpected error while forwarding")
                await asyncio.sleep(self._backoff.next_delay())

    async def _quarantine_damaged(self, damaged: DamagedBatch) -> None:
        now = self._clock.time()
        await self._spool(lambda s: s.quarantine(damaged.batch_id, 0, damaged.reason, now))
        self.counters.batches_quarantined += 1
        self.counters.points_quarantined += damaged.lines
        log.error(
            "archive: batch %d (%d points) in the spool is damaged (%s); quarantined",
            damaged.batch_id,
            damaged.lines,
            damaged.reason,
        )
        await self._on_change()

    async def _send(self, batch: SpooledBatch) -> None:
        result = await self._writer.write(batch.payload)
        if result.outcome is WriteOutcome.WRITTEN:
            await self._spool(lambda s: s.remove(batch.id))
            self.counters.points_written += batch.lines
            self.counters.last_success_s = self._clock.time()
            self._backoff.reset()
            if self._failing:
                log.info("archive: writing to %s again", self._writer.url)
                self._failing = False
            await self._on_change()
            return
        if result.outcome is WriteOutcome.REJECTED:
            await self._spool(
                lambda s: s.quarantine(
                    batch.id, result.status or 0, result.reason, self._clock.time()
                )
            )
            self.counters.batches_quarantined += 1
            self.counters.points_quarantined += batch.lines
            log.error(
                "archive: %s refused batch %d (%d points) with HTTP %s: %s; quarantined, not retried",
                self._writer.url,
                batch.id,
                batch.lines,
                result.status,
                result.reason[:300],
            )
            await self._on_change()
            return
        await self._spool(lambda s: s.record_attempt(batch.id))
        self.counters.write_failures += 1
        delay = self._backoff.next_delay(result.retry_after_s)
        if not self._failing:
            log.warning(
                "archive: cannot write to %s (%s%s); keeping data in the spool, retrying",
                self._writer.url,
                f"HTTP {result.status}: " if result.status else "",
                result.reason[:300],
            )
            self._failing = True
        else:
            log.debug("archive: still failing (%s); next try in %.1f s", result.reason, delay)
        await asyncio.sleep(delay)
