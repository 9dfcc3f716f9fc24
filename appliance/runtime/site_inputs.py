"""Turn a store snapshot into the controller's `SiteInputs` (the process image of one cycle).

Stale or bad readings become None here, so the controller only ever sees values it may act
on. The one piece of state is which grid sample the previous cycle saw, to tell a new meter
sample from a repeated one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from appliance.config.schema import BatteryLimits
from appliance.control.site_io import LoadInputs, NodeInputs, SiteInputs
from appliance.store import DataStore, Quality, Sample

_PHASES = ("l1", "l2", "l3")


def _fresh(snapshot: Mapping[str, Sample], point_id: str) -> float | None:
    sample = snapshot.get(point_id)
    if sample is None or sample.quality is not Quality.GOOD or sample.value is None:
        return None
    return float(sample.value)


class SiteInputsBuilder:
    def __init__(self, store: DataStore, limits: Sequence[BatteryLimits], loads: int) -> None:
        self._store = store
        self._limits = list(limits)
        self._loads = loads
        self._last_grid_received: float | None = None
        ids = ["grid.active_power", "pv.active_power", "heartbeat.last_time"]
        ids += [f"grid.voltage_{phase}" for phase in _PHASES]
        for node in range(1, len(self._limits) + 1):
            ids += [
                f"battery.{node}.{name}"
                for name in (
                    "soc", "cell_voltage_min", "voltage", "charge_current_limit",
                    "discharge_current_limit", "alarm_flags", "temperature_max",
                )
            ]  # fmt: skip
            ids += [
                f"inverter.{node}.{name}"
                for name in ("active_power", "comm_ok", "max_charge_power", "max_discharge_power")
            ]
        self._ids = [pid for pid in ids if pid in store.table]

    def build(self, now_s: float, wall_time_s: float) -> SiteInputs:
        snapshot = self._store.snapshot(self._ids)
        grid = snapshot["grid.active_power"]
        grid_new = grid.quality is Quality.GOOD and grid.received != self._last_grid_received
        if grid.quality is Quality.GOOD:
            self._last_grid_received = grid.received
        voltages = [_fresh(snapshot, f"grid.voltage_{phase}") for phase in _PHASES]
        last_heartbeat = snapshot["heartbeat.last_time"].value
        return SiteInputs(
            now_s=now_s,
            grid_power_w=_fresh(snapshot, "grid.active_power"),
            grid_sample_new=grid_new,
            phase_voltages_v=(voltages[0], voltages[1], voltages[2])
            if all(v is not None for v in voltages)
            else None,  # type: ignore[arg-type]
            pv_power_w=_fresh(snapshot, "pv.active_power"),
            nodes=tuple(self._node(snapshot, n) for n in range(1, len(self._limits) + 1)),
            heartbeat_age_s=None
            if last_heartbeat is None
            else max(0.0, wall_time_s - float(last_heartbeat)),
            loads=tuple(LoadInputs(index=i) for i in range(1, self._loads + 1)),
            grid_rate_w_per_s=self._store.rate_of_change("grid.active_power", 1.0),
        )

    def _node(self, snapshot: Mapping[str, Sample], node: int) -> NodeInputs:
        battery, inverter = f"battery.{node}.", f"inverter.{node}."
        soc = _fresh(snapshot, battery + "soc")
        alarms = _fresh(snapshot, battery + "alarm_flags")
        return NodeInputs.from_raw(
            node,
            self._limits[node - 1],
            inverter_answering=_fresh(snapshot, inverter + "comm_ok") == 1.0
            and _fresh(snapshot, inverter + "active_power") is not None,
            bms_fresh=soc is not None,
            soc_pct=soc,
            cell_voltage_min_v=_fresh(snapshot, battery + "cell_voltage_min"),
            inverter_power_w=_fresh(snapshot, inverter + "active_power"),
            pack_voltage_v=_fresh(snapshot, battery + "voltage"),
            charge_current_limit_a=_fresh(snapshot, battery + "charge_current_limit"),
            discharge_current_limit_a=_fresh(snapshot, battery + "discharge_current_limit"),
            inverter_max_charge_w=_fresh(snapshot, inverter + "max_charge_power"),
            inverter_max_discharge_w=_fresh(snapshot, inverter + "max_discharge_power"),
            bms_alarm=bool(alarms),
            temperature_max_c=_fresh(snapshot, battery + "temperature_max"),
        )
