"""Writes line protocol to InfluxDB through influxdb-client's v2 write API, and says what happened.

The v2 write endpoint (`POST /api/v2/write?org=&bucket=&precision=ms`) is served by
InfluxDB 2.x and 3.x, by 1.8+ (bucket `db/rp`, token `user:password`, org `-`) and by
VictoriaMetrics, so one client covers them all. Requests are gzip-compressed.

Each answer is classified for the store-and-forward loop:
* WRITTEN   2xx;
* REJECTED  400 / 413 / 422: the data itself is refused (bad line, type conflict, outside the
            retention, too large); sending it again would fail forever, so it is quarantined;
* RETRY     everything else: connection refused or reset, timeout, 5xx, 429 (with its
            Retry-After), and 401 / 403 / 404, which mean a wrong token or bucket: the data
            is fine and waits in the spool until the configuration is fixed.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import aiohttp
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException

log = logging.getLogger(__name__)

REJECTING_STATUSES = frozenset({400, 413, 422})


class WriteOutcome(enum.Enum):
    WRITTEN = "written"
    RETRY = "retry"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class WriteResult:
    outcome: WriteOutcome
    status: int | None = None  # HTTP status; None when no answer came
    reason: str = ""
    retry_after_s: float | None = None


def classify(status: int) -> WriteOutcome:
    if 200 <= status < 300:
        return WriteOutcome.WRITTEN
    if status in REJECTING_STATUSES:
        return WriteOutcome.REJECTED
    return WriteOutcome.RETRY


def _retry_after(headers: object) -> float | None:
    getter = getattr(headers, "get", None)
    raw = getter("Retry-After") if getter is not None else None
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own back-off


class InfluxWriter:
    """One InfluxDB endpoint; the client is made on first use, inside the running loop."""

    def __init__(
        self,
        url: str,
        org: str,
        bucket: str,
        token: Callable[[], str],
        *,
        timeout_s: float = 10.0,
        gzip: bool = True,
    ) -> None:
        self.url = url
        self.org = org
        self.bucket = bucket
        self._token = token
        self._timeout_ms = int(timeout_s * 1000)
        self._gzip = gzip
        self._client: InfluxDBClientAsync | None = None

    async def write(self, payload: bytes) -> WriteResult:
        try:
            client = self._open()
        except OSError as exc:  # the token file is missing or unreadable
            return WriteResult(WriteOutcome.RETRY, None, f"no token: {exc}")
        try:
            await client.write_api().write(
                bucket=self.bucket,
                org=self.org,
                record=payload,
                write_precision=cast(WritePrecision, WritePrecision.MS),
            )
        except ApiException as exc:
            status = int(exc.status or 0)
            message = str(getattr(exc, "message", "") or exc.reason or "")
            if status == 0:
                return WriteResult(WriteOutcome.RETRY, None, message)
            if status in (401, 403):
                await self.close()  # the next attempt reads the token again: it may be fixed
            return WriteResult(classify(status), status, message, _retry_after(exc.headers))
        except InfluxDBError as exc:
            return WriteResult(WriteOutcome.RETRY, None, str(exc))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            # Refused, reset, unreachable, timed out: the server is away, the data is fine.
            return WriteResult(WriteOutcome.RETRY, None, f"{type(exc).__name__}: {exc}")
        return WriteResult(WriteOutcome.WRITTEN, 204)

    def _open(self) -> InfluxDBClientAsync:
        if self._client is None:
            self._client = InfluxDBClientAsync(
                url=self.url,
                token=self._token(),
                org=self.org,
                timeout=self._timeout_ms,
                enable_gzip=self._gzip,
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()  # type: ignore[no-untyped-call]
