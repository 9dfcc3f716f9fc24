"""InfluxDB line protocol, encoded by hand: the one format InfluxDB 1.8+, 2.x, 3.x and
VictoriaMetrics all accept on `/api/v2/write`.

    grid,device=grid,site=home active_power=1234.5,frequency=50.01 1767225600000

Pure functions, no I/O. Field types are decided by the point table, never by the Python
type of one value: InfluxDB fixes a field's type with its first write and answers
400 "field type conflict" to any later write of another type, so a float point that happens
to read 0 must still go out as `0.0`, never as the integer `0i`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence

from appliance.store import Value


class FieldType(enum.Enum):
    FLOAT = "float"
    INTEGER = "integer"  # also booleans and enum states: 0/1 aggregate in InfluxQL, booleans do not


def _escape(text: str, specials: str) -> str:
    out = text.replace("\\", "\\\\")
    for char in specials:
        out = out.replace(char, "\\" + char)
    return out.replace("\n", "\\n")


def escape_measurement(name: str) -> str:
    return _escape(name, ", ")


def escape_key(name: str) -> str:
    """Tag keys, tag values and field keys share one escaping rule."""
    return _escape(name, ",= ")


def format_field(value: Value, field_type: FieldType) -> str | None:
    """The field value as line protocol text; None for a value that cannot be written (NaN, inf)."""
    if field_type is FieldType.INTEGER:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return f"{round(value)}i"
    number = float(value)
    if not math.isfinite(number):
        return None
    return repr(number)  # shortest round-trip form; '1e+16' is valid line protocol


def encode_line(
    measurement: str,
    tags: Sequence[tuple[str, str]],
    fields: Sequence[tuple[str, str]],
    timestamp_ms: int,
) -> str:
    """One line; `tags` sorted by key (InfluxDB's fast path), `fields` already formatted."""
    if not fields:
        raise ValueError(f"{measurement}: a line needs at least one field")
    head = escape_measurement(measurement)
    tag_text = "".join(f",{escape_key(k)}={escape_key(v)}" for k, v in tags if v != "")
    field_text = ",".join(f"{escape_key(k)}={v}" for k, v in fields)
    return f"{head}{tag_text} {field_text} {timestamp_ms}"


def to_ms(timestamp_s: float) -> int:
    """UTC seconds to the integer milliseconds written (precision=ms)."""
    return round(timestamp_s * 1000.0)
