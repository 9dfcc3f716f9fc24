"""Typed description of one published point: what it is, and how each face maps it.

These are plain frozen dataclasses with no behaviour beyond derived facts (register
counts, full paths); `table.py` builds and validates them from `models/points.yaml`.
"""

from __future__ import annotations

import enum
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
