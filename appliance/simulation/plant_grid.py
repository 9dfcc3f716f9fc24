"""The simulated site's AC bus and its meters: phase voltages, frequency, energy registers.

The powers come from the energy balance computed in `plant`; this module only adds what a
three-phase meter shows on top of them. Voltage and frequency wander (seeded, exact
Ornstein-Uhlenbeck steps), and the voltage sags under import through the grid impedance
(and rises under export), which is what a real meter at a house connection shows.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from appliance.simulation.plant_params import PlantParams

Phase3 = tuple[float, float, float]

_VOLTAGE_OFFSET_V = 2.0  # fixed per-phase offset, drawn once: no phase sits exactly at 230 V
_VOLTAGE_WANDER_V = 0.8
_VOLTAGE_WANDER_TAU_S = 60.0
_FREQUENCY_WANDER_HZ = 0.015
_FREQUENCY_WANDER_TAU_S = 30.0


@dataclass(frozen=True, slots=True)
class GridValues:
    """What a three-phase meter reports; the grid meter and the PV meter share this shape.

    Active power sign: grid meter > 0 = import from the grid; PV meter > 0 = production.
    `import_kwh` integrates the power while it is > 0, `export_kwh` while it is < 0, so for the
    PV meter `import_kwh` is the produced energy. Reactive power > 0 = inductive, drawn from
    the grid. Power factor = P / S, negative while P < 0, 1.0 when there is no power at all.
    Current is the magnitude S / V (always >= 0).
    """

    voltage_v: Phase3
    current_a: Phase3
    active_power_w: Phase3
    reactive_power_var: Phase3
    power_factor: Phase3
    frequency_hz: float
    import_kwh: float
    export_kwh: float
    total_active_power_w: float
    total_reactive_power_var: float
    total_power_factor: float


def _power_factor(p_w: float, q_var: float) -> float:
    s = math.hypot(p_w, q_var)
    return 1.0 if s == 0.0 else p_w / s


def _ou_step(x: float, rng: random.Random, sigma: float, tau_s: float, dt_s: float) -> float:
    """One exact Ornstein-Uhlenbeck step: the spread does not depend on the step size."""
    a = math.exp(-dt_s / tau_s)
    return x * a + rng.gauss(0.0, 1.0) * sigma * math.sqrt(1.0 - a * a)


class EnergyRegister:
    """Import and export energy of one meter, in kWh; both only ever grow."""

    def __init__(self) -> None:
        self.import_kwh = 0.0
        self.export_kwh = 0.0

    def add(self, power_w: float, dt_s: float) -> None:
        # Rectangle rule on the power at the end of the step: the register grows in the
        # direction the meter shows, so "import grows only while importing" holds exactly.
        kwh = abs(power_w) * dt_s / 3.6e6
        if power_w > 0.0:
            self.import_kwh += kwh
        elif power_w < 0.0:
            self.export_kwh += kwh


class AcBus:
    """Voltage and frequency at the house connection, seen by every meter on it."""

    def __init__(self, params: PlantParams) -> None:
        self._p = params
        self._rng = random.Random(f"{params.seed}/grid")
        rng = self._rng
        self._offset_v = tuple(rng.uniform(-_VOLTAGE_OFFSET_V, _VOLTAGE_OFFSET_V) for _ in "123")
        self._wander_v = [0.0, 0.0, 0.0]
        self._frequency_dev_hz = 0.0

    def advance(self, dt_s: float) -> None:
        rng = self._rng
        self._wander_v = [
            _ou_step(w, rng, _VOLTAGE_WANDER_V, _VOLTAGE_WANDER_TAU_S, dt_s) for w in self._wander_v
        ]
        self._frequency_dev_hz = _ou_step(
            self._frequency_dev_hz, rng, _FREQUENCY_WANDER_HZ, _FREQUENCY_WANDER_TAU_S, dt_s
        )

    @property
    def frequency_hz(self) -> float:
        return self._p.grid_nominal_hz + self._frequency_dev_hz

    def voltages_v(self, grid_active_w: Phase3) -> Phase3:
        """Phase voltages given the power each phase imports (> 0) through the grid impedance."""
        p = self._p
        v = [
            p.grid_nominal_v
            + self._offset_v[k]
            + self._wander_v[k]
            - p.grid_impedance_ohm * grid_active_w[k] / p.grid_nominal_v
            for k in range(3)
        ]
        return (v[0], v[1], v[2])


def meter_values(
    bus: AcBus,
    voltages_v: Phase3,
    active_w: Phase3,
    reactive_var: Phase3,
    total_active_w: float,
    register: EnergyRegister,
) -> GridValues:
    """Assemble one meter's reading; `total_active_w` is passed so the balance stays exact."""
    current = tuple(math.hypot(active_w[k], reactive_var[k]) / voltages_v[k] for k in range(3))
    pf = tuple(_power_factor(active_w[k], reactive_var[k]) for k in range(3))
    total_q = math.fsum(reactive_var)
    return GridValues(
        voltage_v=voltages_v,
        current_a=(current[0], current[1], current[2]),
        active_power_w=active_w,
        reactive_power_var=reactive_var,
        power_factor=(pf[0], pf[1], pf[2]),
        frequency_hz=bus.frequency_hz,
        import_kwh=register.import_kwh,
        export_kwh=register.export_kwh,
        total_active_power_w=total_active_w,
        total_reactive_power_var=total_q,
        total_power_factor=_power_factor(total_active_w, total_q),
    )
