"""Household consumption of the simulated site, per phase: base load plus appliance events.

The base load wanders a little (fridge, electronics); the appliances switch in steps, which
is what the controller has to follow: a kettle (2 kW for minutes, phase L1), an oven (about
3 kW for tens of minutes, phases L2 + L3) and a cycling heat pump (about 1.5 kW, three-phase).
Appliance schedules depend on simulation time only; the base-load wander is drawn per step.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from appliance.simulation.plant_params import PlantParams

Phase3 = tuple[float, float, float]

# Share of the base load on L1, L2, L3: houses are never balanced.
_BASE_SPLIT: Phase3 = (0.40, 0.35, 0.25)
_BASE_POWER_FACTOR = 0.9  # motors and switched-mode supplies: inductive
_BASE_WANDER_W = 20.0  # standard deviation of the base-load wander
_BASE_WANDER_TAU_S = 30.0


@dataclass(frozen=True, slots=True)
class ApplianceSpec:
    """How one appliance behaves: power, on and off durations, phases, power factor."""

    name: str
    power_w: tuple[float, float]  # drawn uniformly at each switch-on
    on_s: tuple[float, float]  # drawn uniformly
    off_mean_s: float  # exponential gaps: events arrive at random
    off_min_s: float
    phase_split: Phase3
    power_factor: float


APPLIANCES: tuple[ApplianceSpec, ...] = (
    ApplianceSpec("kettle", (1900.0, 2200.0), (120.0, 240.0), 2700.0, 300.0, (1.0, 0.0, 0.0), 1.0),
    ApplianceSpec(
        "oven", (2500.0, 3500.0), (1200.0, 3600.0), 14400.0, 1800.0, (0.0, 0.5, 0.5), 1.0
    ),
    ApplianceSpec(
        "heat_pump", (1300.0, 1700.0), (600.0, 1200.0), 1500.0, 900.0, (1 / 3, 1 / 3, 1 / 3), 0.92
    ),
)


class Appliance:
    """One appliance's on/off schedule, drawn lazily as time moves forward."""

    def __init__(self, spec: ApplianceSpec, rng: random.Random) -> None:
        self.spec = spec
        self._rng = rng
        self._on = False
        self._power_w = 0.0
        # Start somewhere within a typical off period, so appliances do not all switch at 0.
        self._next_change_s = rng.uniform(0.0, spec.off_mean_s)

    def power_w(self, time_s: float) -> float:
        spec, rng = self.spec, self._rng
        while time_s >= self._next_change_s:
            if self._on:
                gap = max(spec.off_min_s, rng.expovariate(1.0 / spec.off_mean_s))
                self._on, self._power_w = False, 0.0
                self._next_change_s += gap
            else:
                self._on, self._power_w = True, rng.uniform(*spec.power_w)
                self._next_change_s += rng.uniform(*spec.on_s)
        return self._power_w


class Household:
    """Per-phase active and reactive power drawn by the house (W, var; >= 0 active)."""

    def __init__(self, params: PlantParams) -> None:
        self._base_w = params.base_load_w
        self._rng = random.Random(f"{params.seed}/load")
        self._wander_w = 0.0
        self._offset_w = 0.0
        self._switched_w: dict[str, float] = {}
        self._appliances = (
            tuple(
                Appliance(spec, random.Random(f"{params.seed}/load/{spec.name}"))
                for spec in APPLIANCES
            )
            if params.appliance_events
            else ()
        )

    def set_offset_w(self, watts: float) -> None:
        """Add a constant load step (fault injection), split evenly over the phases."""
        self._offset_w = watts

    def set_switched_w(self, name: str, watts: float) -> None:
        """A switched load (a surplus heater behind a relay) on or off, split over the phases."""
        self._switched_w[name] = watts

    def advance(self, time_s: float, dt_s: float) -> tuple[Phase3, Phase3]:
        """Return (active W, reactive var) per phase at `time_s`, after a step of `dt_s`."""
        if dt_s > 0.0:
            # Ornstein-Uhlenbeck, exact discretisation: the wander's size does not depend on dt.
            a = math.exp(-dt_s / _BASE_WANDER_TAU_S)
            noise = self._rng.gauss(0.0, 1.0) * _BASE_WANDER_W * math.sqrt(1.0 - a * a)
            self._wander_w = self._wander_w * a + noise
        base = max(0.0, self._base_w + self._wander_w)
        tan_base = math.tan(math.acos(_BASE_POWER_FACTOR))
        extra_w = self._offset_w + sum(self._switched_w.values())
        active = [base * share + extra_w / 3.0 for share in _BASE_SPLIT]
        reactive = [base * share * tan_base for share in _BASE_SPLIT]
        for appliance in self._appliances:
            power = appliance.power_w(time_s)
            if power == 0.0:
                continue
            tan_phi = math.tan(math.acos(appliance.spec.power_factor))
            for k, share in enumerate(appliance.spec.phase_split):
                active[k] += power * share
                reactive[k] += power * share * tan_phi
        # A negative offset can take a phase below zero; a house does not feed in by itself.
        active = [max(0.0, value) for value in active]
        return (active[0], active[1], active[2]), (reactive[0], reactive[1], reactive[2])
