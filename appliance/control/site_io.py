"""What the control step takes in and gives out: plain frozen dataclasses, units in the names.

The runtime builds `SiteInputs` from a store snapshot every cycle (stale or missing values
arrive as None) and applies `ControlOutputs` as they are: the node setpoints have already been
through every failsafe and clamp. Sign convention: grid power > 0 is import; inverter and
battery power > 0 is discharge.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from appliance.config.schema import BatteryLimits

PointValue = float | int | bool


@dataclass(frozen=True, slots=True)
class NodeInputs:
    """One battery node (BMS + inverter) as seen this cycle."""

    node: int  # 1-based, in the order of devices.battery_nodes
    online: bool  # inverter answering and BMS fresh: the node takes part in the cluster
    soc_pct: float | None
    cell_voltage_min_v: float | None
    bms_fresh: bool
    inverter_power_w: float | None  # measured AC power, > 0 discharge
    #: Power the node may take / give now: the least of the configured limit, the BMS current
    #: limit x pack voltage and the inverter's capability (see `node_power_limits`).
    max_charge_w: float
    max_discharge_w: float
    #: A BMS protection alarm is active (CAN 0x359 protection flags): a critical error.
    bms_alarm: bool = False
    temperature_max_c: float | None = None

    @classmethod
    def from_raw(
        cls,
        node: int,
        limits: BatteryLimits,
        *,
        inverter_answering: bool,
        bms_fresh: bool,
        soc_pct: float | None,
        cell_voltage_min_v: float | None,
        inverter_power_w: float | None,
        pack_voltage_v: float | None,
        charge_current_limit_a: float | None,
        discharge_current_limit_a: float | None,
        inverter_max_charge_w: float | None = None,
        inverter_max_discharge_w: float | None = None,
        bms_alarm: bool = False,
        temperature_max_c: float | None = None,
    ) -> NodeInputs:
        """Build a node from raw readings; the power limits come from `node_power_limits`."""
        charge_w, discharge_w = node_power_limits(
            limits,
            pack_voltage_v=pack_voltage_v if bms_fresh else None,
            charge_current_limit_a=charge_current_limit_a,
            discharge_current_limit_a=discharge_current_limit_a,
            inverter_max_charge_w=inverter_max_charge_w,
            inverter_max_discharge_w=inverter_max_discharge_w,
        )
        return cls(
            node=node,
            online=inverter_answering and bms_fresh,
            soc_pct=soc_pct,
            cell_voltage_min_v=cell_voltage_min_v,
            bms_fresh=bms_fresh,
            inverter_power_w=inverter_power_w,
            max_charge_w=charge_w,
            max_discharge_w=discharge_w,
            bms_alarm=bms_alarm,
            temperature_max_c=temperature_max_c,
        )


def node_power_limits(
    limits: BatteryLimits,
    *,
    pack_voltage_v: float | None,
    charge_current_limit_a: float | None,
    discharge_current_limit_a: float | None,
    inverter_max_charge_w: float | None = None,
    inverter_max_discharge_w: float | None = None,
) -> tuple[float, float]:
    """(max charge W, max discharge W) a node may be asked for now.

    The least of the configured limit, the BMS current limit (CAN 0x351) times the pack
    voltage, and the inverter's reported capability (None: not reported, not limiting). A BMS
    limit that cannot be computed (no voltage or no current limit) allows nothing: without
    the BMS's permission the battery is not driven.
    """

    def bms_w(current_a: float | None) -> float:
        if pack_voltage_v is None or current_a is None:
            return 0.0
        return max(0.0, current_a) * max(0.0, pack_voltage_v)

    def least(config_w: float, bms_limit_w: float, inverter_w: float | None) -> float:
        values = [config_w, bms_limit_w]
        if inverter_w is not None:
            values.append(max(0.0, inverter_w))
        return max(0.0, min(values))

    return (
        least(limits.max_charge_w, bms_w(charge_current_limit_a), inverter_max_charge_w),
        least(limits.max_discharge_w, bms_w(discharge_current_limit_a), inverter_max_discharge_w),
    )


@dataclass(frozen=True, slots=True)
class LoadInputs:
    """One surplus load as seen this cycle (index: 1-based, order of devices.surplus_loads)."""

    index: int
    online: bool = True  # the relay / PWM module answers
    #: Heater temperature; None or an implausible value means a broken or shorted sensor.
    temperature_c: float | None = None
    power_w: float | None = None  # measured, if the load has a meter


@dataclass(frozen=True, slots=True)
class SiteInputs:
    now_s: float  # monotonic seconds
    grid_power_w: float | None  # None: missing or older than the meter's staleness limit
    grid_sample_new: bool  # a new meter sample arrived since the previous cycle
    phase_voltages_v: tuple[float, float, float] | None
    pv_power_w: float | None
    nodes: tuple[NodeInputs, ...]
    heartbeat_age_s: float | None  # None: no heartbeat ever
    loads: tuple[LoadInputs, ...] = ()
    #: d(grid power)/dt from the store's history (W/s), for the derivative term.
    grid_rate_w_per_s: float | None = None


@dataclass(frozen=True, slots=True)
class LoadCommand:
    """What to do with one surplus load: relay states per configured channel, heater level."""

    index: int
    name: str
    relays: tuple[bool, ...]  # one per entry of the load's `channels`
    duty_pct: float  # PWM heater level 0..100; 0 or 100 x stages for relay loads
    power_w: float  # expected draw
    active: bool
    reason: str = ""  # why a load is held off (sensor fault, no power signal, ...)


@dataclass(frozen=True, slots=True)
class ClusterTelemetry:
    """Cluster status for the cloud / archive, produced every telemetry interval."""

    now_s: float
    active_power_w: float
    setpoint_w: float
    soc_pct: float | None
    mode: str
    state: str
    nodes_online: int


@dataclass(frozen=True, slots=True)
class ControlOutputs:
    node_setpoints_w: tuple[float, ...]  # > 0 discharge; after every failsafe and clamp
    point_values: dict[str, PointValue] = field(default_factory=dict)
    loads: tuple[LoadCommand, ...] = ()
    telemetry: ClusterTelemetry | None = None  # None between telemetry intervals
    state: str = "stop"
    violations: tuple[str, ...] = ()  # constraint-check findings corrected before sending
