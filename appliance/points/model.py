"""Typed description of one published point: what it is, and how each face maps it.

These are plain frozen dataclasses with no behaviour beyond derived facts (register
counts, full paths); `table.py` builds and validates them from `models/points.yaml`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


class DataType(enum.StrEnum):
    """The value type a point carries, independent of any face's encoding."""

    BOOL = "bool"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    ENUM = "enum"  # an unsigned integer with named states
    TIMESTAMP = "timestamp"  # UTC, seconds since the epoch


class Kind(enum.StrEnum):
    """What the value means over time; decides metric type and OPC UA variable type."""

    GAUGE = "gauge"  # a measurement that goes up and down
    COUNTER = "counter"  # monotonically increasing (energy, event counts)
    STATE = "state"  # a mode, flag or status word
    SETPOINT = "setpoint"  # a value the controller works towards; may be writable
    COMMAND = "command"  # writing it asks the command interface to act


class Access(enum.StrEnum):
    READ = "read"
    READ_WRITE = "read_write"
    WRITE = "write"

    @property
    def writable(self) -> bool:
        return self is not Access.READ


class RegisterType(enum.StrEnum):
    """How a value is laid out in Modbus registers (16-bit words, high word first)."""

    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT32 = "float32"

    @property
    def registers(self) -> int:
        """How many 16-bit registers one value takes."""
        return 1 if self in (RegisterType.INT16, RegisterType.UINT16) else 2

    @property
    def raw_range(self) -> tuple[float, float]:
        """Representable raw values, excluding SunSpec's "not implemented" marker."""
        return _RAW_RANGES[self]


_RAW_RANGES: dict[RegisterType, tuple[float, float]] = {
    RegisterType.INT16: (-32767.0, 32767.0),  # 0x8000 = not implemented
    RegisterType.UINT16: (0.0, 65534.0),  # 0xFFFF = not implemented
    RegisterType.INT32: (-2147483647.0, 2147483647.0),  # 0x80000000 = not implemented
    RegisterType.UINT32: (0.0, 4294967294.0),  # 0xFFFFFFFF = not implemented
    RegisterType.FLOAT32: (-3.4e38, 3.4e38),  # NaN = not implemented
}

# Natural range of each value type; a declared range must lie inside it.
TYPE_RANGES: dict[DataType, tuple[float, float]] = {
    DataType.BOOL: (0.0, 1.0),
    DataType.INT16: (-32768.0, 32767.0),
    DataType.UINT16: (0.0, 65535.0),
    DataType.INT32: (-2147483648.0, 2147483647.0),
    DataType.UINT32: (0.0, 4294967295.0),
    DataType.FLOAT32: (-3.4e38, 3.4e38),
    DataType.FLOAT64: (-1.7e308, 1.7e308),
    DataType.ENUM: (0.0, 65535.0),
    DataType.TIMESTAMP: (0.0, 4294967295.0),
}


@dataclass(frozen=True, slots=True)
class ModbusMapping:
    """Where a point lives in the appliance's native register map (0-based PDU address)."""

    address: int
    type: RegisterType
    gain: float = 1.0  # raw = value * gain (e.g. 10 for 0.1 resolution in an int16)

    @property
    def count(self) -> int:
        return self.type.registers

    @property
    def last_address(self) -> int:
        return self.address + self.count - 1


@dataclass(frozen=True, slots=True)
class SunSpecRef:
    """Where a point also appears in a standard SunSpec model of the Modbus slave face.

    Non-templated points live in the model on the site's unit id, a templated point of node n
    in the same model on node n's unit id. ``values`` translates the point's states into the
    SunSpec point's symbols (enum16 targets only, e.g. inverter state -> 701 InvSt).
    """

    model: int
    point: str
    values: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class SunSpecPointDef:
    """One point of a SunSpec model definition (models/devices/sunspec/model_<id>.yaml)."""

    name: str
    offset: int  # from the model's first register (0 = ID, 1 = L)
    type: str  # SunSpec type: int16, uint16, acc32, enum16, bitfield32, sunssf, string, pad, ...
    size: int  # registers
    units: str = ""
    sf: str | None = None  # name of the scale-factor point: value = raw x 10^sf
    writable: bool = False
    symbols: Mapping[int, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SunSpecModelDef:
    """A SunSpec model as the point table validates against it: id, length L, points."""

    id: int
    name: str
    length: int  # L: registers after the 2-register header
    points: tuple[SunSpecPointDef, ...]

    def point(self, name: str) -> SunSpecPointDef | None:
        return next((p for p in self.points if p.name == name), None)


#: SunSpec types a point may be mapped onto, with their register counts; sunssf, string and
#: pad carry no point values.
SUNSPEC_VALUE_TYPES: dict[str, int] = {
    "int16": 1, "uint16": 1, "acc16": 1, "enum16": 1, "bitfield16": 1,
    "int32": 2, "uint32": 2, "acc32": 2, "enum32": 2, "bitfield32": 2, "float32": 2,
    "int64": 4, "uint64": 4, "acc64": 4,
}  # fmt: skip

#: value in the SunSpec unit = value in the point's unit x factor, keyed (point unit, SunSpec unit).
#: A ratio (unit "") shown as SunSpec "Pct" is scaled to per cent (power factor 0.95 -> 95).
SUNSPEC_UNIT_FACTORS: dict[tuple[str, str], float] = {
    ("", ""): 1.0,
    ("", "Pct"): 100.0,
    ("%", "Pct"): 1.0,
    ("%", "%"): 1.0,
    ("%", "%WHRtg"): 1.0,
    ("W", "W"): 1.0,
    ("var", "var"): 1.0,
    ("var", "Var"): 1.0,
    ("var", "VAR"): 1.0,
    ("V", "V"): 1.0,
    ("A", "A"): 1.0,
    ("Hz", "Hz"): 1.0,
    ("°C", "C"): 1.0,
    ("s", "Secs"): 1.0,
    ("Wh", "Wh"): 1.0,
    ("kWh", "Wh"): 1000.0,
    ("Wh", "WH"): 1.0,
    ("kWh", "WH"): 1000.0,
}


@dataclass(frozen=True, slots=True)
class ArchiveSpec:
    """How the archive writes a point: InfluxDB measurement, field and minimum period."""

    measurement: str
    field: str
    every_s: float


@dataclass(frozen=True, slots=True)
class Point:
    """One published point, fully resolved (templates expanded, addresses absolute)."""

    id: str
    label: str
    description: str
    kind: Kind
    type: DataType
    unit: str
    access: Access
    block: str  # the device block this point belongs to (grid, battery, ...)
    opcua_path: str  # browse path, "/"-separated, e.g. Site/GridMeter/AcActivePowerTotal
    range: tuple[float, float] | None = None
    node: int | None = None  # 1-based index for templated blocks (battery nodes, inverters)
    stale_after_s: float | None = None  # None: never stale (configuration, counters we own)
    modbus: ModbusMapping | None = None
    archive: ArchiveSpec | None = None
    command: str | None = None
    states: dict[int, str] = field(default_factory=dict)  # for enum points
    sunspec: tuple[SunSpecRef, ...] = ()  # standard SunSpec models the point also appears in

    @property
    def opcua_node_id(self) -> str:
        """String NodeId: the dotted browse path, stable across restarts and regeneration."""
        return self.opcua_path.replace("/", ".")

    @property
    def writable(self) -> bool:
        return self.access.writable


@dataclass(frozen=True, slots=True)
class Command:
    """A named request that writable points (and OPC UA methods) are routed to."""

    name: str
    description: str
