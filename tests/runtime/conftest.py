"""Fixtures for runtime tests: a simulated-site configuration on free loopback ports."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.simulation.site_config import SIMULATED_PORTS, free_ports, simulated_site_text


@pytest.fixture
def sim_ports() -> dict[int, int]:
    return dict(zip(SIMULATED_PORTS, free_ports(len(SIMULATED_PORTS)), strict=True))


@pytest.fixture
def sim_config_file(tmp_path: Path, sim_ports: dict[int, int]) -> Path:
    path = tmp_path / "simulated.yaml"
    path.write_text(simulated_site_text(sim_ports, tmp_path / "var"))
    return path
