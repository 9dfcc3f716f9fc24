"""The site controller: the pure control step and the state-dependent command rules.

    controller = SiteController.from_site(site_config)
    outputs = controller.step(inputs)                  # every cycle; inputs.now_s is monotonic
    result = controller.command(request, now_s)        # after validate_command() accepted it

One step: guard each node (failsafes) -> cluster limits -> supervise the state machine ->
the control variable for the state (the profile's law, the external setpoint, the sensor-loss
ramp or the emergency recharge) -> distribute with SoC balancing -> constraint check ->
hardware clamp -> surplus loads -> published points. No I/O, no clock: time is `now_s`.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace

from appliance.config.schema import BatteryLimits, ControlConfig, SiteConfig, SurplusLoadConfig
from appliance.control.cluster import (
    ClusterLimits,
    SocBalancer,
    check_constraints,
    cluster_limits,
    distribute,
    ramp_limit,
)
from appliance.control.command_types import CommandRequest, CommandResult
from appliance.control.failsafes import (
    NodeCapability,
    SafetyFloor,
    emergency_recharge_w,
    enforce,
    node_capability,
    sensor_loss_ramp,
)
from appliance.control.interface import (
    LOOP_CONFIG,
    Rejected,
    to_event,
)
from appliance.control.laws import LawInput, make_law
from appliance.control.modes import (
    Action,
    Conditions,
    Facts,
    Mode,
    ModeMachine,
    State,
    next_trigger,
)
from appliance.control.params import ControlParams
from appliance.control.pid import PidTerms
from appliance.control.site_commands import apply_event
from appliance.control.site_io import ControlOutputs, NodeInputs, SiteInputs
from appliance.control.site_outputs import Alarm, publish
from appliance.control.supervision import (
    HeartbeatWatch,
    OffGridDetector,
    critical_reason,
    over_temperature,
)
from appliance.control.surplus import SurplusLoads

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CommandLogEntry:
    now_s: float
    source: str
    command: str
    point_id: str | None
    value: object
    accepted: bool
    reason: str


@dataclass(frozen=True, slots=True)
class CycleView:
    """What one step worked out, handed to `site_outputs.publish`."""

    inputs: SiteInputs
    caps: tuple[NodeCapability, ...]
    limits: ClusterLimits
    measured_w: float
    cv_w: float
    terms: PidTerms | None
    setpoints_w: tuple[float, ...]
    balancing: bool
    alarms: Alarm


class SiteController:
    """Levels 1 and 2 and the state machine for one site; one instance per running core."""

    def __init__(
        self,
        params: ControlParams,
        limits: Sequence[BatteryLimits],
        loads: Sequence[SurplusLoadConfig] = (),
    ) -> None:
        if not limits:
            raise ValueError("a site needs at least one battery node")
        self.params = params
        self.limits = tuple(limits)
        self.law = make_law(params, len(self.limits))
        self.floor = SafetyFloor(self.limits, params.safety_floor_margin_v)
        self.balancer = SocBalancer(params.soc_balance_start_pct, params.soc_balance_stop_pct)
        self.surplus = SurplusLoads(
            loads,
            priority=params.surplus_priority,
            relay_params=params.relays,
            heater_params=params.heater,
        )
        self.requested = Mode[params.initial_mode.upper()]
        self.remote = False  # the requested mode came from a command: heartbeat required
        self.grid_target_w = params.grid_target_w
        self.reserve_soc_pct = params.reserve_soc_pct
        self.setpoint_w: float | None = None
        #: The site maximum the grid-code ramp is a fraction of: the configured ceilings, or
        #: the sum of the nodes' limits.
        discharge_max = params.site_max_discharge_w
        charge_max = params.site_max_charge_w
        self.site_max_w = max(
            sum(lim.max_discharge_w for lim in self.limits)
            if discharge_max is None
            else discharge_max,
            sum(lim.max_charge_w for lim in self.limits) if charge_max is None else charge_max,
        )
        self.ramps_enabled = params.grid_code_ramps
        self.heartbeat = HeartbeatWatch(params.heartbeat_timeout_s)
        self.heartbeat_ok = False
        self.heartbeat_alarm = False
        self.grid = OffGridDetector(
            params.off_grid_below_v, params.grid_back_above_v, params.grid_return_delay_s
        )
        self.command_log: deque[CommandLogEntry] = deque(maxlen=200)
        self._setpoints: tuple[float, ...] = (0.0,) * len(self.limits)
        self._cv = 0.0
        self._terms: PidTerms | None = None
        self._measured_w = 0.0
        self._last_now: float | None = None
        self._grid_seen_s: float | None = None
        self.critical_reason = ""  # why the site is in a critical error, "" if it is not
        self._next_telemetry_s = -math.inf
        self.machine = ModeMachine(self)

    @classmethod
    def from_config(
        cls,
        config: ControlConfig,
        limits: Sequence[BatteryLimits],
        loads: Sequence[SurplusLoadConfig] = (),
        **overrides: object,
    ) -> SiteController:
        return cls(ControlParams.from_config(config, **overrides), limits, loads)

    @classmethod
    def from_site(cls, site: SiteConfig, **overrides: object) -> SiteController:
        """The controller of a configured site; the grid meter's staleness limit applies."""
        limits = [n.limits for n in site.devices.battery_nodes]
        overrides.setdefault("grid_stale_after_s", site.devices.grid_meter.staleness_s)
        return cls.from_config(site.control, limits, site.devices.surplus_loads, **overrides)

    @property
    def state(self) -> State:
        return self.machine.current

    # -- the step ---------------------------------------------------------------------------

    def step(self, inputs: SiteInputs) -> ControlOutputs:
        if len(inputs.nodes) != len(self.limits):
            raise ValueError(
                f"{len(inputs.nodes)} nodes in the inputs, {len(self.limits)} configured"
            )
        inputs = self._check_grid_age(inputs)
        dt = self._dt(inputs.now_s)
        caps = self._capabilities(inputs.nodes)
        self._measured_w = self._measured(inputs.nodes)
        self.law.observe(inputs.now_s, self._measured_w)
        limits = cluster_limits(
            caps,
            site_max_charge_w=self.params.site_max_charge_w,
            site_max_discharge_w=self.params.site_max_discharge_w,
            node_ratings_w=[lim.max_discharge_w for lim in self.limits],
        )
        balancing = self.balancer.update(caps)
        self._supervise(inputs, limits)
        cv, terms = self._control_variable(inputs, limits, dt)
        setpoints = self._node_setpoints(cv, caps, balancing)
        if LOOP_CONFIG[self.state].law in ("ramp_down", "recharge"):
            cv = math.fsum(setpoints)  # per-node laws: the cluster value is their sum
        setpoints, violations = check_constraints(setpoints, caps, limits)
        for problem in violations:
            _LOG.error("constraint check corrected a command: %s", problem)
        setpoints = enforce(setpoints, caps)
        self._setpoints = setpoints
        self._cv = cv
        loads = self.surplus.step(inputs.now_s, inputs.grid_power_w, self._measured_w, inputs.loads)
        view = CycleView(
            inputs,
            caps,
            limits,
            self._measured_w,
            cv,
            terms,
            setpoints,
            balancing,
            self._alarms(inputs, caps),
        )
        telemetry_due = inputs.now_s >= self._next_telemetry_s
        if telemetry_due:
            self._next_telemetry_s = inputs.now_s + self.params.telemetry_interval_s
        return publish(self, view, loads, violations, telemetry_due)

    def _check_grid_age(self, inputs: SiteInputs) -> SiteInputs:
        """Second line behind the runtime's staleness: no new meter sample for longer than
        the limit (2 s) makes the reading missing, even if a value is still passed in."""
        if inputs.grid_power_w is None:
            return inputs
        if inputs.grid_sample_new or self._grid_seen_s is None:
            self._grid_seen_s = inputs.now_s
        if inputs.now_s - self._grid_seen_s > self.params.grid_stale_after_s:
            return replace(inputs, grid_power_w=None, grid_sample_new=False)
        return inputs

    def _dt(self, now_s: float) -> float:
        nominal = self.params.loop_interval_s
        dt = nominal if self._last_now is None else now_s - self._last_now
        self._last_now = now_s
        # A late or repeated cycle must not make the integral jump.
        return min(max(dt, 0.1 * nominal), 2.0 * nominal)

    def _capabilities(self, nodes: Sequence[NodeInputs]) -> tuple[NodeCapability, ...]:
        caps = []
        for i, (node, lim) in enumerate(zip(nodes, self.limits, strict=True)):
            latched = self.floor.update(i, node.cell_voltage_min_v)
            caps.append(
                node_capability(
                    node,
                    lim,
                    reserve_soc_pct=self.reserve_soc_pct,
                    floor_latched=latched,
                    over_temperature=over_temperature(node, lim),
                )
            )
        return tuple(caps)

    def _measured(self, nodes: Sequence[NodeInputs]) -> float:
        """Cluster power; a node whose power is unknown counts with its last command."""
        return math.fsum(
            n.inverter_power_w if n.inverter_power_w is not None else sp
            for n, sp in zip(nodes, self._setpoints, strict=True)
        )

    # -- supervision ------------------------------------------------------------------------

    def _supervise(self, inputs: SiteInputs, limits: ClusterLimits) -> None:
        self.critical_reason = critical_reason(inputs.nodes, self.limits)
        self.machine.conditions = Conditions(
            inverter_active=limits.nodes_active > 0,
            critical_error=bool(self.critical_reason),
            meter_ok=inputs.grid_power_w is not None,
            has_setpoint=self.setpoint_w is not None,
        )
        off_grid = self.grid.update(inputs.now_s, inputs.phase_voltages_v)
        self._check_heartbeat(inputs.now_s, inputs.heartbeat_age_s)
        facts = Facts(self.machine.conditions, off_grid, self.floor.any_latched)
        for _ in range(4):  # e.g. emergency_recharge -> stop -> maxself in one cycle
            trigger = next_trigger(self.state, self.requested, facts)
            if trigger is None or not self.machine.fire(trigger):
                break

    def _check_heartbeat(self, now_s: float, reported_age_s: float | None) -> None:
        """In a mode a command asked for, no control signal within the timeout means stop."""
        self.heartbeat_ok = self.heartbeat.ok(now_s, reported_age_s)
        if self.heartbeat_ok or not self.remote or self.requested is Mode.STOP:
            return
        age = self.heartbeat.age(now_s, reported_age_s)
        _LOG.warning(
            "no SCADA heartbeat for %s s (timeout %.0f s): mode %s -> stop",
            "ever" if age is None else f"{age:.1f}",
            self.heartbeat.timeout_s,
            self.requested.name.lower(),
        )
        self.requested = Mode.STOP
        self.remote = False
        self.heartbeat_alarm = True
        if self.state.within(State.OPERATING):
            self.machine.fire("heartbeat_timeout")

    # -- control variable and node setpoints ------------------------------------------------

    def _control_variable(
        self, inputs: SiteInputs, limits: ClusterLimits, dt: float
    ) -> tuple[float, PidTerms | None]:
        config = LOOP_CONFIG[self.state]
        if config.law == "grid":
            low = -limits.charge_w if config.allow_charge else 0.0
            high = limits.discharge_w if config.allow_discharge else 0.0
            return self._grid_law(inputs, dt, low, high)
        if config.law == "setpoint":
            target = limits.clamp(self.setpoint_w or 0.0)
            if self.ramps_enabled:
                step_w = self.params.grid_code_ramp_per_cycle * self.site_max_w
                target = ramp_limit(self._cv, target, step_w)
            return target, None
        if config.law == "ramp_down":
            self.law.pid.unwind()  # the meter reading is missing: decay the integral
            return sum(self._setpoints), None
        return 0.0, None

    def _grid_law(
        self, inputs: SiteInputs, dt: float, low: float, high: float
    ) -> tuple[float, PidTerms | None]:
        grid = inputs.grid_power_w
        if grid is None:  # cannot happen in a grid state after supervision; hold safely
            self.law.pid.unwind()
            return min(max(self._cv, low), high), self._terms
        terms = self.law.update(
            LawInput(
                now_s=inputs.now_s,
                dt_s=dt,
                grid_w=grid,
                sample_new=inputs.grid_sample_new,
                measured_w=self._measured_w,
                target_w=self.grid_target_w,
                low_w=low,
                high_w=high,
                rate_w_per_s=inputs.grid_rate_w_per_s,
            )
        )
        if terms is None:  # no fresh sample: hold the previous control variable
            return min(max(self._cv, low), high), self._terms
        self._terms = terms
        return terms.output, terms

    def _node_setpoints(
        self, cv: float, caps: Sequence[NodeCapability], balancing: bool
    ) -> tuple[float, ...]:
        law = LOOP_CONFIG[self.state].law
        if law == "ramp_down":
            # Clamped to what each node may do now (e.g. its BMS went stale meanwhile).
            return enforce(
                sensor_loss_ramp(
                    self._setpoints, self.params.sensor_loss_factor, self.params.sensor_loss_zero_w
                ),
                caps,
            )
        if law == "recharge":
            fraction = self.params.emergency_recharge_fraction
            return tuple(
                emergency_recharge_w(cap, lim, fraction) if latched else 0.0
                for cap, lim, latched in zip(caps, self.limits, self.floor.latched, strict=True)
            )
        return distribute(cv, caps, balancing=balancing, exponent=self.params.soc_balance_exponent)

    def _alarms(self, inputs: SiteInputs, caps: Sequence[NodeCapability]) -> Alarm:
        alarms = Alarm(0)
        flags = (
            (Alarm.GRID_METER_LOST, inputs.grid_power_w is None),
            (Alarm.BMS_LOST, any(not n.bms_fresh for n in inputs.nodes)),
            (Alarm.INVERTER_LOST, any(n.inverter_power_w is None for n in inputs.nodes)),
            (Alarm.BATTERY_FLOOR, self.floor.any_latched),
            (Alarm.OFF_GRID, self.grid.off_grid),
            (Alarm.HEARTBEAT_LOST, self.heartbeat_alarm),
            (Alarm.OVER_TEMPERATURE, any("over_temperature" in c.blocked for c in caps)),
            (Alarm.BMS_ALARM, any(n.bms_alarm for n in inputs.nodes)),
        )
        for bit, on in flags:
            if on:
                alarms |= bit
        return alarms

    # -- entry and exit actions (called by the state machine) -------------------------------

    def perform(self, action: Action, state: State) -> None:
        if action is Action.HOLD_ZERO:
            self._setpoints = (0.0,) * len(self.limits)
            self._cv = 0.0
        elif action is Action.RESET_PID:
            self.law.reset(self._measured_w)
            self._cv = self._measured_w
            self._terms = None
        elif action is Action.RAMPS_OFF:
            self.ramps_enabled = False
        elif action is Action.RAMPS_AS_CONFIGURED:
            self.ramps_enabled = self.params.grid_code_ramps
        elif action is Action.RAMP_FROM_MEASURED:
            self._cv = self._measured_w
        elif action is Action.REQUEST_STOP:
            self.requested = Mode.STOP
            self.remote = False
        elif action is Action.START_SENSOR_LOSS_RAMP:
            _LOG.warning(
                "grid reading missing: ramping the commands down by x%.2f per cycle",
                self.params.sensor_loss_factor,
            )
        elif action is Action.START_RECHARGE:
            _LOG.warning("battery safety floor reached: emergency recharge from the grid")

    # -- commands ---------------------------------------------------------------------------

    def command(self, request: CommandRequest, now_s: float) -> CommandResult:
        """Apply a command already validated against its point; check the state rules."""
        try:
            reason = apply_event(self, to_event(request), now_s)
            result = CommandResult.accept(request, reason)
        except Rejected as refused:
            result = refused.result(request)
        self.command_log.append(
            CommandLogEntry(
                now_s,
                request.source,
                request.command,
                request.point_id,
                request.value,
                result.accepted,
                result.reason,
            )
        )
        _LOG.info(
            "command %s = %r from %s: %s (%s)",
            request.command,
            request.value,
            request.source,
            "accepted"
            if result.accepted
            else f"rejected {result.code.value if result.code else ''}",
            result.reason,
        )
        return result
