"""The core's cycle and command handling, driven by a manual clock (no sockets, no sleeping)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator

import pytest

from appliance.clock import ManualClock
from appliance.config import simulated_site_config
from appliance.control.command_types import CommandRequest, RejectCode
from appliance.runtime.core import Core
from appliance.store import Quality


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def core(clock: ManualClock) -> AsyncIterator[Core]:
    # pymodbus clients are made on the running loop, so the core is built inside one.
    built = Core(simulated_site_config(), clock=clock)
    yield built
    await built.close()


def request(command: str, point_id: str | None, value: float | None) -> CommandRequest:
    return CommandRequest(1, "test", command, point_id, value)


async def test_cycle_counts_alive_and_records_lateness_and_overruns(core: Core) -> None:
    core.cycle(0.002)
    core.cycle(0.7)  # later than a whole 500 ms period: an overrun
    assert core.store.get("appliance.alive_counter").value == 2
    assert core.store.get("appliance.loop_overruns").value == 1
    assert core.store.get("appliance.loop_lateness").value == pytest.approx(700.0)


async def test_configuration_values_are_published_at_start(core: Core) -> None:
    assert core.store.get("controller.grid_target").value == 0.0
    assert core.store.get("heartbeat.timeout").value == 20.0
    assert core.store.get("controller.mode").value == 0  # initial_mode: stop


async def test_house_consumption_is_derived_only_from_fresh_inputs(clock: ManualClock) -> None:
    config = simulated_site_config()
    # Derived only without a consumption clamp (the simulated site measures it with one).
    config = dataclasses.replace(
        config, devices=dataclasses.replace(config.devices, consumption_clamp=None)
    )
    core = Core(config, clock=clock)
    core.store.put_many(
        {
            "grid.active_power": 1000.0,
            "pv.active_power": 3000.0,
            "inverter.1.active_power": -1500.0,
            "inverter.2.active_power": -500.0,
        }
    )
    core.cycle(0.0)
    # house = grid + PV + battery discharge = 1000 + 3000 - 2000
    assert core.store.read_fresh("house.active_power") == (True, 2000.0)
    clock.advance(2.5)  # the grid reading is now stale
    core.cycle(0.0)
    assert core.store.get("house.active_power").quality is Quality.STALE


async def test_heartbeat_command_is_accepted_and_supervised_with_timeout(
    core: Core, clock: ManualClock
) -> None:
    result = core.handle_command(request("heartbeat", "heartbeat.counter", 41))
    assert result.accepted
    core.cycle(0.0)
    assert core.store.get("heartbeat.ok").value is True
    assert core.store.get("heartbeat.counter").value == 41
    clock.advance(20.5)
    core.cycle(0.0)
    assert core.store.get("heartbeat.ok").value is False


@pytest.mark.parametrize(
    ("command", "point_id", "value", "code", "reason"),
    [
        ("set_grid_target", "controller.grid_target", 2e6, RejectCode.OUT_OF_RANGE, "out of range"),
        ("set_mode", "controller.mode", 7, RejectCode.OUT_OF_RANGE, "is not a state"),
        ("set_mode", "grid.active_power", 1, RejectCode.NOT_WRITABLE, "read-only"),
        (
            "set_grid_target",
            "controller.grid_target",
            float("nan"),
            RejectCode.INVALID_VALUE,
            "finite",
        ),
        ("launch", None, None, RejectCode.INVALID_VALUE, "unknown command"),
    ],
)
async def test_invalid_commands_are_rejected_with_reason_and_change_nothing(
    core: Core,
    command: str,
    point_id: str | None,
    value: float | None,
    code: RejectCode,
    reason: str,
) -> None:
    before = core.store.snapshot(["controller.grid_target", "controller.mode"])
    result = core.handle_command(request(command, point_id, value))
    assert not result.accepted
    assert result.code is code
    assert reason in result.reason
    assert core.store.snapshot(["controller.grid_target", "controller.mode"]) == before


async def test_accepted_setpoint_command_updates_the_point(core: Core) -> None:
    result = core.handle_command(request("set_grid_target", "controller.grid_target", -300.0))
    assert result.accepted
    assert core.store.get("controller.grid_target").value == -300.0


async def test_a_blocked_loop_is_counted_and_logged_as_an_overrun(
    core: Core, caplog: pytest.LogCaptureFixture
) -> None:
    """The schedule resynchronises after an overrun instead of running catch-up cycles."""
    core.period_s = 0.05
    blocked = False

    def block_once() -> None:
        nonlocal blocked
        if not blocked:
            blocked = True
            time.sleep(0.16)  # the cycle's thread is held for more than three periods

    core.cycle_hooks.append(block_once)
    caplog.set_level(logging.WARNING, logger="appliance.runtime.core")
    task = asyncio.create_task(core.run_cycles())
    await asyncio.sleep(0.5)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert core.stats.overruns == 1
    assert any("overrun 1 since start" in r.getMessage() for r in caplog.records)
    # No burst: about 0.5 s / 0.05 s = 10 cycles minus the ~3 skipped, not 10 plus catch-up.
    assert core.stats.cycles <= 10
