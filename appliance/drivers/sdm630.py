"""Eastron SDM630-Modbus three-phase meter: register map and driver.

The register map lives in ``models/devices/sdm630.yaml`` (package ``appliance.models``) and is
shared with the protocol simulator (`appliance.simulation.devices.sdm630_sim`).
"""

from __future__ import annotations

import asyncio
import functools
import importlib.resources
import itertools
import logging
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Unpack

import yaml

from appliance.drivers.base import PHASE_FIELDS, SCALAR_FIELDS, MeterReading
from appliance.drivers.modbus_link import ModbusLink, RtuSettings, check_unit_id
from appliance.errors import ConfigError, DeviceProtocolError

_LOG = logging.getLogger(__name__)

MAP_RESOURCE = ("devices", "sdm630.yaml")

#: Register layouts the map may use: struct format (big-endian) and register count.
_FORMATS: dict[str, tuple[str, int]] = {"float32": (">f", 2), "uint32": (">I", 2)}


# --------------------------------------------------------------------------- register map


@dataclass(frozen=True, slots=True)
class RegisterDef:
    """One value in the map (input or holding register)."""

    name: str
    address: int
    type: str  # a key of _FORMATS
    unit: str = ""
    field: str | None = None  # MeterReading attribute (input registers)
    phase: int | None = None  # 1..3 for per-phase fields
    valid_range: tuple[float, float] | None = None
    default: float | None = None  # value the simulator serves (holding registers)

    @property
    def count(self) -> int:
        return _FORMATS[self.type][1]

    @property
    def end(self) -> int:
        """First address after this value."""
        return self.address + self.count


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One contiguous FC 04 request the driver makes per read."""

    start: int
    count: int

    @property
    def end(self) -> int:
        return self.start + self.count


@dataclass(frozen=True, slots=True)
class Sdm630Map:
    """The parsed and checked ``sdm630.yaml``."""

    input_registers: tuple[RegisterDef, ...]
    holding_registers: tuple[RegisterDef, ...]
    read_blocks: tuple[ReadBlock, ...]
    max_registers_per_request: int

    def holding(self, name: str) -> RegisterDef:
        for reg in self.holding_registers:
            if reg.name == name:
                return reg
        raise KeyError(name)


def encode_value(reg: RegisterDef, value: float) -> list[int]:
    """Value -> registers, high word first (raises struct.error / OverflowError if unencodable)."""
    fmt, count = _FORMATS[reg.type]
    raw = struct.pack(fmt, int(value) if reg.type == "uint32" else value)
    return list(struct.unpack(f">{count}H", raw))


def decode_value(reg: RegisterDef, registers: Sequence[int]) -> float:
    """Registers (high word first) -> value."""
    fmt, count = _FORMATS[reg.type]
    (value,) = struct.unpack(fmt, struct.pack(f">{count}H", *registers))
    return float(value)


def load_sdm630_map(path: Path | None = None) -> Sdm630Map:
    """Parse and check the register map (the packaged one unless ``path`` is given)."""
    if path is None:
        return _packaged_map()
    return _parse_map(path.read_text(encoding="utf-8"), str(path))


@functools.cache
def _packaged_map() -> Sdm630Map:
    try:
        resource = importlib.resources.files("appliance.models") / MAP_RESOURCE[0] / MAP_RESOURCE[1]
        return _parse_map(resource.read_text(encoding="utf-8"), str(resource))
    except ModuleNotFoundError:
        # Dev tree whose editable install does not map models/ to appliance.models.
        path = Path(__file__).resolve().parents[2] / "models" / Path(*MAP_RESOURCE)
        return _parse_map(path.read_text(encoding="utf-8"), str(path))


def _parse_map(text: str, source: str) -> Sdm630Map:
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: top level must be a mapping")
    if doc.get("word_order") != "big":
        raise ConfigError(f"{source}: word_order: only 'big' (high word first) is supported")
    max_regs = doc.get("max_registers_per_request")
    if not isinstance(max_regs, int) or not 1 <= max_regs <= 125:
        raise ConfigError(f"{source}: max_registers_per_request: must be an integer 1..125")
    inputs = tuple(
        _parse_register(e, f"{source}: input_registers[{i}]")
        for i, e in enumerate(_list(doc, "input_registers", source))
    )
    holdings = tuple(
        _parse_register(e, f"{source}: holding_registers[{i}]")
        for i, e in enumerate(_list(doc, "holding_registers", source))
    )
    blocks = tuple(
        _parse_block(e, f"{source}: read_blocks[{i}]", max_regs)
        for i, e in enumerate(_list(doc, "read_blocks", source))
    )
    _check_no_overlap(inputs, f"{source}: input_registers")
    _check_no_overlap(holdings, f"{source}: holding_registers")
    _check_fields(inputs, blocks, source)
    return Sdm630Map(inputs, holdings, blocks, max_regs)


def _list(doc: Mapping[str, Any], key: str, source: str) -> list[Any]:
    value = doc.get(key)
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{source}: {key}: must be a non-empty list")
    return value


def _parse_register(entry: Any, where: str) -> RegisterDef:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a mapping")
    name, address, rtype = entry.get("name"), entry.get("address"), entry.get("type")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: name: must be a non-empty string")
    if not isinstance(address, int) or not 0 <= address <= 0xFFFE:
        raise ConfigError(f"{where} ({name}): address: must be an integer 0..0xFFFE")
    if rtype not in _FORMATS:
        raise ConfigError(f"{where} ({name}): type: must be one of {sorted(_FORMATS)}")
    field, phase = entry.get("field"), entry.get("phase")
    if field is not None and field not in PHASE_FIELDS + SCALAR_FIELDS:
        raise ConfigError(f"{where} ({name}): field: {field!r} is not a MeterReading attribute")
    if field in PHASE_FIELDS and phase not in (1, 2, 3):
        raise ConfigError(f"{where} ({name}): phase: per-phase field {field} needs phase 1..3")
    if field not in PHASE_FIELDS and phase is not None:
        raise ConfigError(f"{where} ({name}): phase: only allowed with a per-phase field")
    valid_range = _parse_range(entry.get("range"), f"{where} ({name})")
    if field is not None and valid_range is None:
        raise ConfigError(f"{where} ({name}): range: required for a decoded field")
    default = entry.get("default")
    if default is not None and not isinstance(default, int | float):
        raise ConfigError(f"{where} ({name}): default: must be a number")
    return RegisterDef(
        name=name,
        address=address,
        type=rtype,
        unit=str(entry.get("unit", "")),
        field=field,
        phase=phase,
        valid_range=valid_range,
        default=None if default is None else float(default),
    )


def _parse_range(value: Any, where: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int | float) for v in value)
        or not value[0] < value[1]
    ):
        raise ConfigError(f"{where}: range: must be [min, max] with min < max")
    return (float(value[0]), float(value[1]))


def _parse_block(entry: Any, where: str, max_regs: int) -> ReadBlock:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a mapping")
    start, count = entry.get("start"), entry.get("count")
    if not isinstance(start, int) or not isinstance(count, int) or start < 0 or count < 1:
        raise ConfigError(f"{where}: start/count: must be integers, start >= 0, count >= 1")
    if count > max_regs:
        raise ConfigError(f"{where}: count: {count} exceeds max_registers_per_request {max_regs}")
    return ReadBlock(start, count)


def _check_no_overlap(regs: Sequence[RegisterDef], where: str) -> None:
    ordered = sorted(regs, key=lambda r: r.address)
    for prev, cur in itertools.pairwise(ordered):
        if cur.address < prev.end:
            raise ConfigError(f"{where}: {cur.name} overlaps {prev.name}")
        if cur.name == prev.name:
            raise ConfigError(f"{where}: duplicate name {cur.name}")
    if len({r.name for r in regs}) != len(regs):
        raise ConfigError(f"{where}: names must be unique")


def _check_fields(inputs: Sequence[RegisterDef], blocks: Sequence[ReadBlock], source: str) -> None:
    expected = {(f, p) for f in PHASE_FIELDS for p in (1, 2, 3)} | {
        (f, None) for f in SCALAR_FIELDS
    }
    seen: dict[tuple[str, int | None], str] = {}
    for reg in inputs:
        if reg.field is None:
            continue
        key = (reg.field, reg.phase)
        if key in seen:
            raise ConfigError(f"{source}: input_registers: {reg.name} repeats {seen[key]}")
        seen[key] = reg.name
        if not any(b.start <= reg.address and reg.end <= b.end for b in blocks):
            raise ConfigError(f"{source}: read_blocks: {reg.name} is not inside one block")
    if missing := expected - seen.keys():
        names = ", ".join(sorted(f if p is None else f"{f}[L{p}]" for f, p in missing))
        raise ConfigError(f"{source}: input_registers: no register for {names}")


# --------------------------------------------------------------------------- driver


class Sdm630Meter:
    """Reads an Eastron SDM630 over Modbus TCP (gateway) or RTU; implements `PowerMeter`.

    Build it with `Sdm630Meter.tcp` or `Sdm630Meter.rtu`. `read` connects on demand and makes
    one reconnect attempt when the link dropped; it never retries a failed request.
    """

    def __init__(
        self,
        link: ModbusLink,
        *,
        unit_id: int = 1,
        name: str = "sdm630",
        register_map: Sdm630Map | None = None,
    ) -> None:
        check_unit_id(unit_id)
        self._link = link
        self._unit_id = unit_id
        self._name = name
        self._map = register_map or load_sdm630_map()
        self._lock = asyncio.Lock()

    @classmethod
    def tcp(
        cls,
        host: str,
        port: int = 502,
        *,
        unit_id: int = 1,
        timeout_s: float = 1.0,
        name: str = "sdm630",
    ) -> Sdm630Meter:
        """Meter behind a Modbus TCP gateway."""
        return cls(
            ModbusLink.tcp(host, port, name=name, timeout_s=timeout_s), unit_id=unit_id, name=name
        )

    @classmethod
    def rtu(
        cls,
        serial_port: str,
        *,
        unit_id: int = 1,
        name: str = "sdm630",
        **line: Unpack[RtuSettings],
    ) -> Sdm630Meter:
        """Meter on an RS485 line (factory default 9600 8N1, unit 1); ``line``: `RtuSettings`."""
        return cls(ModbusLink.rtu(serial_port, name=name, **line), unit_id=unit_id, name=name)

    @property
    def name(self) -> str:
        return self._name

    @property
    def unit_id(self) -> int:
        return self._unit_id

    @property
    def register_map(self) -> Sdm630Map:
        return self._map

    async def connect(self) -> None:
        """Open the link now (optional: `read` connects on demand). Raises DeviceUnavailable."""
        await self._link.connect()

    async def read(self) -> MeterReading:
        """One snapshot, in ``len(read_blocks)`` requests (one with the packaged map).

        Raises DeviceUnavailable, DeviceTimeout or DeviceProtocolError (exception response,
        NaN/inf, value outside its plausible range).
        """
        async with self._lock:
            registers: dict[int, int] = {}
            for block in self._map.read_blocks:
                values = await self._link.read_input_registers(
                    block.start, block.count, unit_id=self._unit_id
                )
                registers.update(zip(range(block.start, block.end), values, strict=True))
        return self._decode(registers)

    async def read_serial_number(self) -> int:
        """Holding register 0xFC00 (uint32), for commissioning."""
        reg = self._map.holding("serial_number")
        async with self._lock:
            values = await self._link.read_holding_registers(
                reg.address, reg.count, unit_id=self._unit_id
            )
        return int(decode_value(reg, values))

    async def close(self) -> None:
        await self._link.close()

    def _decode(self, registers: Mapping[int, int]) -> MeterReading:
        phase: dict[str, list[float]] = {f: [0.0, 0.0, 0.0] for f in PHASE_FIELDS}
        scalar: dict[str, float] = {}
        for reg in self._map.input_registers:
            if reg.field is None:
                continue
            value = decode_value(reg, [registers[a] for a in range(reg.address, reg.end)])
            self._check_plausible(reg, value)
            if reg.phase is None:
                scalar[reg.field] = value
            else:
                phase[reg.field][reg.phase - 1] = value

        def tri(field: str) -> tuple[float, float, float]:
            l1, l2, l3 = phase[field]
            return (l1, l2, l3)

        return MeterReading(
            voltage_v=tri("voltage_v"),
            current_a=tri("current_a"),
            active_power_w=tri("active_power_w"),
            reactive_power_var=tri("reactive_power_var"),
            power_factor=tri("power_factor"),
            frequency_hz=scalar["frequency_hz"],
            total_active_power_w=scalar["total_active_power_w"],
            total_reactive_power_var=scalar["total_reactive_power_var"],
            total_power_factor=scalar["total_power_factor"],
            import_kwh=scalar["import_kwh"],
            export_kwh=scalar["export_kwh"],
        )

    def _check_plausible(self, reg: RegisterDef, value: float) -> None:
        if not math.isfinite(value):
            _LOG.warning("%s: %s (0x%04X) is %r", self._name, reg.name, reg.address, value)
            raise DeviceProtocolError(
                f"{self._name}: {reg.name} (input 0x{reg.address:04X}) is {value!r}"
            )
        # Every decoded register has a range (checked when the map was loaded).
        low, high = reg.valid_range or (-math.inf, math.inf)
        if not low <= value <= high:
            _LOG.warning(
                "%s: %s (0x%04X) = %r %s outside [%s, %s]",
                self._name,
                reg.name,
                reg.address,
                value,
                reg.unit,
                low,
                high,
            )
            raise DeviceProtocolError(
                f"{self._name}: {reg.name} (input 0x{reg.address:04X}) = {value!r} {reg.unit}"
                f" outside plausible range [{low}, {high}]"
            )
