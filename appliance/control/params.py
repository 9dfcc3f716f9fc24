"""Control parameters: the site configuration's `control` section plus tuned defaults.

`ControlParams.from_config` copies every key `ControlConfig` has; the fields below the marker
have no configuration key yet and keep their defaults (the README lists the keys to add).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from appliance.config.schema import ControlConfig

Profile = Literal["balancing", "spec"]
InitialMode = Literal["stop", "activate", "maxself", "chargeonly"]
SurplusPriority = Literal["battery", "loads"]

NOMINAL_VOLTAGE_V = 230.0


@dataclass(frozen=True, kw_only=True)
class HeaterParams:
    """PI heater with PWM-style output (the PV surplus controller of seed 002)."""

    kp: float = 0.5  # output fraction per unit of error (error = surplus / rated power)
    tn_s: float = 20.0  # reset time: I += dt * error / Tn
    max_temperature_c: float = 60.0
    derate_band_c: float = 4.0  # full output up to this far below the maximum
    derate_pct_per_c: float = 25.0  # then this much less per degree
    #: A reading outside this range is a broken (cold end) or shorted (hot end) sensor.
    sensor_min_c: float = -30.0
    sensor_max_c: float = 120.0
    signal_timeout_s: float = 10.0  # no power signal for this long: output off
    standby_cut_s: float = (
        600.0  # the power controller's supply relay opens after this long without surplus
    )


@dataclass(frozen=True, kw_only=True)
class RelayParams:
    """Staged relay loads: hysteresis around the stage power and a settling pause."""

    on_margin_w: float = 100.0  # switch a stage on when the surplus exceeds its power by this
    off_margin_w: float = 100.0  # switch a stage off when importing more than this
    settle_s: float = 5.0  # after a switching action, wait this long before the next one
    signal_timeout_s: float = 10.0  # without a power signal for this long, stages go off


@dataclass(frozen=True, kw_only=True)
class ControlParams:
    profile: Profile = "balancing"
    loop_interval_s: float = 0.5
    grid_target_w: float = 0.0
    kp: float = 0.1
    integral_decay: float = 0.995
    anti_windup: float = 0.02
    grid_code_ramp_per_cycle: float = 0.00167
    sensor_loss_factor: float = 0.75
    heartbeat_timeout_s: float = 20.0
    reserve_soc_pct: float = 10.0
    site_max_charge_w: float | None = None
    site_max_discharge_w: float | None = None
    soc_balance_start_pct: float = 5.0
    soc_balance_stop_pct: float = 2.0
    off_grid_voltage_fraction: float = 0.6
    initial_mode: InitialMode = "stop"
    # ---- not (yet) in ControlConfig: defaults --------------------------------------------
    #: spec profile: the integral is also multiplied by this on multi-device sites.
    sync_factor: float = 1.0
    #: balancing profile: gain on the grid error, and a slow integral trim for small errors
    #: (measurement offsets between meter and inverters), active only within the band.
    balancing_gain: float = 1.0
    balancing_ki_per_s: float = 0.2
    balancing_integral_band_w: float = 100.0
    kd_s: float = 0.0
    #: The meter's averaging window; the inverters' power is averaged over the same span.
    meter_window_s: float = 0.5
    #: A new sample with exactly the previous value is a held register, not a new measurement.
    repeated_value_is_held: bool = True
    grid_code_ramps: bool = False
    sensor_loss_zero_w: float = 10.0  # the ramp snaps to 0 W below this
    #: No new meter sample for longer than this makes the reading missing (the runtime's
    #: staleness limit is the first line; this catches a held value passed in regardless).
    grid_stale_after_s: float = 2.0
    safety_floor_margin_v: float = 0.05  # floor = min_cell_voltage_v + margin
    emergency_recharge_fraction: float = 0.2  # of the node's max_charge_w
    soc_balance_exponent: float = 2.0  # how strongly SoC headroom shapes the split
    off_grid_return_fraction: float = 0.9  # all phases above this x 230 V ...
    grid_return_delay_s: float = 10.0  # ... for this long: the grid is back
    telemetry_interval_s: float = 10.0
    surplus_priority: SurplusPriority = "battery"
    heater: HeaterParams = field(default_factory=HeaterParams)
    relays: RelayParams = field(default_factory=RelayParams)

    @classmethod
    def from_config(cls, config: ControlConfig, **overrides: object) -> ControlParams:
        """Parameters from the site's `control` section; `overrides` set the extra fields."""
        names = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, object] = {
            f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name in names
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    @property
    def off_grid_below_v(self) -> float:
        return self.off_grid_voltage_fraction * NOMINAL_VOLTAGE_V

    @property
    def grid_back_above_v(self) -> float:
        return self.off_grid_return_fraction * NOMINAL_VOLTAGE_V
