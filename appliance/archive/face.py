"""The archive face: the changed samples of every core cycle into InfluxDB or the local archive.

    face = ArchiveFace(context)          # archive settings from the site file
    await face.start()                   # opens the spool / local archive, starts the sender
    face.apply(changes)                  # once per core cycle; never blocks
    await face.read_raw("battery.1.soc", t0, t1, limit=100)   # HistoryRead (local archive)
    await face.stop()                    # seals the buffer into the spool first

With `archive.influxdb` set, samples chosen by `plan.Sampler` become line protocol, are
batched (`batch_size` lines or `flush_interval_s`, whichever comes first), committed to the
SQLite spool and sent from there by the `Forwarder`, so an outage or a restart loses
nothing the spool accepted. The cluster status record (`cluster_status`) goes along every
`control.telemetry_interval_s`. Without `archive.influxdb`, the same samples go to the local
archive (`archive.local`), which also answers HistoryRead.

All SQLite work runs on one database thread; `apply` only appends to lists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import sqlite3
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from appliance.archive.forwarder import Backoff, Forwarder
from appliance.archive.influx import InfluxWriter
from appliance.archive.lineproto import to_ms
from appliance.archive.local import HistorySample, HistoryUnavailable, LocalArchive
from appliance.archive.plan import Sampler, StatusRecorder, archive_targets, encode_samples
from appliance.archive.spool import Dropped, Spool, SpoolDepth
from appliance.archive.stats import ArchiveStats
from appliance.clock import Clock, SystemClock
from appliance.config.schema import InfluxConfig, SiteConfig
from appliance.northbound.face import FaceContext
from appliance.store import Sample, Value

log = logging.getLogger(__name__)

SYNC_TIMEOUT_S = 30.0  # a sync that takes longer means the database is stuck

T = TypeVar("T")

SPOOL_FILE = "spool.sqlite"
ARCHIVE_FILE = "archive.sqlite"
LOCAL_FLUSH_S = 2.0  # the local archive is written at least this often
LOCAL_BATCH_ROWS = 2000
EXPIRE_EVERY_S = 30.0  # spool max_age_s is enforced this often
PRUNE_EVERY_S = 3600.0  # local retention is enforced this often
MAX_QUEUED_BATCHES = 1000  # sealed, not yet committed (the disk is stuck): drop oldest beyond
STOP_TIMEOUT_S = 5.0

Row = tuple[str, int, Value]


@dataclass(frozen=True, slots=True)
class _LineBatch:
    payload: bytes
    lines: int
    oldest_s: float


@dataclass(frozen=True, slots=True)
class _RowBatch:
    rows: list[Row]


def read_token(config: SiteConfig, influx: InfluxConfig) -> str:
    """The token from `token_env` or `token_file` (relative to the site file's directory)."""
    if influx.token_env is not None:
        token = os.environ.get(influx.token_env, "").strip()
        if not token:
            raise OSError(f"environment variable {influx.token_env} is not set or empty")
        return token
    if influx.token_file is None:
        raise OSError("neither token_file nor token_env is configured")
    path = influx.token_file
    if not path.is_absolute() and config.source not in ("", "<in code>"):
        path = Path(config.source).parent / path
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise OSError(f"token file {path} is empty")
    return token


class ArchiveFace:
    name = "archive"

    def __init__(
        self,
        context: FaceContext,
        *,
        clock: Clock | None = None,
        status_interval_s: float | None = None,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 60.0,
        write_timeout_s: float = 10.0,
        local: bool | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """`local` None: keep the local archive only when no InfluxDB is configured."""
        config = context.config
        self._config = config
        self._mirror: Mapping[str, Sample] = context.mirror
        self._clock: Clock = clock or SystemClock()
        self._influx = config.archive.influxdb
        self._batch_size = self._influx.batch_size if self._influx else LOCAL_BATCH_ROWS
        self._want_local = (self._influx is None) if local is None else local
        targets = archive_targets(config, context.table)
        self._types = {pid: context.table[pid].type for pid in targets}
        self._sampler = Sampler(targets)
        interval = status_interval_s or config.control.telemetry_interval_s
        self._status = StatusRecorder(config.site.id, interval) if self._influx else None
        # The loader has put relative paths under data_dir already (config.loader).
        self._spool_path = config.archive.spool.path / SPOOL_FILE
        self._local_path = config.archive.local.path / ARCHIVE_FILE
        self._retry = (retry_initial_s, retry_max_s)
        self._write_timeout_s = write_timeout_s
        self._rng = rng or random.Random()  # noqa: S311 - back-off jitter, not cryptography
        self._executor: ThreadPoolExecutor | None = None
        self._spool: Spool | None = None
        self._local: LocalArchive | None = None
        self._forwarder: Forwarder | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False
        # Buffers filled by apply(), sealed into batches by size or by the ticker.
        self._lines: list[str] = []
        self._lines_oldest_s = math.inf
        self._rows: list[Row] = []
        self._queue: deque[_LineBatch | _RowBatch] = deque()
        self._queued = asyncio.Event()
        self._committed = asyncio.Condition()
        self._sealed_seq = 0
        self._committed_seq = 0
        # Numbers for stats().
        self._depth = SpoolDepth()
        self._dropped_size = 0
        self._dropped_age = 0
        self._local_written = 0
        self._local_failures = 0

    # -- the Face protocol -----------------------------------------------------------

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="archive-db")
        if self._influx is not None:
            await self._open_influx(self._influx)
        if self._want_local:
            await self._open_local()
        self._running = True
        self._tasks = [asyncio.create_task(self._commit_loop(), name="archive.commit")]
        self._tasks.append(asyncio.create_task(self._tick_loop(), name="archive.tick"))
        if self._forwarder is not None:
            self._tasks.append(asyncio.create_task(self._forwarder.run(), name="archive.forward"))

    def apply(self, changes: Mapping[str, Sample]) -> None:
        if not self._running:
            return
        picked = self._sampler.select(changes)
        if self._forwarder is not None:
            if picked:
                self._lines.extend(encode_samples(picked))
                oldest = min(p.timestamp_s for p in picked)
                self._lines_oldest_s = min(self._lines_oldest_s, oldest)
            if self._status is not None and changes:
                data_time = max(s.timestamp for s in changes.values())
                line = self._status.due(data_time, self._mirror)
                if line is not None:
                    self._lines.append(line)
                    self._lines_oldest_s = min(self._lines_oldest_s, data_time)
            if len(self._lines) >= self._batch_size:
                self._seal_lines(full_only=True)
        if self._local is not None and picked:
            self._rows.extend((p.target.point_id, to_ms(p.timestamp_s), p.value) for p in picked)
            if len(self._rows) >= LOCAL_BATCH_ROWS:
                self._seal_rows()

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        self._seal_lines()
        self._seal_rows()
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await self.sync()
        except TimeoutError:
            log.error("archive: %d batch(es) could not be saved before stop", len(self._queue))
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._forwarder is not None:
            await self._forwarder.close()
        await self._db(self._close_stores)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        log.info("archive: stopped")

    # -- public API ------------------------------------------------------------------

    async def sync(self, timeout_s: float = SYNC_TIMEOUT_S) -> None:
        """Seal what is buffered and wait until it is committed (spool or local archive).

        Raises TimeoutError after `timeout_s`: a caller (a HistoryRead, a test) gets an
        answer even when the database is stuck.
        """
        self._seal_lines()
        self._seal_rows()
        target = self._sealed_seq
        async with asyncio.timeout(timeout_s), self._committed:
            await self._committed.wait_for(lambda: self._committed_seq >= target)

    async def read_raw(
        self, point_id: str, start_s: float, end_s: float, limit: int = 0
    ) -> list[HistorySample]:
        """HistoryRead: raw samples of one point, see `LocalArchive.read_raw`."""
        local = self._local
        if local is None:
            raise HistoryUnavailable("no local archive on this appliance (archive.influxdb is set)")
        try:
            await self.sync()
        except TimeoutError as exc:
            raise HistoryUnavailable("the local archive is not keeping up; try again") from exc
        return await self._db(lambda: local.read_raw(point_id, start_s, end_s, limit))

    @property
    def has_history(self) -> bool:
        return self._local is not None

    def stats(self) -> ArchiveStats:
        depth = self._depth
        counters = self._forwarder.counters if self._forwarder is not None else None
        oldest_age = 0.0 if depth.oldest_s is None else self._clock.time() - depth.oldest_s
        backend = "influxdb" if self._influx else ("local" if self._local else "off")
        return ArchiveStats(
            backend=backend,
            spool_durable=self._spool.durable if self._spool is not None else True,
            spool_batches=depth.batches,
            spool_points=depth.lines,
            spool_bytes=depth.bytes,
            spool_oldest_age_s=max(0.0, oldest_age),
            points_written=counters.points_written if counters else self._local_written,
            write_failures=counters.write_failures if counters else self._local_failures,
            points_dropped_size=self._dropped_size,
            points_dropped_age=self._dropped_age,
            batches_quarantined=counters.batches_quarantined if counters else 0,
            points_quarantined=counters.points_quarantined if counters else 0,
            last_success_s=counters.last_success_s if counters else None,
        )

    # -- opening and closing -----------------------------------------------------------

    async def _open_influx(self, influx: InfluxConfig) -> None:
        limits = self._config.archive.spool
        path = self._spool_path
        try:
            self._spool = await self._db(
                lambda: Spool(path, max_bytes=limits.max_bytes, max_age_s=limits.max_age_s)
            )
        except (OSError, sqlite3.Error) as exc:
            # Without a disk the archive still sends; it only loses the outage guarantee.
            log.error("archive: cannot open the spool %s (%s); spooling in memory", path, exc)
            self._spool = await self._db(
                lambda: Spool(None, max_bytes=limits.max_bytes, max_age_s=limits.max_age_s)
            )
        config = self._config
        writer = InfluxWriter(
            influx.url,
            influx.org,
            influx.bucket,
            lambda: read_token(config, influx),
            timeout_s=self._write_timeout_s,
        )
        initial, maximum = self._retry
        self._forwarder = Forwarder(
            self._spool_call,
            writer,
            clock=self._clock,
            backoff=Backoff(initial, maximum, self._rng),
            on_change=self._refresh_depth,
        )
        await self._expire()
        log.info(
            "archive: writing to %s bucket %s; spool %s holds %d batch(es)",
            influx.url,
            influx.bucket,
            path,
            self._depth.batches,
        )

    async def _open_local(self) -> None:
        path, types = self._local_path, self._types
        days = self._config.archive.local.retention_days
        try:
            local = await self._db(
                lambda: LocalArchive(path, retention_days=days, point_types=types)
            )
        except (OSError, sqlite3.Error) as exc:
            log.error("archive: cannot open the local archive %s (%s); not archiving", path, exc)
            return
        self._local = local
        await self._prune()
        log.info("archive: local archive %s, %d days", path, days)

    def _close_stores(self) -> None:
        for store in (self._spool, self._local):
            if store is not None:
                store.close()
        self._spool = None
        self._local = None

    # -- batching ----------------------------------------------------------------------

    def _seal_lines(self, *, full_only: bool = False) -> None:
        """Seal the buffered lines into batches of `batch_size`.

        `full_only` (sealing because the buffer is full): the remainder stays buffered for the
        next batch instead of going out as a small batch of its own, each of which would
        cost a request and a spool commit.
        """
        if not self._lines:
            return
        size = self._batch_size
        lines, oldest = self._lines, self._lines_oldest_s
        keep = len(lines) % size if full_only else 0
        self._lines = lines[len(lines) - keep :] if keep else []
        # The remainder keeps the oldest time: an upper bound of its age, never too young.
        self._lines_oldest_s = oldest if keep else math.inf
        for start in range(0, len(lines) - keep, size):
            chunk = lines[start : start + size]
            self._enqueue(_LineBatch("\n".join(chunk).encode(), len(chunk), oldest))

    def _seal_rows(self) -> None:
        if self._rows:
            rows, self._rows = self._rows, []
            self._enqueue(_RowBatch(rows))

    def _enqueue(self, batch: _LineBatch | _RowBatch) -> None:
        if len(self._queue) >= MAX_QUEUED_BATCHES:
            lost = self._queue.popleft()
            self._dropped_size += lost.lines if isinstance(lost, _LineBatch) else len(lost.rows)
            self._committed_seq += 1
            log.error("archive: the database does not keep up; dropped the oldest batch")
        self._queue.append(batch)
        self._sealed_seq += 1
        self._queued.set()

    async def _commit_loop(self) -> None:
        while True:
            if not self._queue:
                self._queued.clear()
                await self._queued.wait()
                continue
            batch = self._queue[0]
            try:
                await self._commit(batch)
            except (OSError, sqlite3.Error) as exc:
                lost = batch.lines if isinstance(batch, _LineBatch) else len(batch.rows)
                self._dropped_size += lost
                self._local_failures += 1
                log.error("archive: could not store a batch of %d points: %s", lost, exc)
            except Exception:  # this loop must outlive any one bad batch
                lost = batch.lines if isinstance(batch, _LineBatch) else len(batch.rows)
                self._dropped_size += lost
                self._local_failures += 1
                log.exception("archive: unexpected error storing a batch of %d points", lost)
            if self._queue and self._queue[0] is batch:
                self._queue.popleft()
                self._committed_seq += 1
            async with self._committed:
                self._committed.notify_all()

    async def _commit(self, batch: _LineBatch | _RowBatch) -> None:
        if isinstance(batch, _RowBatch):
            local = self._local
            if local is not None:
                self._local_written += await self._db(lambda: local.write(batch.rows))
            return
        dropped = await self._spool_call(
            lambda s: s.add(batch.payload, batch.lines, batch.oldest_s)
        )
        self._count_dropped(dropped, by_age=False)
        await self._refresh_depth()
        if self._forwarder is not None:
            self._forwarder.wake()

    async def _tick_loop(self) -> None:
        interval = self._influx.flush_interval_s if self._influx else LOCAL_FLUSH_S
        if self._local is not None:
            interval = min(interval, LOCAL_FLUSH_S)
        since_expire = since_prune = 0.0
        while True:
            await asyncio.sleep(interval)
            self._seal_lines()
            self._seal_rows()
            since_expire += interval
            since_prune += interval
            if since_expire >= EXPIRE_EVERY_S and self._spool is not None:
                since_expire = 0.0
                await self._expire()
            if since_prune >= PRUNE_EVERY_S:
                since_prune = 0.0
                await self._prune()

    # -- database thread -----------------------------------------------------------------

    async def _db(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise RuntimeError("archive: not started")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def _spool_call(self, fn: Callable[[Spool], T]) -> T:
        spool = self._spool
        if spool is None:
            raise RuntimeError("archive: no spool")
        return await self._db(lambda: fn(spool))

    async def _prune(self) -> None:
        local, now = self._local, self._clock.time()
        if local is not None:
            await self._db(lambda: local.prune(now))

    async def _refresh_depth(self) -> None:
        self._depth = await self._spool_call(lambda s: s.depth())

    async def _expire(self) -> None:
        now = self._clock.time()
        self._count_dropped(await self._spool_call(lambda s: s.expire(now)), by_age=True)
        await self._refresh_depth()

    def _count_dropped(self, dropped: Dropped, *, by_age: bool) -> None:
        if not dropped.batches:
            return
        if by_age:
            self._dropped_age += dropped.lines
        else:
            self._dropped_size += dropped.lines
        log.warning(
            "archive: spool %s: dropped the %d oldest batch(es), %d points",
            "older than max_age_s" if by_age else "over max_bytes",
            dropped.batches,
            dropped.lines,
        )
