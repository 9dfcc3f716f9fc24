"""Device faults injected into the running appliance over the real protocols.

Each test runs the simulated site, the core's pollers and writers and the 500 ms control
cycle in-process on loopback (fixture `running`, conftest.py), injects one fault through a
simulator's `faults` or the plant's fault hooks, and checks the documented end state
(docs/state-machine.md, appliance/control/failsafes.py). Figures measured: docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time

import pytest

from appliance.aio import cancel_and_wait
from appliance.drivers.base import MeterReading
from appliance.store import Quality
from tests.reliability.conftest import MODES, RunningSite, wait_until

pytestmark = pytest.mark.slow

log = logging.getLogger(__name__)

SENSOR_LOSS, EMERGENCY_RECHARGE, BACKUP, FAULT = 11, 10, 12, 14
STALE_AFTER_S = 2.0  # the grid meter's staleness limit (schema default)


async def _maxself_with_power(running: RunningSite, load_offset_w: float = 6000.0) -> None:
    """maxself with the cluster clearly working, so that a ramp-down has something to ramp."""
    running.site.plant.set_load_offset_w(load_offset_w)
    await running.set_mode("maxself")
    await wait_until(lambda: abs(running.writer(1).last_written or 0.0) > 300.0, 15)


def _grid_lost(running: RunningSite) -> bool:
    return running.state == SENSOR_LOSS and running.value("alarms.meter_lost") is True


def _assert_ramp_to_zero(running: RunningSite, since_s: float) -> None:
    """Every node's commands in sensor_loss: x0.75 per cycle from the last command, then 0 W."""
    for node, log in running.submitted.items():
        ramp = [s.watts for s in log if s.at_s >= since_s and s.state == SENSOR_LOSS]
        assert len(ramp) >= 5, (node, ramp)
        for before, after in itertools.pairwise(ramp):
            if after == 0.0:
                assert abs(before * 0.75) < 10.0 or before == 0.0, (node, ramp)
            else:
                assert after == pytest.approx(before * 0.75, rel=1e-6), (node, ramp)
        assert ramp[-1] == 0.0, (node, ramp)


async def test_silent_grid_meter_ramps_down_to_zero_and_recovers(running: RunningSite) -> None:
    await _maxself_with_power(running)
    meter = running.site.simulators[0]  # grid meter
    assert meter.faults is not None
    silent_at = time.monotonic()
    meter.faults.silent = True
    detected_s = await wait_until(lambda: _grid_lost(running), 6)
    # Staleness limit 2 s, plus at most a poll period and a cycle.
    assert detected_s <= STALE_AFTER_S + 1.0, detected_s
    assert running.core.store.get("grid.active_power").quality is not Quality.GOOD
    await wait_until(lambda: all(s.setpoint_w == 0.0 for s in running.site.inverter_simulators), 8)
    await asyncio.sleep(0.6)  # a couple more cycles at 0 W
    _assert_ramp_to_zero(running, silent_at)
    assert running.value("alarms.meter_lost") is True
    meter.faults.silent = False
    back_s = await wait_until(
        lambda: running.state == MODES["maxself"] and running.value("alarms.meter_lost") is False,
        12,
    )
    # The poller backs off while the meter is silent (exponential, with jitter), so the first
    # good reading comes up to one back-off interval after the meter answers again.
    log.info(
        "figure: silent meter detected after %.2f s, control back %.2f s after", detected_s, back_s
    )
    assert back_s < 10.0, back_s
    await wait_until(lambda: abs(running.writer(1).last_written or 0.0) > 100.0, 10)
    assert running.tasks_alive()


async def test_garbage_from_grid_meter_marks_points_bad_and_ramps_down(
    running: RunningSite,
) -> None:
    await _maxself_with_power(running)
    meter = running.site.simulators[0]
    poller = next(p for p in running.core.pollers if "grid" in p.name)
    since = time.monotonic()
    meter.faults.garbage = True
    await wait_until(lambda: _grid_lost(running), 6)
    await wait_until(
        lambda: running.core.store.get("grid.active_power").quality is not Quality.GOOD, 2
    )
    await wait_until(lambda: all(s.setpoint_w == 0.0 for s in running.site.inverter_simulators), 8)
    await asyncio.sleep(0.6)
    _assert_ramp_to_zero(running, since)
    assert not poller.up
    assert running.tasks_alive()  # no crash: every poller, writer and the cycle still run
    meter.faults.garbage = False
    await wait_until(lambda: running.state == MODES["maxself"], 6)
    assert running.value("alarms.meter_lost") is False
    assert running.core.store.get("grid.active_power").quality is Quality.GOOD


async def test_grid_meter_answering_exception_codes_ramps_down_and_recovers(
    running: RunningSite,
) -> None:
    """The meter answers every read with exception 0x04 (its measurement source failed)."""
    await _maxself_with_power(running)
    meter = running.site.simulators[0]
    working = meter._source

    def broken() -> object:
        raise RuntimeError("measurement board failure (injected)")

    meter._source = broken  # type: ignore[assignment]
    since = time.monotonic()
    try:
        await wait_until(lambda: _grid_lost(running), 6)
        await wait_until(
            lambda: all(s.setpoint_w == 0.0 for s in running.site.inverter_simulators), 8
        )
        await asyncio.sleep(0.6)
        _assert_ramp_to_zero(running, since)
        assert running.tasks_alive()
    finally:
        meter._source = working
    await wait_until(lambda: running.state == MODES["maxself"], 6)
    assert running.value("alarms.meter_lost") is False


async def test_silent_bms_never_lets_its_node_discharge(running: RunningSite) -> None:
    # 12 kW more load than the house's: the site wants every watt the cluster can discharge.
    await _maxself_with_power(running, load_offset_w=12_000.0)
    await wait_until(lambda: (running.writer(1).last_written or 0.0) > 300.0, 10)
    bms = running.site.bms_simulators[0]
    since = time.monotonic()
    bms.faults.silent = True
    await wait_until(lambda: running.core.store.get("battery.1.soc").quality is not Quality.GOOD, 6)
    stale_at = time.monotonic()
    await asyncio.sleep(4.0)  # the site keeps asking for discharge meanwhile
    stale_log = [s for s in running.submitted[1] if s.at_s > stale_at]
    assert stale_log, "no setpoints submitted while the BMS was silent"
    assert max(s.watts for s in stale_log) <= 0.0, stale_log
    assert running.site.inverter_simulators[0].setpoint_w <= 0.0
    # The other node keeps controlling: it discharges for the house.
    assert max(s.watts for s in running.submitted[2] if s.at_s > stale_at) > 100.0
    assert running.tasks_alive()
    bms.faults.silent = False
    await wait_until(lambda: running.core.store.get("battery.1.soc").quality is Quality.GOOD, 6)
    await wait_until(lambda: (running.writer(1).last_written or 0.0) > 100.0, 10)
    assert since < stale_at


async def test_bms_protection_alarm_trips_fault_with_zero_power(running: RunningSite) -> None:
    """A cell below the BMS's undervoltage alarm (2.70 V): protection flag -> fault, 0 W."""
    await _maxself_with_power(running)
    running.site.plant.force_cell_voltage_low(1, 2.6)
    await wait_until(lambda: running.state == FAULT, 5)
    tripped_at = time.monotonic()
    await asyncio.sleep(1.5)
    for node, log in running.submitted.items():
        after = [s.watts for s in log if s.at_s > tripped_at]
        assert after, node
        assert all(w == 0.0 for w in after), (node, after)
    assert all(s.setpoint_w == 0.0 for s in running.site.inverter_simulators)
    assert running.value("controller.mode") == MODES["stop"]  # an operator must ask again
    assert running.value("battery.1.alarm_flags") != 0


async def test_inverter_dropping_connection_and_refusing_writes_is_counted_and_recovered(
    running: RunningSite,
) -> None:
    await _maxself_with_power(running)
    inverter = running.site.inverter_simulators[0]
    writer1, writer2 = running.writer(1), running.writer(2)
    failures_before = writer1.failures
    writes2_before = writer2.writes
    inverter.faults.silent = True
    await inverter.drop_connections()
    await wait_until(lambda: writer1.failures > failures_before, 6)
    await asyncio.sleep(3.0)
    # The other node keeps being written every cycle, the cycle keeps its time.
    assert writer2.writes > writes2_before + 4
    assert running.tasks_alive()
    assert running.core.stats.overruns == 0
    inverter.faults.silent = False
    recovered_writes = writer1.writes
    await wait_until(lambda: writer1.writes > recovered_writes + 2, 10)
    await wait_until(lambda: running.core.store.get("inverter.1.active_power").quality
                     is Quality.GOOD, 6)  # fmt: skip


async def test_safety_floor_during_external_setpoint_forces_emergency_recharge(
    running: RunningSite,
) -> None:
    """A cell at 2.95 V: below the floor (3.0 V + 0.05 V), above the BMS alarm (2.70 V)."""
    assert running.command("set_active_power", "controller.active_power_setpoint", 3000.0)
    await running.set_mode("setpoint")
    await wait_until(lambda: (running.writer(1).last_written or 0.0) > 500.0, 15)
    running.site.plant.force_cell_voltage_low(1, 2.95)
    await wait_until(lambda: running.state == EMERGENCY_RECHARGE, 5)
    assert running.value("alarms.battery_floor") is True
    floor_at = time.monotonic()
    await asyncio.sleep(1.5)
    node1 = [s.watts for s in running.submitted[1] if s.at_s > floor_at]
    node2 = [s.watts for s in running.submitted[2] if s.at_s > floor_at]
    # Node 1 recharges at 20 % of its 5 kW rating (at most), node 2 is held at 0 W:
    # the 3 kW discharge setpoint is overridden.
    assert node1
    assert all(-1000.0 - 1e-6 <= w < 0.0 for w in node1), node1
    assert all(w == 0.0 for w in node2), node2
    running.site.plant.force_cell_voltage_low(1, None)
    await wait_until(lambda: running.state != EMERGENCY_RECHARGE, 10)


async def test_grid_voltage_collapse_goes_off_grid_at_zero_and_returns_after_the_delay(
    running: RunningSite,
) -> None:
    """All phases at 100 V (below 230 V - 40 % = 138 V) as the grid meter reads them.

    The plant has no voltage hook, so the collapse is injected at the grid meter's source:
    the meter serves the plant's reading with its phase voltages replaced.
    """
    await _maxself_with_power(running)
    meter = running.site.simulators[0]
    working = meter._source

    def collapsed() -> MeterReading:
        return dataclasses.replace(working(), voltage_v=(100.0, 100.0, 100.0))

    meter._source = collapsed
    try:
        detected_s = await wait_until(lambda: running.state == BACKUP, 5)
        assert running.value("alarms.off_grid") is True
        off_at = time.monotonic()
        await asyncio.sleep(1.0)
        for node, submitted in running.submitted.items():
            after = [s.watts for s in submitted if s.at_s > off_at]
            assert after, node
            assert all(w == 0.0 for w in after), (node, after)
        assert all(s.setpoint_w == 0.0 for s in running.site.inverter_simulators)
    finally:
        meter._source = working
    back_at = time.monotonic()
    # backup -> stop only after the phases held for grid_return_delay_s (10 s); the requested
    # mode (maxself) then applies again in the same cycle.
    back_s = await wait_until(lambda: running.value("alarms.off_grid") is False, 15)
    await wait_until(lambda: running.state == MODES["maxself"], 2)
    log.info("figure: off grid detected after %.2f s, stop %.2f s after the grid came back",
             detected_s, back_s)  # fmt: skip
    assert back_s >= 9.5, back_s
    assert running.value("alarms.off_grid") is False
    assert time.monotonic() > back_at


async def test_sml_line_noise_is_rejected_and_a_corrupted_line_marks_the_meter_bad(
    running: RunningSite,
) -> None:
    """Noise between telegrams is skipped; telegrams failing their CRC are never taken."""
    meter = running.site.sml_simulators["sml_meter"]
    store = running.core.store
    await wait_until(lambda: store.get("sml_meter.active_power").quality is Quality.GOOD, 10)
    meter.faults.garbage = True  # line noise and a cut-off frame before each telegram
    await asyncio.sleep(4.0)
    assert store.get("sml_meter.active_power").quality is Quality.GOOD
    assert store.get("sml_meter.comm_ok").value is True
    meter.faults.garbage = False
    meter.faults.bad_crc = True  # every telegram corrupted: nothing valid arrives
    lost_s = await wait_until(
        lambda: store.get("sml_meter.active_power").quality is not Quality.GOOD, 8
    )
    assert lost_s <= 2.0 + 2.5  # its 2 s staleness, a poll and a telegram period
    meter.faults.bad_crc = False
    await wait_until(lambda: store.get("sml_meter.active_power").quality is Quality.GOOD, 10)
    assert running.tasks_alive()


async def test_a_zigbee_clamp_that_stops_reporting_goes_bad_and_control_goes_on(
    running: RunningSite,
) -> None:
    """The clamp only measures the house: losing it is an alarm, not a control fault."""
    await _maxself_with_power(running)

    async def supervise() -> None:  # the test outlasts the heartbeat timeout: a SCADA beats
        for counter in itertools.count(1):
            running.command("heartbeat", "heartbeat.counter", counter % 65536)
            await asyncio.sleep(2.0)

    scada = asyncio.create_task(supervise(), name="test.heartbeat")
    try:
        await _lose_the_clamp(running)
    finally:
        await cancel_and_wait([scada])


async def _lose_the_clamp(running: RunningSite) -> None:
    store = running.core.store
    await wait_until(
        lambda: store.get("consumption_clamp.active_power").quality is Quality.GOOD, 15
    )
    for feed in running.site.clamp_feeds.values():
        await feed.stop()  # the simulated clamp hears nothing more and stops reporting
    # 5 s until the radio silences the clamp, then its 30 s staleness limit, then a poll.
    lost_s = await wait_until(
        lambda: store.get("consumption_clamp.active_power").quality is not Quality.GOOD, 45
    )
    log.info("figure: clamp reports stopped, its points not GOOD after %.1f s", lost_s)
    # Stale first (Uncertain), then declared down at the next failed poll.
    await wait_until(lambda: store.get("consumption_clamp.comm_ok").value is False, 5)
    assert store.get("consumption_clamp.active_power").quality is Quality.BAD
    assert running.state == MODES["maxself"]
    assert store.get("grid.active_power").quality is Quality.GOOD
    assert abs(running.writer(1).last_written or 0.0) > 100.0  # still controlling
    assert running.tasks_alive()
