"""The OPC UA face against a bare asyncua server: reads, subscriptions, server CPU, browse.

Two servers run side by side, each in a process of its own (spawned), on 127.0.0.1 at a port
the kernel handed out:

* **face**: `appliance.northbound.opcua.OpcUaFace` as tests/northbound/test_opcua_face.py
  starts it: the simulated site's configuration (NoSecurity and Basic256Sha256 endpoints,
  users, no anonymous access) and the full typed model of its points;
* **baseline**: a bare asyncua 2.1 `Server` (stock settings, NoSecurity, its permissive user
  manager) with one plain `BaseDataVariable` per point of the same site, with the same String
  NodeIds and the same data types, in plain objects along the same browse paths.

Each server feeds itself every 500 ms with a new sample of every point, all of them changed
(measurements move within their range, counters count, flags toggle, enums step through their
states): the face through `face.apply(changes)` as the faces process does, the baseline
by writing each variable (`Server.write_attribute_value`) in one burst. Only the server being
measured is fed; the other one idles, so the two never compete for the CPU.

The clients are asyncua clients in this process, logged in as `viewer` on the NoSecurity
endpoint, the same code against both servers:

* (a) reads: one client, one Read request in flight, 1 / 100 / 1000 Value attributes per
  request (the model has fewer than 1000 points: the point NodeIds are repeated to 1000);
* (b) subscriptions: 0, 1, 5 and 10 clients, each with one subscription at 500 ms publishing
  interval monitoring every point (queue size 1, sampling 500 ms); notifications are counted
  as the client receives them (`asyncua.observer.Observer.on_notification`);
* (c) browse: the tree under the Objects folder (forward HierarchicalReferences and subtypes,
  the Server object left out), by tree level with up to 500 nodes per Browse request, and
  node by node as a tag browser expands it.

The server's CPU time is its process's utime + stime from /proc/<pid>/stat over the measured
window (every thread of the process; the feed is part of it for both servers), as a share of
one core.

    .venv/bin/python -m bench.opcua_server [--quick] [--no-write]

`--quick` (a smoke run, under 20 s): sub-second windows, the 10-client case only, one browse.

Prints the tables and writes them into docs/performance.md (section `opcua-server`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.observer import Observer
from asyncua.server.server import Server

from appliance.config import SiteConfig, simulated_site_config
from appliance.control.command_types import CommandRequest, CommandResult
from appliance.control.commands import validate_command
from appliance.northbound.face import FaceContext
from appliance.northbound.opcua import OpcUaFace
from appliance.northbound.opcua.model import variable_kind
from appliance.northbound.opcua.uatypes import AttributeIds, ObjectIds, data_value, node_id
from appliance.points.model import DataType, Point
from appliance.points.table import PointTable
from appliance.runtime.site_table import site_point_table
from appliance.simulation.site_config import free_ports
from appliance.store import Quality, Sample, Value
from bench.report import machine, write_section

log = logging.getLogger("bench.opcua_server")

SECTION = "opcua-server"
COMMAND = ".venv/bin/python -m bench.opcua_server"
FEED_PERIOD_S = 0.5
PUBLISHING_MS = 500.0
USER, PASSWORD = "viewer", "viewer-demo"
BROWSE_BATCH = 500
GOAL_RATIO = 0.8  # the face within 80 % of the baseline
GOAL_CPU_SHARE = 0.30  # 10 clients x every point at 500 ms: under 30 % of one core
GOAL_CLIENTS = 10
FACE, BASELINE = "face", "baseline"
START_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 20.0
NAMESPACE_URI = simulated_site_config().faces.opcua.namespace_uri


@dataclass(frozen=True)
class Settings:
    read_sizes: tuple[int, ...] = (1, 100, 1000)
    read_slices: int = 8  # per server and size, taking turns with the other server
    read_slice_s: float = 0.5
    read_warm_s: float = 0.2  # before each slice
    clients: tuple[int, ...] = (0, 1, 5, 10)
    subscribe_warm_s: float = 2.5  # the first publish carries every initial value
    subscribe_s: float = 8.0
    browse_repeats: int = 5
    quick: bool = False


DEFAULT = Settings()
QUICK = Settings(
    read_slices=2,
    read_slice_s=0.2,
    read_warm_s=0.05,
    clients=(GOAL_CLIENTS,),
    subscribe_warm_s=1.0,
    subscribe_s=1.0,
    browse_repeats=1,
    quick=True,
)


# --------------------------------------------------------------------------- the feed


def site_config(port: int, data_dir: Path) -> SiteConfig:
    """The simulated site as shipped, its OPC UA face on `port`, its data in `data_dir`."""
    config = simulated_site_config()
    opcua = dataclasses.replace(config.faces.opcua, bind="127.0.0.1", port=port)
    faces = dataclasses.replace(config.faces, opcua=opcua)
    return dataclasses.replace(config, data_dir=data_dir, faces=faces)


def point_value(point: Point, index: int, cycle: int, now_s: float) -> Value:
    """A value of `point` at feed cycle `cycle`, different from the one of cycle - 1."""
    if point.type is DataType.BOOL:
        return (cycle + index) % 2 == 0
    if point.states:
        keys = sorted(point.states)
        return keys[(cycle + index) % len(keys)]
    if point.type is DataType.TIMESTAMP:
        return now_s
    low, high = point.range if point.range is not None else (0.0, 1000.0)
    if point.type in (DataType.FLOAT32, DataType.FLOAT64):
        return low + (high - low) * ((cycle * 0.137 + index * 0.071) % 1.0)
    span = max(2, min(int(high) - int(low) + 1, 1 << 16))
    return int(low) + (cycle + index) % span


def cycle_values(points: Sequence[Point], cycle: int, now_s: float) -> dict[str, Value]:
    return {p.id: point_value(p, i, cycle, now_s) for i, p in enumerate(points)}


Publish = Callable[[dict[str, Value], float], Awaitable[None]]


class Feeder:
    """New values for every point every 500 ms on a fixed schedule, while `enabled`."""

    def __init__(self, points: Sequence[Point], publish: Publish) -> None:
        self._points = points
        self._publish = publish
        self.enabled = False
        self.cycles = 0
        self.skipped = 0  # slots missed because a publication outlasted the period

    async def publish_once(self) -> None:
        self.cycles += 1
        now_s = time.time()
        await self._publish(cycle_values(self._points, self.cycles, now_s), now_s)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        slot = loop.time()
        while True:
            if self.enabled:
                await self.publish_once()
            slot += FEED_PERIOD_S
            late = loop.time() - slot
            if late > 0:
                missed = int(late // FEED_PERIOD_S) + 1
                slot += missed * FEED_PERIOD_S
                if self.enabled:
                    self.skipped += missed
            await asyncio.sleep(slot - loop.time())


# --------------------------------------------------------------------------- the servers


class FaceServer:
    """The appliance's OPC UA face, fed as the faces process feeds it."""

    def __init__(self, port: int, data_dir: Path) -> None:
        self.config = site_config(port, data_dir)
        self.table = site_point_table(self.config)
        self.mirror: dict[str, Sample] = {}
        self.face = OpcUaFace(FaceContext(self.config, self.table, self.mirror, self._submit))

    async def _submit(
        self,
        source: str,
        command: str,
        point_id: str | None,
        value: Value | None,
        user: str | None = None,
    ) -> CommandResult:
        request = CommandRequest(0, source, command, point_id, value, user)
        return validate_command(self.table, request)

    async def start(self) -> None:
        await self.face.start()

    async def publish(self, values: dict[str, Value], now_s: float) -> None:
        received = time.monotonic()
        changes = {pid: Sample(v, now_s, Quality.GOOD, received) for pid, v in values.items()}
        self.mirror.update(changes)
        self.face.apply(changes)

    async def settle(self) -> None:
        await self.face.drain()

    async def stop(self) -> None:
        await self.face.stop()


class BaselineServer:
    """A bare asyncua server: one plain variable per point, rewritten in one burst."""

    def __init__(self, port: int, data_dir: Path) -> None:
        self.config = site_config(port, data_dir)
        self.table = site_point_table(self.config)
        self.port = port
        self.server = Server()
        self._variables: dict[str, tuple[ua.NodeId, ua.VariantType]] = {}

    async def start(self) -> None:
        server = self.server
        await server.init()
        server.set_endpoint(f"opc.tcp://127.0.0.1:{self.port}/")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        ns = await server.register_namespace(self.config.faces.opcua.namespace_uri)
        objects: dict[str, Any] = {"": server.nodes.objects}
        for point in self.table:
            parent = await self._object(objects, point.opcua_path.rsplit("/", 1)[0], ns)
            variant_type = variable_kind(point).variant_type
            nid = node_id(point.opcua_node_id, ns)
            await parent.add_variable(
                nid,
                ua.QualifiedName(point.opcua_path.rsplit("/", 1)[1], ns),
                _initial(variant_type),
                variant_type,
            )
            self._variables[point.id] = (nid, variant_type)
        await server.start()

    async def _object(self, objects: dict[str, Any], path: str, ns: int) -> Any:
        """The plain object at browse path `path` (created with its parents on first use)."""
        if path not in objects:
            head, _, name = path.rpartition("/")
            parent = await self._object(objects, head, ns)
            objects[path] = await parent.add_object(
                node_id(path.replace("/", "."), ns), ua.QualifiedName(name, ns)
            )
        return objects[path]

    async def publish(self, values: dict[str, Value], now_s: float) -> None:
        stamp = datetime.fromtimestamp(now_s, UTC)
        for point_id, value in values.items():
            nid, variant_type = self._variables[point_id]
            raw: Any = stamp if variant_type is ua.VariantType.DateTime else value
            await self.server.write_attribute_value(
                nid, data_value(ua.Variant(raw, variant_type), source=stamp, server=stamp)
            )

    async def settle(self) -> None:
        pass  # publish() has written everything when it returns

    async def stop(self) -> None:
        await self.server.stop()


def _initial(variant_type: ua.VariantType) -> ua.Variant:
    value: Any = {
        ua.VariantType.Boolean: False,
        ua.VariantType.Double: 0.0,
        ua.VariantType.DateTime: datetime.now(UTC),
    }.get(variant_type, 0)
    return ua.Variant(value, variant_type)


def server_process(kind: str, port: int, data_dir: str, conn: Connection) -> None:
    """Entry point of a server's own process: start, then obey the bench's commands."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    # The face warns at every start that its NoSecurity endpoint is on: the bench's choice.
    logging.getLogger("appliance.northbound.opcua.face").setLevel(logging.ERROR)
    asyncio.run(_serve(kind, port, Path(data_dir), conn))


async def _serve(kind: str, port: int, data_dir: Path, conn: Connection) -> None:
    started = time.perf_counter()
    server = FaceServer(port, data_dir) if kind == FACE else BaselineServer(port, data_dir)
    await server.start()
    feeder = Feeder(list(server.table), server.publish)
    task = asyncio.create_task(feeder.run(), name=f"{kind}-feeder")
    conn.send(("ready", time.perf_counter() - started))
    try:
        while True:
            try:
                message = await asyncio.to_thread(conn.recv)
            except EOFError:
                return  # the bench has gone
            if message[0] == "feed":
                if message[1] and not feeder.enabled:
                    # Every point holds a fed value before the bench measures anything.
                    await feeder.publish_once()
                    await server.settle()
                feeder.enabled = bool(message[1])
                conn.send(("ok",))
            elif message[0] == "stats":
                conn.send(("stats", feeder.cycles, feeder.skipped))
            else:
                break
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await server.stop()
    with contextlib.suppress(OSError):  # the bench may be gone
        conn.send(("stopped",))


class ServerHandle:
    """The bench's end of one server process."""

    def __init__(self, kind: str, data_dir: Path) -> None:
        self.kind = kind
        self.port = free_ports(1)[0]
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self.process = context.Process(
            target=server_process,
            args=(kind, self.port, str(data_dir), child),
            name=f"opcua-bench-{kind}",
            daemon=True,
        )
        self.start_s = 0.0

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/"

    async def start(self) -> None:
        self.process.start()
        reply = await self._receive(START_TIMEOUT_S)
        self.start_s = float(reply[1])

    async def call(self, *message: Any) -> Any:
        self._conn.send(message)
        return await self._receive(CALL_TIMEOUT_S)

    async def _receive(self, timeout_s: float) -> Any:
        if not await asyncio.to_thread(self._conn.poll, timeout_s):
            raise RuntimeError(f"the {self.kind} server did not answer in {timeout_s:g} s")
        return self._conn.recv()

    async def feed_stats(self) -> tuple[int, int]:
        reply = await self.call("stats")
        return int(reply[1]), int(reply[2])

    def cpu_s(self) -> float:
        """utime + stime of the server process (all its threads), in seconds."""
        pid = self.process.pid
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def stop(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(Exception):
                await self.call("stop")
            await asyncio.to_thread(self.process.join, 10)
        if self.process.is_alive():
            self.process.kill()
            await asyncio.to_thread(self.process.join, 5)
        self._conn.close()


@contextlib.asynccontextmanager
async def feeding(server: ServerHandle) -> AsyncIterator[None]:
    await server.call("feed", True)
    try:
        yield
    finally:
        await server.call("feed", False)


# --------------------------------------------------------------------------- the clients


@contextlib.asynccontextmanager
async def connected(server: ServerHandle) -> AsyncIterator[Client]:
    client = Client(server.url, timeout=10)
    client.set_user(USER)
    client.set_password(PASSWORD)
    await client.connect()
    try:
        yield client
    finally:
        await client.disconnect()


async def point_nodes(client: Client, table: PointTable) -> list[ua.NodeId]:
    ns = await client.get_namespace_index(NAMESPACE_URI)
    return [node_id(p.opcua_node_id, ns) for p in table]


@dataclass
class Window:
    """What the server did over one measured window."""

    seconds: float = 0.0
    cpu_s: float = 0.0
    client_cpu_s: float = 0.0  # the bench's process: the clients
    cycles: int = 0
    skipped: int = 0

    @property
    def cpu_share(self) -> float:
        return self.cpu_s / self.seconds if self.seconds else 0.0

    @property
    def client_cpu_share(self) -> float:
        return self.client_cpu_s / self.seconds if self.seconds else 0.0

    def __add__(self, other: Window) -> Window:
        return Window(
            self.seconds + other.seconds,
            self.cpu_s + other.cpu_s,
            self.client_cpu_s + other.client_cpu_s,
            self.cycles + other.cycles,
            self.skipped + other.skipped,
        )


@contextlib.asynccontextmanager
async def window(server: ServerHandle) -> AsyncIterator[Window]:
    measured = Window()
    cycles, skipped = await server.feed_stats()
    cpu, client_cpu, started = server.cpu_s(), time.process_time(), time.perf_counter()
    yield measured
    measured.seconds = time.perf_counter() - started
    measured.cpu_s = server.cpu_s() - cpu
    measured.client_cpu_s = time.process_time() - client_cpu
    cycles_after, skipped_after = await server.feed_stats()
    measured.cycles, measured.skipped = cycles_after - cycles, skipped_after - skipped


@dataclass
class ReadFigure:
    size: int
    requests: int = 0
    bad: int = 0  # values read with a status other than Good
    latencies_ms: list[float] = field(default_factory=list)
    slice_rates: list[float] = field(default_factory=list)  # requests/s of each slice
    server: Window = field(default_factory=Window)  # all slices together

    @property
    def rate(self) -> float:
        """Requests per second: the median of the slices (robust to a noisy neighbour)."""
        return statistics.median(self.slice_rates)

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies_ms)

    def add(self, latencies_ms: list[float], bad: int, measured: Window) -> None:
        self.requests += len(latencies_ms)
        self.bad += bad
        self.latencies_ms += latencies_ms
        self.slice_rates.append(len(latencies_ms) / measured.seconds)
        self.server = self.server + measured


async def _read_for(
    client: Client, params: ua.ReadParameters, seconds: float
) -> tuple[list[float], int]:
    latencies: list[float] = []
    bad = 0
    end = time.perf_counter() + seconds
    while (now := time.perf_counter()) < end:
        values = await client.uaclient.read(params)
        latencies.append((time.perf_counter() - now) * 1000)
        bad += sum(1 for v in values if v.StatusCode is not None and not v.StatusCode.is_good())
    return latencies, bad


async def read_request(client: Client, table: PointTable, size: int) -> ua.ReadParameters:
    """One Read of the Value of `size` point variables (the points repeated if needed)."""
    nodes = await point_nodes(client, table)
    params = ua.ReadParameters()
    for index in range(size):
        item = ua.ReadValueId()
        item.NodeId = nodes[index % len(nodes)]
        item.AttributeId = AttributeIds.Value
        params.NodesToRead.append(item)
    return params


async def measure_reads(
    servers: Sequence[ServerHandle],
    clients: Sequence[Client],
    table: PointTable,
    size: int,
    settings: Settings,
) -> list[ReadFigure]:
    """The servers take turns slice by slice (A B B A ...), each fed during its slices."""
    figures = [ReadFigure(size) for _ in servers]
    requests = [await read_request(client, table, size) for client in clients]
    turns = list(zip(servers, clients, requests, figures, strict=True))
    for index in range(settings.read_slices):
        for server, client, params, figure in turns[:: 1 if index % 2 == 0 else -1]:
            async with feeding(server):
                await _read_for(client, params, settings.read_warm_s)
                async with window(server) as measured:
                    latencies, bad = await _read_for(client, params, settings.read_slice_s)
            figure.add(latencies, bad, measured)
    return figures


class NotificationCounter(Observer):
    """Counts the notifications a client receives, as its publish loop unpacks them."""

    def __init__(self) -> None:
        self.count = 0

    def on_notification(self, subscription_id: int | None, event_count: int) -> None:
        self.count += event_count


@dataclass
class SubscriptionFigure:
    clients: int
    notifications: int
    subscribe_s: float
    server: Window

    @property
    def rate(self) -> float:
        return self.notifications / self.server.seconds


async def measure_subscriptions(
    server: ServerHandle, table: PointTable, clients: int, settings: Settings
) -> SubscriptionFigure:
    counters: list[NotificationCounter] = []
    async with contextlib.AsyncExitStack() as stack:
        started = time.perf_counter()
        for _ in range(clients):
            client = await stack.enter_async_context(connected(server))
            counter = NotificationCounter()
            client.uaclient.observer = counter
            nodes = [client.get_node(n) for n in await point_nodes(client, table)]
            subscription = await client.create_subscription(PUBLISHING_MS, None)
            await subscription.subscribe_data_change(
                nodes, queuesize=1, sampling_interval=ua.Double(PUBLISHING_MS)
            )
            counters.append(counter)
        subscribe_s = time.perf_counter() - started
        await asyncio.sleep(settings.subscribe_warm_s)
        before = sum(c.count for c in counters)
        async with window(server) as measured:
            await asyncio.sleep(settings.subscribe_s)
        received = sum(c.count for c in counters) - before
    return SubscriptionFigure(clients, received, subscribe_s, measured)


@dataclass
class BrowseFigure:
    variant: str
    nodes: int
    requests: int
    times_ms: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)


def _browse_description(node: ua.NodeId) -> ua.BrowseDescription:
    description = ua.BrowseDescription()
    description.NodeId = node
    description.BrowseDirection = ua.BrowseDirection.Forward
    description.ReferenceTypeId = node_id(ObjectIds.HierarchicalReferences)
    description.IncludeSubtypes = True
    description.NodeClassMask = 0
    description.ResultMask = ua.BrowseResultMask.All
    return description


async def browse_tree(client: Client, batch: int) -> tuple[int, int]:
    """Every node below the Objects folder but the Server object: (nodes, Browse requests)."""
    root, skip = node_id(ObjectIds.ObjectsFolder), node_id(ObjectIds.Server)
    seen = {root, skip}
    level = [root]
    requests = 0
    while level:
        following: list[ua.NodeId] = []
        for start in range(0, len(level), batch):
            params = ua.BrowseParameters()
            params.NodesToBrowse = [_browse_description(n) for n in level[start : start + batch]]
            results = await client.uaclient.browse(params)
            requests += 1
            for result in results:
                for reference in result.References:
                    target = node_id(reference.NodeId.Identifier, reference.NodeId.NamespaceIndex)
                    if target not in seen:
                        seen.add(target)
                        following.append(target)
        level = following
    return len(seen) - 2, requests


def _browse_figures() -> list[BrowseFigure]:
    return [
        BrowseFigure(f"by level, {BROWSE_BATCH} nodes per request", 0, 0),
        BrowseFigure("node by node", 0, 0),
    ]


async def measure_browse(
    servers: Sequence[ServerHandle], clients: Sequence[Client], settings: Settings
) -> list[list[BrowseFigure]]:
    """Each repeat browses both servers, in turns (A B B A ...), each fed meanwhile."""
    figures = [_browse_figures() for _ in servers]
    for client in clients:
        await browse_tree(client, BROWSE_BATCH)  # warm-up
    turns = list(zip(servers, clients, figures, strict=True))
    for index in range(settings.browse_repeats):
        for server, client, browsed in turns[:: 1 if index % 2 == 0 else -1]:
            async with feeding(server):
                for figure, batch in zip(browsed, (BROWSE_BATCH, 1), strict=True):
                    started = time.perf_counter()
                    figure.nodes, figure.requests = await browse_tree(client, batch)
                    figure.times_ms.append((time.perf_counter() - started) * 1000)
    return figures


# --------------------------------------------------------------------------- the run


@dataclass
class ServerFigures:
    kind: str
    start_s: float
    reads: dict[int, ReadFigure] = field(default_factory=dict)
    subscriptions: dict[int, SubscriptionFigure] = field(default_factory=dict)
    browse: list[BrowseFigure] = field(default_factory=list)


@dataclass
class Results:
    settings: Settings
    points: int
    face: ServerFigures
    baseline: ServerFigures
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before and after

    def both(self) -> tuple[ServerFigures, ServerFigures]:
        return self.face, self.baseline


async def measure(settings: Settings) -> Results:
    table = site_point_table(simulated_site_config())
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="opcua-bench-") as tmp:
        servers = [
            ServerHandle(FACE, Path(tmp) / FACE),
            ServerHandle(BASELINE, Path(tmp) / BASELINE),
        ]
        try:
            await asyncio.gather(*(s.start() for s in servers))
            figures = [ServerFigures(s.kind, s.start_s) for s in servers]
            # The machine is shared: a neighbour's burst should hit both servers alike. Reads
            # and browses go in short slices, the servers taking turns (A B B A ...) on
            # connections kept open; the subscription cases alternate which server goes first.
            async with contextlib.AsyncExitStack() as stack:
                clients = [await stack.enter_async_context(connected(s)) for s in servers]
                for size in settings.read_sizes:
                    measured = await measure_reads(servers, clients, table, size, settings)
                    for server_figures, read in zip(figures, measured, strict=True):
                        server_figures.reads[size] = read
                browsed = await measure_browse(servers, clients, settings)
                for server_figures, browse in zip(figures, browsed, strict=True):
                    server_figures.browse = browse
            for case, count in enumerate(settings.clients):
                turns = list(zip(servers, figures, strict=True))
                for server, server_figures in turns[:: 1 if case % 2 == 0 else -1]:
                    async with feeding(server):
                        subscribed = await measure_subscriptions(server, table, count, settings)
                    server_figures.subscriptions[count] = subscribed
        finally:
            await asyncio.gather(*(s.stop() for s in servers))
    return Results(
        settings,
        len(table),
        figures[0],
        figures[1],
        (load_before, os.getloadavg()[0]),
    )


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class Row:
    figure: str
    face: float
    baseline: float
    unit: str
    higher_is_better: bool  # rates; times and CPU are better lower
    goal: str = ""
    met: bool | None = None
    reason: str = ""  # why the face differs, when the bench knows it

    @property
    def ratio(self) -> float:
        return self.face / self.baseline if self.baseline else float("nan")

    def line(self) -> str:
        met = "" if self.met is None else ("yes" if self.met else "**no**")
        return (
            f"| {self.figure} | {_number(self.face)} {self.unit} | {_number(self.baseline)} "
            f"{self.unit} | {self.ratio:.2f} | {self.goal} | {met} |"
        )


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _ratio_row(
    figure: str, face: float, baseline: float, unit: str, higher: bool, reason: str = ""
) -> Row:
    if higher:
        goal, met = f"≥ {GOAL_RATIO:.2f}", face >= GOAL_RATIO * baseline
    else:
        goal, met = f"≤ {1 / GOAL_RATIO:.2f}", face * GOAL_RATIO <= baseline
    return Row(figure, face, baseline, unit, higher, goal, met, reason)


def _browse_reason(face: BrowseFigure, baseline: BrowseFigure) -> str:
    return (
        f"the face's model has {face.nodes} nodes under Objects against the baseline's "
        f"{baseline.nodes}: its typed variables carry properties (EURange, EngineeringUnits, "
        "TrueState / FalseState, EnumValues, ValueAsText) and Site/Commands holds the methods "
        f"with their arguments; per node the face takes {face.median_ms / max(1, face.nodes):.3f} ms "
        f"against {baseline.median_ms / max(1, baseline.nodes):.3f} ms"
    )


def summary_rows(results: Results) -> list[Row]:
    face, base = results.both()
    rows = []
    for size, read in face.reads.items():
        repeated = f" ({results.points} point ids repeated)" if size > results.points else ""
        rows.append(
            _ratio_row(
                f"Read, {size} node{'s' if size > 1 else ''} per request{repeated}",
                read.rate,
                base.reads[size].rate,
                "req/s",
                True,
            )
        )
    for clients, subscribed in face.subscriptions.items():
        if clients:
            rows.append(
                _ratio_row(
                    f"Notifications, {clients} client{'s' if clients > 1 else ''} x every point",
                    subscribed.rate,
                    base.subscriptions[clients].rate,
                    "/s",
                    True,
                )
            )
    for clients, subscribed in face.subscriptions.items():
        share = subscribed.server.cpu_share * 100
        base_share = base.subscriptions[clients].server.cpu_share * 100
        label = (
            f"Server CPU, {clients} client{'s' if clients > 1 else ''}"
            if clients
            else "Server CPU, feed only (0 clients)"
        )
        if clients == GOAL_CLIENTS:
            rows.append(
                Row(
                    label,
                    share,
                    base_share,
                    "%",
                    False,
                    f"< {GOAL_CPU_SHARE * 100:.0f} % of one core",
                    share < GOAL_CPU_SHARE * 100,
                )
            )
        else:
            rows.append(Row(label, share, base_share, "%", False))
    for browsed, base_browsed in zip(face.browse, base.browse, strict=True):
        rows.append(
            _ratio_row(
                f"Browse from Objects, {browsed.variant}",
                browsed.median_ms,
                base_browsed.median_ms,
                "ms",
                False,
                _browse_reason(browsed, base_browsed),
            )
        )
    return rows


def _details(results: Results) -> list[str]:
    settings = results.settings
    expected_per_client = results.points * 1000 / PUBLISHING_MS
    lines = [
        f"Reads (one client per server, one request in flight; {settings.read_slices} "
        f"slices of {settings.read_slice_s:g} s per server, the servers taking turns; req/s "
        "is the median slice, latency and CPU over all slices):",
        "",
        "| nodes/request | server | req/s | values/s | p50 ms | not Good | server CPU % | client CPU % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size in results.settings.read_sizes:
        for figures in results.both():
            read = figures.reads[size]
            lines.append(
                f"| {size} | {figures.kind} | {read.rate:,.0f} | {read.rate * size:,.0f} "
                f"| {read.p50_ms:.2f} | {read.bad} | {read.server.cpu_share * 100:.1f} "
                f"| {read.server.client_cpu_share * 100:.1f} |"
            )
    lines += [
        "",
        "Client and server take turns with one request in flight; where neither is near "
        "100 % of a core, the round trip through both Python stacks sets the rate, and the "
        "ratio compares the servers' share of it rather than their ceilings.",
        "",
        "Subscriptions (each client monitors every point; expected = clients x "
        f"{results.points} points x 2 changes/s = {expected_per_client:.0f}/s per client):",
        "",
        "| clients | server | notifications/s | expected/s | server CPU % | client CPU % "
        "| feed cycles (skipped) | connect + subscribe s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for clients in results.settings.clients:
        for figures in results.both():
            sub = figures.subscriptions[clients]
            lines.append(
                f"| {clients} | {figures.kind} | {sub.rate:,.0f} | {clients * expected_per_client:,.0f} "
                f"| {sub.server.cpu_share * 100:.1f} | {sub.server.client_cpu_share * 100:.1f} "
                f"| {sub.server.cycles} ({sub.server.skipped}) | {sub.subscribe_s:.2f} |"
            )
    lines += [
        "",
        f"Browse (median of {settings.browse_repeats}, the servers taking turns):",
        "",
        "| variant | server | nodes | Browse requests | ms | ms per node |",
        "|---|---|---|---|---|---|",
    ]
    for index in range(len(results.face.browse)):
        for figures in results.both():
            browsed = figures.browse[index]
            lines.append(
                f"| {browsed.variant} | {figures.kind} | {browsed.nodes} | {browsed.requests} "
                f"| {browsed.median_ms:.1f} | {browsed.median_ms / max(1, browsed.nodes):.3f} |"
            )
    return lines


def goals_text(results: Results) -> list[str]:
    rows = [r for r in summary_rows(results) if r.met is not None]
    missed = [r for r in rows if not r.met]
    lines = [
        f"Goals (issue 9): every figure within 80 % of the same-run baseline (rates at least "
        f"{GOAL_RATIO:.2f} x the baseline's, times at most {1 / GOAL_RATIO:.2f} x), and "
        f"{GOAL_CLIENTS} clients x every point at 500 ms under {GOAL_CPU_SHARE * 100:.0f} % of "
        f"one core. Met: {len(rows) - len(missed)} of {len(rows)}."
    ]
    for row in missed:
        reason = row.reason or "the bench does not know why (see the details above)"
        lines.append(
            f"- Missed: {row.figure}: face/baseline {row.ratio:.2f} (goal {row.goal}): {reason}."
        )
    return lines


def report(results: Results) -> str:
    settings = results.settings
    command = COMMAND + (" --quick" if settings.quick else "")
    face, base = results.both()
    lines = [
        "## OPC UA face against a bare asyncua server (`bench/opcua_server.py`)",
        "",
        f"Command: `{command}`; {machine()}. The face (`OpcUaFace` with the simulated "
        f"site's {results.points} points, typed model, NoSecurity endpoint, user `{USER}`) and "
        f"a bare asyncua server with {results.points} plain variables of the same data types "
        "and NodeIds run in processes of their own on 127.0.0.1, each fed every 500 ms with a "
        "changed value of every point (the face through `face.apply`, as the faces process "
        "feeds it); only the measured server is fed. The clients are asyncua clients in the "
        "bench's process, the same for both; the server's CPU is its process's utime + stime "
        "(/proc/<pid>/stat) over the window, 100 % = one core. Windows: reads "
        f"{settings.read_slices} x {settings.read_slice_s:g} s per server and size, "
        f"subscriptions {settings.subscribe_s:g} s after "
        f"{settings.subscribe_warm_s:g} s warm-up. Start to serving: face {face.start_s:.1f} s, "
        f"baseline {base.start_s:.1f} s. Load average (1 min) before / after the run: "
        f"{results.load[0]:.2f} / {results.load[1]:.2f} (the machine is shared).",
        "",
        "| figure | face | baseline | face / baseline | goal | met |",
        "|---|---|---|---|---|---|",
        *(row.line() for row in summary_rows(results)),
        "",
        *_details(results),
        "",
        *goals_text(results),
    ]
    return "\n".join(lines)


def all_goals_met(results: Results) -> bool:
    return all(r.met for r in summary_rows(results) if r.met is not None)


async def run(argv: Sequence[str] | None = None) -> Results:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="short windows, 10 clients only (a smoke run)"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only, leave docs/performance.md"
    )
    args = parser.parse_args(argv)
    results = await measure(QUICK if args.quick else DEFAULT)
    section = report(results)
    print(section)
    if not args.no_write:
        write_section(SECTION, section)
    return results


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    results = asyncio.run(run())
    return 0 if all_goals_met(results) else 1


if __name__ == "__main__":
    sys.exit(main())
