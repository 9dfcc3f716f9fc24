"""Archive throughput: line protocol into VictoriaMetrics, into and out of the spool.

    .venv/bin/python -m bench.archive_throughput [--quick] [--seconds 8] [--no-write]

A real VictoriaMetrics (tests/archive/servers.py starts it, on an ephemeral loopback port)
takes the writes on its `/api/v2/write`, the endpoint the appliance's archive uses. The data
are those of a 16-node site (bench/scale.py's generator: models/sites/simulated.yaml with 16
battery nodes): every point of its table with a fresh sample every 500 ms cycle, which is
what the simulated site's pollers produce (every poll is a change for the store), archived
by the point table's `archive` settings.

Stages, in order:

1. outage: the archive face (`ArchiveFace`, the site's default batch size) gets one hour of
   the site's cycles while its InfluxDB address refuses connections; everything goes into
   the spool on disk. Timed: `apply` (choosing the samples and encoding line protocol);
2. spool out, spool in: the spooled batches read and deleted (`Spool.oldest` + `remove`)
   from a copy of the spool, then committed again into a fresh spool (`Spool.add`), on disk;
3. replay: a new archive face on the same spool with VictoriaMetrics reachable, as after
   the outage: the time until the spool is empty, every batch written;
4. sustained writes of the same batches, one request in flight, for `--seconds` each: the
   raw HTTP POST without the appliance (plain, and gzip-compressed as influxdb-client
   compresses), which is the baseline, and the appliance's writer (`InfluxWriter`).

"Points" are line-protocol lines, as the archive counts them (`points_written`): one line
carries one device's fields with one timestamp. Field values are given beside them.
VictoriaMetrics' own counters (`vm_protoparser_rows_read_total`, `vm_rows_inserted_total`)
confirm what it took. Prints the table and writes it into docs/performance.md (section
`archive-throughput`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gzip
import logging
import math
import os
import re
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from appliance.archive import ArchiveFace
from appliance.archive.influx import InfluxWriter, WriteOutcome
from appliance.archive.spool import Spool
from appliance.config import SiteConfig, load_config_text
from appliance.control.command_types import CommandResult
from appliance.northbound.face import FaceContext
from appliance.runtime.site_table import site_point_table
from appliance.store import Sample, Value
from bench.report import machine, write_section
from bench.scale import site_text
from tests.archive.servers import VictoriaMetrics, http
from tests.archive.simdata import cycle

KEY = "archive-throughput"
NODES = 16
CYCLE_S = 0.5
HOUR_S = 3600.0
ORG, BUCKET, TOKEN = "bench", "appliance", "bench:bench"
POINTS_GOAL = 20_000.0  # points/s sustained
REPLAY_GOAL_S = 120.0  # one hour of a 16-node site
DRAIN_TIMEOUT_S = 300.0
COUNTS_SETTLE_MAX_S = 10.0
log = logging.getLogger("bench.archive_throughput")


@dataclass(frozen=True)
class Settings:
    fraction: float = 1.0  # of the hour spooled and replayed
    seconds: float = 8.0  # per sustained stage

    @classmethod
    def quick_run(cls) -> Settings:
        return cls(fraction=1 / 12, seconds=1.5)


@dataclass
class Stage:
    name: str
    points: int  # lines
    fields: int
    seconds: float
    server_lines: int | None = None  # VictoriaMetrics' count, where the stage wrote to it
    server_fields: int | None = None
    note: str = ""

    @property
    def points_per_s(self) -> float:
        return self.points / self.seconds if self.seconds > 0 else 0.0

    @property
    def fields_per_s(self) -> float:
        return self.fields / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Outage:
    fraction: float
    cycles: int
    batches: int
    points: int  # lines spooled for the fraction of the hour
    fields: int
    spool_bytes: int
    replay_s: float
    batch_lines: list[int] = dataclasses.field(default_factory=list)  # lines per spooled batch

    @property
    def hour_points(self) -> float:
        return self.points / self.fraction

    @property
    def hour_fields(self) -> float:
        return self.fields / self.fraction

    @property
    def hour_replay_s(self) -> float:
        return self.replay_s / self.fraction


@dataclass
class ArchiveRun:
    archived_points: int  # points of the 16-node table that the archive writes
    batch_size: int
    outage: Outage
    stages: list[Stage]
    filesystem: str = "unknown"  # where the spool was
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average at start and end

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


# -- the site and its data -----------------------------------------------------------------


def site_config(workdir: Path, influx_url: str) -> SiteConfig:
    """The 16-node simulated site archiving to `influx_url`, with its spool under `workdir`."""
    site: dict[str, Any] = yaml.safe_load(site_text(NODES, workdir))
    workdir.mkdir(parents=True, exist_ok=True)
    token = workdir / "influx.token"
    token.write_text(TOKEN + "\n")
    site["site"]["id"] = "bench"
    site["archive"] = {
        "influxdb": {"url": influx_url, "org": ORG, "bucket": BUCKET, "token_file": str(token)},
        "spool": {"path": str(workdir / "spool")},
    }
    path = workdir / "site.yaml"
    path.write_text(yaml.safe_dump(site, sort_keys=False))
    return load_config_text(path.read_text(), str(path))


async def _no_core(
    source: str, command: str, point_id: str | None, value: Value | None, user: str | None = None
) -> CommandResult:
    return CommandResult(0, False, "no core in this benchmark")


def fields_of(payload: bytes) -> int:
    """Field values in a batch (the archive writes no spaces or commas inside values)."""
    return sum(len(line.rsplit(b" ", 2)[1].split(b",")) for line in payload.splitlines() if line)


def filesystem(path: Path) -> str:
    """The type of the file system holding `path` (the longest mount point above it)."""
    best, kind = "", "unknown"
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and str(path).startswith(fields[1]) and len(fields[1]) > len(best):
            best, kind = fields[1], fields[2]
    return kind


def refusing_port() -> socket.socket:
    """A loopback port that refuses connections (bound, never listening) for as long as held."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


# -- VictoriaMetrics' own counts -----------------------------------------------------------


def _vm_counter(url: str, name: str) -> int:
    status, body = http("GET", f"{url}/metrics")
    if status != 200:
        raise RuntimeError(f"VictoriaMetrics /metrics: HTTP {status}")
    match = re.search(rf'^{name}{{type="influx"}} (\d+)$', body.decode(), re.MULTILINE)
    return int(match.group(1)) if match else 0


def vm_counts(url: str) -> tuple[int, int]:
    """(lines, fields) VictoriaMetrics has taken over the InfluxDB protocol so far."""
    return (
        _vm_counter(url, "vm_protoparser_rows_read_total"),
        _vm_counter(url, "vm_rows_inserted_total"),
    )


def server_took(url: str, before: tuple[int, int], sent_lines: int) -> tuple[int, int]:
    """(lines, fields) taken since `before`: its counters move up to a second after the
    answers, so wait until they show `sent_lines` or stand still for a second."""
    deadline = time.monotonic() + COUNTS_SETTLE_MAX_S
    last, still_since = vm_counts(url), time.monotonic()
    while time.monotonic() < deadline:
        if last[0] - before[0] >= sent_lines or time.monotonic() - still_since >= 1.0:
            break
        time.sleep(0.1)
        now = vm_counts(url)
        if now != last:
            last, still_since = now, time.monotonic()
    return last[0] - before[0], last[1] - before[1]


# -- stages ------------------------------------------------------------------------------------


async def outage(config: SiteConfig, fraction: float) -> tuple[Outage, float]:
    """Spool `fraction` of an hour while the server refuses; returns it and apply's seconds."""
    table = site_point_table(config)
    mirror: dict[str, Sample] = {}
    face = ArchiveFace(
        FaceContext(config, table, mirror, _no_core), retry_initial_s=3600, retry_max_s=3600
    )
    cycles = round(HOUR_S * fraction / CYCLE_S)
    start_s = math.floor((time.time() - HOUR_S - 120) / 60) * 60.0  # the last hour, aligned
    applying = 0.0
    await face.start()
    try:
        for k in range(cycles):
            changes = cycle(table, start_s + k * CYCLE_S, start_s)
            mirror.update(changes)
            started = time.perf_counter()
            face.apply(changes)
            applying += time.perf_counter() - started
            if k % 10 == 0:
                await asyncio.sleep(0)  # the commit loop runs, as between two real cycles
        await face.sync()
        stats = face.stats()
    finally:
        await face.stop()
    if stats.points_written or stats.points_dropped_size or stats.points_dropped_age:
        raise RuntimeError(f"the outage was not one: {stats}")
    result = Outage(
        fraction, cycles, stats.spool_batches, stats.spool_points, 0, stats.spool_bytes, 0.0
    )
    return result, applying


async def spool_out_in(spool_dir: Path, workdir: Path) -> tuple[Stage, Stage, list[bytes]]:
    """Read and delete every batch of a copy of the spool; commit them into a new spool."""
    copy = workdir / "spool-copy"
    shutil.copytree(spool_dir, copy)
    spool = Spool(copy / "spool.sqlite", max_bytes=10**12, max_age_s=10 * 86_400)
    payloads: list[bytes] = []
    lines = 0
    oldest: list[float] = []
    started = time.perf_counter()
    try:
        while (batch := spool.oldest()) is not None:
            spool.remove(batch.id)
            payloads.append(batch.payload)
            oldest.append(batch.oldest_s)
            lines += batch.lines
        out_s = time.perf_counter() - started
    finally:
        spool.close()
    fields = sum(fields_of(p) for p in payloads)
    fresh = Spool(workdir / "spool-in" / "spool.sqlite", max_bytes=10**12, max_age_s=10 * 86_400)
    started = time.perf_counter()
    try:
        for payload, oldest_s in zip(payloads, oldest, strict=True):
            fresh.add(payload, payload.count(b"\n") + 1, oldest_s)
        in_s = time.perf_counter() - started
    finally:
        fresh.close()
    return (
        Stage("spool out: `Spool.oldest` + `remove` (disk)", lines, fields, out_s),
        Stage("spool in: `Spool.add` (disk, synchronous=FULL)", lines, fields, in_s),
        payloads,
    )


async def replay(config: SiteConfig, expected: int, url: str) -> tuple[float, Stage]:
    """A new face on the spooled outage with the server back: seconds until the spool is empty."""
    table = site_point_table(config)
    face = ArchiveFace(
        FaceContext(config, table, {}, _no_core), retry_initial_s=0.05, retry_max_s=0.5
    )
    before = vm_counts(url)
    started = time.perf_counter()
    await face.start()
    try:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while (stats := face.stats()).spool_batches or stats.points_written < expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"replay not done in {DRAIN_TIMEOUT_S} s: {stats}")
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - started
    finally:
        await face.stop()
    if stats.write_failures or stats.batches_quarantined:
        raise RuntimeError(f"replay had failures: {stats}")
    took = server_took(url, before, stats.points_written)
    stage = Stage(
        "replay: spool -> `Forwarder` -> `InfluxWriter` -> VictoriaMetrics",
        stats.points_written,
        0,
        elapsed,
        *took,
    )
    return elapsed, stage


async def sustained(
    name: str,
    payloads: Sequence[bytes],
    seconds: float,
    url: str,
    send: Callable[[bytes], Awaitable[None]],
    note: str = "",
) -> Stage:
    """`send` the batches in turn, one in flight, for `seconds`."""
    lines = [p.count(b"\n") + 1 for p in payloads]
    fields = [fields_of(p) for p in payloads]
    before = vm_counts(url)
    sent_lines = sent_fields = 0
    started = time.perf_counter()
    deadline = started + seconds
    index = 0
    while time.perf_counter() < deadline:
        await send(payloads[index])
        sent_lines += lines[index]
        sent_fields += fields[index]
        index = (index + 1) % len(payloads)
    elapsed = time.perf_counter() - started
    took = server_took(url, before, sent_lines)
    return Stage(name, sent_lines, sent_fields, elapsed, *took, note)


async def sustained_stages(payloads: Sequence[bytes], seconds: float, url: str) -> list[Stage]:
    write_url = f"{url}/api/v2/write"
    params = {"org": ORG, "bucket": BUCKET, "precision": "ms"}
    headers = {"Authorization": f"Token {TOKEN}", "Content-Type": "text/plain; charset=utf-8"}
    stages = []
    async with aiohttp.ClientSession(headers=headers) as session:

        async def plain(payload: bytes) -> None:
            async with session.post(write_url, params=params, data=payload) as answer:
                if answer.status != 204:
                    raise RuntimeError(f"raw POST: HTTP {answer.status}: {await answer.text()}")

        async def gzipped(payload: bytes) -> None:
            body = gzip.compress(payload)  # level 9, as influxdb-client compresses
            async with session.post(
                write_url, params=params, data=body, headers={"Content-Encoding": "gzip"}
            ) as answer:
                if answer.status != 204:
                    raise RuntimeError(f"raw POST: HTTP {answer.status}: {await answer.text()}")

        stages.append(
            await sustained(
                "baseline: raw HTTP POST (aiohttp, keep-alive)", payloads, seconds, url, plain
            )
        )
        stages.append(
            await sustained(
                "baseline: raw HTTP POST, gzip level 9", payloads, seconds, url, gzipped
            )
        )
    writer = InfluxWriter(url, ORG, BUCKET, lambda: TOKEN)

    async def appliance(payload: bytes) -> None:
        result = await writer.write(payload)
        if result.outcome is not WriteOutcome.WRITTEN:
            raise RuntimeError(f"InfluxWriter: {result}")

    try:
        stages.append(
            await sustained(
                "appliance: `InfluxWriter.write` (influxdb-client, gzip)",
                payloads,
                seconds,
                url,
                appliance,
            )
        )
    finally:
        await writer.close()
    return stages


# -- the run -----------------------------------------------------------------------------------


async def measure(settings: Settings, workdir: Path) -> ArchiveRun:
    (workdir / "victoria").mkdir()
    server = VictoriaMetrics(workdir / "victoria")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, server.start)
    try:
        refusing = refusing_port()
        try:
            port = refusing.getsockname()[1]
            down = site_config(workdir / "site", f"http://127.0.0.1:{port}")
            spooled, applying = await outage(down, settings.fraction)
        finally:
            refusing.close()
        spool_dir = down.archive.spool.path
        out_stage, in_stage, payloads = await spool_out_in(spool_dir, workdir)
        spooled.fields = out_stage.fields
        spooled.batch_lines = [p.count(b"\n") + 1 for p in payloads]
        up = site_config(workdir / "site", server.url)  # the same spool, the server back
        spooled.replay_s, replayed = await replay(up, spooled.points, server.url)
        replayed.fields = spooled.fields
        apply_stage = Stage(
            "outage: `ArchiveFace.apply` (sampling, line protocol)",
            spooled.points,
            spooled.fields,
            applying,
            note=f"{spooled.cycles} cycles of the site",
        )
        stages = [apply_stage, in_stage, out_stage, replayed]
        stages += await sustained_stages(payloads, settings.seconds, server.url)
    finally:
        await loop.run_in_executor(None, server.stop)
    table = site_point_table(down)
    influx = down.archive.influxdb
    return ArchiveRun(
        archived_points=sum(1 for p in table if p.archive is not None),
        batch_size=influx.batch_size if influx is not None else 0,
        outage=spooled,
        stages=stages,
    )


# -- the report --------------------------------------------------------------------------------


def _server(stage: Stage) -> str:
    if stage.server_lines is None:
        return "-"
    return f"{stage.server_lines:,} / {stage.server_fields:,}"


def report(run: ArchiveRun, command: str) -> str:
    baseline = run.stage("baseline: raw HTTP POST (aiohttp, keep-alive)").points_per_s
    rows = [
        f"| {s.name} | {s.points:,} | {s.fields:,} | {s.seconds:.2f} | {s.points_per_s:,.0f} "
        f"| {s.fields_per_s:,.0f} | "
        + (f"{s.points_per_s / baseline:.2f}x" if s.server_lines is not None else "-")
        + f" | {_server(s)} |"
        for s in run.stages
    ]
    o = run.outage
    measured = "the full hour" if o.fraction >= 1 else f"{o.fraction:.3g} of the hour, extrapolated"
    lines = [
        "## Archive throughput (`bench/archive_throughput.py`)",
        "",
        f"Command: `{command}`; {machine()}; load average (1 min) {run.load[0]:.2f} at the "
        f"start, {run.load[1]:.2f} at the end (the machine is shared). VictoriaMetrics "
        "(Debian's `victoria-metrics`) on "
        "an ephemeral loopback port takes the writes on `/api/v2/write`; the data are a "
        f"{NODES}-node simulated site's ({run.archived_points} archived points, every one with a "
        "fresh sample every 500 ms, archived by the point table's `archive` settings: the "
        "most the site can produce), in the "
        f"archive's batches of {run.batch_size} lines. A point is a line-protocol line (one "
        "device, one timestamp, its fields), as the archive counts them. The raw HTTP POST of "
        "the same batches to the same server in the same run is the baseline. The spool is "
        f"SQLite on {run.filesystem} (the temporary directory), as the appliance keeps it.",
        "",
        "| stage | points | field values | seconds | points/s | values/s | vs raw POST "
        "| server took (lines / values) |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"One hour of the {NODES}-node site: {o.hour_points:,.0f} points ({o.hour_fields:,.0f} "
        f"field values); spooled: {o.points:,} points in {o.batches} batches, "
        f"{o.spool_bytes / 1e6:.2f} MB compressed ({measured}); replayed in {o.replay_s:.1f} s, "
        f"so the hour in {o.hour_replay_s:.1f} s. {batches_text(o.batch_lines, run.batch_size)}",
        "",
        "Goals:",
        "",
    ]
    for goal, met, figure in goals(run):
        lines.append(f"- {goal}: {'met' if met else 'NOT met'} ({figure}).")
    return "\n".join(lines)


def batches_text(batch_lines: Sequence[int], batch_size: int) -> str:
    """How full the archive's batches were."""
    full = sum(1 for n in batch_lines if n == batch_size)
    partial = sorted(n for n in batch_lines if n != batch_size)
    if len(partial) <= 1:
        return f"Batches: {full} of {batch_size} lines" + (
            f" and the last one of {partial[0]}." if partial else "."
        )
    return (
        f"Batches: {full} of {batch_size} lines and {len(partial)} smaller ones "
        f"({partial[0]} to {partial[-1]} lines, median {statistics.median(partial):g}): the "
        "face seals its whole buffer once it holds a batch, so the lines beyond a full batch "
        "leave as a small batch of their own, each a request and a spool commit."
    )


def goals(run: ArchiveRun) -> list[tuple[str, bool, str]]:
    writer = run.stage("appliance: `InfluxWriter.write` (influxdb-client, gzip)")
    replayed = run.stage("replay: spool -> `Forwarder` -> `InfluxWriter` -> VictoriaMetrics")
    slowest = min(writer.points_per_s, replayed.points_per_s)
    o = run.outage
    return [
        (
            f"at least {POINTS_GOAL:,.0f} points/s sustained through the archive writer "
            "(the slower of the writer alone and the replay through the spool)",
            slowest >= POINTS_GOAL,
            f"writer {writer.points_per_s:,.0f} points/s, replay {replayed.points_per_s:,.0f} "
            "points/s",
        ),
        (
            f"a one-hour outage of a {NODES}-node site replayed within {REPLAY_GOAL_S:.0f} s",
            o.hour_replay_s <= REPLAY_GOAL_S,
            f"{o.hour_points:,.0f} points in {o.hour_replay_s:.1f} s"
            + ("" if o.fraction >= 1 else f", extrapolated from {o.fraction:.3g} of the hour"),
        ),
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="5 minutes of outage, 1.5 s per sustained stage"
    )
    parser.add_argument("--seconds", type=float, help="length of each sustained stage")
    parser.add_argument(
        "--no-write", action="store_true", help="print only, leave docs/performance.md"
    )
    return parser.parse_args(argv)


def benchmark(argv: Sequence[str] | None = None) -> ArchiveRun:
    """Run, print, write the section (unless --no-write); returns the figures."""
    args = parse_args(argv)
    settings = Settings.quick_run() if args.quick else Settings()
    if args.seconds is not None:
        settings = dataclasses.replace(settings, seconds=args.seconds)
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-archive-") as tmp:
        run = asyncio.run(measure(settings, Path(tmp)))
        run.filesystem = filesystem(Path(tmp).resolve())
    run.load = (load_start, os.getloadavg()[0])
    shown = [a for a in (argv or []) if a != "--no-write"]
    section = report(run, " ".join([".venv/bin/python -m bench.archive_throughput", *shown]))
    print(section)
    if not args.no_write:
        write_section(KEY, section)
    return run


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run = benchmark(sys.argv[1:] if argv is None else argv)
    return 0 if all(met for _, met, _ in goals(run)) else 1


if __name__ == "__main__":
    sys.exit(main())
