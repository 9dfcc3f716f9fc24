"""Soak: the simulated site with every face under load for a bounded time, watched for leaks.

In this process: the simulated site (each device simulator speaks its real protocol on
127.0.0.1), the core (pollers, writers, the 500 ms control cycle, in maxself) and the four
faces (OPC UA server, Modbus slave, archive into the local archive, Prometheus metrics), fed
from the core's store once per cycle as the faces process feeds them. In a separate load
process: OPC UA clients each subscribed to every point at 500 ms, Modbus clients reading 125
registers every 100 ms (one of them reconnects every 10 s and writes the SCADA heartbeat
every 2 s, which keeps the site in maxself), and a scraper of /metrics every 2 s on a new
connection each time.

Every few seconds the soak records this process's resident memory, asyncio task count, open
file descriptors (/proc/self/fd) and threads, and the control cycle's lateness (start minus
its slot on the 500 ms schedule) over the interval. The baseline is the same run's figures at
the end of the warm-up (clients connected and subscribed, caches filled); the goals bound
what grows after it. Unlike on a site, the faces share the core's event loop here, so the
lateness is pessimistic (`bench/loop_lateness.py` measures the real process layout).

    .venv/bin/python -m bench.soak [--seconds 300] [--quick] [--no-write]

Prints the table and writes it into docs/performance.md (section `soak`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

from appliance.aio import cancel_and_wait
from appliance.archive import ArchiveFace
from appliance.config import SiteConfig
from appliance.control.command_types import CommandRequest, CommandResult
from appliance.control.modes import STATE_NUMBER
from appliance.northbound.face import Face, FaceContext
from appliance.northbound.metrics import FacesTelemetry, MetricsFace
from appliance.northbound.modbus import ModbusFace
from appliance.northbound.opcua import OpcUaFace
from appliance.runtime.core import GRID_POLL_LEAD_S, Core
from appliance.runtime.site_table import site_point_table
from appliance.simulation.site import SimulatedSite
from appliance.simulation.site_config import simulated_site_on_free_ports
from appliance.store import Sample, Value
from bench.report import machine, write_section

log = logging.getLogger("bench.soak")

MAXSELF = 2
SAMPLE_S = 5.0  # one row of figures this often
WARMUP_S = 20.0  # clients connect and subscribe, caches fill: the baseline is taken after it
QUICK_SECONDS = 8.0
QUICK_WARMUP_S = 4.0
QUICK_SAMPLE_S = 2.0
OPCUA_CLIENTS = 4
MODBUS_CLIENTS = 3
MODBUS_POLL_S = 0.5  # the whole native map, as a SCADA polls it
MAX_READ = 125  # registers per request (the protocol's limit)
RECONNECT_EVERY_S = 10.0
HEARTBEAT_EVERY_S = 2.0
SCRAPE_EVERY_S = 2.0
PUBLISHING_MS = 500
LOAD_READY_TIMEOUT_S = 60.0  # the load process imports asyncua, connects and subscribes
STEP_TIMEOUT_S = 15.0  # each stop step; a hang fails the run and names the step

# Goals, checked against the same run's baseline (the sample at the end of the warm-up).
#: Resident memory may grow this much after the warm-up. Measured: +0.9 MB in the 40 s after
#: a 20 s warm-up, +2.6 MB in 280 s, slowing down; the local archive's file grows all along
#: and SQLite's page cache with it (up to 2 MB per connection), and the allocator's arenas
#: settle. A leak of 100 bytes per OPC UA notification (~300/s) would add 1.2 MB a minute.
RSS_GROWTH_MB = 10.0
#: Over a long soak (>= 10 minutes after the warm-up) the second half may add at most this
#: much per hour: what a slow leak keeps doing once the caches are full.
RSS_LATE_MB_PER_HOUR = 8.0
#: Tasks and file descriptors are steady under a steady load: a scrape, a reconnect or a
#: request in flight at the moment of the sample accounts for a handful, never more.
TASKS_SLACK = 6
FDS_SLACK = 6
#: The cycle's own budget: no overrun (a whole 500 ms period late), and a p99 lateness over
#: the run under a fifth of the period although the faces and the site share the core's loop
#: here (bench/loop_lateness.py holds the real layout to 20 ms).
LATE_P99_MS = 100.0


@dataclass(frozen=True)
class Row:
    """One sample: this process now, and the control cycle since the previous row."""

    t_s: float  # since the soak's start (after start-up)
    rss_mb: float
    py_blocks_k: float  # memory blocks Python's allocator holds (sys.getallocatedblocks), 1000s
    tasks: int
    fds: int
    threads: int
    cycles: int
    late_p50_ms: float
    late_max_ms: float
    overruns: int  # since the previous row


@dataclass
class LoadCounts:
    notifications: int = 0
    modbus_reads: int = 0
    modbus_failures: int = 0
    reconnects: int = 0
    heartbeats: int = 0
    scrapes: int = 0
    scrape_failures: int = 0
    opcua_clients: int = 0  # that subscribed and stayed to the end

    def text(self, seconds: float) -> str:
        return (
            f"{self.opcua_clients} OPC UA clients: {self.notifications / seconds:,.0f} notifications/s; "
            f"{MODBUS_CLIENTS} Modbus clients: {self.modbus_reads / seconds:,.0f} reads/s "
            f"({self.modbus_failures} failed), "
            f"{self.reconnects} reconnects, {self.heartbeats} heartbeats; "
            f"{self.scrapes} scrapes"
        )


@dataclass(frozen=True)
class Goal:
    name: str
    bound: str
    measured: str
    met: bool


@dataclass
class SoakResult:
    seconds: float
    warmup_s: float
    sample_s: float
    rows: list[Row] = field(default_factory=list)
    load: LoadCounts = field(default_factory=LoadCounts)
    archived: int = 0  # rows the local archive wrote
    archive_failures: int = 0
    mode_at_end: int | None = None
    state_at_end: int | None = None
    commands_accepted: int = 0
    commands_rejected: int = 0
    lateness_ms: list[float] = field(default_factory=list)  # every cycle of the run

    def lateness_p(self, q: float) -> float:
        return _p(sorted(self.lateness_ms), q)

    @property
    def baseline(self) -> Row:
        """The first row at or after the warm-up."""
        return next(r for r in self.rows if r.t_s >= self.warmup_s - 1e-6)

    @property
    def end(self) -> Row:
        return self.rows[-1]

    @property
    def after_warmup(self) -> list[Row]:
        return [r for r in self.rows if r.t_s > self.baseline.t_s]

    @property
    def rss_growth_mb(self) -> float:
        return self.end.rss_mb - self.baseline.rss_mb

    @property
    def rss_late_mb_per_hour(self) -> float | None:
        """Growth over the second half of the run after the warm-up, per hour (long runs)."""
        span = self.end.t_s - self.baseline.t_s
        if span < 600:
            return None
        middle = next(r for r in self.rows if r.t_s >= self.baseline.t_s + span / 2)
        return (self.end.rss_mb - middle.rss_mb) / (self.end.t_s - middle.t_s) * 3600

    @property
    def overruns(self) -> int:
        return sum(r.overruns for r in self.rows)

    def goals(self) -> list[Goal]:
        base, late = self.baseline, self.after_warmup or [self.end]
        tasks = max(r.tasks for r in late) - base.tasks
        fds = max(r.fds for r in late) - base.fds
        p99 = self.lateness_p(0.99)
        goals = [
            Goal(
                "RSS growth after warm-up",
                f"< {RSS_GROWTH_MB:.0f} MB",
                f"{self.rss_growth_mb:+.1f} MB",
                self.rss_growth_mb < RSS_GROWTH_MB,
            ),
            Goal(
                "asyncio tasks above baseline",
                f"<= {TASKS_SLACK}, back to it at the end",
                f"max {tasks:+d}, end {self.end.tasks - base.tasks:+d}",
                tasks <= TASKS_SLACK and self.end.tasks - base.tasks <= TASKS_SLACK // 2,
            ),
            Goal(
                "open file descriptors above baseline",
                f"<= {FDS_SLACK}, back to it at the end",
                f"max {fds:+d}, end {self.end.fds - base.fds:+d}",
                fds <= FDS_SLACK and self.end.fds - base.fds <= FDS_SLACK // 2,
            ),
            Goal("control cycle overruns", "0", str(self.overruns), self.overruns == 0),
            Goal(
                "cycle lateness p99 over the run",
                f"< {LATE_P99_MS:.0f} ms",
                f"{p99:.1f} ms ({len(self.lateness_ms)} cycles, max {self.lateness_p(1.0):.1f} ms)",
                p99 < LATE_P99_MS,
            ),
        ]
        rate = self.rss_late_mb_per_hour
        if rate is not None:
            goals.append(
                Goal(
                    "RSS growth, second half",
                    f"< {RSS_LATE_MB_PER_HOUR:.0f} MB/h",
                    f"{rate:+.1f} MB/h",
                    rate < RSS_LATE_MB_PER_HOUR,
                )
            )
        return goals


# -- this process -------------------------------------------------------------------------


def rss_mb() -> float:
    """Resident set size of this process (VmRSS), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _p(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else math.nan


def take_row(t_s: float, core: Core, overruns_before: int, all_ms: list[float]) -> Row:
    late = sorted(v * 1000 for v in core.stats.lateness_s)
    core.stats.lateness_s.clear()
    all_ms += late
    return Row(
        t_s=t_s,
        rss_mb=rss_mb(),
        py_blocks_k=sys.getallocatedblocks() / 1000,
        tasks=len(asyncio.all_tasks()),
        fds=open_fds(),
        threads=threading.active_count(),
        cycles=len(late),
        late_p50_ms=statistics.median(late) if late else math.nan,
        late_max_ms=late[-1] if late else math.nan,
        overruns=core.stats.overruns - overruns_before,
    )


# -- the load process -------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadPlan:
    opcua_url: str
    namespace: str
    node_ids: list[str]
    modbus_port: int
    unit_id: int
    reads: list[tuple[int, int]]  # (address, count): the mapped runs of the native map
    heartbeat_address: int
    metrics_url: str
    deadline: float  # time.time(): the clients stop by then even if nobody tells them


class LoadRun:
    """The load process's state: what the clients did, when they are all up, when to stop."""

    def __init__(self, plan: LoadPlan, ready: EventType, stop: EventType) -> None:
        self.plan = plan
        self.counts = LoadCounts()
        self._ready = ready
        self._stop = stop
        self._waiting = OPCUA_CLIENTS + MODBUS_CLIENTS

    def up(self) -> None:
        """One more client is connected (and subscribed); the soak starts when all are."""
        self._waiting -= 1
        if self._waiting == 0:
            self._ready.set()

    @property
    def running(self) -> bool:
        return not self._stop.is_set() and time.time() < self.plan.deadline

    def wait(self) -> None:
        """Blocks (in a thread) until the soak says stop or the deadline passes."""
        self._stop.wait(max(0.0, self.plan.deadline - time.time()))


async def _opcua_client(run: LoadRun) -> int:
    """Subscribes to every point at 500 ms (as `bench/loop_lateness.py`'s clients do)."""
    from asyncua.client.client import Client  # noqa: PLC0415

    class Counter:
        notifications = 0

        def datachange_notification(self, node: object, val: object, data: object) -> None:
            self.notifications += 1

    plan, counter = run.plan, Counter()
    client = Client(plan.opcua_url)
    client.set_user("viewer")
    client.set_password("viewer-demo")
    async with client:
        ns = await client.get_namespace_index(plan.namespace)
        subscription = await client.create_subscription(PUBLISHING_MS, counter)
        nodes = [client.get_node(f"ns={ns};s={nid}") for nid in plan.node_ids]
        for start in range(0, len(nodes), 500):
            await subscription.subscribe_data_change(nodes[start : start + 500])
        run.up()
        await asyncio.to_thread(run.wait)
    return counter.notifications


async def _modbus_client(run: LoadRun, index: int) -> None:
    """Polls the whole map every 500 ms; client 0 also reconnects every 10 s and writes the
    heartbeat every 2 s."""
    from pymodbus.client import AsyncModbusTcpClient  # noqa: PLC0415

    plan, counts = run.plan, run.counts
    heartbeat, next_beat, first = 0, time.monotonic(), True
    while run.running:
        client = AsyncModbusTcpClient(
            "127.0.0.1", port=plan.modbus_port, retries=0, reconnect_delay=0
        )
        until = time.monotonic() + RECONNECT_EVERY_S if index == 0 else math.inf
        try:
            if not await client.connect():
                counts.modbus_failures += 1
                await asyncio.sleep(1)
                continue
            if first:
                run.up()
                first = False
            while run.running and time.monotonic() < until:
                for address, count in plan.reads:
                    answer = await client.read_holding_registers(
                        address, count=count, device_id=plan.unit_id
                    )
                    if answer.isError():
                        counts.modbus_failures += 1
                    else:
                        counts.modbus_reads += 1
                if index == 0 and time.monotonic() >= next_beat:
                    heartbeat = heartbeat % 65535 + 1
                    written = await client.write_register(
                        plan.heartbeat_address, heartbeat, device_id=plan.unit_id
                    )
                    counts.heartbeats += 0 if written.isError() else 1
                    next_beat += HEARTBEAT_EVERY_S
                await asyncio.sleep(MODBUS_POLL_S)
        except Exception:  # noqa: BLE001 - a load client counts what failed and goes on
            counts.modbus_failures += 1
            await asyncio.sleep(0.5)
        finally:
            client.close()
        if index == 0 and run.running:
            counts.reconnects += 1


def _scrape(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 - loopback only
            return bool(answer.status == 200 and answer.read())
    except OSError:
        return False


async def _scraper(run: LoadRun) -> None:
    while run.running:
        if await asyncio.to_thread(_scrape, run.plan.metrics_url):
            run.counts.scrapes += 1
        else:
            run.counts.scrape_failures += 1
        await asyncio.sleep(SCRAPE_EVERY_S)


async def _load(run: LoadRun) -> LoadCounts:
    jobs: list[Awaitable[Any]] = [_opcua_client(run) for _ in range(OPCUA_CLIENTS)]
    jobs += [_modbus_client(run, i) for i in range(MODBUS_CLIENTS)]
    jobs.append(_scraper(run))
    results = await asyncio.gather(*jobs, return_exceptions=True)
    notifications = [r for r in results[:OPCUA_CLIENTS] if isinstance(r, int)]
    run.counts.notifications = sum(notifications)
    run.counts.opcua_clients = len(notifications)
    return run.counts


def load_process(
    plan: LoadPlan, ready: EventType, stop: EventType, result: multiprocessing.Queue[LoadCounts]
) -> None:
    """The clients, in their own process so that they do not share the soak's CPU time."""
    logging.basicConfig(level=logging.ERROR)
    result.put(asyncio.run(_load(LoadRun(plan, ready, stop))))


# -- the site with its faces ----------------------------------------------------------------


class InProcessFaces:
    """The faces as the faces process builds them, fed in this process once per cycle."""

    def __init__(self, config: SiteConfig, core: Core) -> None:
        self.core = core
        self.telemetry = FacesTelemetry()
        self.mirror: dict[str, Sample] = {}
        self._requests = 0
        self.accepted = 0
        self.rejected = 0
        context = FaceContext(
            config, site_point_table(config), self.mirror, self.telemetry.counting(self._submit)
        )
        self.archive = ArchiveFace(context)
        self.telemetry.watch_archive(self.archive.stats)
        self.modbus = ModbusFace(context)
        self.metrics = MetricsFace(context, telemetry=self.telemetry)
        self.faces: list[Face] = [self.archive, OpcUaFace(context), self.modbus, self.metrics]
        self.started: list[Face] = []
        self._subscription = core.store.subscribe("soak.faces")

    async def _submit(
        self,
        source: str,
        command: str,
        point_id: str | None,
        value: Value | None,
        user: str | None = None,
    ) -> CommandResult:
        self._requests += 1
        request = CommandRequest(self._requests, source, command, point_id, value, user)
        result = self.core.handle_command(request)
        if result.accepted:
            self.accepted += 1
        else:
            self.rejected += 1
        return result

    async def start(self) -> None:
        for face in self.faces:
            await face.start()
            self.started.append(face)
            self.telemetry.face_running(face.name, True)
        loop = asyncio.get_running_loop()

        def on_cycle() -> None:
            changes = self._subscription.collect()
            if changes:  # after the cycle, as the faces process gets them: never inside it
                loop.call_soon(self._apply, changes)

        self.core.cycle_hooks.append(on_cycle)

    def _apply(self, changes: Mapping[str, Sample]) -> None:
        self.mirror.update(changes)
        for face in self.started:
            face.apply(changes)

    async def stop(self) -> None:
        self._subscription.close()
        while self.started:
            await self.started.pop().stop()


@dataclass
class Stopper:
    """Runs stop steps in order, each bounded; a step that hangs is named, the others run."""

    problems: list[str] = field(default_factory=list)

    async def step(self, name: str, action: Callable[[], Awaitable[object]]) -> None:
        try:
            async with asyncio.timeout(STEP_TIMEOUT_S):
                await action()
        except TimeoutError:
            self.problems.append(f"{name} did not finish within {STEP_TIMEOUT_S:.0f} s")
        except Exception as exc:  # noqa: BLE001 - every step runs; failures are reported at the end
            self.problems.append(f"{name} failed: {exc!r}")


async def _set_maxself(core: Core) -> None:
    for _ in range(300):
        request = CommandRequest(0, "soak", "set_mode", "controller.mode", MAXSELF)
        if core.handle_command(request).accepted:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("maxself refused for 30 s: the site did not come up")


def _start_core_tasks(core: Core) -> list[asyncio.Task[None]]:
    """The core's tasks as `appliance run` starts them (appliance.runtime.app.Appliance)."""
    devices = core.devices
    tasks = [asyncio.create_task(p.run(), name=f"poll[{p.name}]") for p in core.pollers]
    for writers in (devices.inverter_writers, devices.load_writers, devices.heater_writers):
        tasks += [asyncio.create_task(w.run(), name=f"actuate[{w.name}]") for w in writers.values()]
    tasks.append(asyncio.create_task(core.run_cycles(GRID_POLL_LEAD_S), name="control.cycle"))
    return tasks


def mapped_runs(registers: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Contiguous runs of mapped registers, each at most one request long."""
    runs: list[tuple[int, int]] = []
    for address, count in sorted(registers):
        if runs and runs[-1][0] + runs[-1][1] == address and runs[-1][1] + count <= MAX_READ:
            runs[-1] = (runs[-1][0], runs[-1][1] + count)
        else:
            runs.append((address, count))
    return runs


def _load_plan(config: SiteConfig, faces: InProcessFaces, deadline: float) -> LoadPlan:
    table = site_point_table(config)
    heartbeat = table["heartbeat.counter"].modbus
    assert heartbeat is not None
    assert faces.modbus.port is not None
    assert faces.metrics.port is not None
    return LoadPlan(
        opcua_url=f"opc.tcp://127.0.0.1:{config.faces.opcua.port}/",
        namespace=config.faces.opcua.namespace_uri,
        node_ids=[p.opcua_node_id for p in table],
        modbus_port=faces.modbus.port,
        unit_id=config.faces.modbus.unit_id,
        reads=mapped_runs(
            [(p.modbus.address, p.modbus.count) for p in table if p.modbus is not None]
        ),
        heartbeat_address=heartbeat.address,
        metrics_url=f"http://127.0.0.1:{faces.metrics.port}/metrics",
        deadline=deadline,
    )


async def soak(
    seconds: float,
    *,
    warmup_s: float = WARMUP_S,
    sample_s: float = SAMPLE_S,
    on_row: Callable[[Row], None] | None = None,
) -> SoakResult:
    """Run the soak for `seconds` (warm-up included) and return its figures."""
    result = SoakResult(seconds, warmup_s, sample_s)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        config, _ = simulated_site_on_free_ports(Path(tmp))
        site = SimulatedSite(config)
        await site.start()
        core = Core(config)
        faces = InProcessFaces(config, core)
        tasks: list[asyncio.Task[None]] = []
        stopper = Stopper()
        worker: multiprocessing.process.BaseProcess | None = None
        try:
            await core.open_devices()
            tasks = [asyncio.create_task(site.run(), name="plant"), *_start_core_tasks(core)]
            await faces.start()
            await _set_maxself(core)
            context = multiprocessing.get_context("spawn")
            answers: multiprocessing.Queue[LoadCounts] = context.Queue()
            ready, stop_load = context.Event(), context.Event()
            deadline = time.time() + LOAD_READY_TIMEOUT_S + seconds + 60
            plan = _load_plan(config, faces, deadline)
            worker = context.Process(
                target=load_process, args=(plan, ready, stop_load, answers), daemon=True
            )
            worker.start()
            if not await asyncio.to_thread(ready.wait, LOAD_READY_TIMEOUT_S):
                raise RuntimeError("the load clients did not connect and subscribe in time")
            await _sample(result, core, seconds, sample_s, on_row)
            stop_load.set()
            result.load = await asyncio.to_thread(answers.get, True, 60)
            await asyncio.to_thread(worker.join, 30)
            result.archived = faces.archive.stats().points_written
            result.archive_failures = faces.archive.stats().write_failures
            result.mode_at_end = _int(core.store.get("controller.mode").value)
            result.state_at_end = STATE_NUMBER.get(core.controller.state, -1)
            result.commands_accepted, result.commands_rejected = faces.accepted, faces.rejected
        finally:
            if worker is not None and worker.is_alive():
                worker.terminate()
                await asyncio.to_thread(worker.join, 10)
            await stopper.step("faces", faces.stop)
            await stopper.step("core tasks", lambda: _cancel(tasks))
            await stopper.step("Core.close()", core.close)
            await stopper.step("SimulatedSite.stop()", site.stop)
        if stopper.problems:
            raise RuntimeError("; ".join(stopper.problems))
    return result


def _int(value: object) -> int | None:
    return int(value) if isinstance(value, int | float) else None


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    stuck = await cancel_and_wait(tasks, STEP_TIMEOUT_S)
    if stuck:
        raise RuntimeError(f"tasks did not stop: {sorted(t.get_name() for t in stuck)}")


async def _sample(
    result: SoakResult,
    core: Core,
    seconds: float,
    sample_s: float,
    on_row: Callable[[Row], None] | None,
) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    core.stats.lateness_s.clear()
    overruns = core.stats.overruns
    for k in range(1, round(seconds / sample_s) + 1):
        await asyncio.sleep(max(0.0, start + k * sample_s - loop.time()))
        row = take_row(round(loop.time() - start, 1), core, overruns, result.lateness_ms)
        overruns = core.stats.overruns
        result.rows.append(row)
        if on_row is not None:
            on_row(row)


# -- the report -------------------------------------------------------------------------------


def table(result: SoakResult, max_rows: int = 13) -> list[str]:
    rows = result.rows
    step = max(1, math.ceil(len(rows) / (max_rows - 1)))
    shown = [r for i, r in enumerate(rows) if i % step == 0 or r is result.baseline]
    if rows[-1] not in shown:
        shown.append(rows[-1])
    lines = [
        "| t s | RSS MB | Python blocks k | tasks | fds | threads | cycles | late p50 ms | late max ms | overruns |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in shown:
        mark = " (baseline)" if r is result.baseline else ""
        lines.append(
            f"| {r.t_s:.0f}{mark} | {r.rss_mb:.1f} | {r.py_blocks_k:.0f} | {r.tasks} | {r.fds} | {r.threads} "
            f"| {r.cycles} | {r.late_p50_ms:.1f} | {r.late_max_ms:.1f} "
            f"| {r.overruns} |"
        )
    return lines


def report(result: SoakResult, command: str) -> str:
    goals = result.goals()
    seconds = result.seconds
    met = all(g.met for g in goals)
    return "\n".join(
        [
            "## Soak: the site with every face loaded (`bench/soak.py`)",
            "",
            f"Command: `{command}`; {machine()}. The simulated site, the core (maxself) and the "
            "OPC UA, Modbus, archive (local) and metrics faces in one process and one event loop "
            "(on a site the faces have their own process, so the lateness here is pessimistic); "
            f"the load from a second process: {result.load.text(seconds)}. Each row: this "
            f"process every {result.sample_s:g} s (rows thinned to fit), the cycle's lateness (start minus its "
            "slot on the 500 ms schedule) over the row's interval; Python blocks: the memory blocks "
            "Python's allocator holds (`sys.getallocatedblocks()`), which stay flat when RSS grows "
            "for another reason (SQLite's page cache, the C allocator). "
            f"The baseline is the same run's row at the end of the {result.warmup_s:.0f} s warm-up.",
            "",
            *table(result),
            "",
            f"Archive: {result.archived:,} rows written to the local archive, "
            f"{result.archive_failures} failures; commands from the faces: "
            f"{result.commands_accepted} accepted, {result.commands_rejected} rejected; "
            f"controller state at the end: {result.state_at_end}. After the warm-up, RSS "
            f"{result.rss_growth_mb:+.1f} MB and Python blocks "
            f"{result.end.py_blocks_k - result.baseline.py_blocks_k:+.0f} k "
            f"({(result.end.py_blocks_k / result.baseline.py_blocks_k - 1) * 100:+.1f} %).",
            "",
            "| goal | bound | measured | met |",
            "|---|---|---|---|",
            *(
                f"| {g.name} | {g.bound} | {g.measured} | {'yes' if g.met else 'no'} |"
                for g in goals
            ),
            "",
            "All goals met." if met else "Not all goals met: see the rows marked no.",
        ]
    )


def run(argv: list[str] | None = None) -> SoakResult:
    """The command line: soak, print the report, write it (unless --no-write); the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--seconds", type=float, default=300.0, help="soak length (warm-up included)"
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SECONDS:.0f} s (smoke run)")
    parser.add_argument("--no-write", action="store_true", help="leave docs/performance.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    seconds = QUICK_SECONDS if args.quick else args.seconds
    warmup = QUICK_WARMUP_S if args.quick else min(WARMUP_S, seconds / 3)

    def progress(row: Row) -> None:
        print(
            f"t={row.t_s:6.0f} s  RSS {row.rss_mb:6.1f} MB  blocks {row.py_blocks_k:5.0f} k  "
            f"tasks {row.tasks}  fds {row.fds}  "
            f"late max {row.late_max_ms:5.1f} ms",
            file=sys.stderr,
        )

    sample = QUICK_SAMPLE_S if args.quick else SAMPLE_S
    result = asyncio.run(soak(seconds, warmup_s=warmup, sample_s=sample, on_row=progress))
    command = ".venv/bin/python -m bench.soak " + (
        "--quick" if args.quick else f"--seconds {seconds:g}"
    )
    section = report(result, command)
    print(section)
    if not args.no_write:
        write_section("soak", section)
    return result


def main() -> int:
    return 0 if all(g.met for g in run().goals()) else 1


if __name__ == "__main__":
    sys.exit(main())
