"""HistoryRead (raw) of the archived points, served from the local archive.

asyncua's HistoryManager asks a `HistoryStorageInterface` for (values, continuation point)
per node and cannot give one node a Bad status while the others succeed; it also reads the
history it stored itself through an internal subscription, while the appliance's archive
already records the samples. So the face replaces the manager's `read_history` with
`ArchiveHistory.read_history`, which answers per node from `FaceContext.history`:

* ReadRawModifiedDetails with IsReadModified false only; other details (ReadProcessed,
  ReadAtTime, ReadEvent, modified values) give BadHistoryOperationUnsupported per node.
* StartTime / EndTime as OPC 10000-11 §6.4.3: start before end reads forwards, start after
  end backwards (newest first), the end is exclusive; an unspecified start reads backwards
  from just before EndTime, an unspecified end forwards from StartTime, both need NumValuesPerNode > 0.
  ReturnBounds is ignored (no bounding values are returned).
* NumValuesPerNode caps one answer (0: up to MAX_VALUES_PER_READ); when more samples are
  left the result carries a continuation point. The archive stores at most one sample per
  point and millisecond, so the continuation point is simply the time of the next sample
  (stateless: nothing to release, ReleaseContinuationPoints answers Good with no data).
* Points without an archive spec, or not archived locally (`HistoryUnavailable`), give
  BadHistoryOperationUnsupported; unknown nodes BadNodeIdUnknown.

Every value is returned Good with its measurement time as Source and Server timestamp
(the archive keeps only good samples and one time per sample).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from asyncua import ua
from asyncua.server.address_space import AddressSpace
from asyncua.server.internal_server import InternalServer

from appliance.archive.local import HistorySample, HistoryUnavailable
from appliance.northbound.face import HistoryReader
from appliance.northbound.opcua.quality import ConversionError, to_variant
from appliance.northbound.opcua.uatypes import AttributeIds, StatusCodes, data_value, status
from appliance.points.model import Point

log = logging.getLogger(__name__)

MAX_VALUES_PER_READ = 10_000  # one answer's worth when the client sets no limit
_EARLIEST_S = -1.0  # below every archived time: the exclusive end of a backward read
_LATEST_S = 253_402_300_799.0  # 9999-12-31T23:59:59Z: the end of an open forward read
_CONTINUATION = struct.Struct("<Bq")  # version, next start in UTC milliseconds
_CONTINUATION_VERSION = 1
_NO_TIME = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class HistoryNode:
    """An archived point variable: the point it shows and its data type."""

    point_id: str
    variant_type: ua.VariantType


class ArchiveHistory:
    def __init__(
        self,
        reader: HistoryReader | None,
        archived: Mapping[ua.NodeId, HistoryNode],
        is_node: Callable[[ua.NodeId], bool],
    ) -> None:
        self._reader = reader
        self._archived = archived
        self._is_node = is_node
        self.reads = 0
        self.archived = len(archived)
        self.failures = 0

    async def read_history(self, params: ua.HistoryReadParameters) -> list[ua.HistoryReadResult]:
        details = params.HistoryReadDetails
        results = []
        for item in params.NodesToRead:
            if params.ReleaseContinuationPoints:
                results.append(ua.HistoryReadResult(StatusCode=status(StatusCodes.Good)))
                continue
            results.append(await self._read_node(details, item))
        return results

    async def _read_node(
        self, details: object, item: ua.HistoryReadValueId
    ) -> ua.HistoryReadResult:
        node = self._archived.get(item.NodeId)
        if node is None or self._reader is None:
            known = self._is_node(item.NodeId)
            return _failed(
                StatusCodes.BadHistoryOperationUnsupported
                if known
                else StatusCodes.BadNodeIdUnknown
            )
        request = _request(details, item)
        if isinstance(request, int):
            return _failed(request)
        start_s, end_s, per_read = request
        try:
            # One more than asked for tells whether a continuation point is needed.
            samples = await self._reader(node.point_id, start_s, end_s, per_read + 1)
        except HistoryUnavailable as exc:
            log.info("opcua: HistoryRead of %s: %s", node.point_id, exc)
            return _failed(StatusCodes.BadHistoryOperationUnsupported)
        except Exception:
            self.failures += 1
            log.exception("opcua: HistoryRead of %s failed", node.point_id)
            return _failed(StatusCodes.BadInternalError)
        self.reads += 1
        result = ua.HistoryReadResult(StatusCode=status(StatusCodes.Good))
        if len(samples) > per_read:
            result.ContinuationPoint = _continuation(samples[per_read].timestamp)
            samples = samples[:per_read]
        result.HistoryData = ua.HistoryData(DataValues=[_value(sample, node) for sample in samples])
        return result


def _failed(code: int) -> ua.HistoryReadResult:
    return ua.HistoryReadResult(StatusCode=status(code))


def _specified(stamp: datetime | None) -> float | None:
    """A request time in UTC seconds; None when the client left it unspecified."""
    if stamp is None:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    # asyncua decodes the OPC UA "no time" (0) to the 1601 epoch; a client may also send
    # the epoch itself or anything before 1970 for "unspecified".
    if stamp <= _NO_TIME:
        return None
    return stamp.timestamp()


def _request(details: object, item: ua.HistoryReadValueId) -> tuple[float, float, int] | int:
    """(start, end, values per read) of one node's read, or the Bad status that refuses it."""
    if not isinstance(details, ua.ReadRawModifiedDetails) or details.IsReadModified:
        return StatusCodes.BadHistoryOperationUnsupported
    window = _window(details)
    if window is None:
        return StatusCodes.BadHistoryOperationInvalid
    start_s, end_s = window
    if item.ContinuationPoint:
        resumed = _resume(item.ContinuationPoint)
        if resumed is None:
            return StatusCodes.BadContinuationPointInvalid
        start_s = resumed
    per_read = min(details.NumValuesPerNode or MAX_VALUES_PER_READ, MAX_VALUES_PER_READ)
    return start_s, end_s, per_read


def _window(details: ua.ReadRawModifiedDetails) -> tuple[float, float] | None:
    """(start, end) in archive terms, or None for a combination §6.4.3 does not allow."""
    start, end = _specified(details.StartTime), _specified(details.EndTime)
    if start is not None and end is not None:
        return start, end
    if not details.NumValuesPerNode:
        return None  # an open range needs a count (both unspecified: never valid)
    if start is not None:
        return start, _LATEST_S
    if end is not None:
        # EndTime stays exclusive; the archive's times are whole milliseconds.
        return end - 0.001, _EARLIEST_S
    return None


def _continuation(next_start_s: float) -> bytes:
    return _CONTINUATION.pack(_CONTINUATION_VERSION, round(next_start_s * 1000.0))


def _resume(point: bytes) -> float | None:
    if len(point) != _CONTINUATION.size:
        return None
    version, start_ms = _CONTINUATION.unpack(point)
    if version != _CONTINUATION_VERSION:
        return None
    return float(start_ms) / 1000.0


def _value(sample: HistorySample, node: HistoryNode) -> ua.DataValue:
    stamp = datetime.fromtimestamp(sample.timestamp, UTC)
    try:
        variant = to_variant(sample.value, node.variant_type)
    except ConversionError:
        # An archived value the variable cannot carry (the point's type changed since).
        return data_value(
            ua.Variant(None, ua.VariantType.Null),
            StatusCodes.BadDataEncodingInvalid,
            source=stamp,
            server=stamp,
        )
    return data_value(variant, source=stamp, server=stamp)


async def install_history(
    iserver: InternalServer,
    bindings: Mapping[str, tuple[Point, ua.NodeId, ua.VariantType]],
    reader: HistoryReader | None,
) -> ArchiveHistory:
    """Mark the archived point variables Historizing with the HistoryRead access bit and
    serve HistoryRead from `reader` in place of asyncua's own history manager.

    Without a reader (no local archive) nothing historizes and every node answers
    BadHistoryOperationUnsupported (asyncua's in-memory history is never used).

    `bindings`: point id -> (point, variable NodeId, variant type) of every point variable.
    """
    archived: dict[ua.NodeId, HistoryNode] = {}
    aspace = iserver.aspace
    for point_id, (point, nid, variant_type) in bindings.items():
        if point.archive is None or reader is None:
            continue
        archived[nid] = HistoryNode(point_id, variant_type)
        for attribute in (AttributeIds.AccessLevel, AttributeIds.UserAccessLevel):
            current = aspace.read_attribute_value(nid, attribute)
            old = current.Value.Value if current.Value is not None else 0
            level = int(old or 0) | ua.AccessLevel.HistoryRead.mask
            await _set(aspace, nid, attribute, ua.Variant(level, ua.VariantType.Byte))
        await _set(aspace, nid, AttributeIds.Historizing, ua.Variant(True, ua.VariantType.Boolean))
    history = ArchiveHistory(reader, archived, aspace.__contains__)
    # The instance attribute shadows the method; sessions call through the instance.
    setattr(iserver.history_manager, "read_history", history.read_history)  # noqa: B010
    return history


async def _set(aspace: AddressSpace, nid: ua.NodeId, attribute: int, variant: ua.Variant) -> None:
    code = await aspace.write_attribute_value(nid, attribute, ua.DataValue(variant))
    if not code.is_good():
        raise RuntimeError(f"{nid.to_string()}: setting attribute {attribute} failed: {code.name}")
