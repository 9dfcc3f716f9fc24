"""SDM630 over RTU through a socat pty pair: named device links, as an RS485 adapter appears.

socat (a Debian package `make test` installs) joins two ptys like a null-modem cable and
gives each end a stable path, the way a site config names `/dev/ttyUSB0`.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance.drivers.sdm630 import Sdm630Meter
from appliance.simulation.devices.sdm630_sim import Sdm630Simulator
from tests.drivers.test_sdm630 import as_float32, make_reading


@pytest.fixture
async def socat_pair(tmp_path: Path) -> AsyncIterator[tuple[Path, Path]]:
    socat = shutil.which("socat")
    assert socat is not None, (
        "socat is missing: `make test` installs it (scripts/install-test-servers.sh)"
    )
    meter_end, appliance_end = tmp_path / "ttyMETER", tmp_path / "ttyUSB0"
    process = await asyncio.create_subprocess_exec(
        socat,
        f"pty,raw,echo=0,link={meter_end}",
        f"pty,raw,echo=0,link={appliance_end}",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            if meter_end.exists() and appliance_end.exists():
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("socat did not create the pty links")
        yield meter_end, appliance_end
    finally:
        process.terminate()
        async with asyncio.timeout(5):
            await process.wait()


async def test_rtu_read_through_socat_pty_pair(socat_pair: tuple[Path, Path]) -> None:
    meter_end, appliance_end = socat_pair
    reading = make_reading(total_active_power_w=-1234.5)
    simulator = Sdm630Simulator(lambda: reading, unit_id=7)
    await simulator.start_rtu(str(meter_end), baudrate=9600)
    meter = Sdm630Meter.rtu(str(appliance_end), baudrate=9600, unit_id=7, timeout_s=1.0)
    try:
        assert await meter.read() == as_float32(reading)
    finally:
        await meter.close()
        await simulator.stop()
