"""Generic battery inverter: any Modbus inverter described by a register map in YAML.

A new inverter is data, not code: ``models/devices/generic-inverter-example.yaml`` documents
the format. The map is checked when it is loaded (unknown keys, overlapping registers, bad
types and values), and every problem names the file, the field and what is allowed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import struct
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Unpack

import yaml

from appliance.drivers.inverter_types import (
    InverterReading,
    InverterState,
    clamp_setpoint_w,
    state_from_power,
)
from appliance.drivers.modbus_link import (
    ModbusExceptionResponse,
    ModbusLink,
    RtuSettings,
    check_unit_id,
)
from appliance.errors import ConfigError, DeviceProtocolError

_LOG = logging.getLogger(__name__)
_T = TypeVar("_T")

#: struct format (big-endian) and register count per type.
TYPES: dict[str, tuple[str, int]] = {
    "int16": (">h", 1),
    "uint16": (">H", 1),
    "int32": (">i", 2),
    "uint32": (">I", 2),
    "float32": (">f", 2),
}
TABLES = ("holding", "input")
MEASUREMENTS = ("active_power_w", "soc_pct", "max_charge_power_w", "max_discharge_power_w", "state")
CONTROLS = ("setpoint", "enable", "revert_timeout")
#: State names a map may use; "running" is decided by the sign of the measured power.
STATE_NAMES = (*(s.name.lower() for s in InverterState), "running")

_TOP_KEYS = {
    "device": True,
    "description": False,
    "word_order": True,
    "max_registers_per_request": True,
    "max_read_gap": False,
    "limits": True,
    "measurements": True,
    "control": True,
}
_REGISTER_KEYS = ("table", "address", "type", "scale", "sign", "range", "states")
_ENABLE_KEYS = ("address", "type", "on_value", "off_value")


@dataclass(frozen=True, slots=True)
class RegisterSpec:
    """One value in the map: value = raw x scale x sign."""

    name: str  # "measurements.soc_pct", "control.setpoint", ...
    table: Literal["holding", "input"]
    address: int
    type: str  # a key of TYPES
    scale: float = 1.0
    sign: int = 1
    valid_range: tuple[float, float] | None = None
    states: Mapping[int, str] | None = None  # raw -> a STATE_NAMES entry
    on_value: int | None = None  # control.enable only
    off_value: int | None = None

    @property
    def count(self) -> int:
        return TYPES[self.type][1]

    @property
    def end(self) -> int:
        return self.address + self.count


@dataclass(frozen=True, slots=True)
class GenericInverterMap:
    """The parsed and checked map."""

    source: str
    device: str
    word_order: Literal["big", "little"]
    max_registers_per_request: int
    max_read_gap: int
    max_charge_w: float
    max_discharge_w: float
    measurements: Mapping[str, RegisterSpec]
    setpoint: RegisterSpec
    enable: RegisterSpec | None
    revert_timeout: RegisterSpec | None

    @property
    def registers(self) -> tuple[RegisterSpec, ...]:
        controls = (self.setpoint, self.enable, self.revert_timeout)
        return (*self.measurements.values(), *(c for c in controls if c is not None))

    def read_blocks(self) -> tuple[tuple[str, int, int], ...]:
        """(table, start, count) requests that read every measurement, the setpoint and enable."""
        wanted = [*self.measurements.values(), self.setpoint]
        if self.enable is not None:
            wanted.append(self.enable)
        blocks: list[tuple[str, int, int]] = []
        for table in TABLES:
            for reg in sorted((r for r in wanted if r.table == table), key=lambda r: r.address):
                if blocks and blocks[-1][0] == table:
                    _, start, count = blocks[-1]
                    gap_ok = reg.address - (start + count) <= self.max_read_gap
                    if gap_ok and reg.end - start <= self.max_registers_per_request:
                        blocks[-1] = (table, start, max(count, reg.end - start))
                        continue
                blocks.append((table, reg.address, reg.count))
        return tuple(blocks)


# --------------------------------------------------------------------------- codec


def encode_value(spec: RegisterSpec, value: float, word_order: str = "big") -> list[int]:
    """Engineering value -> registers; raises ValueError if the raw value does not fit."""
    fmt, count = TYPES[spec.type]
    raw = value * spec.sign / spec.scale
    try:
        data = struct.pack(fmt, raw if spec.type == "float32" else round(raw))
    except (struct.error, OverflowError) as exc:
        raise ValueError(f"{spec.name}: {value!r} does not fit {spec.type}") from exc
    words = list(struct.unpack(f">{count}H", data))
    return words[::-1] if word_order == "little" else words


def decode_value(spec: RegisterSpec, words: Sequence[int], word_order: str = "big") -> float:
    """Registers -> engineering value (may be NaN / inf for float32)."""
    fmt, count = TYPES[spec.type]
    ordered = list(words)[::-1] if word_order == "little" else list(words)
    (raw,) = struct.unpack(fmt, struct.pack(f">{count}H", *ordered))
    return float(raw) * spec.scale * spec.sign


# --------------------------------------------------------------------------- loading


def load_generic_inverter_map(path: Path) -> GenericInverterMap:
    """Parse and check a map file; raises ConfigError naming file, field and allowed values."""
    return parse_generic_inverter_map(path.read_text(encoding="utf-8"), str(path))


def parse_generic_inverter_map(text: str, source: str) -> GenericInverterMap:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: top level must be a mapping with keys {', '.join(_TOP_KEYS)}")
    _check_keys(doc, _TOP_KEYS, source, "", required=[k for k, r in _TOP_KEYS.items() if r])
    word_order = doc["word_order"]
    if word_order not in ("big", "little"):
        raise ConfigError(f"{source}: word_order: {word_order!r}; allowed: big, little")
    max_regs = _int(
        doc["max_registers_per_request"], f"{source}: max_registers_per_request", 1, 125
    )
    gap = _int(doc.get("max_read_gap", 0), f"{source}: max_read_gap", 0, 125)
    limits = _mapping(doc["limits"], f"{source}: limits")
    _check_keys(
        limits,
        ("max_charge_w", "max_discharge_w"),
        source,
        "limits",
        required=["max_charge_w", "max_discharge_w"],
    )
    charge = _number(limits["max_charge_w"], f"{source}: limits.max_charge_w", low=0.0)
    discharge = _number(limits["max_discharge_w"], f"{source}: limits.max_discharge_w", low=0.0)
    measurements = _mapping(doc["measurements"], f"{source}: measurements")
    _check_keys(measurements, MEASUREMENTS, source, "measurements", required=["active_power_w"])
    control = _mapping(doc["control"], f"{source}: control")
    _check_keys(control, CONTROLS, source, "control", required=["setpoint"])
    specs = {
        key: _register(entry, source, f"measurements.{key}", table=None)
        for key, entry in measurements.items()
    }
    setpoint = _register(control["setpoint"], source, "control.setpoint", table="holding")
    enable = None
    if "enable" in control:
        enable = _register(
            control["enable"], source, "control.enable", table="holding", keys=_ENABLE_KEYS
        )
    revert = None
    if "revert_timeout" in control:
        revert = _register(
            control["revert_timeout"], source, "control.revert_timeout", table="holding"
        )
    result = GenericInverterMap(
        source=source,
        device=str(doc["device"]),
        word_order=word_order,
        max_registers_per_request=max_regs,
        max_read_gap=gap,
        max_charge_w=charge,
        max_discharge_w=discharge,
        measurements=specs,
        setpoint=setpoint,
        enable=enable,
        revert_timeout=revert,
    )
    _check_overlaps(result.registers, source)
    _check_semantics(result, source)
    return result


def _check_keys(
    entry: Mapping[Any, Any],
    allowed: Sequence[str] | Mapping[str, bool],
    source: str,
    where: str,
    *,
    required: Sequence[str] = (),
) -> None:
    prefix = f"{source}: {where}." if where else f"{source}: "
    for key in entry:
        if key not in allowed:
            raise ConfigError(f"{prefix}{key}: unknown key; allowed: {', '.join(allowed)}")
    for key in required:
        if key not in entry:
            raise ConfigError(f"{prefix}{key}: missing required key")


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be a mapping")
    return value


def _int(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{where}: {value!r}; allowed: an integer {low}..{high}")
    return value


def _number(value: Any, where: str, *, low: float = -math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value < math.inf:
        raise ConfigError(f"{where}: {value!r}; allowed: a finite number >= {low}")
    return float(value)


def _register(
    entry: Any, source: str, name: str, *, table: str | None, keys: Sequence[str] = _REGISTER_KEYS
) -> RegisterSpec:
    where = f"{source}: {name}"
    entry = _mapping(entry, where)
    required = ["address", "type"] if table else ["table", "address", "type"]
    allowed = [k for k in keys if not (table and k == "table")]
    _check_keys(entry, allowed, source, name, required=required)
    table_value = entry.get("table", table)
    if table_value not in TABLES:
        raise ConfigError(f"{where}.table: {table_value!r}; allowed: {', '.join(TABLES)}")
    rtype = entry["type"]
    if rtype not in TYPES:
        raise ConfigError(f"{where}.type: {rtype!r}; allowed: {', '.join(TYPES)}")
    address = _int(entry["address"], f"{where}.address", 0, 0x10000 - TYPES[rtype][1])
    scale = _number(entry.get("scale", 1.0), f"{where}.scale")
    if scale == 0:
        raise ConfigError(f"{where}.scale: 0; allowed: a non-zero finite number")
    sign = entry.get("sign", 1)
    if sign not in (1, -1) or isinstance(sign, bool):
        raise ConfigError(f"{where}.sign: {sign!r}; allowed: 1, -1")
    return RegisterSpec(
        name=name,
        table=table_value,
        address=address,
        type=rtype,
        scale=scale,
        sign=sign,
        valid_range=_range(entry.get("range"), f"{where}.range"),
        states=_states(entry.get("states"), f"{where}.states"),
        on_value=None
        if "on_value" not in entry
        else _int(entry["on_value"], f"{where}.on_value", 0, 0xFFFF),
        off_value=None
        if "off_value" not in entry
        else _int(entry["off_value"], f"{where}.off_value", 0, 0xFFFF),
    )


def _range(value: Any, where: str) -> tuple[float, float] | None:
    if value is None:
        return None
    ok = isinstance(value, list) and len(value) == 2
    if (
        not ok
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        or not value[0] < value[1]
    ):
        raise ConfigError(f"{where}: {value!r}; allowed: [min, max] with min < max")
    return (float(value[0]), float(value[1]))


def _states(value: Any, where: str) -> Mapping[int, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{where}: must be a mapping raw value -> state name")
    for raw, state in value.items():
        if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= 0xFFFF:
            raise ConfigError(f"{where}: key {raw!r}; allowed: integers 0..65535")
        if state not in STATE_NAMES:
            hint = " (quote 'off': YAML reads a bare off as false)" if state is False else ""
            raise ConfigError(f"{where}.{raw}: {state!r}; allowed: {', '.join(STATE_NAMES)}{hint}")
    return dict(value)


def _check_overlaps(regs: Sequence[RegisterSpec], source: str) -> None:
    for table in TABLES:
        ordered = sorted((r for r in regs if r.table == table), key=lambda r: r.address)
        for prev, cur in itertools.pairwise(ordered):
            if cur.address < prev.end:
                raise ConfigError(
                    f"{source}: {cur.name}.address: {table} register {cur.address} overlaps "
                    f"{prev.name} ({prev.address}..{prev.end - 1})"
                )


def _check_semantics(m: GenericInverterMap, source: str) -> None:
    state = m.measurements.get("state")
    if state is not None and state.states is None:
        raise ConfigError(f"{source}: measurements.state.states: missing required key")
    for spec in m.registers:
        if spec.states is not None and spec is not state:
            raise ConfigError(f"{source}: {spec.name}.states: only allowed for measurements.state")
        if spec.name not in {"measurements.state", "control.enable"} and spec.valid_range is None:
            raise ConfigError(f"{source}: {spec.name}.range: missing required key")
    if m.enable is not None and (m.enable.on_value is None or m.enable.off_value is None):
        raise ConfigError(f"{source}: control.enable: on_value and off_value are required")
    low, high = m.setpoint.valid_range or (0.0, 0.0)
    if not low <= 0.0 <= high:
        raise ConfigError(f"{source}: control.setpoint.range: [{low}, {high}] must include 0 W")
    revert = m.revert_timeout
    if revert is not None and revert.valid_range is not None and revert.valid_range[0] <= 0:
        raise ConfigError(f"{source}: control.revert_timeout.range: must start above 0 s")


# --------------------------------------------------------------------------- driver


class GenericInverter:
    """A Modbus battery inverter described by a `GenericInverterMap`; `Inverter` + `PowerControl`.

    Every setpoint write also writes the map's revert timeout (when it has one) and the enable
    register, in one FC 16 request when they are adjacent, else setpoint, timeout, enable.
    """

    def __init__(
        self,
        link: ModbusLink,
        register_map: GenericInverterMap,
        *,
        unit_id: int = 1,
        name: str = "inverter",
        revert_timeout_s: float = 10.0,
    ) -> None:
        check_unit_id(unit_id)
        revert = register_map.revert_timeout
        if revert is not None and revert.valid_range is not None:
            low, high = revert.valid_range
            if not low <= revert_timeout_s <= high:
                raise ValueError(
                    f"{name}: revert_timeout_s {revert_timeout_s} outside the map's {low}..{high}"
                )
        self._link = link
        self._map = register_map
        self._unit_id = unit_id
        self._name = name
        self._revert_s = revert_timeout_s
        self._lock = asyncio.Lock()
        self._limits: tuple[float, float] | None = None  # (charge, discharge) of the last read
        self.malformed_frames = 0
        self.exception_responses = 0

    @classmethod
    def tcp(
        cls,
        host: str,
        port: int = 502,
        *,
        register_map: GenericInverterMap,
        unit_id: int = 1,
        timeout_s: float = 1.0,
        name: str = "inverter",
        revert_timeout_s: float = 10.0,
    ) -> GenericInverter:
        """Inverter on Modbus TCP."""
        link = ModbusLink.tcp(host, port, name=name, timeout_s=timeout_s)
        return cls(
            link, register_map, unit_id=unit_id, name=name, revert_timeout_s=revert_timeout_s
        )

    @classmethod
    def rtu(
        cls,
        serial_port: str,
        *,
        register_map: GenericInverterMap,
        unit_id: int = 1,
        name: str = "inverter",
        revert_timeout_s: float = 10.0,
        **line: Unpack[RtuSettings],
    ) -> GenericInverter:
        """Inverter on an RS485 line; ``line``: `RtuSettings` (the serial settings, ``timeout_s``)."""
        link = ModbusLink.rtu(serial_port, name=name, **line)
        return cls(
            link, register_map, unit_id=unit_id, name=name, revert_timeout_s=revert_timeout_s
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def register_map(self) -> GenericInverterMap:
        return self._map

    async def connect(self) -> None:
        await self._link.connect()

    async def read(self) -> InverterReading:
        """One snapshot in ``len(read_blocks())`` requests. Raises `DriverError`s."""
        async with self._lock:
            return await self._counted(self._read_locked())

    async def set_active_power_w(self, watts: float) -> float:
        """Clamp to the map's and the live limits and write; returns the watts written."""
        if not math.isfinite(watts):
            raise ValueError(f"{self._name}: setpoint must be finite, got {watts!r}")
        async with self._lock:
            if self._limits is None:
                await self._counted(self._read_locked())
            charge, discharge = self._limits or (0.0, 0.0)
            low, high = self._map.setpoint.valid_range or (-math.inf, math.inf)
            target = clamp_setpoint_w(
                watts, max_charge_w=min(charge, -low), max_discharge_w=min(discharge, high)
            )
            items = [(self._map.setpoint, target)]
            if self._map.revert_timeout is not None:
                items.append((self._map.revert_timeout, self._revert_s))
            if self._map.enable is not None:
                items.append((self._map.enable, float(self._map.enable.on_value or 0)))
            await self._counted(self._write(items))
        # What the register carries after rounding to the map's scale.
        spec, order = self._map.setpoint, self._map.word_order
        return decode_value(spec, encode_value(spec, target, order), order)

    async def release(self) -> None:
        """Remote control off (enable register), or 0 W where the map has no enable register."""
        async with self._lock:
            enable = self._map.enable
            if enable is not None:
                await self._counted(self._write([(enable, float(enable.off_value or 0))]))
            else:
                await self._counted(self._write([(self._map.setpoint, 0.0)]))

    async def close(self) -> None:
        await self._link.close()

    # ------------------------------------------------------------------ internals

    async def _counted(self, operation: Awaitable[_T]) -> _T:
        try:
            return await operation
        except ModbusExceptionResponse:
            self.exception_responses += 1
            raise
        except DeviceProtocolError:
            self.malformed_frames += 1
            raise

    async def _read_locked(self) -> InverterReading:
        regs: dict[tuple[str, int], int] = {}
        for table, start, count in self._map.read_blocks():
            read = (
                self._link.read_input_registers
                if table == "input"
                else self._link.read_holding_registers
            )
            values = await read(start, count, unit_id=self._unit_id)
            regs.update(
                ((table, a), v) for a, v in zip(range(start, start + count), values, strict=True)
            )
        m = self._map
        values_by_name = {key: self._decode(spec, regs) for key, spec in m.measurements.items()}
        power = values_by_name["active_power_w"]
        charge = min(m.max_charge_w, values_by_name.get("max_charge_power_w", math.inf))
        discharge = min(m.max_discharge_w, values_by_name.get("max_discharge_power_w", math.inf))
        reading = InverterReading(
            active_power_w=power,
            setpoint_w=self._setpoint_in_force(regs),
            state=self._state(regs, power),
            max_charge_power_w=max(0.0, charge),
            max_discharge_power_w=max(0.0, discharge),
            soc_pct=values_by_name.get("soc_pct"),
        )
        self._limits = (reading.max_charge_power_w, reading.max_discharge_power_w)
        return reading

    def _words(self, spec: RegisterSpec, regs: Mapping[tuple[str, int], int]) -> list[int]:
        return [regs[(spec.table, a)] for a in range(spec.address, spec.end)]

    def _decode(self, spec: RegisterSpec, regs: Mapping[tuple[str, int], int]) -> float:
        value = decode_value(spec, self._words(spec, regs), self._map.word_order)
        low, high = spec.valid_range or (-math.inf, math.inf)
        if spec.states is None and not low <= value <= high:  # NaN fails too
            _LOG.warning("%s: %s = %r outside [%s, %s]", self._name, spec.name, value, low, high)
            raise DeviceProtocolError(
                f"{self._name}: {spec.name} ({spec.table} {spec.address}) = {value!r} "
                f"outside plausible range [{low}, {high}]"
            )
        return value

    def _state(self, regs: Mapping[tuple[str, int], int], power_w: float) -> InverterState:
        spec = self._map.measurements.get("state")
        if spec is None or spec.states is None:
            return state_from_power(power_w)
        raw = int(decode_value(spec, self._words(spec, regs), self._map.word_order))
        name = spec.states.get(raw)
        if name is None:
            _LOG.warning("%s: state %d is not in the map", self._name, raw)
            raise DeviceProtocolError(
                f"{self._name}: {spec.name} = {raw}; the map knows {sorted(spec.states)}"
            )
        return state_from_power(power_w) if name == "running" else InverterState[name.upper()]

    def _setpoint_in_force(self, regs: Mapping[tuple[str, int], int]) -> float | None:
        enable = self._map.enable
        if enable is not None and self._words(enable, regs)[0] != enable.on_value:
            return None
        return decode_value(
            self._map.setpoint, self._words(self._map.setpoint, regs), self._map.word_order
        )

    async def _write(self, items: Sequence[tuple[RegisterSpec, float]]) -> None:
        """Write ``items`` in one request when they form one block, else in the given order."""
        encoded = [
            (spec.address, encode_value(spec, value, self._map.word_order)) for spec, value in items
        ]
        ordered = sorted(encoded)
        contiguous = all(a + len(w) == b for (a, w), (b, _) in itertools.pairwise(ordered))
        if contiguous:
            start = ordered[0][0]
            words = [word for _, ws in ordered for word in ws]
            await self._link.write_registers(start, words, unit_id=self._unit_id)
            return
        for address, words in encoded:
            await self._link.write_registers(address, words, unit_id=self._unit_id)
