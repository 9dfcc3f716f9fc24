"""Fields as words and bits, from the latest samples; written words back to point values.

Pure: a `UnitMap`, the mirror (latest sample per point) and the request in; words, or the
exception code, out. A read of several fields is one snapshot as long as the caller does
not await between taking the mirror and encoding (the faces' event loop applies the core's
changes in one synchronous step).

A sample that is not GOOD (stale, bad, waiting) reads as the "not implemented" marker of its
encoding (NaN for float32, 0x8000, 0xFFFF, 0x80000000, 0xFFFFFFFF); a bit reads 0. Which of
the four it is, per device, is in the vendor model's quality registers:

| bit | meaning |
|---|---|
| 0 | every point of the device is GOOD |
| 1 | at least one point is STALE (older than its limit) |
| 2 | at least one point is BAD (device down) |
| 3 | at least one point is WAITING (no value since start) |

A device that the site does not have (a node beyond its count) reads 0xFFFF.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from pymodbus.constants import ExcCodes

from appliance.northbound.modbus import sunspec
from appliance.northbound.modbus.layout import (
    AlarmBit,
    DeviceAddress,
    DeviceQuality,
    Field,
    Fixed,
    Identity,
    NativeValue,
    SunSpecValue,
    UnitMap,
)
from appliance.points import codec
from appliance.points.model import DataType, Point
from appliance.points.table import SUNSPEC_RAW_LIMITS, PointTable
from appliance.store import Quality, Sample, Value

QUALITY_BITS: dict[Quality, int] = {
    Quality.GOOD: 0x1,
    Quality.STALE: 0x2,
    Quality.BAD: 0x4,
    Quality.WAITING: 0x8,
}
_INTEGER_TYPES = frozenset(
    {
        DataType.INT16,
        DataType.UINT16,
        DataType.INT32,
        DataType.UINT32,
        DataType.ENUM,
        DataType.TIMESTAMP,
    }
)


@dataclass(frozen=True)
class ReadContext:
    """What encoding needs besides the fields: samples, identity texts, devices' points."""

    mirror: Mapping[str, Sample]
    identity: Mapping[str, str]  # Mn, Md, Opt, Vr, SN of the addressed unit
    unit_id: int
    devices: Mapping[tuple[str, int | None], tuple[str, ...]]  # (block, node) -> point ids


def device_points(table: PointTable) -> dict[tuple[str, int | None], tuple[str, ...]]:
    """The point ids of each device (block instance) of a table."""
    devices: dict[tuple[str, int | None], list[str]] = {}
    for point in table:
        devices.setdefault((point.block, point.node), []).append(point.id)
    return {key: tuple(ids) for key, ids in devices.items()}


# --------------------------------------------------------------------------- reads


def read_registers(
    unit: UnitMap, address: int, count: int, context: ReadContext
) -> list[int] | ExcCodes:
    """`count` words from `address`, or ILLEGAL_ADDRESS if any of them is not mapped."""
    words: list[int] = []
    end = address + count
    cursor = address
    while cursor < end:
        field = unit.register(cursor)
        if field is None:
            return ExcCodes.ILLEGAL_ADDRESS
        encoded = encode_field(field, context)
        words += encoded[cursor - field.address : min(end, field.end) - field.address]
        cursor = field.end
    return words


def read_bits(
    unit: UnitMap, address: int, count: int, context: ReadContext
) -> list[bool] | ExcCodes:
    bits: list[bool] = []
    for cursor in range(address, address + count):
        field = unit.bit(cursor)
        if field is None or not isinstance(field.source, AlarmBit):
            return ExcCodes.ILLEGAL_ADDRESS
        bits.append(_bit(field.source, context.mirror))
    return bits


def encode_field(field: Field, context: ReadContext) -> tuple[int, ...]:
    """The words a field reads now; never raises for a value (a misfit reads as the marker)."""
    source = field.source
    if isinstance(source, NativeValue):
        value = _usable(context.mirror.get(source.point_id))
        try:
            return codec.encode(source.mapping, value)
        except codec.CodecError:
            return codec.NOT_IMPLEMENTED[source.mapping.type]
    if isinstance(source, SunSpecValue):
        return _sunspec_words(source, field.count, _usable(context.mirror.get(source.point_id)))
    return _other_words(field, context)


def _other_words(field: Field, context: ReadContext) -> tuple[int, ...]:
    source = field.source
    if isinstance(source, Fixed):
        return source.words
    if isinstance(source, Identity):
        return sunspec.encode_string(context.identity.get(source.key, ""), field.count)
    if isinstance(source, DeviceAddress):
        return (context.unit_id,)
    if isinstance(source, DeviceQuality):
        return (_quality(source, context),)
    return sunspec.marker_words(field.type, field.count)


def _usable(sample: Sample | None) -> Value | None:
    if sample is None or sample.quality is not Quality.GOOD:
        return None
    return sample.value


def _sunspec_words(source: SunSpecValue, count: int, value: Value | None) -> tuple[int, ...]:
    marker = sunspec.marker_words(source.stype, count)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return marker
    if source.values:
        raw: float | None = dict(source.values).get(int(value))
        if raw is None:
            return marker
    elif source.stype == "float32":
        return sunspec.encode_float32(float(value) * source.factor)
    else:
        raw = _round_half_away(float(value) * source.factor / 10.0**source.sf)
    low, high = SUNSPEC_RAW_LIMITS[source.stype]
    if not low <= raw <= high:
        return marker
    return sunspec.encode_int(source.stype, int(raw), count)


def _round_half_away(number: float) -> int:
    """Round to the nearest integer, halves away from zero (-6.5 -> -7; round() gives -6)."""
    return int(math.copysign(math.floor(abs(number) + 0.5), number))


def _quality(source: DeviceQuality, context: ReadContext) -> int:
    ids = context.devices.get((source.block, source.node))
    if not ids:
        return 0xFFFF
    bits = 0
    for point_id in ids:
        sample = context.mirror.get(point_id)
        bits |= QUALITY_BITS[sample.quality if sample is not None else Quality.WAITING]
    if bits != QUALITY_BITS[Quality.GOOD]:
        bits &= ~QUALITY_BITS[Quality.GOOD]
    return bits


def _bit(source: AlarmBit, mirror: Mapping[str, Sample]) -> bool:
    value = _usable(mirror.get(source.point_id))
    if value is None:
        return False
    if source.bit is None:
        return bool(value)
    return bool((int(value) >> source.bit) & 1)


# --------------------------------------------------------------------------- writes


def decode_write(field: Field, words: list[int], point: Point) -> Value | None:
    """The point value a client wrote into `field`; None when the words carry none.

    None for the not-implemented marker, NaN, a symbol no state maps to (uniquely).
    """
    source = field.source
    if isinstance(source, NativeValue):
        try:
            number = codec.decode(source.mapping, words)
        except codec.CodecError:
            return None
    elif isinstance(source, SunSpecValue):
        number = _sunspec_value(source, words)
    else:
        return None
    if number is None or not math.isfinite(number):
        return None
    return as_point_value(point, number)


def decode_bit(point: Point, on: bool) -> Value:
    return as_point_value(point, 1.0 if on else 0.0)


def as_point_value(point: Point, number: float) -> Value:
    """A decoded number in the point's own type (bool, int or float)."""
    if point.type is DataType.BOOL and number in (0.0, 1.0):
        return number == 1.0
    if point.type in _INTEGER_TYPES and float(number).is_integer():
        return int(number)
    return float(number)


def _sunspec_value(source: SunSpecValue, words: list[int]) -> float | None:
    if source.stype == "float32":
        value = sunspec.decode_float32(words)
        return value / source.factor if math.isfinite(value) else None
    raw = sunspec.decode_int(source.stype, words)
    if raw is None:
        return None
    if source.values:
        states = [state for state, symbol in source.values if symbol == raw]
        return float(states[0]) if len(states) == 1 else None
    scaled = raw * 10.0**source.sf if source.sf >= 0 else raw / 10.0**-source.sf
    return scaled / source.factor
