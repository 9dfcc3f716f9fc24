"""Fixtures for runtime tests: a simulated-site configuration on free loopback ports."""

from __future__ import annotations

import importlib.resources
import socket
from pathlib import Path

import pytest

SIMULATED_PORTS = (15020, 15021, 15031, 15032, 15040, 15050, 4840, 5020, 9464)


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out now on 127.0.0.1 (bound, then released)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def simulated_config_text(ports: dict[int, int]) -> str:
    text = (importlib.resources.files("appliance.models") / "sites" / "simulated.yaml").read_text()
    for old, new in ports.items():
        text = text.replace(f"port: {old}", f"port: {new}")
    return text


@pytest.fixture
def sim_ports() -> dict[int, int]:
    return dict(zip(SIMULATED_PORTS, free_ports(len(SIMULATED_PORTS)), strict=True))


@pytest.fixture
def sim_config_file(tmp_path: Path, sim_ports: dict[int, int]) -> Path:
    path = tmp_path / "simulated.yaml"
    path.write_text(
        simulated_config_text(sim_ports).replace("data_dir: ./var", f"data_dir: {tmp_path}/var")
    )
    return path
