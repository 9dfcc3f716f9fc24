"""Supervision facts for the state machine: off-grid detection, heartbeat, critical errors."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from appliance.config.schema import BatteryLimits
from appliance.control.site_io import NodeInputs

_LOG = logging.getLogger(__name__)


class OffGridDetector:
    """Off grid when any phase is below `below_v`; back once all are at or above `back_v`
    for `delay_s` without a dip. A missing reading changes nothing."""

    def __init__(self, below_v: float, back_v: float, delay_s: float) -> None:
        self.below_v = below_v
        self.back_v = back_v
        self.delay_s = delay_s
        self.off_grid = False
        self._back_since: float | None = None

    def update(self, now_s: float, volts: tuple[float, float, float] | None) -> bool:
        if volts is None:
            return self.off_grid
        lowest = min(volts)
        if lowest < self.below_v:
            if not self.off_grid:
                _LOG.warning("off grid: phase voltage %.1f V below %.1f V", lowest, self.below_v)
            self.off_grid = True
            self._back_since = None
        elif self.off_grid and lowest >= self.back_v:
            if self._back_since is None:
                self._back_since = now_s
            if now_s - self._back_since >= self.delay_s:
                _LOG.info("grid back: all phases at or above %.1f V", self.back_v)
                self.off_grid = False
        elif self.off_grid:
            self._back_since = None  # a dip below the return level restarts the wait
        return self.off_grid


class HeartbeatWatch:
    """When the supervising SCADA last proved it is alive.

    Heartbeats count only with a new counter value; an accepted mode or setpoint command is a
    control signal too. The runtime's own heartbeat age (from the store) is taken into account.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.last_counter: int | None = None
        self._last_signal_s: float | None = None

    def signal(self, now_s: float) -> None:
        self._last_signal_s = now_s

    def age(self, now_s: float, reported_age_s: float | None = None) -> float | None:
        ages = [reported_age_s] if reported_age_s is not None else []
        if self._last_signal_s is not None:
            ages.append(now_s - self._last_signal_s)
        return min(ages) if ages else None

    def ok(self, now_s: float, reported_age_s: float | None = None) -> bool:
        age = self.age(now_s, reported_age_s)
        return age is not None and age <= self.timeout_s


def over_temperature(node: NodeInputs, limits: BatteryLimits) -> bool:
    return node.temperature_max_c is not None and node.temperature_max_c > limits.max_temperature_c


def critical_reason(nodes: Sequence[NodeInputs], limits: Sequence[BatteryLimits]) -> str:
    """Why the site has a critical system error ("" if none): BMS protection, over-temperature."""
    reasons = [f"BMS protection alarm on node {n.node}" for n in nodes if n.bms_alarm]
    reasons += [
        f"node {n.node} at {n.temperature_max_c:g} degrees C (max {lim.max_temperature_c:g})"
        for n, lim in zip(nodes, limits, strict=True)
        if over_temperature(n, lim)
    ]
    return "; ".join(reasons)
