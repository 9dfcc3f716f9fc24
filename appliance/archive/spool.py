"""The durable spool: batches of line protocol waiting for the InfluxDB, in SQLite (WAL).

Every batch is committed here before it is sent and deleted only after the server took it,
so neither an outage nor a crash or restart of the appliance loses what the spool accepted;
a batch sent twice (crash between the write and the delete) is harmless, because InfluxDB
keeps one point per series and timestamp. `synchronous=FULL` makes a commit survive a power
cut too; at one commit per batch that costs nothing measurable.

Bounds (from the site file): `max_bytes` of stored (compressed) payload and `max_age_s` of
data; beyond either, the oldest batches are dropped and counted. Batches the server refused
as bad data (4xx) move to a quarantine table for inspection instead of blocking the queue.

Not thread-safe: one `Spool` is used from one thread (the archive's database thread).
"""

from __future__ import annotations

import logging
import sqlite3
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
#: Share of `max_bytes` that the quarantine may keep (newest first).
QUARANTINE_SHARE = 0.1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    oldest_s REAL NOT NULL,
    lines INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    oldest_s REAL NOT NULL,
    lines INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    quarantined_s REAL NOT NULL,
    status INTEGER NOT NULL,
    reason TEXT NOT NULL,
    payload BLOB NOT NULL
);
"""


class DamagedBatch(Exception):
    """The head batch's stored payload no longer decompresses (a damaged page on disk)."""

    def __init__(self, batch_id: int, lines: int, reason: str) -> None:
        super().__init__(f"batch {batch_id}: {reason}")
        self.batch_id = batch_id
        self.lines = lines
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SpooledBatch:
    id: int
    payload: bytes  # line protocol, uncompressed
    lines: int
    oldest_s: float  # UTC time of the oldest sample in the batch
    attempts: int


@dataclass(frozen=True, slots=True)
class QuarantinedBatch:
    id: int
    payload: bytes
    lines: int
    status: int
    reason: str
    quarantined_s: float


@dataclass(frozen=True, slots=True)
class SpoolDepth:
    batches: int = 0
    lines: int = 0
    bytes: int = 0
    oldest_s: float | None = None  # None when empty


@dataclass(frozen=True, slots=True)
class Dropped:
    """What a bound removed from the spool (lost data, counted in the metrics)."""

    batches: int = 0
    lines: int = 0

    def __add__(self, other: Dropped) -> Dropped:
        return Dropped(self.batches + other.batches, self.lines + other.lines)


class Spool:
    def __init__(self, path: Path | None, *, max_bytes: int, max_age_s: float) -> None:
        """`path` None keeps the spool in memory (the fallback when the disk refuses)."""
        self.path = path
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._db = self._open(path)
        self.durable = path is not None

    # -- opening -------------------------------------------------------------------

    def _open(self, path: Path | None) -> sqlite3.Connection:
        if path is None:
            return self._init(sqlite3.connect(":memory:", isolation_level=None))
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._init(sqlite3.connect(path, isolation_level=None))
        except sqlite3.DatabaseError as exc:
            # A corrupt file must not stop the archive: keep it aside for a post-mortem.
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            log.error("archive spool %s is unreadable (%s); moved to %s", path, exc, aside)
            path.rename(aside)
            for suffix in ("-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            return self._init(sqlite3.connect(path, isolation_level=None))

    @staticmethod
    def _init(db: sqlite3.Connection) -> sqlite3.Connection:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("SELECT count(*) FROM batches").fetchone()  # fails now if the file is corrupt
        return db

    def close(self) -> None:
        self._db.close()

    # -- the queue -----------------------------------------------------------------

    def add(self, payload: bytes, lines: int, oldest_s: float) -> Dropped:
        """Commit one batch; drop the oldest batches if the spool grew beyond max_bytes."""
        packed = zlib.compress(payload, 6)
        with self._transaction():
            self._db.execute(
                "INSERT INTO batches (oldest_s, lines, bytes, payload) VALUES (?, ?, ?, ?)",
                (oldest_s, lines, len(packed), packed),
            )
            return self._enforce_size()

    def oldest(self) -> SpooledBatch | None:
        row = self._db.execute(
            "SELECT id, payload, lines, oldest_s, attempts FROM batches ORDER BY id LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        try:
            payload = zlib.decompress(row[1])
        except zlib.error as exc:
            raise DamagedBatch(row[0], row[2], f"payload damaged on disk: {exc}") from exc
        return SpooledBatch(row[0], payload, row[2], row[3], row[4])

    def remove(self, batch_id: int) -> None:
        self._db.execute("DELETE FROM batches WHERE id = ?", (batch_id,))

    def record_attempt(self, batch_id: int) -> None:
        self._db.execute("UPDATE batches SET attempts = attempts + 1 WHERE id = ?", (batch_id,))

    def quarantine(self, batch_id: int, status: int, reason: str, now_s: float) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT INTO quarantine (id, oldest_s, lines, bytes, quarantined_s, status, reason,"
                " payload) SELECT id, oldest_s, lines, bytes, ?, ?, ?, payload FROM batches"
                " WHERE id = ?",
                (now_s, status, reason[:2000], batch_id),
            )
            self._db.execute("DELETE FROM batches WHERE id = ?", (batch_id,))
            self._trim_quarantine()

    def expire(self, now_s: float) -> Dropped:
        """Drop batches whose oldest sample is older than max_age_s."""
        cutoff = now_s - self.max_age_s
        with self._transaction():
            row = self._db.execute(
                "SELECT count(*), coalesce(sum(lines), 0) FROM batches WHERE oldest_s < ?",
                (cutoff,),
            ).fetchone()
            self._db.execute("DELETE FROM batches WHERE oldest_s < ?", (cutoff,))
        return Dropped(row[0], row[1])

    def depth(self) -> SpoolDepth:
        row = self._db.execute(
            "SELECT count(*), coalesce(sum(lines), 0), coalesce(sum(bytes), 0), min(oldest_s)"
            " FROM batches"
        ).fetchone()
        return SpoolDepth(row[0], row[1], row[2], row[3])

    def quarantined(self, limit: int = 100) -> list[QuarantinedBatch]:
        rows = self._db.execute(
            "SELECT id, payload, lines, status, reason, quarantined_s FROM quarantine"
            " ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [QuarantinedBatch(r[0], zlib.decompress(r[1]), r[2], r[3], r[4], r[5]) for r in rows]

    # -- bounds --------------------------------------------------------------------

    def _enforce_size(self) -> Dropped:
        dropped = Dropped()
        total = self._db.execute("SELECT coalesce(sum(bytes), 0) FROM batches").fetchone()[0]
        while total > self.max_bytes:
            row = self._db.execute(
                "SELECT id, lines, bytes FROM batches ORDER BY id LIMIT 1"
            ).fetchone()
            count = self._db.execute("SELECT count(*) FROM batches").fetchone()[0]
            if row is None or count <= 1:
                break  # keep the newest batch even if it alone is over the bound
            self._db.execute("DELETE FROM batches WHERE id = ?", (row[0],))
            total -= row[2]
            dropped = dropped + Dropped(1, row[1])
        return dropped

    def _trim_quarantine(self) -> None:
        budget = int(self.max_bytes * QUARANTINE_SHARE)
        rows = self._db.execute("SELECT id, bytes FROM quarantine ORDER BY id DESC").fetchall()
        total = rows[0][1] if rows else 0  # the newest is always kept
        for batch_id, size in rows[1:]:
            total += size
            if total > budget:
                self._db.execute("DELETE FROM quarantine WHERE id <= ?", (batch_id,))
                return

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
