"""Level 2 arithmetic: cluster limits, distribution, SoC balancing, constraint check, ramps."""

from __future__ import annotations

import random

import pytest

from appliance.control.cluster import (
    ClusterLimits,
    SocBalancer,
    check_constraints,
    cluster_limits,
    distribute,
    ramp_limit,
)
from appliance.control.failsafes import NodeCapability
from tests.control.support import controller, inputs, node


def cap(
    number: int,
    *,
    charge: float = 5000.0,
    discharge: float = 5000.0,
    soc: float | None = 50.0,
    active: bool = True,
    reserve: float = 10.0,
    full: float = 95.0,
) -> NodeCapability:
    return NodeCapability(number, active, soc, charge, discharge, reserve, full)


def test_soc_balancing_starts_above_5_percent_spread_and_stops_below_2() -> None:
    balancer = SocBalancer(start_pct=5.0, stop_pct=2.0)
    # (SoC of node 1, SoC of node 2, balancing afterwards)
    table = [
        (50.0, 54.0, False),  # spread 4 %: not above 5 %, stays off
        (50.0, 55.0, False),  # exactly 5 %: not above, off
        (50.0, 55.5, True),  # 5.5 % > 5 %: on
        (50.0, 53.0, True),  # 3 %: inside the band, stays on (hysteresis)
        (50.0, 52.0, True),  # exactly 2 %: not below, on
        (50.0, 51.9, False),  # 1.9 % < 2 %: off
        (50.0, 54.0, False),  # 4 %: inside the band, stays off
    ]
    for soc1, soc2, active in table:
        assert balancer.update([cap(1, soc=soc1), cap(2, soc=soc2)]) is active


def test_soc_balancing_ignores_inactive_nodes_and_needs_two() -> None:
    balancer = SocBalancer(5.0, 2.0)
    assert balancer.update([cap(1, soc=20.0), cap(2, soc=80.0, active=False)]) is False
    assert balancer.update([cap(1, soc=20.0), cap(2, soc=None)]) is False
    with pytest.raises(ValueError, match="must be above"):
        SocBalancer(2.0, 2.0)


def test_distribution_by_node_limits() -> None:
    caps = [cap(1, discharge=5000.0), cap(2, discharge=2000.0), cap(3, discharge=1000.0)]
    # 6000 W split 5 : 2 : 1 of the limits.
    assert distribute(6000.0, caps, balancing=False) == pytest.approx((3750.0, 1500.0, 750.0))
    assert distribute(0.0, caps, balancing=False) == (0.0, 0.0, 0.0)


def test_balancing_gives_higher_soc_more_discharge_and_lower_soc_more_charge() -> None:
    caps = [cap(1, soc=70.0), cap(2, soc=40.0)]
    # Discharge weights: limit x (SoC - reserve 10)^2 = 60^2 : 30^2 = 3600 : 900 -> 80 % : 20 %.
    assert distribute(2000.0, caps, balancing=True) == pytest.approx((1600.0, 400.0))
    # Charge weights: limit x (full 95 - SoC)^2 = 25^2 : 55^2 = 625 : 3025.
    assert distribute(-2000.0, caps, balancing=True) == pytest.approx(
        (-2000.0 * 625 / 3650, -2000.0 * 3025 / 3650)
    )
    # 9000 W: node 1's weighted share (7200 W) is above its 5000 W limit; the rest flows on.
    assert distribute(9000.0, caps, balancing=True) == pytest.approx((5000.0, 4000.0))


def test_balancing_weights_all_zero_falls_back_to_the_limits() -> None:
    caps = [cap(1, soc=10.0, discharge=3000.0), cap(2, soc=10.0, discharge=1000.0)]
    assert distribute(2000.0, caps, balancing=True) == pytest.approx((1500.0, 500.0))


def test_distribution_never_exceeds_a_node_limit_and_sums_to_a_feasible_request() -> None:
    rng = random.Random(7)
    for _ in range(500):
        caps = [
            cap(
                i,
                charge=rng.choice([0.0, rng.uniform(0, 6000)]),
                discharge=rng.choice([0.0, rng.uniform(0, 6000)]),
                soc=rng.uniform(5, 100),
            )
            for i in range(1, rng.randint(1, 6) + 1)
        ]
        total_charge = sum(c.charge_w for c in caps)
        total_discharge = sum(c.discharge_w for c in caps)
        request = rng.uniform(-total_charge, total_discharge)
        shares = distribute(request, caps, balancing=rng.random() < 0.5)
        for share, c in zip(shares, caps, strict=True):
            assert -c.charge_w - 1e-6 <= share <= c.discharge_w + 1e-6
            assert share * request >= 0.0  # never against the request's direction
        assert sum(shares) == pytest.approx(request, rel=1e-9, abs=1e-6)


def test_an_infeasible_request_is_capped_at_the_limits() -> None:
    shares = distribute(
        20000.0, [cap(1, discharge=5000.0), cap(2, discharge=2000.0)], balancing=False
    )
    assert shares == pytest.approx((5000.0, 2000.0))


def test_cluster_limits_sum_active_nodes_and_apply_site_ceilings() -> None:
    caps = [
        cap(1, charge=3000.0, discharge=4000.0),
        cap(2, charge=0.0, discharge=0.0, active=False),
    ]
    limits = cluster_limits(
        caps, site_max_charge_w=2000.0, site_max_discharge_w=None, node_ratings_w=[5000.0, 5000.0]
    )
    assert limits == ClusterLimits(
        charge_w=2000.0, discharge_w=4000.0, capacity_w=5000.0, nodes_active=1
    )


def test_constraint_check_corrects_and_reports_before_sending() -> None:
    caps = [cap(1, discharge=1000.0), cap(2, discharge=1000.0)]
    limits = ClusterLimits(charge_w=2000.0, discharge_w=1500.0, capacity_w=10000.0, nodes_active=2)
    fixed, problems = check_constraints((1200.0, 800.0), caps, limits)
    # Node 1 capped to 1000 W; the total 1800 W exceeds the cluster's 1500 W: scaled by 1500/1800.
    assert fixed == pytest.approx((1000.0 * 1500 / 1800, 800.0 * 1500 / 1800))
    assert len(problems) == 2
    assert "node 1" in problems[0]
    assert "cluster" in problems[1]
    assert check_constraints((500.0, 500.0), caps, limits) == ((500.0, 500.0), ())


def test_ramp_limit_moves_by_at_most_one_step() -> None:
    assert ramp_limit(0.0, 1000.0, 16.7) == pytest.approx(16.7)
    assert ramp_limit(1000.0, 0.0, 16.7) == pytest.approx(983.3)
    assert ramp_limit(990.0, 1000.0, 16.7) == 1000.0


def test_the_site_reports_balancing_and_cluster_points() -> None:
    ctrl = controller(2)
    out = ctrl.step(inputs(0.0, 2000.0, (node(1, soc_pct=70.0), node(2, soc_pct=40.0))))
    assert out.point_values["cluster.balancing"] is True
    assert out.node_setpoints_w == pytest.approx((1600.0, 400.0))  # as in the weights above
    assert out.point_values["cluster.soc_min"] == 40.0
    assert out.point_values["cluster.soc_max"] == 70.0
    assert out.point_values["cluster.discharge_limit"] == 10000.0
    assert out.point_values["cluster.nodes_online"] == 2
