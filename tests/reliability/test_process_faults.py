"""Process faults: `appliance run --config` as a subprocess against a simulated site it does not own.

The test process runs the simulated site (so the test can read what each simulated inverter
was told); the appliance runs as a person runs it, without --simulate, and is stopped with
SIGTERM or killed with SIGKILL. Figures measured: docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.simulation.site_config import SIMULATED_PORTS, free_ports, simulated_site_text
from tests.reliability.conftest import OwnedSite, finish, start, wait_until, write_config

pytestmark = pytest.mark.slow


async def test_sigterm_during_maxself_leaves_every_inverter_at_zero(
    owned_site: OwnedSite, tmp_path: Path
) -> None:
    config = write_config(tmp_path, owned_site.ports, "maxself", "maxself.yaml")
    process = start(config, tmp_path)
    try:
        inverters = owned_site.site.inverter_simulators
        await wait_until(lambda: all(abs(i.setpoint_w) > 100.0 for i in inverters), 30)
    finally:
        code, err = await finish(process, signal.SIGTERM)
    assert code == 0, err
    assert [i.setpoint_w for i in inverters] == [0.0, 0.0]
    for node in (1, 2):  # the last setpoint each inverter received is the shutdown's 0 W
        assert [w for _, n, w in owned_site.received if n == node][-1] == 0.0
    assert "0 W written at shutdown" in err


async def test_restart_after_sigkill_starts_in_stop_and_writes_no_power(
    owned_site: OwnedSite, tmp_path: Path
) -> None:
    inverters = owned_site.site.inverter_simulators
    running = write_config(tmp_path, owned_site.ports, "maxself", "maxself.yaml")
    process = start(running, tmp_path)
    try:
        await wait_until(lambda: all(abs(i.setpoint_w) > 100.0 for i in inverters), 30)
    finally:
        code, _ = await finish(process, signal.SIGKILL)
    assert code == -signal.SIGKILL
    # Killed: nobody wrote 0 W, the inverters hold the last command (until their revert timer).
    assert all(abs(i.setpoint_w) > 100.0 for i in inverters)
    restarted_at = time.monotonic()
    process = start(write_config(tmp_path, owned_site.ports, "stop", "stop.yaml"), tmp_path)
    try:
        await wait_until(lambda: [i.setpoint_w for i in inverters] == [0.0, 0.0], 30)
        await asyncio.sleep(1.5)  # several cycles after the first write
    finally:
        code, err = await finish(process, signal.SIGTERM)
    assert code == 0, err
    after = [w for at, _, w in owned_site.received if at > restarted_at]
    assert after, "the restarted appliance wrote nothing"
    assert all(w == 0.0 for w in after), after


def test_config_with_a_bad_value_is_refused_naming_the_field(tmp_path: Path) -> None:
    ports = dict(zip(SIMULATED_PORTS, free_ports(len(SIMULATED_PORTS)), strict=True))
    text = simulated_site_text(ports, tmp_path / "var")
    text = text.replace("max_charge_w: 5000", "max_charge_w: -5000", 1)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "run", "--config", str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "max_charge_w" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
