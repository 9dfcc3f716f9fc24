"""The simulated site over the real protocols: every device's points turn Good within 5 s.

The plant's simulators (SDM630 over Modbus TCP, SunSpec inverters over Modbus TCP, Pylontech
BMS frames through a socketcand bridge) and the core's drivers meet on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from appliance.aio import cancel_and_wait
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
        assert not await cancel_and_wait([*tasks, stepping])
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
        assert not await cancel_and_wait(tasks)
        await core.close()
        await site.stop()


@pytest.fixture
def heater_config_file(sim_config_file: Path) -> Path:
    """The simulated site with a PWM heater on channel 2 of the boiler's relay module."""
    text = sim_config_file.read_text()
    boiler = "      rated_power_w: 2000\n"
    assert boiler in text
    heater = (
        "    - name: heater\n      kind: pwm_heater\n"
        + text.split("    - name: boiler\n", 1)[1]
        .split("      channels:", 1)[0]
        .split("kind: relay\n", 1)[1]
        + "      channels: [2]\n      rated_power_w: 3000\n      duty_period_s: 2\n"
    )
    sim_config_file.write_text(text.replace(boiler, boiler + heater, 1))
    return sim_config_file


async def test_a_pwm_heater_is_time_proportioned_on_its_relay(heater_config_file: Path) -> None:
    """50 % duty on a 2 s period: the relay closes for about 1 s and opens for about 1 s."""
    config = load_config(heater_config_file)
    assert config.devices.surplus_loads[1].kind == "pwm_heater"
    site = SimulatedSite(config)
    await site.start()
    core = Core(config)
    await core.open_devices()
    heater = core.devices.heater_writers[2]
    tasks = [asyncio.create_task(heater.run(), name="actuate[heater]")]
    try:
        seen: list[bool] = []
        for _ in range(30):  # 3 s at the control period of the test, 0.1 s
            heater.submit(50.0)
            await asyncio.sleep(0.1)
            seen.append(site.relay_simulators[next(iter(site.relay_simulators))].relays[1])
        on_share = sum(seen) / len(seen)
        assert 0.25 < on_share < 0.75, seen
        assert await heater.write_safe(0.0)
        await asyncio.sleep(0.1)
        assert site.relay_simulators[next(iter(site.relay_simulators))].relays[1] is False
    finally:
        assert not await cancel_and_wait(tasks)
        await core.close()
        await site.stop()
