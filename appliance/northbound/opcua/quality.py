"""Samples as OPC UA DataValues: the value, its StatusCode and its timestamps.

Pure: the sample, what the variable is and the current time in; a DataValue out.

| Sample                                   | StatusCode                          | Value           |
|------------------------------------------|-------------------------------------|-----------------|
| GOOD, inside the point's range           | Good                                | value           |
| GOOD, outside the point's range          | Uncertain_EngineeringUnitsExceeded  | value           |
| STALE (older than the point's limit)     | Uncertain_LastUsableValue           | last value      |
| BAD (device down)                        | Bad_CommunicationError              | null (OPC UA)   |
| WAITING (nothing received since start)   | Bad_WaitingForInitialData           | null            |

SourceTimestamp is the sample's measurement time (UTC); OPC UA servers null the value of a
Bad status, so a Bad point shows no number at all (asyncua does this on write).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from asyncua import ua

from appliance.northbound.opcua.uatypes import StatusCodes
from appliance.northbound.opcua.uatypes import data_value as make_value
from appliance.points.model import Point
from appliance.store import Quality, Sample, Value

STATUS: dict[Quality, int] = {
    Quality.GOOD: StatusCodes.Good,
    Quality.STALE: StatusCodes.UncertainLastUsableValue,
    Quality.BAD: StatusCodes.BadCommunicationError,
    Quality.WAITING: StatusCodes.BadWaitingForInitialData,
}

_INTEGER_LIMITS: dict[ua.VariantType, tuple[int, int]] = {
    ua.VariantType.UInt16: (0, 0xFFFF),
    ua.VariantType.UInt32: (0, 0xFFFFFFFF),
    ua.VariantType.Int16: (-0x8000, 0x7FFF),
    ua.VariantType.Int32: (-0x80000000, 0x7FFFFFFF),
}


NULL = ua.Variant(None, ua.VariantType.Null)


class ConversionError(ValueError):
    """A sample value that the variable's data type cannot carry."""


@dataclass(frozen=True, slots=True)
class Binding:
    """What the publisher needs to know about one point variable."""

    point: Point
    node_id: ua.NodeId
    variant_type: ua.VariantType
    text_node_id: ua.NodeId | None = None  # ValueAsText of an enum point


def utc(timestamp_s: float) -> datetime | None:
    """A sample timestamp (UTC seconds) as a datetime; None for "no time" (0)."""
    if timestamp_s <= 0 or not math.isfinite(timestamp_s):
        return None
    return datetime.fromtimestamp(timestamp_s, UTC)


def to_variant(value: Value, variant_type: ua.VariantType) -> ua.Variant:
    """The sample value in the variable's exact data type, or ConversionError."""
    if variant_type is ua.VariantType.Boolean:
        return ua.Variant(bool(value), variant_type)
    if variant_type is ua.VariantType.Double:
        number = float(value)
        if not math.isfinite(number):
            raise ConversionError(f"{value!r} is not a finite number")
        return ua.Variant(number, variant_type)
    if variant_type is ua.VariantType.DateTime:
        stamp = utc(float(value))
        if stamp is None:
            raise ConversionError(f"{value!r} is not a time")
        return ua.Variant(stamp, variant_type)
    limits = _INTEGER_LIMITS.get(variant_type)
    if limits is None:
        raise ConversionError(f"no conversion to {variant_type.name}")
    if isinstance(value, float) and not value.is_integer():
        raise ConversionError(f"{value!r} is not a whole number")
    integer = int(value)
    if not limits[0] <= integer <= limits[1]:
        raise ConversionError(f"{integer} does not fit {variant_type.name}")
    return ua.Variant(integer, variant_type)


def data_value(binding: Binding, sample: Sample, now: datetime) -> ua.DataValue:
    """The DataValue to publish for `sample`; ConversionError for an unrepresentable value."""
    status = STATUS[sample.quality]
    source_time = utc(sample.timestamp)
    if sample.value is None or sample.quality in (Quality.BAD, Quality.WAITING):
        if sample.quality in (Quality.GOOD, Quality.STALE):
            raise ConversionError("a usable sample without a value")
        return make_value(NULL, status, source=source_time, server=now)
    variant = to_variant(sample.value, binding.variant_type)
    if sample.quality is Quality.GOOD and _outside_range(binding.point, sample.value):
        status = StatusCodes.UncertainEngineeringUnitsExceeded
    return make_value(variant, status, source=source_time, server=now)


def text_value(binding: Binding, sample: Sample, now: datetime) -> ua.DataValue:
    """ValueAsText of an enum point: the state's name, with the sample's status."""
    status = STATUS[sample.quality]
    if sample.value is None or sample.quality in (Quality.BAD, Quality.WAITING):
        return make_value(NULL, status, server=now)
    key = int(sample.value)
    name = binding.point.states.get(key, str(key))
    text = ua.Variant(ua.LocalizedText(name, "en"), ua.VariantType.LocalizedText)
    return make_value(text, status, source=utc(sample.timestamp), server=now)


def _outside_range(point: Point, value: Value) -> bool:
    if point.range is None or point.states or isinstance(value, bool):
        return False
    return not point.range[0] <= float(value) <= point.range[1]


# --------------------------------------------------------------------------- ServiceLevel

SERVICE_LEVEL_HEALTHY = 255
SERVICE_LEVEL_NO_DATA = 1  # OPC 10000-4 §6.6.2.4.2: "NoData"
SERVICE_LEVEL_GRID_LOST = 50  # degraded: the control core works without its main input
SERVICE_LEVEL_DEGRADED_MAX = 199
SERVICE_LEVEL_DEGRADED_MIN = 100

#: The points whose freshness decides the ServiceLevel: the grid meter drives the control
#: loop; each BMS and inverter node carries the battery. Templated ids use {n}.
KEY_POINTS = ("grid.active_power", "battery.{n}.soc", "inverter.{n}.active_power")


def key_point_ids(point_ids: Iterable[str]) -> tuple[str, ...]:
    """The key points present in a site's table (every node of the templated ones)."""
    ids = list(point_ids)
    selected = []
    for pattern in KEY_POINTS:
        head, _, tail = pattern.partition("{n}")
        if not tail:
            selected += [i for i in ids if i == pattern]
        else:
            selected += [
                i
                for i in ids
                if i.startswith(head) and i.endswith(tail) and i[len(head) : -len(tail)].isdigit()
            ]
    return tuple(selected)


def service_level(qualities: dict[str, Quality]) -> int:
    """OPC UA ServiceLevel from the quality of the key points (`key_point_ids`).

    255 when all are GOOD; 1 (NoData) while nothing has arrived since start; 50 while the
    grid meter is not GOOD (the controller ramps down on sensor loss); otherwise 199 down to
    100 as the share of battery and inverter nodes that are not GOOD grows.
    """
    if not qualities or all(q is Quality.WAITING for q in qualities.values()):
        return SERVICE_LEVEL_NO_DATA
    grid = qualities.get("grid.active_power")
    if grid is not None and grid is not Quality.GOOD:
        return SERVICE_LEVEL_GRID_LOST
    nodes = [q for pid, q in qualities.items() if pid != "grid.active_power"]
    bad = sum(q is not Quality.GOOD for q in nodes)
    if bad == 0:
        return SERVICE_LEVEL_HEALTHY
    span = SERVICE_LEVEL_DEGRADED_MAX - SERVICE_LEVEL_DEGRADED_MIN
    return SERVICE_LEVEL_DEGRADED_MAX - round(span * bad / len(nodes))
