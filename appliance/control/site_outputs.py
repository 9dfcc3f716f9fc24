"""The step's published values: points of models/points.yaml, alarms, telemetry."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import TYPE_CHECKING

from appliance.control.modes import STATE_NUMBER
from appliance.control.site_io import ClusterTelemetry, ControlOutputs, LoadCommand, PointValue

if TYPE_CHECKING:
    from appliance.control.site import CycleView, SiteController


class Alarm(enum.IntFlag):
    """Bits of the point alarms.active (see its description in models/points.yaml)."""

    GRID_METER_LOST = 1 << 0
    BMS_LOST = 1 << 1
    INVERTER_LOST = 1 << 2
    BATTERY_FLOOR = 1 << 3
    OFF_GRID = 1 << 4
    HEARTBEAT_LOST = 1 << 5
    OVER_TEMPERATURE = 1 << 6
    BMS_ALARM = 1 << 7


def publish(
    controller: SiteController,
    view: CycleView,
    loads: Sequence[LoadCommand],
    violations: Sequence[str],
    telemetry_due: bool,
) -> ControlOutputs:
    state = controller.state
    values: dict[str, PointValue] = {
        "controller.mode": int(controller.requested),
        "controller.state": STATE_NUMBER.get(state, 0),
        "controller.grid_target": controller.grid_target_w,
        "controller.reserve_soc": controller.reserve_soc_pct,
        "controller.output": view.cv_w,
        "controller.saturated": bool(view.terms is not None and view.terms.saturated),
        "heartbeat.ok": controller.heartbeat_ok,
    }
    values |= _pid_points(view)
    values |= _cluster_points(view)
    values |= _alarm_points(view.alarms)
    for load in loads:
        prefix = f"surplus.{load.index}"
        values[f"{prefix}.mode"] = int(controller.surplus.modes[load.index])
        values[f"{prefix}.active"] = load.active
        values[f"{prefix}.power"] = load.power_w
        values[f"{prefix}.duty"] = load.duty_pct
    return ControlOutputs(
        node_setpoints_w=view.setpoints_w,
        point_values=values,
        loads=tuple(loads),
        telemetry=_telemetry(controller, view) if telemetry_due else None,
        state=state.leaf,
        violations=tuple(violations),
    )


def _pid_points(view: CycleView) -> dict[str, PointValue]:
    terms = view.terms
    values: dict[str, PointValue] = {
        # + 0.0 turns a -0.0 (a zero gain times a negative error) into 0.0 for display.
        "controller.p_term": terms.p + 0.0 if terms else 0.0,
        "controller.i_term": terms.i + 0.0 if terms else 0.0,
        "controller.d_term": terms.d + 0.0 if terms else 0.0,
    }
    grid = view.inputs.grid_power_w
    if terms is not None:
        values["controller.error"] = terms.error
    elif grid is not None:
        values["controller.error"] = 0.0
    return values


def _cluster_points(view: CycleView) -> dict[str, PointValue]:
    socs = [c.soc_pct for c in view.caps if c.active and c.soc_pct is not None]
    values: dict[str, PointValue] = {
        "cluster.active_power": view.measured_w,
        "cluster.setpoint": sum(view.setpoints_w),
        "cluster.charge_limit": view.limits.charge_w,
        "cluster.discharge_limit": view.limits.discharge_w,
        "cluster.nodes_online": view.limits.nodes_active,
        "cluster.balancing": view.balancing,
    }
    if socs:
        values["cluster.soc"] = sum(socs) / len(socs)
        values["cluster.soc_min"] = min(socs)
        values["cluster.soc_max"] = max(socs)
    return values


def _alarm_points(alarms: Alarm) -> dict[str, PointValue]:
    return {
        "alarms.active": int(alarms),
        "alarms.count": bin(int(alarms)).count("1"),
        "alarms.meter_lost": Alarm.GRID_METER_LOST in alarms,
        "alarms.battery_floor": Alarm.BATTERY_FLOOR in alarms,
        "alarms.off_grid": Alarm.OFF_GRID in alarms,
        "alarms.heartbeat_lost": Alarm.HEARTBEAT_LOST in alarms,
    }


def _telemetry(controller: SiteController, view: CycleView) -> ClusterTelemetry:
    socs = [c.soc_pct for c in view.caps if c.active and c.soc_pct is not None]
    return ClusterTelemetry(
        now_s=view.inputs.now_s,
        active_power_w=view.measured_w,
        setpoint_w=sum(view.setpoints_w),
        soc_pct=sum(socs) / len(socs) if socs else None,
        mode=controller.requested.name.lower(),
        state=controller.state.leaf,
        nodes_online=view.limits.nodes_active,
    )
