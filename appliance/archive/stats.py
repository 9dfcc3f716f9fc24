"""The archive's health as numbers: what the metrics face exports (and OPC UA diagnostics will)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ArchiveStats:
    """A snapshot; counters count since the archive face started.

    "Points" are InfluxDB points: one line of line protocol (one device at one instant, with
    all its fields), or one row of the local archive.
    """

    backend: str  # "influxdb", "local" or "off" (the local archive could not be opened)
    spool_durable: bool  # False: the spool file could not be opened and lives in memory
    spool_batches: int
    spool_points: int
    spool_bytes: int  # stored (compressed) size
    spool_oldest_age_s: float  # 0 when the spool is empty
    points_written: int
    write_failures: int  # write attempts that will be retried (outage, 5xx, 429, ...)
    points_dropped_size: int  # dropped by spool.max_bytes
    points_dropped_age: int  # dropped by spool.max_age_s
    batches_quarantined: int  # refused by the server as bad data (4xx)
    points_quarantined: int
    last_success_s: float | None  # UTC time of the last successful write

    @property
    def points_dropped(self) -> int:
        return self.points_dropped_size + self.points_dropped_age
