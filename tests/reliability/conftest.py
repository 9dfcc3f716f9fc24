"""The running appliance in-process on free loopback ports, for fault-injection tests.

`running` starts the simulated site (calm plant: no clouds, no appliance events, so the only
disturbance is the fault under test), the core with its pollers, inverter writers and the
control cycle, and records every setpoint the cycle submits to each inverter writer. It
stops everything, in reverse order, whatever the test did.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from appliance.aio import cancel_and_wait
from appliance.config import load_config
from appliance.config.schema import SiteConfig
from appliance.control.command_types import CommandRequest
from appliance.control.modes import STATE_NUMBER
from appliance.runtime.actuators import LatestValueWriter
from appliance.runtime.core import GRID_POLL_LEAD_S, Core
from appliance.simulation.plant import Plant
from appliance.simulation.site import SimulatedSite
from appliance.simulation.site_config import (
    SIMULATED_PORTS,
    free_ports,
    simulated_site_on_free_ports,
    simulated_site_text,
)

STOP_TIMEOUT_S = 10.0
MODES = {"stop": 0, "activate": 1, "maxself": 2, "chargeonly": 3, "setpoint": 4}


@dataclass(frozen=True, slots=True)
class Submitted:
    """One setpoint the control cycle handed to an inverter writer."""

    at_s: float  # time.monotonic()
    state: int  # controller.state right after the cycle that produced it
    watts: float


@dataclass
class RunningSite:
    config: SiteConfig
    ports: dict[int, int]
    site: SimulatedSite
    core: Core
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    #: node (1-based) -> every setpoint submitted to its writer, in order.
    submitted: dict[int, list[Submitted]] = field(default_factory=dict)

    def writer(self, node: int) -> LatestValueWriter[float]:
        return self.core.devices.inverter_writers[node]

    def value(self, point_id: str) -> object:
        return self.core.store.get(point_id).value

    @property
    def state(self) -> object:
        return self.value("controller.state")

    def command(self, command: str, point_id: str, value: float) -> bool:
        request = CommandRequest(1, "reliability-test", command, point_id, value)
        return self.core.handle_command(request).accepted

    async def set_mode(self, mode: str, timeout_s: float = 10.0) -> None:
        """Request `mode` (retried: grid modes are refused until the first BMS frames)."""
        deadline = time.monotonic() + timeout_s
        while not self.command("set_mode", "controller.mode", MODES[mode]):
            if time.monotonic() > deadline:
                raise AssertionError(f"mode {mode} refused for {timeout_s} s")
            await asyncio.sleep(0.1)
        await wait_until(lambda: self.state == MODES[mode], timeout_s)

    def tasks_alive(self) -> bool:
        return all(not t.done() for t in self.tasks)

    def _record(self, node: int, writer: LatestValueWriter[float]) -> None:
        submit = writer.submit
        log = self.submitted.setdefault(node, [])

        def recording(value: float) -> None:
            # The cycle submits before publishing its points: the state is this cycle's.
            log.append(
                Submitted(time.monotonic(), STATE_NUMBER.get(self.core.controller.state, -1), value)
            )
            submit(value)

        writer.submit = recording  # type: ignore[method-assign]


async def wait_until(predicate: Callable[[], bool], timeout_s: float) -> float:
    """Seconds until `predicate()` holds, polled every 20 ms; AssertionError after the timeout."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def start_running(tmp_path: Path) -> RunningSite:
    config, ports = simulated_site_on_free_ports(tmp_path)
    site = SimulatedSite(config)
    calm = dataclasses.replace(site.plant.params, cloud_transients=False, appliance_events=False)
    site.plant = Plant(calm)
    await site.start()
    core = Core(config)
    running = RunningSite(config, ports, site, core)
    try:
        await core.open_devices()
        for node, writer in core.devices.inverter_writers.items():
            running._record(node, writer)
        running.tasks = [asyncio.create_task(p.run(), name=f"poll[{p.name}]") for p in core.pollers]
        running.tasks += [
            asyncio.create_task(w.run(), name=f"actuate[{w.name}]")
            for w in core.devices.inverter_writers.values()
        ]
        running.tasks.append(
            asyncio.create_task(core.run_cycles(GRID_POLL_LEAD_S), name="control.cycle")
        )
        running.tasks.append(asyncio.create_task(site.run(), name="plant"))
    except BaseException:
        await stop_running(running)
        raise
    return running


async def stop_running(running: RunningSite) -> None:
    """Stop in reverse order; each step is bounded so that a hang names itself and fails.

    Every step runs even if an earlier one hung, so that one hang does not leak the rest.
    """
    problems: list[str] = []
    stuck = await cancel_and_wait(running.tasks, STOP_TIMEOUT_S)
    if stuck:
        problems.append(f"tasks did not stop: {sorted(t.get_name() for t in stuck)}")
    steps: list[tuple[str, Awaitable[object]]] = [
        ("Core.close()", running.core.close()),
        ("SimulatedSite.stop()", running.site.stop()),
    ]
    for step, awaitable in steps:
        try:
            await _bounded(step, awaitable)
        except AssertionError as exc:
            problems.append(str(exc))
    assert problems == [], "\n".join(problems)


async def _bounded(step: str, awaitable: Awaitable[object]) -> None:
    try:
        async with asyncio.timeout(STOP_TIMEOUT_S):
            await awaitable
    except TimeoutError:
        stacks = io.StringIO()
        for task in asyncio.all_tasks():
            stacks.write(f"{task!r}\n")
            task.print_stack(file=stacks)
        raise AssertionError(
            f"{step} did not finish within {STOP_TIMEOUT_S} s; tasks:\n{stacks.getvalue()}"
        ) from None


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[RunningSite]:
    site = await start_running(tmp_path)
    try:
        yield site
    finally:
        await stop_running(site)


# -- the appliance as a subprocess, against a site the test owns ----------------------


Received = list[tuple[float, int, float]]  # (loop time = time.monotonic(), node, watts)


def write_config(tmp_path: Path, ports: dict[int, int], initial_mode: str, name: str) -> Path:
    text = simulated_site_text(ports, tmp_path / "var")
    text = text.replace("initial_mode: stop", f"initial_mode: {initial_mode}")
    path = tmp_path / name
    path.write_text(text)
    return path


def start(config: Path, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "appliance", "run", "--config", str(config)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def finish(process: subprocess.Popen[str], sig: int) -> tuple[int, str]:
    if process.poll() is None:
        process.send_signal(sig)
    try:
        _, err = await asyncio.to_thread(process.communicate, timeout=30)
    except subprocess.TimeoutExpired as exc:
        # A child (faces, simulation) outlived the core and still holds the output pipes.
        process.kill()
        await asyncio.to_thread(
            subprocess.run, ["pkill", "-KILL", "-f", "multiprocessing.spawn"], check=False
        )
        tail = str(exc.stderr or "")[-3000:]
        raise AssertionError(f"the appliance's children did not stop: {tail}") from None
    return process.returncode, err


@dataclasses.dataclass
class OwnedSite:
    site: SimulatedSite
    ports: dict[int, int]
    received: Received


@pytest.fixture
async def owned_site(tmp_path: Path) -> AsyncIterator[OwnedSite]:
    """The simulated site in the test process; every setpoint an inverter takes is recorded."""
    ports = dict(zip(SIMULATED_PORTS, free_ports(len(SIMULATED_PORTS)), strict=True))
    site = SimulatedSite(load_config(write_config(tmp_path, ports, "stop", "site.yaml")))
    site.plant = Plant(
        dataclasses.replace(site.plant.params, cloud_transients=False, appliance_events=False)
    )
    site.plant.set_load_offset_w(6000.0)  # the house needs the battery: maxself discharges
    await site.start()
    received: Received = []
    for node, inverter in enumerate(site.inverter_simulators, start=1):
        inverter.setpoint_listeners.append(
            lambda at, watts, node=node: received.append((at, node, watts))  # type: ignore[misc]
        )
    stepping = asyncio.create_task(site.run(), name="plant")
    try:
        yield OwnedSite(site, ports, received)
    finally:
        stepping.cancel()
        await asyncio.gather(stepping, return_exceptions=True)
        await site.stop()
