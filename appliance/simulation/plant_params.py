"""Parameters of the simulated site: one frozen record, validated once, shared by all sub-models.

`PlantParams` lives in its own module so the sub-models (`plant_pv`, `plant_load`,
`plant_battery`, `plant_grid`) can read it without importing `plant`, which imports them.
`from_mapping` turns a parsed scenario file (e.g. `models/plant/default.yaml`) into params;
reading the file is the caller's business, this module does no I/O.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

MAX_BATTERY_NODES = 64


@dataclass(frozen=True, slots=True)
class PlantParams:
    """Everything that shapes one simulated site. Units are SI unless the name says otherwise."""

    seed: int = 1
    battery_nodes: int = 2
    # Local time of day at simulation time 0, in hours; 12.0 so a fresh `make run` shows PV.
    start_hour: float = 12.0

    # PV: clear-sky bell between sunrise and sunset, times a seeded cloud process.
    pv_peak_w: float = 8000.0
    sunrise_hour: float = 6.0
    sunset_hour: float = 20.0
    cloud_transients: bool = True
    cloud_mean_gap_s: float = 600.0  # mean clear time between two clouds

    # Household load: base load plus seeded appliance events.
    base_load_w: float = 350.0
    appliance_events: bool = True

    # Battery nodes: one BMS + one inverter each.
    node_capacity_wh: float = 10240.0
    node_max_charge_w: float = 5000.0  # inverter AC rating, charging
    node_max_discharge_w: float = 5000.0  # inverter AC rating, discharging
    node_max_charge_current_a: float = 120.0  # BMS rating before tapering
    node_max_discharge_current_a: float = 120.0
    inverter_time_constant_s: float = 0.8
    initial_soc_pct: float = 60.0
    # Each node starts at initial_soc_pct + uniform(-spread, +spread), so balancing has work.
    initial_soc_spread_pct: float = 3.0
    soh_pct: float = 98.0
    soh_spread_pct: float = 1.5
    cells_in_series: int = 16  # LFP
    cell_nominal_v: float = 3.2
    pack_resistance_ohm: float = 0.02
    round_trip_efficiency: float = 0.92  # AC to AC, split evenly over charge and discharge
    ambient_temp_c: float = 25.0

    # Grid connection.
    grid_nominal_v: float = 230.0  # line to neutral
    grid_nominal_hz: float = 50.0
    # Per phase; makes the voltage sag under import. Lower it for sites with many nodes.
    grid_impedance_ohm: float = 0.1

    def __post_init__(self) -> None:
        problems = list(_problems(self))
        if problems:
            raise ValueError("invalid PlantParams: " + "; ".join(problems))

    @property
    def nominal_pack_v(self) -> float:
        return self.cells_in_series * self.cell_nominal_v

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> PlantParams:
        """Build params from a parsed scenario file; unknown keys and wrong types are errors.

        Missing keys keep their defaults, so a scenario names only what it changes.
        Raises ValueError naming the offending key.
        """
        kinds = {f.name: f.type for f in dataclasses.fields(cls)}
        values: dict[str, object] = {}
        for key, value in data.items():
            kind = kinds.get(key)
            if kind is None:
                raise ValueError(f"unknown plant parameter {key!r}")
            values[key] = _coerce(key, kind, value)
        return cls(**values)  # type: ignore[arg-type]


def _coerce(key: str, kind: object, value: object) -> object:
    # YAML gives ints for "8000"; accept them for float fields, but never bools as numbers.
    if kind == "bool":
        if isinstance(value, bool):
            return value
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"plant parameter {key!r} must be {kind}, got {value!r}")


def _problems(p: PlantParams) -> list[str]:
    problems: list[str] = []
    for field in dataclasses.fields(p):
        value = getattr(p, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{field.name} must be finite")
    if problems:
        return problems
    checks = [
        (
            1 <= p.battery_nodes <= MAX_BATTERY_NODES,
            f"battery_nodes must be 1..{MAX_BATTERY_NODES}",
        ),
        (0.0 <= p.start_hour < 24.0, "start_hour must be in [0, 24)"),
        (p.pv_peak_w >= 0.0, "pv_peak_w must be >= 0"),
        (
            0.0 <= p.sunrise_hour < p.sunset_hour <= 24.0,
            "need 0 <= sunrise_hour < sunset_hour <= 24",
        ),
        (p.cloud_mean_gap_s > 0.0, "cloud_mean_gap_s must be > 0"),
        (p.base_load_w >= 0.0, "base_load_w must be >= 0"),
        (p.node_capacity_wh > 0.0, "node_capacity_wh must be > 0"),
        (p.node_max_charge_w >= 0.0, "node_max_charge_w must be >= 0"),
        (p.node_max_discharge_w >= 0.0, "node_max_discharge_w must be >= 0"),
        (p.node_max_charge_current_a >= 0.0, "node_max_charge_current_a must be >= 0"),
        (p.node_max_discharge_current_a >= 0.0, "node_max_discharge_current_a must be >= 0"),
        (p.inverter_time_constant_s >= 0.0, "inverter_time_constant_s must be >= 0"),
        (0.0 <= p.initial_soc_pct <= 100.0, "initial_soc_pct must be 0..100"),
        (p.initial_soc_spread_pct >= 0.0, "initial_soc_spread_pct must be >= 0"),
        (0.0 < p.soh_pct <= 100.0, "soh_pct must be in (0, 100]"),
        (0.0 <= p.soh_spread_pct < p.soh_pct, "soh_spread_pct must be >= 0 and < soh_pct"),
        (p.cells_in_series >= 1, "cells_in_series must be >= 1"),
        (p.cell_nominal_v > 0.0, "cell_nominal_v must be > 0"),
        (p.pack_resistance_ohm > 0.0, "pack_resistance_ohm must be > 0"),
        (0.5 <= p.round_trip_efficiency <= 1.0, "round_trip_efficiency must be 0.5..1"),
        (p.grid_nominal_v > 0.0, "grid_nominal_v must be > 0"),
        (p.grid_nominal_hz > 0.0, "grid_nominal_hz must be > 0"),
        (p.grid_impedance_ohm >= 0.0, "grid_impedance_ohm must be >= 0"),
    ]
    return [message for ok, message in checks if not ok]
