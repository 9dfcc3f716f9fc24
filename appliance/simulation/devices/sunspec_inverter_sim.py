"""Protocol-level SunSpec battery inverter: a real pymodbus 3.16 server (SimDevice / SimData).

Serves ``SunS`` + models 1, 701, 702, 704, 713, 802 + the end model at holding register 40000,
from the tables in ``models/devices/sunspec/`` (the ones the driver decodes). A "reacting"
simulator: measurements come from ``node_source()`` at every read, setpoints go to
``on_setpoint(watts)``.

Behaviour (what a driver can rely on):

* reads (FC 03) refresh the whole image from ``node_source()`` first, so one answer is one
  snapshot; points the simulator does not model carry SunSpec's "not implemented" markers;
* writes (FC 06 / 16) must cover whole, writable points (else exception 0x02); enum values
  outside the model's symbols and setpoints outside the ratings / 702 ``WMax`` are refused
  with exception 0x03 and change nothing; FC 04 and bit functions get 0x01;
* the setpoint in force (704): 0 W while ``WSetEna`` = 0, else ``WSet`` (``WSetMod`` = 1) or
  ``WSetPct`` % of ``WMax`` (``WSetMod`` = 0). The plant, not this server, follows the BMS
  limits (702 ``WChaRteMax`` / ``WDisChaRteMax`` publish them and are read-only here);
* reversion: a write of WSetEna / WSetMod / WSet / WSetPct with ``WSetEnaRvrt`` = 1 and
  ``WSetRvrtTms`` > 0 (re)starts the timer; when it runs out, ``WSetRvrt`` / ``WSetPctRvrt``
  become the setpoint in force (written into ``WSet`` / ``WSetPct``), ``reversions`` counts it,
  a WARNING is logged and ``on_setpoint`` gets the value; ``WSetRvrtRem`` counts down;
* ``node_source()`` raising or giving a value a register cannot hold: exception 0x04;
* requests for another unit id get no answer, as on an RS485 line.

Faults (``sim.faults``): ``silent`` (no answer), ``delay_s`` (answer late), ``garbage`` (TCP: a
well-framed answer one register short / a write echo with a wrong count; RTU: a broken CRC),
``out_of_range`` (701 ``W`` = 32767 x 10^W_SF and SoC = 200 %), and `drop_connections()`.
Transport, unit filter, request counts and the other faults are those of
`appliance.simulation.devices.modbus_server`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.simulator import DataType, SimData, SimDevice

from appliance.drivers.sunspec_inverter import (
    END_MODEL_ID,
    MODEL_IDS,
    SUNS_MARKER,
    SUNSPEC_BASE_ADDRESS,
    SunSpecModel,
    SunSpecPoint,
    apply_sf,
    decode_raw,
    encode_raw,
    encode_string,
    load_sunspec_models,
)
from appliance.simulation.devices.modbus_server import ModbusDeviceServer, ModbusFaults
from appliance.simulation.plant import NodeState

_LOG = logging.getLogger(__name__)

_FC_READ, _FC_WRITE_ONE, _FC_WRITE_MANY = 3, 6, 16
_SETPOINT_POINTS = frozenset({"WSetEna", "WSetMod", "WSet", "WSetPct"})
_READ_ONLY_SETTINGS = frozenset({"WChaRteMax", "WDisChaRteMax"})  # 702: derived from the BMS
_NOMINAL_V, _LINE_V, _FREQUENCY_HZ = 230.0, 400.0, 50.0
_IDLE_W = 1.0
_PACK_V = 51.2  # nominal voltage of a 16S LFP pack, for the 802 Ah rating


def _fit_sf(value: float, limit: float = 65534) -> int:
    """Smallest scale factor >= 0 that lets ``value`` fit under ``limit`` (uint16 by default)."""
    sf = 0
    while abs(value) / 10.0**sf > limit:
        sf += 1
    return sf


@dataclass(frozen=True, slots=True)
class InverterValues:
    """What the plant tells the simulated inverter. Power and current > 0 = discharge."""

    ac_power_w: float
    soc_pct: float
    soh_pct: float
    battery_voltage_v: float
    battery_current_a: float
    max_charge_w: float  # AC power accepted now, >= 0
    max_discharge_w: float  # >= 0
    charge_current_limit_a: float  # BMS, >= 0
    discharge_current_limit_a: float
    fault: bool = False
    running: bool = True


def inverter_values_from_node(node: NodeState) -> InverterValues:
    """The plant's battery node as its inverter reports it; a latched BMS alarm is a fault."""
    return InverterValues(
        ac_power_w=node.ac_power_w,
        soc_pct=node.soc_pct,
        soh_pct=node.soh_pct,
        battery_voltage_v=node.voltage_v,
        battery_current_a=node.current_a,
        max_charge_w=node.max_charge_w,
        max_discharge_w=node.max_discharge_w,
        charge_current_limit_a=node.charge_current_limit_a,
        discharge_current_limit_a=node.discharge_current_limit_a,
        fault=bool(node.alarm_flags),
    )


@dataclass
class InverterFaults(ModbusFaults):
    """Faults to inject; change them at any time, they apply from the next request."""

    out_of_range: bool = False


class _Refused(Exception):
    def __init__(self, code: ExcCodes, why: str) -> None:
        super().__init__(why)
        self.code = code


class SunSpecInverterSimulator(ModbusDeviceServer):
    """A SunSpec battery inverter on Modbus TCP and/or RTU.

    ``power_sf`` is the scale factor of every power point (701 W_SF, 702 W_SF, 704 WSet_SF,
    802 W_SF / WChaDisChaMax_SF); by default the smallest that leaves room for twice the
    rating in an int16. ``revert_time_scale`` is real seconds per second of
    ``WSetRvrtTms`` (tests use 0.1). ``served_models`` lets a test leave models out.
    """

    faults: InverterFaults

    def __init__(
        self,
        node_source: Callable[[], InverterValues],
        on_setpoint: Callable[[float], None],
        *,
        unit_id: int = 1,
        name: str = "sunspec-sim",
        rated_power_w: float = 5000.0,
        rated_charge_w: float | None = None,
        rated_discharge_w: float | None = None,
        capacity_wh: float = 10_000.0,
        power_sf: int | None = None,
        serial_number: str = "SIM0001",
        revert_time_scale: float = 1.0,
        served_models: Sequence[int] = MODEL_IDS,
        models: Mapping[int, SunSpecModel] | None = None,
    ) -> None:
        super().__init__(unit_id=unit_id, name=name)
        self._source = node_source
        self._on_setpoint = on_setpoint
        #: Called with (loop time, watts) for every setpoint the inverter takes: for tests and
        #: benchmarks that time what arrives at the device.
        self.setpoint_listeners: list[Callable[[float, float], None]] = []
        self._models = models or load_sunspec_models()
        self._rated_w = rated_power_w
        self._rated_charge_w = rated_charge_w if rated_charge_w is not None else rated_power_w
        self._rated_discharge_w = (
            rated_discharge_w if rated_discharge_w is not None else rated_power_w
        )
        self._capacity_wh = capacity_wh
        # Room for twice the rating in an int16 (701 W) unless the caller picks the factor.
        self._power_sf = _fit_sf(2 * rated_power_w, 32767) if power_sf is None else power_sf
        self._serial_number = serial_number
        self._time_scale = revert_time_scale
        self.faults = InverterFaults()
        self.reversions = 0
        self._revert_handle: asyncio.TimerHandle | None = None
        self._revert_deadline: float | None = None  # loop time
        self._started = time.monotonic()
        self._addresses: dict[int, int] = {}
        self._image: list[int] = []
        self._points: dict[int, tuple[int, SunSpecPoint]] = {}  # address -> (model id, point)
        self._build_image(served_models)
        self._setpoint_w = 0.0

    # ------------------------------------------------------------------ public

    @property
    def setpoint_w(self) -> float:
        """The setpoint in force (after reversion: the reversion value)."""
        return self._setpoint_w

    def model_address(self, model_id: int) -> int:
        """Address of the model's ID register (KeyError if not served)."""
        return self._addresses[model_id]

    async def stop(self) -> None:
        """Stop every server and the reversion timer; safe to call more than once."""
        self._cancel_revert()
        await super().stop()

    # ------------------------------------------------------------------ image

    def _build_image(self, served: Sequence[int]) -> None:
        image = list(SUNS_MARKER)
        for mid in served:
            model = self._models[mid]
            self._addresses[mid] = SUNSPEC_BASE_ADDRESS + len(image)
            block = [mid, model.length]
            for point in model.points:
                block += encode_raw(point, None)
                for i in range(point.size):
                    self._points[self._addresses[mid] + point.offset + i] = (mid, point)
            image += block
        self._image = [*image, END_MODEL_ID, 0]
        for (mid, point_name), value in self._static_values().items():
            if mid in self._addresses:
                self._set(mid, point_name, value)

    def _static_values(self) -> dict[tuple[int, str], float | str]:
        psf, wh_sf = self._power_sf, _fit_sf(self._capacity_wh)
        static: dict[tuple[int, str], float | str] = {
            (1, "Mn"): "Appliance",
            (1, "Md"): "SimInverter",
            (1, "Vr"): "1.0",
            (1, "SN"): self._serial_number,
            (1, "DA"): self._unit_id,
            (701, "ACType"): 2,  # THREE_PHASE
            (701, "ConnSt"): 1,
        }
        sfs = {
            701: {"A_SF": -2, "V_SF": -1, "Hz_SF": -2, "W_SF": psf, "PF_SF": -2, "VA_SF": psf, "Var_SF": psf},
            702: {"W_SF": psf, "PF_SF": -2, "VA_SF": psf, "Var_SF": psf, "V_SF": -1, "A_SF": -1},
            704: {"PF_SF": -2, "WMaxLimPct_SF": -1, "WSet_SF": psf, "WSetPct_SF": -2, "VarSet_SF": psf, "VarSetPct_SF": -2},
            713: {"WH_SF": wh_sf, "Pct_SF": -1},
            802: {"AHRtg_SF": _fit_sf(self._capacity_wh / _PACK_V), "WHRtg_SF": wh_sf, "WChaDisChaMax_SF": psf, "SoC_SF": -1, "SoH_SF": -1, "V_SF": -1, "CellV_SF": -3, "A_SF": -1, "AMax_SF": -1, "W_SF": psf},
        }  # fmt: skip
        for mid, factors in sfs.items():
            static.update({(mid, n): sf for n, sf in factors.items()})
        rated, cha, dis = self._rated_w, self._rated_charge_w, self._rated_discharge_w
        static.update({
            (702, "WMaxRtg"): rated, (702, "VAMaxRtg"): rated, (702, "WChaRteMaxRtg"): cha,
            (702, "WDisChaRteMaxRtg"): dis, (702, "VNomRtg"): _NOMINAL_V,
            (702, "VMaxRtg"): _NOMINAL_V * 1.1, (702, "VMinRtg"): _NOMINAL_V * 0.9,
            (702, "AMaxRtg"): rated / (3 * _NOMINAL_V), (702, "WMax"): rated,
            (704, "WSetEna"): 0, (704, "WSetMod"): 1, (704, "WSet"): 0, (704, "WSetRvrt"): 0,
            (704, "WSetPct"): 0, (704, "WSetPctRvrt"): 0, (704, "WSetEnaRvrt"): 0,
            (704, "WSetRvrtTms"): 0, (704, "WSetRvrtRem"): 0,
            (713, "WHRtg"): self._capacity_wh,
            (802, "AHRtg"): self._capacity_wh / _PACK_V, (802, "WHRtg"): self._capacity_wh,
            (802, "WChaRteMax"): cha, (802, "WDisChaRteMax"): dis, (802, "LocRemCtl"): 0,
            (802, "AlmRst"): 0, (802, "Typ"): 4, (802, "Evt1"): 0, (802, "Evt2"): 0,
            (802, "EvtVnd1"): 0, (802, "EvtVnd2"): 0, (802, "SetOp"): 1, (802, "SetInvState"): 3,
        })  # fmt: skip
        return static

    def _set(self, mid: int, point_name: str, value: float | str | None) -> None:
        """Write a value (scaled by the point's scale factor in the image) into the image."""
        point = self._models[mid].point(point_name)
        start = self._addresses[mid] + point.offset - SUNSPEC_BASE_ADDRESS
        if isinstance(value, str):
            words = encode_string(value, point.size)
        elif value is None:
            words = encode_raw(point, None)
        else:
            sf = self._get_raw(mid, point.sf) if point.sf else 0
            words = encode_raw(point, round(value / 10.0 ** (sf or 0)))
        self._image[start : start + point.size] = words

    def _get_raw(self, mid: int, point_name: str, image: Sequence[int] | None = None) -> int | None:
        point = self._models[mid].point(point_name)
        start = self._addresses[mid] + point.offset - SUNSPEC_BASE_ADDRESS
        return decode_raw(point, (image or self._image)[start : start + point.size])

    def _get(self, mid: int, point_name: str, image: Sequence[int] | None = None) -> float | None:
        raw = self._get_raw(mid, point_name, image)
        sf_name = self._models[mid].point(point_name).sf
        sf = self._get_raw(mid, sf_name, image) if sf_name else 0
        return None if raw is None or sf is None else apply_sf(raw, sf)

    def _refresh(self) -> None:
        """Measurements from ``node_source()`` into the image (raises on unencodable values)."""
        v = self._source()
        power = v.ac_power_w
        inv_st = 6 if v.fault else 0 if not v.running else 7 if abs(power) < _IDLE_W else 3
        sign = -1.0 if power < 0 else 1.0
        charging, discharging = power < -_IDLE_W, power > _IDLE_W
        dynamic: dict[tuple[int, str], float | None] = {
            (701, "St"): 1 if v.running else 0, (701, "InvSt"): inv_st, (701, "W"): power,
            (701, "VA"): abs(power), (701, "Var"): 0, (701, "PF"): sign,
            (701, "A"): abs(power) / (3 * _NOMINAL_V), (701, "LLV"): _LINE_V,
            (701, "LNV"): _NOMINAL_V, (701, "Hz"): _FREQUENCY_HZ,
            (702, "WChaRteMax"): min(v.max_charge_w, self._rated_charge_w),
            (702, "WDisChaRteMax"): min(v.max_discharge_w, self._rated_discharge_w),
            (713, "WHAvail"): self._capacity_wh * v.soc_pct / 100.0, (713, "SoC"): v.soc_pct,
            (713, "SoH"): v.soh_pct, (713, "Sta"): 2 if v.fault else 0,
            (802, "SoC"): v.soc_pct, (802, "SoH"): v.soh_pct,
            (802, "ChaSt"): 4 if charging else 3 if discharging else 6,
            (802, "Hb"): int(time.monotonic() - self._started) & 0xFFFF,
            (802, "State"): 99 if v.fault else 3 if v.running else 4,
            (802, "V"): v.battery_voltage_v, (802, "A"): v.battery_current_a,
            (802, "AChaMax"): v.charge_current_limit_a,
            (802, "ADisChaMax"): v.discharge_current_limit_a,
            (802, "W"): v.battery_voltage_v * v.battery_current_a,
            (704, "WSetRvrtRem"): self._revert_remaining_s(),
        }  # fmt: skip
        for (mid, point_name), value in dynamic.items():
            if mid in self._addresses:
                self._set(mid, point_name, value)

    def _served_image(self) -> list[int]:
        if not self.faults.out_of_range:
            return self._image
        image = list(self._image)
        for mid, point_name, raw in ((701, "W", 32767), (713, "SoC", 2000), (802, "SoC", 2000)):
            if mid in self._addresses:
                point = self._models[mid].point(point_name)
                start = self._addresses[mid] + point.offset - SUNSPEC_BASE_ADDRESS
                image[start : start + point.size] = encode_raw(point, raw)
        return image

    # ------------------------------------------------------------------ requests

    def _device(self, *, parity: str | None, baudrate: int | None) -> SimDevice:
        block = SimData(
            SUNSPEC_BASE_ADDRESS, count=len(self._image), values=0, datatype=DataType.REGISTERS
        )
        return SimDevice(id=self._unit_id, simdata=[block], action=self._action)

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """SimDevice hook, called after pymodbus' address checks."""
        await self._maybe_delay()
        if function_code not in (_FC_READ, _FC_WRITE_ONE, _FC_WRITE_MANY):
            return ExcCodes.ILLEGAL_FUNCTION
        self._count(function_code)
        try:
            if set_values is None:
                self._refresh()
            else:
                self._write(address, [int(v) for v in set_values])
        except _Refused as exc:
            _LOG.info(
                "%s: FC%02d 0x%04X+%d refused: %s", self._name, function_code, address, count, exc
            )
            return exc.code
        except Exception as exc:  # noqa: BLE001  # any source failure is a device failure
            _LOG.warning("%s: answering 0x04: %r", self._name, exc)
            return ExcCodes.DEVICE_FAILURE
        offset = SUNSPEC_BASE_ADDRESS - start_address
        current_registers[offset : offset + len(self._image)] = self._served_image()
        return None

    def _write(self, address: int, values: list[int]) -> None:
        touched: dict[str, tuple[int, SunSpecPoint]] = {}
        for a in range(address, address + len(values)):
            if a not in self._points:
                raise _Refused(ExcCodes.ILLEGAL_ADDRESS, f"0x{a:04X} is a header or marker")
            mid, point = self._points[a]
            start = self._addresses[mid] + point.offset
            if not point.writable or (mid == 702 and point.name in _READ_ONLY_SETTINGS):
                raise _Refused(ExcCodes.ILLEGAL_ADDRESS, f"{mid}.{point.name} is read-only")
            if start < address or start + point.size > address + len(values):
                raise _Refused(ExcCodes.ILLEGAL_ADDRESS, f"{mid}.{point.name} written in part")
            touched[f"{mid}.{point.name}"] = (mid, point)
        image = list(self._image)
        offset = address - SUNSPEC_BASE_ADDRESS
        image[offset : offset + len(values)] = values
        for mid, point in touched.values():
            raw = self._get_raw(mid, point.name, image)
            if point.symbols and raw is not None and raw not in point.symbols:
                raise _Refused(
                    ExcCodes.ILLEGAL_VALUE, f"{point.name} = {raw} not in {sorted(point.symbols)}"
                )
        self._check_settings(image)
        setpoint = self._commanded_w(image) if 704 in self._addresses else 0.0
        self._image = image
        if any(m == 704 and p.name in _SETPOINT_POINTS for m, p in touched.values()):
            self._apply(setpoint)

    def _wmax(self, image: Sequence[int]) -> float:
        wmax = self._get(702, "WMax", image) if 702 in self._addresses else None
        return self._rated_w if wmax is None else wmax

    def _caps(self, image: Sequence[int]) -> tuple[float, float]:
        """Largest charge / discharge setpoint accepted: ratings and the 702 WMax setting."""
        wmax = self._wmax(image)
        return min(wmax, self._rated_charge_w), min(wmax, self._rated_discharge_w)

    def _check_settings(self, image: Sequence[int]) -> None:
        if 702 in self._addresses:
            wmax = self._get(702, "WMax", image)
            if wmax is not None and not 0.0 <= wmax <= self._rated_w:
                raise _Refused(ExcCodes.ILLEGAL_VALUE, f"WMax {wmax} W outside 0..{self._rated_w}")
        if 1 in self._addresses and not 1 <= (self._get_raw(1, "DA", image) or 0) <= 247:
            raise _Refused(ExcCodes.ILLEGAL_VALUE, "DA outside 1..247")

    def _commanded_w(self, image: Sequence[int]) -> float:
        """The setpoint ``image`` puts in force; raises _Refused for invalid ones."""
        charge_cap, discharge_cap = self._caps(image)
        watts = self._get(704, "WSet", image)
        reversion = self._get(704, "WSetRvrt", image)
        pct, pct_reversion = self._get(704, "WSetPct", image), self._get(704, "WSetPctRvrt", image)
        wmax = self._wmax(image)
        for label, value in (("WSetPct", pct), ("WSetPctRvrt", pct_reversion)):
            if value is not None and abs(value) > 100.0:
                raise _Refused(ExcCodes.ILLEGAL_VALUE, f"{label} {value} % outside +-100 %")
        for label, value in (("WSet", watts), ("WSetRvrt", reversion)):
            if value is not None and not -charge_cap <= value <= discharge_cap:
                raise _Refused(
                    ExcCodes.ILLEGAL_VALUE,
                    f"{label} {value} W outside -{charge_cap}..{discharge_cap} W",
                )
        if self._get_raw(704, "WSetEna", image) != 1:
            return 0.0
        if self._get_raw(704, "WSetMod", image) == 0:  # W_MAX_PCT
            if pct is None:
                raise _Refused(ExcCodes.ILLEGAL_VALUE, "WSetPct not set in percent mode")
            result = pct / 100.0 * wmax
            if not -charge_cap <= result <= discharge_cap:
                raise _Refused(ExcCodes.ILLEGAL_VALUE, f"WSetPct {pct} % = {result} W out of range")
            return result
        if watts is None:
            raise _Refused(ExcCodes.ILLEGAL_VALUE, "WSet not set in watts mode")
        return watts

    # ------------------------------------------------------------------ setpoint / reversion

    def _apply(self, setpoint_w: float) -> None:
        self._cancel_revert()
        enabled = self._get_raw(704, "WSetEna") == 1
        revert_s = self._get_raw(704, "WSetRvrtTms") or 0
        if enabled and self._get_raw(704, "WSetEnaRvrt") == 1 and revert_s > 0:
            loop = asyncio.get_running_loop()
            delay = revert_s * self._time_scale
            self._revert_deadline = loop.time() + delay
            self._revert_handle = loop.call_later(delay, self._revert)
            self._set(704, "WSetRvrtRem", revert_s)
        self._set_setpoint(setpoint_w)

    def _set_setpoint(self, setpoint_w: float) -> None:
        self._setpoint_w = setpoint_w
        self._on_setpoint(setpoint_w)  # a failure here answers 0x04 (or is logged by asyncio)
        now = asyncio.get_running_loop().time()
        for listener in self.setpoint_listeners:
            listener(now, setpoint_w)

    def _revert(self) -> None:
        self._revert_handle = self._revert_deadline = None
        for point_name, reversion in (("WSet", "WSetRvrt"), ("WSetPct", "WSetPctRvrt")):
            self._set(704, point_name, self._get(704, reversion))
        self._set(704, "WSetRvrtRem", 0)
        try:
            setpoint = self._commanded_w(self._image)
        except _Refused:
            setpoint = 0.0  # an unusable reversion value: stop rather than keep going
        self.reversions += 1
        _LOG.warning(
            "%s: no new setpoint within WSetRvrtTms; reverted to %.1f W", self._name, setpoint
        )
        self._set_setpoint(setpoint)

    def _cancel_revert(self) -> None:
        if self._revert_handle is not None:
            self._revert_handle.cancel()
        self._revert_handle = self._revert_deadline = None

    def _revert_remaining_s(self) -> int:
        if self._revert_deadline is None:
            return 0
        left = self._revert_deadline - asyncio.get_running_loop().time()
        return max(0, math.ceil(left / self._time_scale))

    # ------------------------------------------------------------------ transport hooks

    def _garbled(self, answer: ModbusPDU) -> ModbusPDU:
        return answer  # garbage is made frame by frame, in _trace_packet

    def _trace_packet(self, sending: bool, packet: bytes, *, rtu: bool) -> bytes:
        if not sending or not self.faults.garbage or len(packet) < 4:
            return super()._trace_packet(sending, packet, rtu=rtu)
        if rtu:
            return packet[:-1] + bytes([packet[-1] ^ 0xFF])  # broken CRC
        function_code = packet[7]
        if function_code == _FC_READ and len(packet) >= 11:
            # One register short, consistently framed (MBAP length and byte count agree).
            length = int.from_bytes(packet[4:6], "big") - 2
            return (
                packet[:4]
                + length.to_bytes(2, "big")
                + packet[6:8]
                + bytes([packet[8] - 2])
                + packet[9:-2]
            )
        if function_code == _FC_WRITE_MANY:
            return packet[:-2] + ((int.from_bytes(packet[-2:], "big") + 1) & 0xFFFF).to_bytes(
                2, "big"
            )
        return packet
