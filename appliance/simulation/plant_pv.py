"""PV production of the simulated site: a clear-sky bell over the day times a cloud process.

Both parts are functions of simulation time only (not of the step size), so a plant stepped
at 0.1 s and one stepped at 10 s see the same clouds at the same moments. The cloud process
draws its events lazily from its own seeded generator as time moves forward.
"""

from __future__ import annotations

import math
import random

from appliance.simulation.plant_params import PlantParams

# Cloud edges pass over a residential array in a few seconds; shorter would be a step
# no real array shows, longer would hide the transients the controller must ride through.
_EDGE_S = (1.0, 4.0)
_DURATION_S = (5.0, 300.0)  # seconds to minutes, drawn log-uniformly
_DEPTH = (0.2, 0.4)  # fraction of clear-sky irradiance left under the cloud
_MIN_GAP_S = 10.0


def clear_sky_fraction(hour: float, sunrise_hour: float, sunset_hour: float) -> float:
    """Fraction (0..1) of peak PV power on a clear day at local time `hour`; 0 at night."""
    if not sunrise_hour < hour < sunset_hour:
        return 0.0
    x = (hour - sunrise_hour) / (sunset_hour - sunrise_hour)
    # The exponent narrows a plain sine: morning and evening light falls on the modules at
    # a flat angle and through more air mass, so production rises late and falls early.
    return float(math.sin(math.pi * x) ** 1.5)


class CloudProcess:
    """Irradiance factor (0..1) over time: clear spells broken by clouds with short edges.

    Queries must come with non-decreasing times; the process forgets clouds it has passed.
    """

    def __init__(self, rng: random.Random, mean_gap_s: float) -> None:
        self._rng = rng
        self._mean_gap_s = mean_gap_s
        # A first cloud somewhere in the first mean gap, so a run does not open in shade.
        self._start = rng.uniform(_MIN_GAP_S, mean_gap_s + _MIN_GAP_S)
        self._draw_cloud()

    def _draw_cloud(self) -> None:
        rng = self._rng
        low, high = _DURATION_S
        self._edge = rng.uniform(*_EDGE_S)
        self._end = self._start + math.exp(rng.uniform(math.log(low), math.log(high)))
        self._depth = rng.uniform(*_DEPTH)

    def factor(self, time_s: float) -> float:
        while time_s >= self._end + self._edge:
            gap = max(_MIN_GAP_S, self._rng.expovariate(1.0 / self._mean_gap_s))
            self._start = self._end + self._edge + gap
            self._draw_cloud()
        if time_s <= self._start:
            return 1.0
        if time_s < self._start + self._edge:
            shade = (time_s - self._start) / self._edge
        elif time_s <= self._end:
            shade = 1.0
        else:
            shade = 1.0 - (time_s - self._end) / self._edge
        return 1.0 - (1.0 - self._depth) * min(1.0, shade)


class PvArray:
    """AC power of the PV system (W, >= 0) at a simulation time."""

    def __init__(self, params: PlantParams) -> None:
        self._params = params
        self._clouds = (
            CloudProcess(random.Random(f"{params.seed}/clouds"), params.cloud_mean_gap_s)
            if params.cloud_transients
            else None
        )

    def power_w(self, time_s: float) -> float:
        p = self._params
        hour = (p.start_hour + time_s / 3600.0) % 24.0
        clear = clear_sky_fraction(hour, p.sunrise_hour, p.sunset_hour)
        # Advance the clouds even at night so their schedule depends on time alone.
        cloud = self._clouds.factor(time_s) if self._clouds is not None else 1.0
        return p.pv_peak_w * clear * cloud
