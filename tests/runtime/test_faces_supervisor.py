"""A face that crashes is restarted; the control cycle does not notice."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.config import load_config
from appliance.runtime.core import Core
from appliance.runtime.faces_supervisor import FacesSupervisor

pytestmark = pytest.mark.slow


def metrics_up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as response:
            return b"appliance_appliance_alive_counter_total" in response.read()
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
    core = Core(config)
    supervisor = FacesSupervisor(core, config)
    supervisor.start()
    core.cycle_hooks.append(supervisor.on_cycle)
    cycles = asyncio.create_task(core.run_cycles(), name="control.cycle")
    port = sim_ports[9464]
    try:
        await wait_until(lambda: metrics_up(port), 20)
        assert supervisor.process is not None
        first_pid = supervisor.process.pid
        assert first_pid is not None
        cycles_before = core.stats.cycles
        os.kill(first_pid, signal.SIGKILL)
        await wait_until(lambda: not metrics_up(port), 5)
        await wait_until(lambda: metrics_up(port), 20)
        assert supervisor.process is not None
        assert supervisor.process.pid != first_pid
        assert core.face_restarts == 1
        assert core.store.get("appliance.face_restarts").value == 1
        # Control went on through the outage, on time.
        assert core.stats.cycles > cycles_before + 2
        assert core.stats.overruns == 0
        assert max(core.stats.lateness_s) < 0.1
    finally:
        cycles.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await cycles
        await asyncio.to_thread(supervisor.stop)
        await core.close()
