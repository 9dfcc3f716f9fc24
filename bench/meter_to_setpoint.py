"""From a load step at the grid meter to the inverters' new setpoints, idle and under face load.

The simulated site runs in this process (so that the instant of the step and the instant a
setpoint reaches an inverter simulator are read on one clock); the appliance runs as
`appliance run` builds it (`appliance.runtime.app.Appliance`): the core's pollers, writers and
control cycle in this process, the faces in their own process. The site is in maxself with the
battery discharging; every few seconds, at a random phase of the 500 ms schedules, the house
load steps by +-1 kW. The latency of a step is the time from the plant's change (what the
SDM630 simulator serves from then on) to the first setpoint write, at any inverter simulator,
that moves the cluster's total by at least a tenth of the step in the step's direction.

The loaded phase adds, in a separate process, 10 OPC UA clients each subscribed to every
point at 500 ms and 8 Modbus clients polling back to back (`bench/loop_lateness.py`'s load).
The idle phase of the same run is the baseline. The simulated devices share this process's
event loop with the core, which a real site's devices do not: the figures are pessimistic.

    .venv/bin/python -m bench.meter_to_setpoint [--steps 40] [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import multiprocessing
import random
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from appliance.aio import cancel_and_wait
from appliance.control.command_types import CommandRequest
from appliance.runtime.app import Appliance
from appliance.runtime.core import Core
from appliance.runtime.site_table import site_point_table
from appliance.simulation.plant import Plant
from appliance.simulation.site import SimulatedSite
from appliance.simulation.site_config import simulated_site_on_free_ports
from bench.loop_lateness import load_process
from bench.report import machine, write_section

MAXSELF = 2
BASE_LOAD_W = 3000.0  # the battery discharges, with room to follow a step either way
STEP_W = 1000.0
REACTED_SHARE = 0.1  # of the step: the controller has answered the step
STEP_SPACING_S = (2.5, 3.5)  # the control settles between steps; random phase
GOAL_P99_MS = 600.0


@dataclass
class Phase:
    name: str
    latencies_ms: list[float] = field(default_factory=list)
    missed: int = 0  # steps without a reaction within the spacing
    lateness_ms: list[float] = field(default_factory=list)
    overruns: int = 0
    load: str = "none"

    def row(self) -> str:
        lat = sorted(self.latencies_ms) or [float("nan")]
        late = sorted(self.lateness_ms) or [float("nan")]
        return (
            f"| {self.name} | {len(self.latencies_ms)} | {self.missed} "
            f"| {statistics.median(lat):.0f} | {_p99(lat):.0f} | {lat[-1]:.0f} "
            f"| {_p99(late):.1f} | {self.overruns} | {self.load} |"
        )


def _p99(values: list[float]) -> float:
    return values[min(len(values) - 1, int(0.99 * len(values)))]


class SetpointLog:
    """Every setpoint each inverter simulator takes, on the event loop's clock."""

    def __init__(self, site: SimulatedSite) -> None:
        self.latest: dict[int, float] = {}
        self.writes: list[tuple[float, float]] = []  # (loop time, cluster total after it)
        for node, inverter in enumerate(site.inverter_simulators):
            inverter.setpoint_listeners.append(self._listener(node))

    def _listener(self, node: int) -> Callable[[float, float], None]:
        def take(at: float, watts: float) -> None:
            self.latest[node] = watts
            self.writes.append((at, sum(self.latest.values())))

        return take

    def total(self) -> float:
        return sum(self.latest.values())


async def _heartbeat(core: Core) -> None:
    counter = 0
    while True:
        counter += 1
        core.handle_command(
            CommandRequest(counter, "bench", "heartbeat", "heartbeat.counter", counter)
        )
        await asyncio.sleep(5)


async def _steps(
    site: SimulatedSite, log: SetpointLog, core: Core, phase: Phase, steps: int, rng: random.Random
) -> None:
    loop = asyncio.get_running_loop()
    core.stats.lateness_s.clear()
    overruns = core.stats.overruns
    load = BASE_LOAD_W
    for i in range(steps):
        await asyncio.sleep(rng.uniform(*STEP_SPACING_S))
        step = STEP_W if i % 2 == 0 else -STEP_W
        before = log.total()
        load += step
        site.plant.set_load_offset_w(load)
        site.plant.step(1e-3)  # applied now, not at the plant's next tick
        changed_at = loop.time()
        seen = len(log.writes)
        # More import -> the battery discharges more -> the total (> 0 = discharge) rises.
        wanted = before + REACTED_SHARE * step
        reacted = None
        deadline = changed_at + STEP_SPACING_S[0]
        while reacted is None and loop.time() < deadline:
            await asyncio.sleep(0.005)
            for at, total in log.writes[seen:]:
                if (step > 0 and total >= wanted) or (step < 0 and total <= wanted):
                    reacted = at
                    break
        if reacted is None:
            phase.missed += 1
        else:
            phase.latencies_ms.append((reacted - changed_at) * 1000)
    phase.lateness_ms = [v * 1000 for v in core.stats.lateness_s]
    phase.overruns = core.stats.overruns - overruns


async def measure(steps: int, seed: int = 1) -> list[Phase]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        config, ports = simulated_site_on_free_ports(Path(tmp))
        site = SimulatedSite(config)
        calm = dataclasses.replace(
            site.plant.params, cloud_transients=False, appliance_events=False
        )
        site.plant = Plant(calm)
        site.plant.set_load_offset_w(BASE_LOAD_W)
        await site.start()
        plant = asyncio.create_task(site.run(), name="plant")
        log = SetpointLog(site)
        appliance = Appliance(config, simulate=False)
        heartbeat: asyncio.Task[None] | None = None
        try:
            core = await appliance.start()
            heartbeat = asyncio.create_task(_heartbeat(core), name="bench.heartbeat")
            for _ in range(200):
                request = CommandRequest(0, "bench", "set_mode", "controller.mode", MAXSELF)
                if core.handle_command(request).accepted:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(6)  # faces up, control settled on the base load
            idle = Phase("idle (maxself)")
            await _steps(site, log, core, idle, steps, rng)

            loaded = Phase("faces loaded")
            node_ids = [p.opcua_node_id for p in site_point_table(config)]
            url = f"opc.tcp://127.0.0.1:{ports[4840]}/"
            context = multiprocessing.get_context("spawn")
            result: multiprocessing.Queue[str] = context.Queue()
            load_seconds = steps * STEP_SPACING_S[1] + 10
            worker = context.Process(
                target=load_process,
                args=(
                    (url, node_ids, config.faces.opcua.namespace_uri, ports[5020], load_seconds),
                    result,
                ),
            )
            worker.start()
            await asyncio.sleep(6)  # the clients connect and subscribe
            await _steps(site, log, core, loaded, steps, rng)
            loaded.load = await asyncio.to_thread(result.get, True, load_seconds + 60)
            await asyncio.to_thread(worker.join, 30)
            return [idle, loaded]
        finally:
            await cancel_and_wait([t for t in (heartbeat, plant) if t is not None])
            await appliance.stop()
            await site.stop()


def report(phases: list[Phase], steps: int) -> str:
    worst = max(_p99(sorted(p.latencies_ms) or [float("inf")]) for p in phases)
    met = all(p.missed == 0 for p in phases) and worst < GOAL_P99_MS
    return "\n".join(
        [
            "## Meter change to inverter setpoint (`bench/meter_to_setpoint.py`)",
            "",
            f"Command: `.venv/bin/python -m bench.meter_to_setpoint --steps {steps}`; {machine()}. "
            f"{steps} load steps of +-{STEP_W:.0f} W per phase at random phase of the 500 ms "
            "schedules; latency from the plant's change to the first inverter write that moves "
            f"the cluster total by {REACTED_SHARE:.0%} of the step. Lateness: control cycle start "
            "minus its slot. The idle phase of the same run is the baseline.",
            "",
            "| phase | steps | missed | latency p50 ms | p99 ms | max ms | cycle late p99 ms | overruns | load |",
            "|---|---|---|---|---|---|---|---|---|",
            *(p.row() for p in phases),
            "",
            f"Goal: meter-to-setpoint p99 under {GOAL_P99_MS:.0f} ms, no overrun: "
            + ("met." if met else f"not met (worst p99 {worst:.0f} ms)."),
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=40, help="load steps per phase")
    parser.add_argument("--quick", action="store_true", help="4 steps per phase (smoke run)")
    parser.add_argument("--no-write", action="store_true", help="leave docs/performance.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    steps = 4 if args.quick else args.steps
    phases = asyncio.run(measure(steps))
    section = report(phases, steps)
    print(section)
    if not args.no_write:
        write_section("meter-to-setpoint", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
