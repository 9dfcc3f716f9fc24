"""Builders for the control tests: a site controller and its inputs from plain numbers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from appliance.config.schema import BatteryLimits, ControlConfig, SurplusLoadConfig
from appliance.control.command_types import CommandRequest, CommandResult
from appliance.control.modes import State
from appliance.control.site import SiteController
from appliance.control.site_io import LoadInputs, NodeInputs, SiteInputs

NODE_W = 5000.0
LIMITS = BatteryLimits(max_charge_w=NODE_W, max_discharge_w=NODE_W)


def controller(
    nodes: int = 1,
    *,
    limits: BatteryLimits = LIMITS,
    loads: Sequence[SurplusLoadConfig] = (),
    config: ControlConfig | None = None,
    **overrides: object,
) -> SiteController:
    cfg = config or ControlConfig(initial_mode="maxself")
    return SiteController.from_config(cfg, [limits] * nodes, loads, **overrides)


def node(
    number: int = 1,
    *,
    power_w: float | None = 0.0,
    soc_pct: float | None = 50.0,
    cell_v: float | None = 3.3,
    online: bool = True,
    bms_fresh: bool = True,
    max_w: float = NODE_W,
    bms_alarm: bool = False,
    temperature_c: float | None = 25.0,
) -> NodeInputs:
    return NodeInputs(
        node=number,
        online=online,
        soc_pct=soc_pct,
        cell_voltage_min_v=cell_v,
        bms_fresh=bms_fresh,
        inverter_power_w=power_w,
        max_charge_w=max_w,
        max_discharge_w=max_w,
        bms_alarm=bms_alarm,
        temperature_max_c=temperature_c,
    )


def inputs(
    now_s: float,
    grid_w: float | None,
    nodes: Sequence[NodeInputs] | None = None,
    *,
    new: bool = True,
    volts: tuple[float, float, float] | None = (230.0, 230.0, 230.0),
    heartbeat_age_s: float | None = None,
    loads: Sequence[LoadInputs] = (),
) -> SiteInputs:
    return SiteInputs(
        now_s=now_s,
        grid_power_w=grid_w,
        grid_sample_new=new and grid_w is not None,
        phase_voltages_v=volts,
        pv_power_w=None,
        nodes=tuple(nodes) if nodes is not None else (node(),),
        heartbeat_age_s=heartbeat_age_s,
        loads=tuple(loads),
    )


def following(nodes: Sequence[NodeInputs], setpoints: Sequence[float]) -> tuple[NodeInputs, ...]:
    """The nodes after their inverters applied the last setpoints exactly."""
    return tuple(replace(n, inverter_power_w=sp) for n, sp in zip(nodes, setpoints, strict=True))


def send(
    ctrl: SiteController,
    command: str,
    value: float | bool | None,
    now_s: float = 0.0,
    point_id: str | None = None,
    source: str = "opcua:operator",
) -> CommandResult:
    return ctrl.command(CommandRequest(1, source, command, point_id, value), now_s)


def current_state(ctrl: SiteController) -> State:
    """The controller's state (a call, so that type checkers do not pin it between steps)."""
    return ctrl.state
