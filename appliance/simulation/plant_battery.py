"""Battery nodes of the simulated site: one LFP pack, its BMS and its battery inverter each.

Sign convention, everywhere in this module: power and current > 0 = discharge (the battery
delivers power), < 0 = charging. The inverter's AC power is what the site sees; the DC power
is what the pack sees; the difference is the conversion loss, split evenly so that a full
charge/discharge cycle loses `round_trip_efficiency` of the energy.

The BMS side reports what a CAN BMS reports (0x351 limits, 0x355 SoC/SoH, 0x356 voltage,
current, temperature, 0x359 flags, cell extremes): limits that taper near full and empty and
with temperature, latched alarms with hysteresis, warnings without latching.
"""

from __future__ import annotations

import bisect
import enum
import math
import random
from dataclasses import dataclass

from appliance.simulation.plant_params import PlantParams

# LFP open-circuit voltage per cell over SoC: steep below ~10 % and above ~95 %, nearly flat
# between. The flat middle is why a real BMS cannot tell SoC from voltage there.
_OCV_TABLE: tuple[tuple[float, float], ...] = (
    (0.0, 2.50),
    (1.0, 2.80),
    (3.0, 3.00),
    (5.0, 3.10),
    (10.0, 3.20),
    (15.0, 3.23),
    (20.0, 3.25),
    (30.0, 3.27),
    (40.0, 3.285),
    (50.0, 3.295),
    (60.0, 3.30),
    (70.0, 3.31),
    (80.0, 3.325),
    (90.0, 3.34),
    (95.0, 3.35),
    (97.0, 3.37),
    (99.0, 3.42),
    (100.0, 3.50),
)
_OCV_SOC = tuple(soc for soc, _ in _OCV_TABLE)
_OCV_V = tuple(volts for _, volts in _OCV_TABLE)

# BMS thresholds (per cell, and for the hottest / coldest sensor). Alarms latch and release
# only past the second value, so a pack that recovers under zero current does not chatter.
CELL_UV_WARNING_V = 2.90
CELL_UV_ALARM_V, CELL_UV_RELEASE_V = 2.70, 3.00
CELL_OV_WARNING_V = 3.58
CELL_OV_ALARM_V, CELL_OV_RELEASE_V = 3.65, 3.45
CELL_CHARGE_LIMIT_V = 3.55  # x cells = charge voltage limit (0x351)
CELL_DISCHARGE_LIMIT_V = 2.80  # x cells = discharge voltage limit (0x351)
OT_WARNING_C = 45.0
OT_ALARM_C, OT_RELEASE_C = 55.0, 50.0
UT_WARNING_C = 2.0
UT_ALARM_C, UT_RELEASE_C = -10.0, -5.0

# Current limits taper linearly over the last 10 % at either end, down to a trickle, so
# that the pack still reaches 0 / 100 % instead of approaching it forever.
_TAPER_PCT = 10.0
_TAPER_FLOOR = 0.05

# Thermal model per Wh of capacity: a 10 kWh pack weighs ~60 kg and sheds ~15 W/K in a cabinet.
_HEAT_CAPACITY_J_PER_K_WH = 6.0
_CONDUCTANCE_W_PER_K_WH = 0.0015
_HOTSPOT_K = 2.0  # hottest sensor at rated current sits this far above the pack mean


class BmsFlag(enum.IntFlag):
    """Alarm / warning bits, laid out like bytes 0-1 (alarms) and 2-3 (warnings) of the common
    Pylontech-style CAN frame 0x359, byte 0 in the low 8 bits. Drivers should still map by name.
    """

    CELL_OVERVOLTAGE = 0x0002
    CELL_UNDERVOLTAGE = 0x0004
    OVERTEMPERATURE = 0x0008
    UNDERTEMPERATURE = 0x0010


def cell_ocv_v(soc_pct: float) -> float:
    """Open-circuit voltage of one LFP cell at `soc_pct`, clamped to the table's ends."""
    if soc_pct <= _OCV_SOC[0]:
        return _OCV_V[0]
    if soc_pct >= _OCV_SOC[-1]:
        return _OCV_V[-1]
    i = bisect.bisect_right(_OCV_SOC, soc_pct)
    x0, x1, y0, y1 = _OCV_SOC[i - 1], _OCV_SOC[i], _OCV_V[i - 1], _OCV_V[i]
    return y0 + (y1 - y0) * (soc_pct - x0) / (x1 - x0)


@dataclass(frozen=True, slots=True)
class NodeState:
    """One node's BMS and inverter readings after a step. Power/current > 0 = discharge."""

    node: int  # 1..N
    soc_pct: float
    soh_pct: float
    voltage_v: float  # pack terminal voltage
    current_a: float  # > 0 discharge
    dc_power_w: float  # voltage_v * current_a, > 0 discharge
    ac_power_w: float  # measured inverter output, > 0 discharge
    setpoint_w: float  # last commanded, unclamped
    cell_voltage_min_v: float
    cell_voltage_max_v: float
    temperature_min_c: float
    temperature_max_c: float
    charge_current_limit_a: float  # >= 0
    discharge_current_limit_a: float  # >= 0
    charge_voltage_limit_v: float
    discharge_voltage_limit_v: float
    max_charge_w: float  # AC power the inverter can take now, >= 0
    max_discharge_w: float  # AC power the inverter can deliver now, >= 0
    alarm_flags: BmsFlag
    warning_flags: BmsFlag


def _latch(flags: BmsFlag, flag: BmsFlag, trip: bool, release: bool) -> BmsFlag:
    if trip:
        return flags | flag
    if release:
        return flags & ~flag
    return flags


def _charge_temperature_factor(t_min: float, t_max: float) -> float:
    # LFP must not be charged below 0 °C (lithium plating) and is derated when cold or hot.
    if t_min <= 0.0:
        return 0.0
    cold = min(1.0, 0.2 + 0.08 * t_min)
    hot = min(1.0, max(0.0, (OT_ALARM_C - t_max) / (OT_ALARM_C - OT_WARNING_C)))
    return min(cold, hot)


def _discharge_temperature_factor(t_min: float, t_max: float) -> float:
    if t_min <= -20.0:
        return 0.0
    cold = 0.5 if t_min < 0.0 else 1.0
    hot = min(1.0, max(0.0, (OT_ALARM_C + 5.0 - t_max) / 10.0))
    return min(cold, hot)


class BatteryNode:
    """Pack + BMS + inverter of one node; `advance` integrates, `state` reports."""

    def __init__(self, node: int, params: PlantParams) -> None:
        p = params
        rng = random.Random(f"{p.seed}/node/{node}")
        self._p = p
        self._node = node
        self._eta = math.sqrt(p.round_trip_efficiency)
        spread = p.initial_soc_spread_pct
        self._soc = min(100.0, max(0.0, p.initial_soc_pct + rng.uniform(-spread, spread)))
        self._soh = p.soh_pct - rng.uniform(0.0, p.soh_spread_pct)
        self._usable_wh = p.node_capacity_wh * self._soh / 100.0
        # Cell imbalance: the weakest and strongest cell sit this far from the pack SoC;
        # the OCV curve turns that into a voltage spread that opens up near the ends.
        self._cell_soc_low = -rng.uniform(0.3, 1.5)
        self._cell_soc_high = rng.uniform(0.3, 1.5)
        self._sensor_low_k = rng.uniform(0.3, 1.0)
        self._sensor_high_k = rng.uniform(0.3, 1.0)
        self._temp_c = p.ambient_temp_c + rng.uniform(-0.5, 0.5)
        self._heat_capacity = _HEAT_CAPACITY_J_PER_K_WH * p.node_capacity_wh
        self._conductance = _CONDUCTANCE_W_PER_K_WH * p.node_capacity_wh
        self._setpoint_w = 0.0
        self._ac_w = 0.0
        self._current_a = 0.0
        self._alarms = BmsFlag(0)
        self._forced_cell_min_v: float | None = None
        self.state = self._refresh()

    @property
    def ac_power_w(self) -> float:
        return self._ac_w

    def set_setpoint(self, watts: float) -> None:
        self._setpoint_w = watts

    def force_cell_voltage_low(self, volts: float | None) -> None:
        """Make the lowest cell read `volts` (or less); None removes the fault."""
        self._forced_cell_min_v = volts

    def set_temperature_c(self, celsius: float) -> None:
        """Put the pack at `celsius`; it relaxes towards ambient from there."""
        self._temp_c = celsius

    def advance(self, dt_s: float) -> NodeState:
        p, eta = self._p, self._eta
        # The limits enforced in this step are the ones the last state reported, as a real
        # inverter acts on the BMS frame it last received.
        low, high = -self.state.max_charge_w, self.state.max_discharge_w
        target = min(high, max(low, self._setpoint_w))
        tau = p.inverter_time_constant_s
        alpha = 1.0 if tau <= 0.0 else -math.expm1(-dt_s / tau)  # exact first-order lag
        ac = min(high, max(low, self._ac_w + (target - self._ac_w) * alpha))
        # Never move more energy in one step than the pack holds or has room for, so SoC
        # stays in 0..100 even with coarse steps.
        hours = dt_s / 3600.0
        stored_wh = self._usable_wh * self._soc / 100.0
        ac = min(ac, stored_wh / hours * eta)
        ac = max(ac, -(self._usable_wh - stored_wh) / hours / eta)
        dc = ac / eta if ac >= 0.0 else ac * eta
        self._soc = min(100.0, max(0.0, self._soc - dc * hours / self._usable_wh * 100.0))
        self._ac_w = ac
        # Terminal voltage V = E - I R with P = V I: solve for I at the new OCV, in the form
        # that stays accurate for small P, so that voltage x current equals the DC power.
        e = self._pack_ocv_v()
        r = p.pack_resistance_ohm
        self._current_a = 2.0 * dc / (e + math.sqrt(max(0.0, e * e - 4.0 * r * dc)))
        # Lumped thermal mass heated by I^2 R, cooled towards ambient (exact for this step).
        loss_w = self._current_a**2 * r
        steady_c = p.ambient_temp_c + loss_w / self._conductance
        decay = -math.expm1(-dt_s * self._conductance / self._heat_capacity)
        self._temp_c += (steady_c - self._temp_c) * decay
        self.state = self._refresh()
        return self.state

    def _pack_ocv_v(self) -> float:
        return self._p.cells_in_series * cell_ocv_v(self._soc)

    def _refresh(self) -> NodeState:
        p = self._p
        current = self._current_a
        voltage = self._pack_ocv_v() - current * p.pack_resistance_ohm
        r_cell = p.pack_resistance_ohm / p.cells_in_series
        cell_min = cell_ocv_v(self._soc + self._cell_soc_low) - current * r_cell
        cell_max = cell_ocv_v(self._soc + self._cell_soc_high) - current * r_cell
        if self._forced_cell_min_v is not None:
            cell_min = min(cell_min, self._forced_cell_min_v)
        rated_a = max(1.0, p.node_max_charge_current_a, p.node_max_discharge_current_a)
        t_min = self._temp_c - self._sensor_low_k
        t_max = self._temp_c + self._sensor_high_k + _HOTSPOT_K * (current / rated_a) ** 2
        warnings = self._update_flags(cell_min, cell_max, t_min, t_max)
        ccl, dcl = self._current_limits(t_min, t_max)
        e, r = self._pack_ocv_v(), p.pack_resistance_ohm
        # AC power at the current limit: DC power at the terminal voltage, through the inverter.
        max_charge = min(p.node_max_charge_w, ccl * (e + ccl * r) / self._eta)
        max_discharge = min(p.node_max_discharge_w, max(0.0, dcl * (e - dcl * r)) * self._eta)
        return NodeState(
            node=self._node,
            soc_pct=self._soc,
            soh_pct=self._soh,
            voltage_v=voltage,
            current_a=current,
            dc_power_w=voltage * current,
            ac_power_w=self._ac_w,
            setpoint_w=self._setpoint_w,
            cell_voltage_min_v=cell_min,
            cell_voltage_max_v=max(cell_min, cell_max),
            temperature_min_c=t_min,
            temperature_max_c=t_max,
            charge_current_limit_a=ccl,
            discharge_current_limit_a=dcl,
            charge_voltage_limit_v=CELL_CHARGE_LIMIT_V * p.cells_in_series,
            discharge_voltage_limit_v=CELL_DISCHARGE_LIMIT_V * p.cells_in_series,
            max_charge_w=max_charge,
            max_discharge_w=max_discharge,
            alarm_flags=self._alarms,
            warning_flags=warnings,
        )

    def _update_flags(
        self, cell_min: float, cell_max: float, t_min: float, t_max: float
    ) -> BmsFlag:
        """Update the latched alarms and return the warnings (every alarm is also a warning)."""
        a = self._alarms
        a = _latch(
            a, BmsFlag.CELL_UNDERVOLTAGE, cell_min < CELL_UV_ALARM_V, cell_min > CELL_UV_RELEASE_V
        )
        a = _latch(
            a, BmsFlag.CELL_OVERVOLTAGE, cell_max > CELL_OV_ALARM_V, cell_max < CELL_OV_RELEASE_V
        )
        a = _latch(a, BmsFlag.OVERTEMPERATURE, t_max > OT_ALARM_C, t_max < OT_RELEASE_C)
        a = _latch(a, BmsFlag.UNDERTEMPERATURE, t_min < UT_ALARM_C, t_min > UT_RELEASE_C)
        self._alarms = a
        warnings = a
        if cell_min < CELL_UV_WARNING_V:
            warnings |= BmsFlag.CELL_UNDERVOLTAGE
        if cell_max > CELL_OV_WARNING_V:
            warnings |= BmsFlag.CELL_OVERVOLTAGE
        if t_max > OT_WARNING_C:
            warnings |= BmsFlag.OVERTEMPERATURE
        if t_min < UT_WARNING_C:
            warnings |= BmsFlag.UNDERTEMPERATURE
        return warnings

    def _current_limits(self, t_min: float, t_max: float) -> tuple[float, float]:
        """Charge and discharge current limits (A, >= 0), as the BMS would put them in 0x351."""
        p, soc, alarms = self._p, self._soc, self._alarms
        temperature = BmsFlag.OVERTEMPERATURE | BmsFlag.UNDERTEMPERATURE
        charge = 0.0
        if soc < 100.0 and not alarms & (temperature | BmsFlag.CELL_OVERVOLTAGE):
            taper = min(1.0, max(_TAPER_FLOOR, (100.0 - soc) / _TAPER_PCT))
            charge = p.node_max_charge_current_a * min(
                taper, _charge_temperature_factor(t_min, t_max)
            )
        discharge = 0.0
        if soc > 0.0 and not alarms & (temperature | BmsFlag.CELL_UNDERVOLTAGE):
            taper = min(1.0, max(_TAPER_FLOOR, soc / _TAPER_PCT))
            discharge = p.node_max_discharge_current_a * min(
                taper, _discharge_temperature_factor(t_min, t_max)
            )
        return charge, discharge
