"""Helpers of the fleet tests (the `fleet` fixture is in conftest.py): running Ansible,
the lab hosts' variables, building wheels.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
EXAMPLE_INVENTORY = ANSIBLE_DIR / "inventories" / "example"
APPLIANCE_HOSTS = ("hof-meier", "cluster-nord")
MONITOR_HOST = "fleet-monitor"
#: What the vault holds in the tests; never printed by a run (no_log, diff: false).
INFLUX_TOKEN = "influx-token-Ke9vX2"  # noqa: S105 - a throw-away value for the test vault
GRAFANA_TOKEN = "grafana-token-Pq7rT4"  # noqa: S105
RUN_TIMEOUT_S = 300

_RECAP = re.compile(
    r"^(?P<host>\S+)\s+: ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)


@dataclass(frozen=True)
class Run:
    args: list[str]
    returncode: int
    output: str  # stdout and stderr together, in order

    def recap(self) -> dict[str, dict[str, int]]:
        """PLAY RECAP counts per host: {"hof-meier": {"ok": 27, "changed": 0, ...}}."""
        return {
            m["host"]: {k: int(m[k]) for k in ("ok", "changed", "unreachable", "failed")}
            for m in _RECAP.finditer(self.output)
        }

    def explain(self) -> str:
        return f"$ {' '.join(self.args)}\n(exit {self.returncode})\n{self.output[-6000:]}"


@dataclass(frozen=True)
class Fleet:
    bin: Path
    work: Path
    root: Path
    inventory: Path
    overrides: Path
    vault_password: Path
    dist: Path
    version: str
    first_run: Run

    def prefix(self, host: str) -> Path:
        return self.root / host

    @property
    def venv(self) -> Path:
        """The appliance hosts' shared virtual environment."""
        return self.work / "venv"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
            "ANSIBLE_HOME": str(self.work / "ansible-home"),
            "ANSIBLE_LOCAL_TEMP": str(self.work / "ansible-tmp"),
            "ANSIBLE_REMOTE_TEMP": str(self.work / "ansible-tmp"),
            "ANSIBLE_NOCOLOR": "1",
            "NO_COLOR": "1",
            "PY_COLORS": "0",
        }

    def run(self, *args: str, cwd: Path = ANSIBLE_DIR) -> Run:
        command = [str(a) for a in args]
        result = subprocess.run(
            command,
            cwd=cwd,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
        return Run(command, result.returncode, result.stdout)

    def playbook(self, playbook: str, *args: str, inventory: list[Path] | None = None) -> Run:
        sources: list[str] = []
        for source in inventory or [self.inventory]:
            sources += ["-i", str(source)]
        return self.run(
            str(self.bin / "ansible-playbook"),
            *sources,
            playbook,
            "-e",
            f"@{self.overrides}",
            "--vault-password-file",
            str(self.vault_password),
            *args,
        )


def ansible_bin() -> Path:
    """.venv-ansible/bin with the pinned ansible-core and ansible-lint (made when missing)."""
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "ansible-venv.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"scripts/ansible-venv.sh failed:\n{result.stderr[-4000:]}"
    return Path(result.stdout.strip().splitlines()[-1])


def build_wheel(source: Path, dist: Path) -> Path:
    """`pip wheel <source> --no-deps`: the wheel `make dist` builds and the role installs."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q", "-w", str(dist)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    wheels = sorted(dist.glob("appliance-*.whl"), key=lambda p: p.stat().st_mtime)
    assert wheels, f"no wheel in {dist}"
    return wheels[-1]


def lab_host_vars(ports: list[int], site_id: str = "lab") -> dict[str, object]:
    """A simulated site on loopback (the plant plays every device), for a running appliance."""
    metrics, modbus, grid, pv, can, inverter1, inverter2 = ports
    local = "127.0.0.1"
    return {
        "appliance_site_id": site_id,
        "appliance_site_name": "Simulated lab site",
        "appliance_simulate": True,
        "appliance_simulation": {"seed": 1, "battery_nodes": 2, "pv_peak_w": 8000},
        "appliance_influxdb": {},
        "appliance_faces_bind": local,
        "appliance_metrics_port": metrics,
        # No OPC UA: its first start makes a certificate, which only slows the test down.
        "appliance_opcua": {"enabled": False},
        "appliance_modbus": {"port": modbus},
        "appliance_meters": {
            "grid_meter": {
                "kind": "sdm630",
                "connection": {"type": "tcp", "host": local, "port": grid},
            },
            "pv_meter": {
                "kind": "sdm630",
                "connection": {"type": "tcp", "host": local, "port": pv},
            },
        },
        "appliance_battery_nodes": [
            {
                "name": f"node{i}",
                "bms": {
                    "kind": "pylontech_can",
                    "connection": {
                        "type": "can",
                        "interface": "socketcand",
                        "host": local,
                        "port": can,
                        "channel": f"sim-node{i}",
                    },
                },
                "inverter": {
                    "kind": "sunspec",
                    "connection": {"type": "tcp", "host": local, "port": port},
                },
            }
            for i, port in ((1, inverter1), (2, inverter2))
        ],
    }


def base_python() -> str:
    """The Python the appliance venvs are made from (3.11+, outside any venv)."""
    return getattr(sys, "_base_executable", sys.executable)
