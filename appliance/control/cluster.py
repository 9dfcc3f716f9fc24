"""Level 2, the master controller's arithmetic: cluster limits, distribution, SoC balancing.

The global loop (see `laws.py`) produces one site-wide control variable; this module caps it
to the sum of the node limits (and the site ceilings), splits it across the nodes by their
limits, shapes the split by SoC while the spread is large, checks every constraint before a
command leaves, and applies grid-code ramps where they are enabled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from appliance.control.failsafes import NodeCapability

#: Floating-point slack for constraint checks (W).
_TOLERANCE_W = 1e-6


@dataclass(frozen=True, slots=True)
class ClusterLimits:
    charge_w: float  # >= 0
    discharge_w: float  # >= 0
    capacity_w: float  # total inverter capacity of the nodes in cluster mode (active)
    nodes_active: int

    def clamp(self, request_w: float) -> float:
        return min(max(request_w, -self.charge_w), self.discharge_w)


def cluster_limits(
    caps: Sequence[NodeCapability],
    *,
    site_max_charge_w: float | None,
    site_max_discharge_w: float | None,
    node_ratings_w: Sequence[float],
) -> ClusterLimits:
    """Sum of the active nodes' limits, capped by the site ceilings."""
    charge = sum(c.charge_w for c in caps)
    discharge = sum(c.discharge_w for c in caps)
    if site_max_charge_w is not None:
        charge = min(charge, site_max_charge_w)
    if site_max_discharge_w is not None:
        discharge = min(discharge, site_max_discharge_w)
    capacity = sum(r for c, r in zip(caps, node_ratings_w, strict=True) if c.active)
    active = sum(1 for c in caps if c.active)
    return ClusterLimits(float(charge), float(discharge), float(capacity), active)


class SocBalancer:
    """Hysteresis on the SoC spread of the active nodes: on above `start_pct`, off below `stop_pct`."""

    def __init__(self, start_pct: float, stop_pct: float) -> None:
        if start_pct <= stop_pct:
            raise ValueError(f"start {start_pct!r} must be above stop {stop_pct!r}")
        self.start_pct = start_pct
        self.stop_pct = stop_pct
        self.active = False

    def update(self, caps: Sequence[NodeCapability]) -> bool:
        socs = [c.soc_pct for c in caps if c.active and c.soc_pct is not None]
        if len(socs) < 2:
            self.active = False
            return False
        spread = max(socs) - min(socs)
        if spread > self.start_pct:
            self.active = True
        elif spread < self.stop_pct:
            self.active = False
        return self.active


def distribute(
    request_w: float,
    caps: Sequence[NodeCapability],
    *,
    balancing: bool,
    exponent: float = 2.0,
) -> tuple[float, ...]:
    """Split a cluster request across the nodes.

    Without balancing each node's share is proportional to its limit in the request's
    direction. With balancing the weights are the limit times the node's SoC headroom in that
    direction (SoC above reserve for discharge, below full for charge) to the power
    `exponent`: higher SoC takes more of a discharge, lower SoC more of a charge. Either way
    the split is water-filled, so no node exceeds its limit and the parts sum to the request
    whenever the request is within the cluster's limits. No node is driven against the
    request's direction, so balancing never circulates power between nodes.
    """
    if request_w == 0.0:
        return tuple(0.0 for _ in caps)
    discharging = request_w > 0.0
    limits = [c.discharge_w if discharging else c.charge_w for c in caps]
    if balancing:
        weights = [
            lim * _headroom(c, discharging) ** exponent for c, lim in zip(caps, limits, strict=True)
        ]
    else:
        weights = list(limits)
    shares = _water_fill(abs(request_w), limits, weights)
    sign = 1.0 if discharging else -1.0
    return tuple(sign * s for s in shares)


def _headroom(cap: NodeCapability, discharging: bool) -> float:
    if cap.soc_pct is None:
        return 0.0
    if discharging:
        return max(0.0, cap.soc_pct - cap.reserve_soc_pct)
    return max(0.0, cap.max_soc_pct - cap.soc_pct)


def _water_fill(total: float, limits: Sequence[float], weights: Sequence[float]) -> list[float]:
    """Shares of `total` by weight, none above its limit; the rest flows to the others."""
    shares = [0.0] * len(limits)
    free = [i for i, lim in enumerate(limits) if lim > 0.0]
    remaining = min(total, sum(limits))
    while free and remaining > _TOLERANCE_W:
        wsum = sum(weights[i] for i in free)
        use = weights if wsum > 0.0 else limits  # all remaining weights zero: split by limit
        wsum = sum(use[i] for i in free)
        capped = [i for i in free if remaining * use[i] / wsum >= limits[i]]
        if not capped:
            for i in free:
                shares[i] = remaining * use[i] / wsum
            break
        for i in capped:
            shares[i] = limits[i]
            remaining -= limits[i]
            free.remove(i)
    return shares


def check_constraints(
    setpoints_w: Sequence[float], caps: Sequence[NodeCapability], limits: ClusterLimits
) -> tuple[tuple[float, ...], tuple[str, ...]]:
    """Verify each node and the cluster total before sending; correct and report violations."""
    fixed: list[float] = []
    problems: list[str] = []
    for sp, cap in zip(setpoints_w, caps, strict=True):
        clamped = cap.clamp(sp)
        if abs(clamped - sp) > _TOLERANCE_W:
            problems.append(
                f"node {cap.node}: {sp:.1f} W outside -{cap.charge_w:.1f} .. {cap.discharge_w:.1f} W"
            )
        fixed.append(clamped)
    total = sum(fixed)
    allowed = limits.clamp(total)
    if abs(allowed - total) > _TOLERANCE_W and total != 0.0:
        problems.append(
            f"cluster: {total:.1f} W outside -{limits.charge_w:.1f} .. {limits.discharge_w:.1f} W"
        )
        scale = allowed / total
        fixed = [sp * scale for sp in fixed]
    return tuple(fixed), tuple(problems)


def ramp_limit(previous_w: float, target_w: float, max_step_w: float) -> float:
    """Grid-code ramp: move from `previous_w` towards `target_w` by at most `max_step_w`."""
    step = min(max(target_w - previous_w, -max_step_w), max_step_w)
    return previous_w + step
