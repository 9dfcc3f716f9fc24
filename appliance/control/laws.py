"""The global loop's control laws (the `profile`), both built on the PID utility.

* ``spec``: the specification's local law, ``u[k] = kp * e[k] + decay * u[k-1]`` with kp 0.1;
  the decay (0.995, times the synchronisation factor) applies on multi-device sites. It runs
  every cycle. Its decay leaves a permanent offset of about 4.8 % of the net load
  (docs/control-performance.md).
* ``balancing``: ``u = measured battery power + gain * e`` (plus a slow integral trim inside a
  small band), the law of OpenEMS Balancing and OpenDTU-OnBattery. It rebuilds the net load
  from two consistent readings, so it acts only on a fresh meter sample and averages the
  inverters' measured power over the same window the meter averaged over.

Error e = grid power - grid target (W); output > 0 is discharge.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

from appliance.control.params import ControlParams
from appliance.control.pid import IntegralForm, Pid, PidGains, PidTerms

#: Longest span the inverter power is averaged over (s); older meter samples are stale anyway.
_MAX_WINDOW_S = 2.0


@dataclass(frozen=True, slots=True)
class LawInput:
    now_s: float
    dt_s: float
    grid_w: float
    sample_new: bool
    measured_w: float  # cluster power measured this cycle (> 0 discharge)
    target_w: float
    low_w: float  # output limits: -cluster charge limit (or more), cluster discharge limit
    high_w: float
    rate_w_per_s: float | None = None


class GridLaw(Protocol):
    pid: Pid

    def update(self, x: LawInput) -> PidTerms | None:
        """The new control variable, or None to hold the previous one."""
        ...

    def reset(self, running_w: float) -> None:
        """Bumpless restart while the cluster is running at `running_w`."""
        ...

    def observe(self, now_s: float, measured_w: float) -> None:
        """Record this cycle's measured cluster power (every cycle, whatever the state)."""
        ...


class SpecLaw:
    def __init__(self, params: ControlParams, multi_device: bool) -> None:
        decay = params.integral_decay * params.sync_factor if multi_device else 1.0
        self.pid = Pid(
            PidGains(
                kp=params.kp,
                kd_s=params.kd_s,
                integral_decay=decay,
                anti_windup=params.anti_windup,
                form=IntegralForm.PREVIOUS_OUTPUT,
            )
        )

    def update(self, x: LawInput) -> PidTerms:
        return self.pid.step(
            x.grid_w - x.target_w, x.dt_s, low=x.low_w, high=x.high_w, rate_per_s=x.rate_w_per_s
        )

    def reset(self, running_w: float) -> None:
        self.pid.reset(integral=running_w)

    def observe(self, now_s: float, measured_w: float) -> None:
        """The spec law does not use the measured power."""


class BalancingLaw:
    def __init__(self, params: ControlParams) -> None:
        self.params = params
        self.pid = Pid(
            PidGains(
                kp=params.balancing_gain,
                ki_per_s=params.balancing_ki_per_s,
                kd_s=params.kd_s,
                anti_windup=params.anti_windup,
                integral_band=params.balancing_integral_band_w,
            )
        )
        self._history: deque[tuple[float, float]] = deque(maxlen=16)
        self._last_value: float | None = None
        self._last_fresh_s: float | None = None

    def observe(self, now_s: float, measured_w: float) -> None:
        self._history.append((now_s, measured_w))

    def reset(self, running_w: float) -> None:
        # The feed-forward carries the running power; the trim starts from zero.
        self.pid.reset(integral=0.0)

    def update(self, x: LawInput) -> PidTerms | None:
        if not self._is_fresh(x):
            return None
        window = min(self.params.meter_window_s, _MAX_WINDOW_S)
        measured = self._average(x.now_s, window, x.measured_w)
        return self.pid.step(
            x.grid_w - x.target_w,
            x.dt_s,
            low=x.low_w,
            high=x.high_w,
            feedforward=measured,
            rate_per_s=x.rate_w_per_s,
        )

    def _is_fresh(self, x: LawInput) -> bool:
        """A new meter sample that is a new measurement.

        A meter polled faster than it refreshes repeats its held register: the same value
        again within one meter window is not a new measurement (acting on it would count the
        same grid power twice). Once a whole window has passed, an identical value is a
        genuine reading of an unchanged grid and counts.
        """
        if not x.sample_new:
            return False
        held = (
            self.params.repeated_value_is_held
            and x.grid_w == self._last_value
            and self._last_fresh_s is not None
            and x.now_s - self._last_fresh_s < self.params.meter_window_s - 1e-6
        )
        self._last_value = x.grid_w
        if held:
            return False
        self._last_fresh_s = x.now_s
        return True

    def _average(self, now_s: float, window_s: float, fallback_w: float) -> float:
        # Readings taken within the window, i.e. (now - window, now]; the tolerance keeps a
        # reading exactly one window old out despite float rounding of the cycle times.
        recent = [p for t, p in self._history if t > now_s - window_s + 1e-6]
        return sum(recent) / len(recent) if recent else fallback_w


def make_law(params: ControlParams, node_count: int) -> SpecLaw | BalancingLaw:
    if params.profile == "spec":
        return SpecLaw(params, multi_device=node_count > 1)
    return BalancingLaw(params)
