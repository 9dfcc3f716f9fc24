"""Level 1 failsafes: the rules closest to the hardware, applied on every cycle in every state.

* battery safety floor on the lowest cell voltage (latched until the cells are back above the
  safe voltage), which forces emergency recharge;
* energy-depletion guard: no discharge at or below the reserved SoC;
* BMS limits (CAN 0x351 current limits, already in the node's max power) and BMS data stale
  means no discharge;
* sensor loss: the command is multiplied by 0.75 every cycle down to 0 W, never held;
* hardware power ceiling: every command is clamped to what the node may do now.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from appliance.config.schema import BatteryLimits
from appliance.control.site_io import NodeInputs


@dataclass(frozen=True, slots=True)
class NodeCapability:
    """What one node may be asked for this cycle, after every guard (W, both >= 0)."""

    node: int
    active: bool  # online and usable: counts as an active inverter
    soc_pct: float | None
    charge_w: float
    discharge_w: float
    reserve_soc_pct: float
    max_soc_pct: float
    blocked: tuple[str, ...] = ()  # why power is held back (for logs and tests)

    def clamp(self, setpoint_w: float) -> float:
        """The hardware ceiling: the setpoint limited to this node's allowed range."""
        return min(max(setpoint_w, -self.charge_w), self.discharge_w)


def node_capability(
    node: NodeInputs,
    limits: BatteryLimits,
    *,
    reserve_soc_pct: float,
    floor_latched: bool,
    over_temperature: bool,
) -> NodeCapability:
    """Apply the guards to one node's reported limits."""
    reserve = max(reserve_soc_pct, limits.min_soc_pct)
    charge = min(max(0.0, node.max_charge_w), limits.max_charge_w)
    discharge = min(max(0.0, node.max_discharge_w), limits.max_discharge_w)
    blocked: list[str] = []
    active = node.online and not node.bms_alarm and not over_temperature
    if not node.online:
        blocked.append("offline")
    if node.bms_alarm:
        blocked.append("bms_alarm")
    if over_temperature:
        blocked.append("over_temperature")
    if not active:
        charge = discharge = 0.0
    if not node.bms_fresh:
        blocked.append("bms_stale")
        discharge = 0.0
    if node.soc_pct is None or node.soc_pct <= reserve:
        blocked.append("reserve_soc")
        discharge = 0.0
    if node.soc_pct is not None and node.soc_pct >= limits.max_soc_pct:
        blocked.append("full")
        charge = 0.0
    if floor_latched:
        blocked.append("safety_floor")
        discharge = 0.0
    return NodeCapability(
        node=node.node,
        active=active,
        soc_pct=node.soc_pct,
        charge_w=charge,
        discharge_w=discharge,
        reserve_soc_pct=reserve,
        max_soc_pct=limits.max_soc_pct,
        blocked=tuple(blocked),
    )


class SafetyFloor:
    """Per-node latch on the lowest cell voltage.

    Trips at or below ``min_cell_voltage_v + margin`` and stays tripped until every cell is
    back at or above ``safe_cell_voltage_v``: the gap is the hysteresis that keeps the
    emergency recharge going long enough to matter. A missing reading changes nothing.
    """

    def __init__(self, limits: Sequence[BatteryLimits], margin_v: float) -> None:
        self._limits = tuple(limits)
        self.margin_v = margin_v
        self.latched = [False] * len(self._limits)

    def floor_v(self, index: int) -> float:
        return self._limits[index].min_cell_voltage_v + self.margin_v

    def update(self, index: int, cell_voltage_min_v: float | None) -> bool:
        if cell_voltage_min_v is not None and math.isfinite(cell_voltage_min_v):
            if cell_voltage_min_v <= self.floor_v(index):
                self.latched[index] = True
            elif cell_voltage_min_v >= self._limits[index].safe_cell_voltage_v:
                self.latched[index] = False
        return self.latched[index]

    @property
    def any_latched(self) -> bool:
        return any(self.latched)


def sensor_loss_ramp(
    previous_w: Sequence[float], factor: float, zero_w: float
) -> tuple[float, ...]:
    """The next commands while the grid reading is missing: each x factor, 0 below `zero_w`."""
    out: list[float] = []
    for value in previous_w:
        nxt = value * factor
        out.append(0.0 if abs(nxt) < zero_w else nxt)
    return tuple(out)


def emergency_recharge_w(cap: NodeCapability, limits: BatteryLimits, fraction: float) -> float:
    """Steady recharge of a node at the floor: a fixed share of its rating, within the BMS limit."""
    return -min(cap.charge_w, fraction * limits.max_charge_w)


def enforce(setpoints_w: Sequence[float], caps: Sequence[NodeCapability]) -> tuple[float, ...]:
    """The last word before the inverters: each setpoint within its node's allowed range."""
    return tuple(cap.clamp(sp) for sp, cap in zip(setpoints_w, caps, strict=True))
