"""The simulated site over the real protocols: every device's points turn Good within 5 s.

The plant's simulators (SDM630 over Modbus TCP, SunSpec inverters over Modbus TCP, Pylontech
BMS frames through a socketcand bridge) and the core's drivers meet on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest

from appliance.config import load_config
from appliance.runtime.core import Core
from appliance.simulation.site import SimulatedSite
from appliance.store import Quality

pytestmark = pytest.mark.slow

MEASURED_BLOCKS = ("grid.", "pv.", "battery.", "inverter.", "surplus.")


async def test_all_device_points_turn_good_within_five_seconds(sim_config_file: Path) -> None:
    config = load_config(sim_config_file)
    site = SimulatedSite(config)
    await site.start()
    core = Core(config)
    await core.open_devices()
    tasks = [asyncio.create_task(p.run(), name=f"poll[{p.name}]") for p in core.pollers]
    stepping = asyncio.create_task(site.run(), name="plant")
    try:
        started = time.monotonic()
        expected = [
            p.id
            for p in core.table
            # setpoints and surplus modes are written by the controller and commands, not read
            if p.id.startswith(MEASURED_BLOCKS) and not p.id.endswith((".setpoint", ".mode"))
        ]
        not_good: list[str] = expected
        while time.monotonic() - started < 5.0:
            snapshot = core.store.snapshot(expected)
            not_good = [pid for pid, s in snapshot.items() if s.quality is not Quality.GOOD]
            if not not_good:
                break
            await asyncio.sleep(0.2)
        assert not_good == []
        # The readings are the plant's, through the protocols (within the devices' resolution).
        state = site.plant.state
        assert core.store.get("battery.1.soc").value == pytest.approx(
            state.nodes[0].soc_pct, abs=1.0
        )
        assert core.store.get("pv.active_power").value == pytest.approx(
            state.pv_w, rel=0.2, abs=200
        )
    finally:
        for task in [*tasks, stepping]:
            task.cancel()
        for task in [*tasks, stepping]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await core.close()
        await site.stop()


async def test_a_surplus_relay_switched_by_the_core_switches_the_plant_load(
    sim_config_file: Path,
) -> None:
    """Relay write over Modbus TCP -> simulated WP8024 -> plant load; read back as surplus.1.active."""
    config = load_config(sim_config_file)
    site = SimulatedSite(config)
    await site.start()
    core = Core(config)
    await core.open_devices()
    relays = core.devices.load_writers[1]
    tasks = [asyncio.create_task(p.run(), name=f"poll[{p.name}]") for p in core.pollers]
    tasks.append(asyncio.create_task(relays.run(), name="actuate[boiler]"))
    try:
        before = site.plant.step(0.1).load_w
        relays.submit((True,))
        for _ in range(50):
            if core.store.get("surplus.1.active").value is True:
                break
            await asyncio.sleep(0.1)
        assert core.store.get("surplus.1.active").value is True
        assert core.store.get("surplus.1.power").value == 2000.0
        assert site.plant.step(0.1).load_w - before == pytest.approx(2000.0, abs=300.0)
        assert await relays.write_safe((False,))
        assert site.plant.step(0.1).load_w == pytest.approx(before, abs=300.0)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await core.close()
        await site.stop()
