"""Composition root: start the simulated site (if asked), the core, and the faces process.

Process layout (docs/architecture.md explains the choice):
  main process     the core: pollers, store, the control cycle, the faces supervisor
  faces process    OPC UA, Modbus slave, archive, metrics; restarted if it dies
  simulated site   the plant and its device simulators (only with --simulate)
SIGINT and SIGTERM stop everything in reverse order and `appliance run` exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.resources
import logging
import multiprocessing
import os
import signal
import sys
from multiprocessing.process import BaseProcess

from appliance import __version__
from appliance.aio import cancel_and_wait
from appliance.config.schema import SiteConfig
from appliance.runtime.core import GRID_POLL_LEAD_S, Core
from appliance.runtime.faces_supervisor import FacesSupervisor
from appliance.simulation.site import simulated_site_main

log = logging.getLogger(__name__)

SIMULATION_START_TIMEOUT_S = 30.0
STOP_STEP_TIMEOUT_S = 5.0


def _start_simulated_site(config: SiteConfig) -> BaseProcess:
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    process = context.Process(
        target=simulated_site_main,
        args=(config, ready, os.getpid()),
        name="simulated-site",
        daemon=True,
    )
    process.start()
    if not ready.wait(SIMULATION_START_TIMEOUT_S):
        process.terminate()
        process.join(5)
        raise RuntimeError(
            f"the simulated site did not start within {SIMULATION_START_TIMEOUT_S:.0f} s "
            f"(exit code {process.exitcode}); see the log above"
        )
    return process


def _stop_process(process: BaseProcess | None) -> None:
    if process is None or not process.is_alive():
        return
    process.terminate()
    process.join(5)
    if process.is_alive():
        process.kill()
        process.join(5)


def endpoints_text(config: SiteConfig, simulate: bool) -> str:
    faces = config.faces
    lines = [
        f"appliance {__version__}: site '{config.site.id}' ({config.source})",
        f"  control cycle every {config.control.loop_interval_s * 1000:.0f} ms",
        "  faces:",
    ]
    if faces.metrics.enabled:
        lines.append(f"    metrics   http://{faces.metrics.bind}:{faces.metrics.port}/metrics")
    if faces.opcua.enabled:
        lines.append(f"    OPC UA    opc.tcp://{faces.opcua.bind}:{faces.opcua.port}")
    if faces.modbus.enabled:
        lines.append(
            f"    Modbus    {faces.modbus.bind}:{faces.modbus.port} unit {faces.modbus.unit_id}"
        )
    if simulate:
        lines.append("  simulated site:")
        lines += [f"    {line}" for line in _simulated_header(config)]
    lines.append("Ctrl-C stops the appliance.")
    return "\n".join(lines)


def _simulated_header(config: SiteConfig) -> list[str]:
    """The documented ports and demo users of the built-in simulated site (its header comment)."""
    if not config.source.endswith("simulated.yaml"):
        return ["(devices as in the configuration, on loopback)"]
    text = (importlib.resources.files("appliance.models") / "sites" / "simulated.yaml").read_text()
    header: list[str] = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("#").rstrip()[1:] if line.startswith("# ") else "")
    return header


class Appliance:
    """The running appliance: simulated site (optional), the core, its tasks, the faces.

    `appliance run` drives it; benchmarks and tests use the same object so that what they
    measure is what runs on a site.
    """

    def __init__(self, config: SiteConfig, *, simulate: bool) -> None:
        self.config = config
        self.simulate = simulate
        self.simulation: BaseProcess | None = None
        self.core: Core | None = None
        self.faces: FacesSupervisor | None = None
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> Core:
        loop = asyncio.get_running_loop()
        if self.simulate:
            self.simulation = await loop.run_in_executor(None, _start_simulated_site, self.config)
        core = self.core = Core(self.config)
        await core.open_devices()
        self.faces = FacesSupervisor(core, self.config)
        self.faces.start()
        core.cycle_hooks.append(self.faces.on_cycle)
        devices = core.devices
        self.tasks = [asyncio.create_task(p.run(), name=f"poll[{p.name}]") for p in core.pollers]
        self.tasks += [
            asyncio.create_task(w.run(), name=f"actuate[{w.name}]")
            for w in devices.inverter_writers.values()
        ]
        self.tasks += [
            asyncio.create_task(w.run(), name=f"actuate[{w.name}]")
            for w in devices.load_writers.values()
        ]
        self.tasks += [
            asyncio.create_task(w.run(), name=f"actuate[{w.name}]")
            for w in devices.heater_writers.values()
        ]
        self.tasks.append(
            asyncio.create_task(core.run_cycles(GRID_POLL_LEAD_S), name="control.cycle")
        )
        # Everything built so far lives as long as the appliance: out of the collector's
        # sight, a full collection no longer walks it inside a control step (at 64 nodes
        # that was 60-80 ms, about once per 150 steps; measured with bench/scale.py).
        gc.freeze()
        return core

    async def wait(self, stop: asyncio.Event) -> int:
        """Until `stop` is set (0) or a task ends, which must never happen (1)."""
        stopping = asyncio.create_task(stop.wait(), name="appliance.stop")
        done, _ = await asyncio.wait([stopping, *self.tasks], return_when=asyncio.FIRST_COMPLETED)
        await cancel_and_wait([stopping])
        failed = [t for t in done if t is not stopping]
        for task in failed:
            log.critical("task %s ended unexpectedly: %r", task.get_name(), task.exception())
        return 1 if failed else 0

    async def stop(self) -> None:
        """Reverse order of start: tasks, faces, safe setpoints, devices, simulation."""
        loop = asyncio.get_running_loop()
        log.info("appliance: stopping")
        # Bounded: a driver stuck in a blocking call must not keep the inverters from
        # getting their 0 W below.
        await cancel_and_wait(self.tasks, STOP_STEP_TIMEOUT_S)
        if self.faces is not None:
            await loop.run_in_executor(None, self.faces.stop)
        if self.core is not None:
            await _write_safe_setpoints(self.core)
            try:
                async with asyncio.timeout(STOP_STEP_TIMEOUT_S):
                    await self.core.close()
            except TimeoutError:
                log.error("appliance: devices did not close within %.0f s", STOP_STEP_TIMEOUT_S)
        await loop.run_in_executor(None, _stop_process, self.simulation)
        log.info("appliance: stopped")


async def _run(config: SiteConfig, simulate: bool) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    appliance = Appliance(config, simulate=simulate)
    try:
        await appliance.start()
        print(endpoints_text(config, simulate), flush=True)
        return await appliance.wait(stop)
    finally:
        await appliance.stop()


async def _write_safe_setpoints(core: Core) -> None:
    """0 W to every inverter and every surplus relay open before exit.

    An inverter whose write fails falls back by its own revert timeout.
    """
    writers = list(core.devices.inverter_writers.values())
    results = await asyncio.gather(*(w.write_safe(0.0) for w in writers))
    for writer, ok in zip(writers, results, strict=True):
        if ok:
            log.info("%s: 0 W written at shutdown", writer.name)
        else:
            log.warning(
                "%s: 0 W not written at shutdown; its revert timeout will apply", writer.name
            )
    loads = core.config.devices.surplus_loads
    for index, relays in core.devices.load_writers.items():
        channels = len(loads[index - 1].channels)
        if not await relays.write_safe((False,) * channels):
            log.warning("%s: relays not opened at shutdown", relays.name)
    for heater in core.devices.heater_writers.values():
        if not await heater.write_safe(0.0):
            log.warning("%s: heater not switched off at shutdown", heater.name)


def run_appliance(config: SiteConfig, *, simulate: bool) -> int:
    try:
        return asyncio.run(_run(config, simulate))
    except RuntimeError as exc:
        print(f"appliance: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        with contextlib.suppress(Exception):
            log.warning("appliance: interrupted during shutdown")
        return 0
