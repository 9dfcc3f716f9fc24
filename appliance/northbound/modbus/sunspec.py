"""SunSpec value encoding for the slave face: raw integers <-> register words, markers, strings.

Pure. Words are 16-bit, most significant first (SunSpec, `sunspec2/mb.py`). A point without a
usable value reads as its type's "not implemented" marker; accumulators have 0 as marker,
so an accumulator reading 0 is indistinguishable from "not implemented" (a SunSpec rule).
"""

from __future__ import annotations

import struct

#: The "not implemented" raw value of each SunSpec type (sunspec2/mb.py SUNS_UNIMPL_*).
NOT_IMPLEMENTED: dict[str, int] = {
    "int16": 0x8000, "uint16": 0xFFFF, "acc16": 0, "enum16": 0xFFFF, "bitfield16": 0xFFFF,
    "sunssf": 0x8000, "pad": 0, "count": 0xFFFF,
    "int32": 0x8000_0000, "uint32": 0xFFFF_FFFF, "acc32": 0, "enum32": 0xFFFF_FFFF,
    "bitfield32": 0xFFFF_FFFF, "float32": 0x7FC0_0000,
    "int64": 0x8000_0000_0000_0000, "uint64": 0xFFFF_FFFF_FFFF_FFFF, "acc64": 0,
}  # fmt: skip
SIGNED = frozenset({"int16", "int32", "int64", "sunssf"})

#: Units whose scale factor never goes below 10^0: a fraction of a watt or watt-hour is noise.
WHOLE_UNITS = frozenset({"W", "VA", "var", "Var", "VAR", "Wh", "WH", "VAh", "varh", "Varh"})
FINEST_SF = -3


def sf_floor(units: str) -> int:
    """The finest scale factor the face uses for a SunSpec unit (see WHOLE_UNITS)."""
    return 0 if units in WHOLE_UNITS else FINEST_SF


def marker_words(stype: str, count: int) -> tuple[int, ...]:
    """The not-implemented words of a SunSpec type (strings: all NUL)."""
    if stype == "string":
        return (0,) * count
    return split(NOT_IMPLEMENTED.get(stype, 0), count)


def split(raw: int, count: int) -> tuple[int, ...]:
    """An unsigned integer as `count` words, high word first."""
    return tuple((raw >> (16 * (count - 1 - i))) & 0xFFFF for i in range(count))


def join(words: tuple[int, ...] | list[int]) -> int:
    raw = 0
    for word in words:
        raw = (raw << 16) | word
    return raw


def encode_int(stype: str, raw: int, count: int) -> tuple[int, ...]:
    """A signed or unsigned integer as words (two's complement for signed types)."""
    return split(raw & ((1 << (16 * count)) - 1), count)


def decode_int(stype: str, words: tuple[int, ...] | list[int]) -> int | None:
    """Words as an integer of the type; None for the not-implemented marker."""
    raw = join(words)
    if raw == NOT_IMPLEMENTED.get(stype) and not stype.startswith("acc"):
        return None
    bits = 16 * len(words)
    if stype in SIGNED and raw >= 1 << (bits - 1):
        raw -= 1 << bits
    return raw


def encode_float32(value: float) -> tuple[int, ...]:
    high, low = struct.unpack(">HH", struct.pack(">f", value))
    return high, low


def decode_float32(words: tuple[int, ...] | list[int]) -> float:
    value: float = struct.unpack(">f", struct.pack(">HH", *words))[0]
    return value


def encode_string(text: str, count: int) -> tuple[int, ...]:
    """UTF-8, NUL padded to `count` registers, cut (at a character boundary) if longer."""
    data = text.encode("utf-8")
    while len(data) > 2 * count:
        text = text[:-1]
        data = text.encode("utf-8")
    data = data.ljust(2 * count, b"\0")
    return tuple(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
