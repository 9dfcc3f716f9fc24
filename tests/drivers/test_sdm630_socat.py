"""SDM630 over RTU through a socat pty pair: named device links, as an RS485 adapter appears.

socat (a Debian package `make test` installs) joins two ptys like a null-modem cable and
gives each end a stable path, the way a site config names `/dev/ttyUSB0`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from appliance.drivers.sdm630 import Sdm630Meter
from appliance.simulation.devices.sdm630_sim import Sdm630Simulator
from tests.drivers.test_sdm630 import as_float32, make_reading


@pytest.fixture
async def socat_pair(
    tmp_path: Path, socat_link: Callable[[Path, Path], AbstractAsyncContextManager[None]]
) -> AsyncIterator[tuple[Path, Path]]:
    meter_end, appliance_end = tmp_path / "ttyMETER", tmp_path / "ttyUSB0"
    async with socat_link(meter_end, appliance_end):
        yield meter_end, appliance_end


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
