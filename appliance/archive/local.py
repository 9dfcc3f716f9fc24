"""The local archive: archived samples in SQLite on the appliance, for sites without InfluxDB.

The same points at the same rate as the InfluxDB archive (`plan.Sampler`), kept for
`retention_days`, and readable for OPC UA HistoryRead through `read_raw`. One row per
(point, millisecond) in a WITHOUT ROWID table keyed by (point, time), so a range read of
one point is one index walk and a sample written twice is stored once.

Not thread-safe: used from the archive's database thread only.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.points.model import DataType
from appliance.store import Value

SCHEMA_VERSION = 1
MAX_LIMIT = 100_000  # one answer's worth; callers page with the last timestamp they got

_SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    idx INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS samples (
    point INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    value NOT NULL,
    PRIMARY KEY (point, ts_ms)
) WITHOUT ROWID;
"""


class HistoryUnavailable(ApplianceError):
    """No history can be read: no local archive on this appliance, or the point is not archived."""


@dataclass(frozen=True, slots=True)
class HistorySample:
    """One archived value and the UTC time it was measured (seconds since the epoch)."""

    value: Value
    timestamp: float


class LocalArchive:
    def __init__(
        self, path: Path, *, retention_days: int, point_types: Mapping[str, DataType]
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.retention_s = retention_days * 86_400.0
        self._types = dict(point_types)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a power cut may lose the last seconds, never corrupts; the archive is a record.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._index: dict[str, int] = dict(self._db.execute("SELECT id, idx FROM points"))

    def close(self) -> None:
        self._db.close()

    def write(self, rows: Sequence[tuple[str, int, Value]]) -> int:
        """Store (point id, UTC milliseconds, value) rows; returns how many were new."""
        if not rows:
            return 0
        self._db.execute("BEGIN IMMEDIATE")
        try:
            values = [(self._point_index(pid), ts_ms, _storable(v)) for pid, ts_ms, v in rows]
            before = self._db.total_changes  # after new point rows: count samples only
            self._db.executemany(
                "INSERT OR IGNORE INTO samples (point, ts_ms, value) VALUES (?, ?, ?)", values
            )
            written = self._db.total_changes - before
        except BaseException:
            self._db.execute("ROLLBACK")
            # Point rows inserted in the rolled-back transaction are gone again.
            self._index = dict(self._db.execute("SELECT id, idx FROM points"))
            raise
        self._db.execute("COMMIT")
        return written

    def prune(self, now_s: float) -> int:
        """Delete samples older than the retention; returns how many went."""
        cutoff_ms = round((now_s - self.retention_s) * 1000.0)
        before = self._db.total_changes
        for idx in self._index.values():  # one index range per point: no full-table scan
            self._db.execute("DELETE FROM samples WHERE point = ? AND ts_ms < ?", (idx, cutoff_ms))
        return self._db.total_changes - before

    def read_raw(
        self, point_id: str, start_s: float, end_s: float, limit: int = 0
    ) -> list[HistorySample]:
        """Raw samples of one point from `start_s` (inclusive) towards `end_s` (exclusive).

        As OPC UA ReadRaw: start before end reads forwards, start after end reads backwards
        (newest first), start == end returns the sample at exactly that time. `limit` 0 means
        up to MAX_LIMIT.
        """
        if point_id not in self._types:
            raise HistoryUnavailable(f"{point_id}: not an archived point of this site")
        idx = self._index.get(point_id)
        if idx is None:
            return []
        count = MAX_LIMIT if limit <= 0 else min(limit, MAX_LIMIT)
        start_ms, end_ms = round(start_s * 1000.0), round(end_s * 1000.0)
        if start_ms == end_ms:
            sql = "SELECT ts_ms, value FROM samples WHERE point = ? AND ts_ms = ? LIMIT ?"
            args: tuple[int, ...] = (idx, start_ms, count)
        elif start_ms < end_ms:
            sql = (
                "SELECT ts_ms, value FROM samples WHERE point = ? AND ts_ms >= ? AND ts_ms < ?"
                " ORDER BY ts_ms LIMIT ?"
            )
            args = (idx, start_ms, end_ms, count)
        else:
            sql = (
                "SELECT ts_ms, value FROM samples WHERE point = ? AND ts_ms <= ? AND ts_ms > ?"
                " ORDER BY ts_ms DESC LIMIT ?"
            )
            args = (idx, start_ms, end_ms, count)
        kind = self._types[point_id]
        return [
            HistorySample(_typed(value, kind), ts_ms / 1000.0)
            for ts_ms, value in self._db.execute(sql, args)
        ]

    def _point_index(self, point_id: str) -> int:
        idx = self._index.get(point_id)
        if idx is None:
            cursor = self._db.execute("INSERT INTO points (id) VALUES (?)", (point_id,))
            idx = int(cursor.lastrowid or 0)
            self._index[point_id] = idx
        return idx


def _storable(value: Value) -> int | float:
    return int(value) if isinstance(value, bool) else value


def _typed(value: int | float, kind: DataType) -> Value:
    if kind is DataType.BOOL:
        return bool(value)
    if kind in (DataType.FLOAT32, DataType.FLOAT64):
        return float(value)
    return int(value)
