"""The PID utility both control profiles are built on.

Pure: the caller passes the error, the time step and the output limits; nothing here reads a
clock. Sign convention of the site loop: error = grid power - grid target (W), so a positive
error (import) asks for more discharge (a larger output).

Two integral forms cover the two profiles:

* ``ERROR_SUM``, the classic position form: ``I[k] = decay * I[k-1] + ki * e[k] * dt``.
* ``PREVIOUS_OUTPUT``, the specification's local law: the integral is the previous (clamped)
  output times the decay, ``u[k] = kp * e[k] + decay * u[k-1]``.

Anti-windup: while the output sits at a limit and the error pushes further into it, the
integral is not advanced and instead decays by the anti-windup constant per cycle (the
"unwind"); `unwind()` does the same while a meter reading is missing. `reset()` sets the
integral so that the next output continues from a given value (bumpless mode entry).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

#: Two floats closer than this are equal for the saturation test (W).
_EPS = 1e-9


class IntegralForm(enum.Enum):
    ERROR_SUM = "error_sum"
    PREVIOUS_OUTPUT = "previous_output"


@dataclass(frozen=True, slots=True)
class PidGains:
    kp: float
    ki_per_s: float = 0.0
    kd_s: float = 0.0
    #: Factor applied to the integral memory every cycle (1.0: no decay).
    integral_decay: float = 1.0
    #: Fraction of the integral removed per cycle while saturated or while the input is missing.
    anti_windup: float = 0.02
    #: Integrate only while |error| is at most this (None: always). Keeps large transients,
    #: which a feed-forward already handles, out of a slow trimming integral.
    integral_band: float | None = None
    form: IntegralForm = IntegralForm.ERROR_SUM


@dataclass(frozen=True, slots=True)
class PidTerms:
    """One step's result; the parts add up to the output before clamping."""

    error: float
    feedforward: float
    p: float
    i: float
    d: float
    output: float  # clamped to the limits
    saturated: bool


class Pid:
    """A PID controller with explicit time step, output limits and anti-windup unwind."""

    def __init__(self, gains: PidGains) -> None:
        self.gains = gains
        self.integral = 0.0
        self.saturated = False
        self._last_error: float | None = None

    def reset(self, integral: float = 0.0) -> None:
        """Start afresh with this integral memory (bumpless when set to the running output)."""
        self.integral = integral
        self.saturated = False
        self._last_error = None

    def unwind(self) -> None:
        """Decay the integral by the anti-windup constant (one cycle without a usable input)."""
        self.integral *= 1.0 - self.gains.anti_windup
        self._last_error = None

    def step(
        self,
        error: float,
        dt_s: float,
        *,
        low: float,
        high: float,
        feedforward: float = 0.0,
        rate_per_s: float | None = None,
    ) -> PidTerms:
        """One control step. `rate_per_s` is the error's rate of change (from the store's
        history); without it the derivative uses the difference to the previous error."""
        if dt_s <= 0.0:
            raise ValueError(f"dt_s must be positive, got {dt_s!r}")
        if low > high:
            raise ValueError(f"low {low!r} is above high {high!r}")
        g = self.gains
        p = g.kp * error
        d = g.kd_s * self._rate(error, dt_s, rate_per_s)
        self._last_error = error
        if g.form is IntegralForm.PREVIOUS_OUTPUT:
            return self._step_previous_output(error, feedforward, p, d, low, high)
        return self._step_error_sum(error, dt_s, feedforward, p, d, low, high)

    # -- internals -----------------------------------------------------------------------

    def _rate(self, error: float, dt_s: float, rate_per_s: float | None) -> float:
        if rate_per_s is not None:
            return rate_per_s
        if self._last_error is None:
            return 0.0
        return (error - self._last_error) / dt_s

    def _step_error_sum(
        self, error: float, dt_s: float, ff: float, p: float, d: float, low: float, high: float
    ) -> PidTerms:
        g = self.gains
        in_band = g.integral_band is None or abs(error) <= g.integral_band
        candidate = g.integral_decay * self.integral
        if in_band:
            candidate += g.ki_per_s * error * dt_s
        raw = ff + p + candidate + d
        winding_up = (raw > high + _EPS and error > 0.0) or (raw < low - _EPS and error < 0.0)
        if winding_up:
            # Conditional integration plus unwind: do not integrate further into the limit,
            # and let the memory decay so the loop recovers quickly once the limit lifts.
            self.integral = g.integral_decay * self.integral * (1.0 - g.anti_windup)
            raw = ff + p + self.integral + d
        else:
            self.integral = candidate
        return self._finish(error, ff, p, self.integral, d, raw, low, high)

    def _step_previous_output(
        self, error: float, ff: float, p: float, d: float, low: float, high: float
    ) -> PidTerms:
        g = self.gains
        i = g.integral_decay * self.integral
        raw = ff + p + i + d
        terms = self._finish(error, ff, p, i, d, raw, low, high)
        memory = terms.output
        if terms.saturated:
            memory *= 1.0 - g.anti_windup
        self.integral = memory
        return terms

    def _finish(
        self,
        error: float,
        ff: float,
        p: float,
        i: float,
        d: float,
        raw: float,
        low: float,
        high: float,
    ) -> PidTerms:
        output = min(max(raw, low), high)
        self.saturated = raw > high + _EPS or raw < low - _EPS
        return PidTerms(error, ff, p, i, d, output, self.saturated)
