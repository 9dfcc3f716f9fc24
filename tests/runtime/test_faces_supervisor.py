"""A face that crashes is restarted; the control cycle does not notice.

The site runs in maxself over the real protocols (simulated devices on loopback) while the
faces process is killed: setpoints keep flowing to the inverters on time, the state stays
maxself, and the faces (metrics, OPC UA) come back.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.aio import cancel_and_wait
from appliance.config import load_config
from appliance.control.command_types import CommandRequest
from appliance.runtime.core import Core
from appliance.runtime.faces_supervisor import FacesSupervisor
from appliance.simulation.site import SimulatedSite

pytestmark = pytest.mark.slow

MAXSELF = 2


def metrics_up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as response:
            return b"appliance_appliance_cycles_total" in response.read()
    except OSError:
        return False


async def wait_until(predicate: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await asyncio.to_thread(predicate):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout_s} s")


async def test_killed_faces_process_is_restarted_while_control_keeps_its_time(
    sim_config_file: Path, sim_ports: dict[int, int]
) -> None:
    config = load_config(sim_config_file)
    site = SimulatedSite(config)
    await site.start()
    core = Core(config)
    await core.open_devices()
    supervisor = FacesSupervisor(core, config)
    supervisor.start()
    core.cycle_hooks.append(supervisor.on_cycle)
    writers = list(core.devices.inverter_writers.values())
    tasks = [asyncio.create_task(p.run(), name=f"poll[{p.name}]") for p in core.pollers]
    tasks += [asyncio.create_task(w.run(), name=f"actuate[{w.name}]") for w in writers]
    tasks += [asyncio.create_task(core.run_cycles(), name="control.cycle")]
    tasks += [asyncio.create_task(site.run(), name="plant")]
    port = sim_ports[9464]
    try:
        for _ in range(100):  # maxself needs the first BMS frames
            request = CommandRequest(1, "test", "set_mode", "controller.mode", MAXSELF)
            if core.handle_command(request).accepted:
                break
            await asyncio.sleep(0.1)
        await wait_until(lambda: metrics_up(port), 20)
        await wait_until(lambda: core.store.get("controller.state").value == MAXSELF, 10)
        assert supervisor.process is not None
        first_pid = supervisor.process.pid
        assert first_pid is not None
        cycles_before = core.stats.cycles
        writes_before = sum(w.writes for w in writers)
        os.kill(first_pid, signal.SIGKILL)
        await wait_until(lambda: not metrics_up(port), 5)
        down_cycles = core.stats.cycles
        await wait_until(lambda: metrics_up(port), 20)
        assert supervisor.process is not None
        assert supervisor.process.pid != first_pid
        assert core.face_restarts == 1
        assert core.store.get("appliance.face_restarts").value == 1
        # Control went on through the outage, on time, still in maxself and still writing.
        assert down_cycles >= cycles_before
        assert core.stats.cycles > cycles_before + 2
        assert core.stats.overruns == 0
        assert max(core.stats.lateness_s) < 0.1
        assert core.store.get("controller.state").value == MAXSELF
        assert sum(w.writes for w in writers) > writes_before + 2 * len(writers)
    finally:
        assert not await cancel_and_wait(tasks)
        await asyncio.to_thread(supervisor.stop)
        await core.close()
        await site.stop()
