"""The seeded plant model of the simulated site: PV, house load, battery nodes, grid meter.

Pure physics with time passed in: no wall clock, no asyncio, no I/O. The simulated devices
(Modbus meters, CAN BMSs, inverters) read a `PlantState` and write setpoints back; the
plant itself knows nothing about protocols.

Conventions: SI units (energy registers in kWh, as meters show them); grid power > 0 =
import from the grid; battery and inverter power and current > 0 = discharge, < 0 = charging;
PV power >= 0. Every random draw comes from `random.Random` streams derived from
`PlantParams.seed`, one per sub-model, so two plants with the same params and the same
setpoints and steps produce identical states, and adding a node does not change the weather.

The balance is exact by construction: grid_w = load_w - pv_w - sum of the inverters' AC
power, and the per-phase grid powers add up to it. PV and the battery inverters feed the
three phases evenly; the house load is unbalanced.

Sub-models: `plant_params` (PlantParams), `plant_pv` (clear sky x clouds), `plant_load`
(base load + appliances), `plant_battery` (pack, BMS, inverter lag), `plant_grid` (bus
voltage, frequency, meter readings and energy registers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from appliance.simulation.plant_battery import BatteryNode, BmsFlag, NodeState, cell_ocv_v
from appliance.simulation.plant_grid import AcBus, EnergyRegister, GridValues, meter_values
from appliance.simulation.plant_load import Household
from appliance.simulation.plant_params import MAX_BATTERY_NODES, PlantParams
from appliance.simulation.plant_pv import PvArray

__all__ = [
    "MAX_BATTERY_NODES",
    "BmsFlag",
    "GridValues",
    "NodeState",
    "Plant",
    "PlantParams",
    "PlantState",
    "cell_ocv_v",
]


@dataclass(frozen=True, slots=True)
class PlantState:
    """Everything measurable on the site after a step."""

    time_s: float  # simulation time since start
    time_of_day_h: float  # local time of day, 0..24
    pv_w: float  # PV production, >= 0
    load_w: float  # house consumption, >= 0
    grid_w: float  # > 0 import from the grid
    grid: GridValues  # grid meter at the connection point
    pv_meter: GridValues  # PV production meter; its active power > 0 = production
    nodes: tuple[NodeState, ...]  # node n is nodes[n - 1]

    @property
    def battery_ac_w(self) -> float:
        """Sum of the inverters' measured AC power, > 0 discharge."""
        return math.fsum(node.ac_power_w for node in self.nodes)


class Plant:
    """The simulated site. Construct, set setpoints, call `step(dt_s)` with the time passed."""

    def __init__(self, params: PlantParams | None = None) -> None:
        self._params = params if params is not None else PlantParams()
        p = self._params
        self._time_s = 0.0
        self._pv = PvArray(p)
        self._load = Household(p)
        self._nodes = tuple(BatteryNode(n, p) for n in range(1, p.battery_nodes + 1))
        self._bus = AcBus(p)
        self._grid_register = EnergyRegister()
        self._pv_register = EnergyRegister()
        self._state = self._compose(0.0)

    @property
    def params(self) -> PlantParams:
        return self._params

    @property
    def time_s(self) -> float:
        """Simulation time since start, in seconds."""
        return self._time_s

    @property
    def state(self) -> PlantState:
        """The state after the last step (or at time 0)."""
        return self._state

    def set_inverter_setpoint(self, node: int, watts: float) -> None:
        """Command node `node` (1..N) to `watts` AC, > 0 discharge; clamped by the inverter."""
        if not math.isfinite(watts):
            raise ValueError(f"setpoint must be finite, got {watts!r}")
        self._node(node).set_setpoint(watts)

    def step(self, dt_s: float) -> PlantState:
        """Advance the plant by `dt_s` seconds (> 0) and return the new state."""
        if not (math.isfinite(dt_s) and dt_s > 0.0):
            raise ValueError(f"dt_s must be finite and > 0, got {dt_s!r}")
        self._time_s += dt_s
        for node in self._nodes:
            node.advance(dt_s)
        self._bus.advance(dt_s)
        self._state = self._compose(dt_s)
        return self._state

    # Fault injection for tests: each takes effect from the next step on.

    def set_load_offset_w(self, watts: float) -> None:
        """Add a constant load step of `watts` (split over the phases); 0 removes it."""
        if not math.isfinite(watts):
            raise ValueError(f"load offset must be finite, got {watts!r}")
        self._load.set_offset_w(watts)

    def set_switched_load_w(self, name: str, watts: float) -> None:
        """Switch a named load (e.g. a surplus heater behind a relay) to `watts`; 0 is off."""
        if not math.isfinite(watts) or watts < 0:
            raise ValueError(f"switched load must be finite and >= 0, got {watts!r}")
        self._load.set_switched_w(name, watts)

    def force_cell_voltage_low(self, node: int, volts: float | None = 2.6) -> None:
        """Make node `node`'s lowest cell read at most `volts`; None removes the fault.

        The BMS reacts as to a real weak cell: undervoltage alarm (latched until the cell
        reads above the release voltage again) and no discharge while it is latched.
        """
        self._node(node).force_cell_voltage_low(volts)

    def set_node_temperature_c(self, node: int, celsius: float) -> None:
        """Put node `node`'s pack at `celsius` (e.g. to test derating); it then cools normally."""
        self._node(node).set_temperature_c(celsius)

    def clear_faults(self) -> None:
        """Remove the load offset and every forced cell voltage."""
        self._load.set_offset_w(0.0)
        for node in self._nodes:
            node.force_cell_voltage_low(None)

    def _node(self, node: int) -> BatteryNode:
        if not 1 <= node <= len(self._nodes):
            raise ValueError(f"node must be 1..{len(self._nodes)}, got {node!r}")
        return self._nodes[node - 1]

    def _compose(self, dt_s: float) -> PlantState:
        p, t = self._params, self._time_s
        pv_w = self._pv.power_w(t)
        load_p, load_q = self._load.advance(t, dt_s)
        battery_w = math.fsum(node.ac_power_w for node in self._nodes)
        load_w = math.fsum(load_p)
        grid_w = load_w - pv_w - battery_w
        fed_per_phase = (pv_w + battery_w) / 3.0
        grid_p = (load_p[0] - fed_per_phase, load_p[1] - fed_per_phase, load_p[2] - fed_per_phase)
        voltages = self._bus.voltages_v(grid_p)
        if dt_s > 0.0:
            self._grid_register.add(grid_w, dt_s)
            self._pv_register.add(pv_w, dt_s)
        pv_phase = pv_w / 3.0
        return PlantState(
            time_s=t,
            time_of_day_h=(p.start_hour + t / 3600.0) % 24.0,
            pv_w=pv_w,
            load_w=load_w,
            grid_w=grid_w,
            # PV and battery inverters run at unity power factor: the house sets the reactive power.
            grid=meter_values(self._bus, voltages, grid_p, load_q, grid_w, self._grid_register),
            pv_meter=meter_values(
                self._bus,
                voltages,
                (pv_phase, pv_phase, pv_phase),
                (0.0, 0.0, 0.0),
                pv_w,
                self._pv_register,
            ),
            nodes=tuple(node.state for node in self._nodes),
        )
