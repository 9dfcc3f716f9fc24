"""The built-in simulated site on free loopback ports, for tests and benchmarks.

`make run` uses fixed, documented ports; a test or a benchmark must not collide with another
process on this machine, so it asks the kernel for free ports and rewrites the site's. Paths
move with data_dir: the archive's and the SML meter's pty link (``sim/sml-meter``) are
relative to it, so each test's site has its own.
"""

from __future__ import annotations

import importlib.resources
import socket
from pathlib import Path

from appliance.config import SiteConfig, load_config_text

#: The ports of models/sites/simulated.yaml, in a fixed order (15060: the PC321 value feed).
SIMULATED_PORTS = (15020, 15021, 15031, 15032, 15040, 15050, 15060, 4840, 5020, 9464)


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out now on 127.0.0.1 (bound together, then released)."""
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


def simulated_site_text(ports: dict[int, int], data_dir: Path) -> str:
    """simulated.yaml with each documented port replaced and the data under `data_dir`."""
    text = (importlib.resources.files("appliance.models") / "sites" / "simulated.yaml").read_text()
    for old, new in ports.items():
        text = text.replace(f"port: {old}", f"port: {new}")
    return text.replace("data_dir: ./var", f"data_dir: {data_dir}")


def simulated_site_on_free_ports(data_dir: Path) -> tuple[SiteConfig, dict[int, int]]:
    """The simulated site's configuration on free ports; returns it and {documented: used}."""
    ports = dict(zip(SIMULATED_PORTS, free_ports(len(SIMULATED_PORTS)), strict=True))
    path = data_dir / "simulated.yaml"
    data_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(simulated_site_text(ports, data_dir / "var"))
    return load_config_text(path.read_text(), str(path)), ports
