"""SunSpec battery inverter (models 1, 701, 702, 704, 713, 802) over Modbus TCP or RTU.

The model tables live in ``models/devices/sunspec/model_<id>.yaml`` and are shared with the
simulator (`appliance.simulation.devices.sunspec_inverter_sim`).

Sign convention: SunSpec 7xx counts active power "positive for DER generation and negative for
absorption" (701 ``W``, 704 ``WSet``). For a battery inverter generation is discharge, so the
SunSpec sign is already the appliance's (> 0 discharge): values pass through unchanged.

Control (model 704): every setpoint is one FC 16 write of offsets 22..32 (WSetEna = 1, WSetMod,
WSet, WSetRvrt = 0, WSetPct, WSetPctRvrt = 0, WSetEnaRvrt = 1, WSetRvrtTms), so each write also
re-arms the inverter's reversion timer: if the appliance stops writing, the inverter falls back
to 0 W by itself after ``revert_timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.resources
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Unpack

import yaml

from appliance.drivers.inverter_types import (
    IDLE_BAND_W,
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
from appliance.errors import ConfigError, DeviceProtocolError, DeviceUnavailable, NotSupported

_LOG = logging.getLogger(__name__)

SUNSPEC_BASE_ADDRESS = 40000
SUNS_MARKER = (0x5375, 0x6E53)  # "SunS"
END_MODEL_ID = 0xFFFF
MODEL_IDS = (1, 701, 702, 704, 713, 802)
MAX_READ_REGISTERS = 125
_MAX_MODELS = 64  # a longer chain is garbage, not a device
_SF_RANGE = range(-10, 11)
_PLAUSIBLE_FACTOR = 2.0  # |measured W| above this x the rating is a bad value

# Register count and "not implemented" marker per SunSpec type (sunspec2/mb.py SUNS_UNIMPL_*).
_TYPES: dict[str, tuple[int, int | None]] = {
    "int16": (1, 0x8000),
    "uint16": (1, 0xFFFF),
    "acc16": (1, 0),
    "enum16": (1, 0xFFFF),
    "bitfield16": (1, 0xFFFF),
    "sunssf": (1, 0x8000),
    "pad": (1, None),
    "int32": (2, 0x8000_0000),
    "uint32": (2, 0xFFFF_FFFF),
    "acc32": (2, 0),
    "enum32": (2, 0xFFFF_FFFF),
    "bitfield32": (2, 0xFFFF_FFFF),
    "int64": (4, 0x8000_0000_0000_0000),
    "uint64": (4, 0xFFFF_FFFF_FFFF_FFFF),
    "acc64": (4, 0),
    "string": (0, None),
}
_SIGNED = frozenset({"int16", "int32", "int64", "sunssf"})

_WSETMOD = {"percent": 0, "watts": 1}

# Points read on every cycle, per model; the span read is the header up to the last of them.
_CYCLE_POINTS: dict[int, tuple[str, ...]] = {
    701: ("St", "InvSt", "W", "W_SF"),
    702: ("WMaxRtg", "WChaRteMaxRtg", "WDisChaRteMaxRtg", "WMax", "WDisChaRteMax", "W_SF"),
    704: ("WSetEna", "WSetMod", "WSet", "WSetPct", "WSet_SF", "WSetPct_SF"),
    713: ("SoC", "Pct_SF"),
    802: ("WChaRteMax", "WDisChaRteMax", "SoC", "State", "WChaDisChaMax_SF", "SoC_SF"),
}


# --------------------------------------------------------------------------- model tables


@dataclass(frozen=True, slots=True)
class SunSpecPoint:
    name: str
    offset: int  # from the model's first register (0 = ID, 1 = L)
    type: str
    size: int
    units: str = ""
    sf: str | None = None
    writable: bool = False
    mandatory: bool = False
    symbols: Mapping[int, str] = field(default_factory=dict)

    @property
    def not_implemented(self) -> int | None:
        return _TYPES[self.type][1]


@dataclass(frozen=True)  # no slots: cached_property needs __dict__
class SunSpecModel:
    id: int
    name: str
    length: int  # L: registers after the 2-register header
    points: tuple[SunSpecPoint, ...]

    @property
    def size(self) -> int:
        return self.length + 2

    @functools.cached_property
    def _by_name(self) -> dict[str, SunSpecPoint]:
        return {p.name: p for p in self.points}

    def point(self, name: str) -> SunSpecPoint:
        return self._by_name[name]


def load_sunspec_models(directory: Path | None = None) -> Mapping[int, SunSpecModel]:
    """The model tables, keyed by model id (the packaged ones unless ``directory`` is given)."""
    if directory is None:
        return _packaged_models()
    return {
        mid: _parse_model((directory / f"model_{mid}.yaml").read_text("utf-8"), mid, directory)
        for mid in MODEL_IDS
    }


@functools.cache
def _packaged_models() -> Mapping[int, SunSpecModel]:
    try:
        root = importlib.resources.files("appliance.models") / "devices" / "sunspec"
        return {
            mid: _parse_model((root / f"model_{mid}.yaml").read_text("utf-8"), mid, root)
            for mid in MODEL_IDS
        }
    except ModuleNotFoundError:  # dev tree without the appliance.models mapping
        return load_sunspec_models(Path(__file__).resolve().parents[2] / "models/devices/sunspec")


def _parse_model(text: str, mid: int, where: object) -> SunSpecModel:
    source = f"{where}/model_{mid}.yaml"
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict) or doc.get("id") != mid:
        raise ConfigError(f"{source}: id: must be {mid}")
    points: list[SunSpecPoint] = []
    offset = 2
    for i, entry in enumerate(doc.get("points") or []):
        point = _parse_point(entry, f"{source}: points[{i}]")
        if point.offset != offset:
            raise ConfigError(f"{source}: points[{i}] ({point.name}): offset: expected {offset}")
        points.append(point)
        offset += point.size
    length = doc.get("length")
    if length != offset - 2:
        raise ConfigError(f"{source}: length: {length!r} but the points add up to {offset - 2}")
    names = {p.name for p in points}
    if len(names) != len(points) or any(p.sf and p.sf not in names for p in points):
        raise ConfigError(f"{source}: points: duplicate name or unknown sf reference")
    return SunSpecModel(mid, str(doc.get("name")), length, tuple(points))


def _parse_point(entry: Any, where: str) -> SunSpecPoint:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ConfigError(f"{where}: must be a mapping with a name")
    ptype = entry.get("type")
    if ptype not in _TYPES:
        raise ConfigError(f"{where}: type: {ptype!r}; allowed: {', '.join(_TYPES)}")
    size = entry.get("size") if ptype == "string" else _TYPES[ptype][0]
    if not isinstance(size, int) or size < 1 or not isinstance(entry.get("offset"), int):
        raise ConfigError(f"{where}: offset/size: must be integers (size only for strings)")
    symbols = entry.get("symbols") or {}
    return SunSpecPoint(
        name=entry["name"],
        offset=entry["offset"],
        type=ptype,
        size=size,
        units=str(entry.get("units", "")),
        sf=entry.get("sf"),
        writable=entry.get("access", "R") == "RW",
        mandatory=bool(entry.get("mandatory", False)),
        symbols={int(k): str(v) for k, v in symbols.items()},
    )


# --------------------------------------------------------------------------- codec


def encode_raw(point: SunSpecPoint, raw: int | None) -> list[int]:
    """Integer -> registers (high word first); None gives the "not implemented" marker.

    Raises ValueError if ``raw`` does not fit the type or collides with its marker.
    """
    bits = 16 * point.size
    if raw is None:
        marker = point.not_implemented
        raw = 0 if marker is None else marker
    else:
        low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
        if point.type not in _SIGNED:
            low, high = 0, (1 << bits) - 1
        unsigned = raw & ((1 << bits) - 1)
        if not low <= raw <= high or (unsigned == point.not_implemented and raw != 0):
            raise ValueError(f"{point.name}: {raw} does not fit {point.type}")
        raw = unsigned
    return [(raw >> (16 * (point.size - 1 - i))) & 0xFFFF for i in range(point.size)]


def decode_raw(point: SunSpecPoint, words: Sequence[int]) -> int | None:
    """Registers -> integer; None for the "not implemented" marker (acc/pad 0 included)."""
    raw = 0
    for word in words:
        raw = (raw << 16) | word
    if raw == point.not_implemented:
        return None
    bits = 16 * point.size
    if point.type in _SIGNED and raw >= 1 << (bits - 1):
        raw -= 1 << bits
    return raw


def encode_string(text: str, size: int) -> list[int]:
    data = text.encode("utf-8")[: 2 * size].ljust(2 * size, b"\0")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def decode_string(words: Sequence[int]) -> str:
    data = b"".join(w.to_bytes(2, "big") for w in words)
    return data.rstrip(b"\0").decode("utf-8", errors="replace")


def apply_sf(raw: int, sf: int) -> float:
    """raw x 10^sf, exact for negative sf where float division is (230.1, not 230.10000000000002)."""
    return raw * 10.0**sf if sf >= 0 else raw / 10.0**-sf


# --------------------------------------------------------------------------- driver


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """Model 1 (Common), logged at discovery."""

    manufacturer: str
    model: str
    version: str
    serial_number: str


@dataclass(frozen=True, slots=True)
class _Layout:
    addresses: Mapping[int, int]  # model id -> address of its ID register
    spans: tuple[tuple[int, int], ...]  # (start, count) read on every cycle
    info: DeviceInfo | None


@dataclass(frozen=True, slots=True)
class _Control:
    """What a setpoint write needs from the last read."""

    max_charge_w: float
    max_discharge_w: float
    wmax_w: float | None
    wset_sf: int | None
    wset_pct_sf: int | None


class _View:
    """The registers of one model, decoded point by point, with the device name in errors."""

    def __init__(self, name: str, model: SunSpecModel, address: int, regs: Mapping[int, int]):
        self._name, self._model, self._address, self._regs = name, model, address, regs

    def raw(self, point_name: str) -> int | None:
        p = self._model.point(point_name)
        start = self._address + p.offset
        return decode_raw(p, [self._regs[a] for a in range(start, start + p.size)])

    def sf(self, sf_name: str) -> int | None:
        sf = self.raw(sf_name)
        if sf is not None and sf not in _SF_RANGE:
            raise self.bad(f"scale factor {sf_name} = {sf} outside -10..10")
        return sf

    def value(self, point_name: str) -> float | None:
        """Scaled value; None if the point or its scale factor is not implemented."""
        raw = self.raw(point_name)
        sf_name = self._model.point(point_name).sf
        sf = self.sf(sf_name) if sf_name else 0
        return None if raw is None or sf is None else apply_sf(raw, sf)

    def enum(self, point_name: str) -> int | None:
        raw = self.raw(point_name)
        symbols = self._model.point(point_name).symbols
        if raw is not None and symbols and raw not in symbols:
            raise self.bad(f"{point_name} = {raw} is not one of {sorted(symbols)}")
        return raw

    def bad(self, what: str) -> DeviceProtocolError:
        _LOG.warning("%s: model %d: %s", self._name, self._model.id, what)
        return DeviceProtocolError(f"{self._name}: model {self._model.id}: {what}")


class SunSpecInverter:
    """A SunSpec battery inverter; implements `Inverter` and `PowerControl`.

    Build it with `SunSpecInverter.tcp` or `.rtu`. The model chain is discovered on first use
    and again after the link was lost. ``setpoint_mode`` picks 704 WSetMod: ``watts`` (WSet)
    or ``percent`` (WSetPct of 702 WMax).
    """

    def __init__(
        self,
        link: ModbusLink,
        *,
        unit_id: int = 1,
        name: str = "inverter",
        revert_timeout_s: float = 10.0,
        setpoint_mode: Literal["watts", "percent"] = "watts",
        base_address: int = SUNSPEC_BASE_ADDRESS,
        models: Mapping[int, SunSpecModel] | None = None,
    ) -> None:
        check_unit_id(unit_id)
        if not 1.0 <= revert_timeout_s <= 86_400.0:
            raise ValueError(f"revert_timeout_s must be 1..86400, got {revert_timeout_s!r}")
        if setpoint_mode not in _WSETMOD:
            raise ValueError(f"setpoint_mode must be 'watts' or 'percent', got {setpoint_mode!r}")
        self._link = link
        self._unit_id = unit_id
        self._name = name
        self._revert_s = math.ceil(revert_timeout_s)  # WSetRvrtTms is whole seconds
        self._mode = setpoint_mode
        self._base = base_address
        self._models = models or load_sunspec_models()
        self._lock = asyncio.Lock()
        self._layout: _Layout | None = None
        self._control: _Control | None = None
        self.malformed_frames = 0  # answers rejected: bad framing / size, implausible values
        self.exception_responses = 0

    @classmethod
    def tcp(
        cls,
        host: str,
        port: int = 502,
        *,
        unit_id: int = 1,
        timeout_s: float = 1.0,
        name: str = "inverter",
        revert_timeout_s: float = 10.0,
        setpoint_mode: Literal["watts", "percent"] = "watts",
    ) -> SunSpecInverter:
        """Inverter on Modbus TCP (SunSpec devices usually listen on 502, unit 1)."""
        return cls(
            ModbusLink.tcp(host, port, name=name, timeout_s=timeout_s),
            unit_id=unit_id,
            name=name,
            revert_timeout_s=revert_timeout_s,
            setpoint_mode=setpoint_mode,
        )

    @classmethod
    def rtu(
        cls,
        serial_port: str,
        *,
        unit_id: int = 1,
        name: str = "inverter",
        revert_timeout_s: float = 10.0,
        setpoint_mode: Literal["watts", "percent"] = "watts",
        **line: Unpack[RtuSettings],
    ) -> SunSpecInverter:
        """Inverter on an RS485 line; ``line``: `RtuSettings` (the serial settings, ``timeout_s``)."""
        return cls(
            ModbusLink.rtu(serial_port, name=name, **line),
            unit_id=unit_id,
            name=name,
            revert_timeout_s=revert_timeout_s,
            setpoint_mode=setpoint_mode,
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def model_addresses(self) -> Mapping[int, int]:
        """Model id -> address of its ID register, from the last discovery (empty before)."""
        return dict(self._layout.addresses) if self._layout else {}

    @property
    def device_info(self) -> DeviceInfo | None:
        return self._layout.info if self._layout else None

    async def connect(self) -> None:
        """Open the link and discover the models now (optional: every call does it on demand)."""
        async with self._lock:
            with self._tracking():
                await self._link.connect()
                await self._layout_locked()

    async def read(self) -> InverterReading:
        """One snapshot in 3 requests (with the usual model order). Raises `DriverError`s."""
        async with self._lock:
            with self._tracking():
                reading, _ = await self._read_locked()
                return reading

    async def set_active_power_w(self, watts: float) -> float:
        """Clamp ``watts`` to the limits of the last read and write it.

        Returns the watts written (clamped, and rounded to the WSet / WSetPct resolution).
        """
        if not math.isfinite(watts):
            raise ValueError(f"{self._name}: setpoint must be finite, got {watts!r}")
        async with self._lock:
            with self._tracking():
                layout = await self._layout_locked()
                control = self._control or (await self._read_locked())[1]
                target = clamp_setpoint_w(
                    watts,
                    max_charge_w=control.max_charge_w,
                    max_discharge_w=control.max_discharge_w,
                )
                words, written = self._setpoint_words(control, target)
                address = layout.addresses[704] + self._models[704].point("WSetEna").offset
                await self._link.write_registers(address, words, unit_id=self._unit_id)
        if written != watts:
            _LOG.debug("%s: setpoint %.1f W written as %.1f W", self._name, watts, written)
        return written

    async def release(self) -> None:
        """WSetEna = 0: the inverter leaves remote active-power control."""
        async with self._lock:
            with self._tracking():
                layout = await self._layout_locked()
                address = layout.addresses[704] + self._models[704].point("WSetEna").offset
                await self._link.write_registers(address, [0], unit_id=self._unit_id)

    async def close(self) -> None:
        await self._link.close()

    # ------------------------------------------------------------------ internals

    @contextlib.contextmanager
    def _tracking(self) -> Iterator[None]:
        try:
            yield
        except ModbusExceptionResponse:
            self.exception_responses += 1
            raise
        except DeviceProtocolError:
            self.malformed_frames += 1
            raise
        except DeviceUnavailable:
            # The device may come back with other firmware: discover again.
            self._layout = self._control = None
            raise

    async def _read(self, address: int, count: int) -> list[int]:
        return await self._link.read_holding_registers(address, count, unit_id=self._unit_id)

    async def _layout_locked(self) -> _Layout:
        if self._layout is None:
            self._layout = await self._discover()
        return self._layout

    async def _discover(self) -> _Layout:
        try:
            marker = await self._read(self._base, 2)
        except ModbusExceptionResponse as exc:
            if exc.exception_code != 2:  # busy / failure: try again later
                raise
            raise NotSupported(f"{self._name}: no SunSpec map at {self._base}: {exc}") from exc
        if tuple(marker) != SUNS_MARKER:
            raise NotSupported(
                f"{self._name}: no 'SunS' marker at {self._base} (got {marker[0]:04X} {marker[1]:04X})"
            )
        chain: dict[int, tuple[int, int]] = {}
        address = self._base + 2
        for _ in range(_MAX_MODELS):
            model_id, length = await self._read(address, 2)
            if model_id == END_MODEL_ID:
                break
            if address + 2 + length > 0x10000:
                raise DeviceProtocolError(
                    f"{self._name}: model {model_id} at {address} runs past 65535"
                )
            chain.setdefault(model_id, (address, length))
            address += 2 + length
        else:
            raise DeviceProtocolError(f"{self._name}: no end model after {_MAX_MODELS} models")
        addresses = self._check_chain(chain)
        info = await self._read_common(addresses.get(1))
        _LOG.info(
            "%s: SunSpec %s at %d, models %s",
            self._name,
            f"{info.manufacturer} {info.model} (serial {info.serial_number})" if info else "device",
            self._base,
            ", ".join(f"{m}@{a}" for m, a in sorted(addresses.items())),
        )
        return _Layout(addresses, _plan_spans(self._models, addresses), info)

    def _check_chain(self, chain: Mapping[int, tuple[int, int]]) -> dict[int, int]:
        missing = [str(m) for m in (701, 704) if m not in chain]
        if 702 not in chain and 802 not in chain:
            missing.append("702 or 802 (power limits)")
        if missing:
            raise NotSupported(
                f"{self._name}: SunSpec model(s) {', '.join(missing)} missing; "
                f"found {sorted(chain)}"
            )
        for mid, (_, length) in chain.items():
            known = self._models.get(mid)
            # Model 1 of older devices has no Pad register (L 65).
            if known is not None and length != known.length and not (mid == 1 and length == 65):
                raise NotSupported(
                    f"{self._name}: model {mid} has L={length}; this driver knows the "
                    f"layout with L={known.length} and will not guess at another"
                )
        return {mid: a for mid, (a, _) in chain.items() if mid in self._models}

    async def _read_common(self, address: int | None) -> DeviceInfo | None:
        if address is None:
            return None
        common = self._models[1]
        words = await self._read(address, common.point("SN").offset + 16)

        def text(point: str) -> str:
            p = common.point(point)
            return decode_string(words[p.offset : p.offset + p.size])

        return DeviceInfo(text("Mn"), text("Md"), text("Vr"), text("SN"))

    async def _read_locked(self) -> tuple[InverterReading, _Control]:
        layout = await self._layout_locked()
        regs: dict[int, int] = {}
        for start, count in layout.spans:
            regs.update(
                zip(range(start, start + count), await self._read(start, count), strict=True)
            )
        for mid, address in layout.addresses.items():
            if mid in _CYCLE_POINTS and (regs[address], regs[address + 1]) != (
                mid,
                self._models[mid].length,
            ):
                self._layout = self._control = None
                raise DeviceProtocolError(
                    f"{self._name}: model {mid} is no longer at {address}; map changed"
                )
        views = {
            mid: _View(self._name, self._models[mid], a, regs)
            for mid, a in layout.addresses.items()
            if mid in _CYCLE_POINTS
        }
        reading, control = self._decode(views)
        self._control = control
        return reading, control

    def _decode(self, views: Mapping[int, _View]) -> tuple[InverterReading, _Control]:
        m701, m704 = views[701], views[704]
        charge_w, discharge_w, wmax_w, rating_w = self._limits(views)
        power_w = m701.value("W")
        if power_w is None:
            raise m701.bad("W (active power) is not implemented")
        if abs(power_w) > _PLAUSIBLE_FACTOR * max(rating_w, IDLE_BAND_W):
            raise m701.bad(f"W = {power_w} W implausible for a {rating_w} W rating")
        control = _Control(
            max_charge_w=charge_w,
            max_discharge_w=discharge_w,
            wmax_w=wmax_w,
            wset_sf=m704.sf("WSet_SF"),
            wset_pct_sf=m704.sf("WSetPct_SF"),
        )
        reading = InverterReading(
            active_power_w=power_w,
            setpoint_w=self._setpoint_in_force(m704, control),
            state=self._state(views, power_w),
            max_charge_power_w=charge_w,
            max_discharge_power_w=discharge_w,
            soc_pct=self._soc(views),
        )
        return reading, control

    def _limits(self, views: Mapping[int, _View]) -> tuple[float, float, float | None, float]:
        """(max charge W, max discharge W, WMax W, rating W) from 702 and 802."""
        charge: list[float | None] = []
        discharge: list[float | None] = []
        wmax: float | None = None
        if m702 := views.get(702):
            shared = [m702.value("WMaxRtg"), m702.value("WMax")]
            wmax = shared[1] if shared[1] is not None else shared[0]
            charge += [*shared, m702.value("WChaRteMaxRtg"), m702.value("WChaRteMax")]
            discharge += [*shared, m702.value("WDisChaRteMaxRtg"), m702.value("WDisChaRteMax")]
        if m802 := views.get(802):
            charge.append(m802.value("WChaRteMax"))
            discharge.append(m802.value("WDisChaRteMax"))
        charge_w = [v for v in charge if v is not None]
        discharge_w = [v for v in discharge if v is not None]
        if not charge_w or not discharge_w:
            raise NotSupported(
                f"{self._name}: no charge / discharge power limit in models 702 and 802"
            )
        rating = max(charge_w + discharge_w)
        return min(charge_w), min(discharge_w), wmax, rating

    def _setpoint_in_force(self, m704: _View, control: _Control) -> float | None:
        if m704.enum("WSetEna") != 1:
            return None
        if m704.enum("WSetMod") == _WSETMOD["percent"]:
            pct = m704.value("WSetPct")
            if pct is None or control.wmax_w is None:
                raise m704.bad("WSetPct or WMax not implemented in percent mode")
            return pct / 100.0 * control.wmax_w
        watts = m704.value("WSet")
        if watts is None:
            raise m704.bad("WSet not implemented while WSetEna = 1")
        return watts

    def _state(self, views: Mapping[int, _View], power_w: float) -> InverterState:
        m701 = views[701]
        inv_st, st = m701.enum("InvSt"), m701.enum("St")
        battery_state = views[802].enum("State") if 802 in views else None
        if inv_st == 6 or battery_state == 99:  # FAULT
            return InverterState.FAULT
        if inv_st in (0, 5) or (inv_st is None and st == 0):  # OFF, SHUTTING_DOWN
            return InverterState.OFF
        if inv_st in (1, 2, 7):  # SLEEPING, STARTING, STANDBY
            return InverterState.STANDBY
        resolution = apply_sf(1, m701.sf("W_SF") or 0)
        return state_from_power(power_w, max(IDLE_BAND_W, resolution))

    @staticmethod
    def _soc(views: Mapping[int, _View]) -> float | None:
        for mid in (802, 713):
            if (view := views.get(mid)) is not None and (soc := view.value("SoC")) is not None:
                if not 0.0 <= soc <= 100.0:
                    raise view.bad(f"SoC = {soc} % outside 0..100")
                return soc
        return None

    def _setpoint_words(self, control: _Control, watts: float) -> tuple[list[int], float]:
        """The 704 block for ``watts``, and the watts it carries after scale-factor rounding."""
        m704 = self._models[704]
        if self._mode == "watts" and control.wset_sf is None:
            raise NotSupported(f"{self._name}: 704 WSet_SF not implemented; use percent mode")
        if self._mode == "percent" and (control.wset_pct_sf is None or not control.wmax_w):
            raise NotSupported(f"{self._name}: 704 WSetPct_SF or 702 WMax not implemented")
        wset = None if control.wset_sf is None else round(watts / 10.0**control.wset_sf)
        pct = None
        if control.wset_pct_sf is not None and control.wmax_w:
            pct = round(watts / control.wmax_w * 100.0 / 10.0**control.wset_pct_sf)
        values: dict[str, int | None] = {
            "WSetEna": 1,
            "WSetMod": _WSETMOD[self._mode],
            "WSet": wset,
            "WSetRvrt": None if wset is None else 0,
            "WSetPct": pct,
            "WSetPctRvrt": None if pct is None else 0,
            "WSetEnaRvrt": 1,
            "WSetRvrtTms": self._revert_s,
        }
        words: list[int] = []
        offset = m704.point("WSetEna").offset
        for point_name, raw in values.items():
            point = m704.point(point_name)
            if point.offset != offset + len(words):  # a custom table with another layout
                raise NotSupported(f"{self._name}: 704 {point_name} is not where expected")
            words += encode_raw(point, raw)
        if self._mode == "watts" and wset is not None and control.wset_sf is not None:
            return words, apply_sf(wset, control.wset_sf)
        if pct is not None and control.wset_pct_sf is not None and control.wmax_w:
            return words, apply_sf(pct, control.wset_pct_sf) / 100.0 * control.wmax_w
        return words, watts  # pragma: no cover - both modes were checked above


def _plan_spans(
    models: Mapping[int, SunSpecModel], addresses: Mapping[int, int]
) -> tuple[tuple[int, int], ...]:
    """Per-cycle reads: header .. last needed point of each model, merged while <= 125 regs.

    Merging may cover a gap between two models' spans; it lies inside the SunSpec map, so
    the device serves it.
    """
    spans = sorted(
        (addresses[mid], max(models[mid].point(p).offset + models[mid].point(p).size for p in pts))
        for mid, pts in _CYCLE_POINTS.items()
        if mid in addresses
    )
    merged: list[tuple[int, int]] = []
    for start, count in spans:
        if merged and start + count - merged[-1][0] <= MAX_READ_REGISTERS:
            merged[-1] = (merged[-1][0], start + count - merged[-1][0])
        else:
            merged.append((start, count))
    return tuple(merged)
