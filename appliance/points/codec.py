"""Pure conversion between point values and Modbus register words.

32-bit values are sent high word first (big-endian words of big-endian bytes, "ABCD"),
as SunSpec and the SDM630 do. A value that is missing, stale or bad is encoded as SunSpec's
"not implemented" marker of its register type, never as 0, so a client cannot mistake it for
a real reading.
"""

from __future__ import annotations

import math
import struct

from appliance.points.model import ModbusMapping, RegisterType

_FORMATS: dict[RegisterType, str] = {
    RegisterType.INT16: ">h",
    RegisterType.UINT16: ">H",
    RegisterType.INT32: ">i",
    RegisterType.UINT32: ">I",
    RegisterType.FLOAT32: ">f",
}

NOT_IMPLEMENTED: dict[RegisterType, tuple[int, ...]] = {
    RegisterType.INT16: (0x8000,),
    RegisterType.UINT16: (0xFFFF,),
    RegisterType.INT32: (0x8000, 0x0000),
    RegisterType.UINT32: (0xFFFF, 0xFFFF),
    RegisterType.FLOAT32: (0x7FC0, 0x0000),  # quiet NaN
}


class CodecError(ValueError):
    """A value cannot be represented in, or decoded from, a register mapping."""


def encode(mapping: ModbusMapping, value: float | bool | None) -> tuple[int, ...]:
    """Register words for a value; None (no usable value) gives the not-implemented marker."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return NOT_IMPLEMENTED[mapping.type]
    raw: float = float(value) * mapping.gain
    if mapping.type is not RegisterType.FLOAT32:
        raw = round(raw)
        low, high = mapping.type.raw_range
        if not low <= raw <= high:
            raise CodecError(f"{value!r} x gain {mapping.gain:g} does not fit {mapping.type.value}")
        data = struct.pack(_FORMATS[mapping.type], int(raw))
    else:
        try:
            data = struct.pack(">f", raw)
        except OverflowError as exc:
            raise CodecError(f"{value!r} does not fit float32") from exc
    return struct.unpack(f">{len(data) // 2}H", data)


def decode(mapping: ModbusMapping, words: tuple[int, ...] | list[int]) -> float | None:
    """The value carried by register words; None for the not-implemented marker."""
    if len(words) != mapping.count:
        raise CodecError(
            f"expected {mapping.count} registers for {mapping.type.value}, got {len(words)}"
        )
    if any(not 0 <= w <= 0xFFFF for w in words):
        raise CodecError(f"register values must be 0 .. 65535, got {list(words)}")
    data = struct.pack(f">{len(words)}H", *words)
    raw = struct.unpack(_FORMATS[mapping.type], data)[0]
    if mapping.type is RegisterType.FLOAT32:
        if math.isnan(raw):
            return None
    elif tuple(words) == NOT_IMPLEMENTED[mapping.type]:
        return None
    return float(raw) / mapping.gain
