"""The archive: samples into InfluxDB (store and forward through a durable spool) or into a
local SQLite archive that also answers OPC UA HistoryRead. See docs/archive.md."""

from appliance.archive.face import ArchiveFace
from appliance.archive.local import HistorySample, HistoryUnavailable, LocalArchive
from appliance.archive.plan import STATUS_MEASUREMENT, ArchiveTarget, archive_targets
from appliance.archive.stats import ArchiveStats

__all__ = [
    "STATUS_MEASUREMENT",
    "ArchiveFace",
    "ArchiveStats",
    "ArchiveTarget",
    "HistorySample",
    "HistoryUnavailable",
    "LocalArchive",
    "archive_targets",
]
