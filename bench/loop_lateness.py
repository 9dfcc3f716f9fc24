"""Control-cycle lateness of the running appliance, idle and under face load.

The appliance runs as `appliance run --simulate` builds it (`appliance.runtime.app.Appliance`):
the simulated site in its own process, the core in this process, the faces in theirs. The
site is put in maxself so that every cycle does its full work. Then, in a separate load
process (so that the load does not share this process's CPU time), 10 OPC UA clients each
subscribe to every point of the site at 500 ms, and 8 Modbus clients poll back to back when
the appliance serves Modbus. The idle phase of the same run is the baseline.

    .venv/bin/python -m bench.loop_lateness [--seconds 30] [--no-write]

Prints the table and writes it into docs/performance.md (between its loop-lateness markers).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import logging
import multiprocessing
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from appliance.config import SiteConfig
from appliance.control.command_types import CommandRequest
from appliance.runtime.app import Appliance
from appliance.runtime.core import Core
from appliance.runtime.site_table import site_point_table
from appliance.simulation.site_config import simulated_site_on_free_ports
from bench.report import write_section

MAXSELF = 2
OPCUA_CLIENTS = 10
MODBUS_CLIENTS = 8
PUBLISHING_MS = 500


@dataclass
class Phase:
    name: str
    lateness_ms: list[float]
    overruns: int
    load: str

    def row(self) -> str:
        values = sorted(self.lateness_ms)
        p99 = values[min(len(values) - 1, int(0.99 * len(values)))]
        return (
            f"| {self.name} | {len(values)} | {self.overruns} | {statistics.median(values):.2f} "
            f"| {p99:.2f} | {values[-1]:.2f} | {self.load} |"
        )


# -- the load process ------------------------------------------------------------------


async def _opcua_client(url: str, node_ids: list[str], namespace: str, stop_at: float) -> int:
    from asyncua.client.client import Client  # noqa: PLC0415

    class Counter:
        notifications = 0

        def datachange_notification(self, node: object, val: object, data: object) -> None:
            Counter.notifications += 1

    client = Client(url)
    client.set_user("viewer")
    client.set_password("viewer-demo")
    async with client:
        ns = await client.get_namespace_index(namespace)
        subscription = await client.create_subscription(PUBLISHING_MS, Counter())
        nodes = [client.get_node(f"ns={ns};s={nid}") for nid in node_ids]
        for start in range(0, len(nodes), 500):
            await subscription.subscribe_data_change(nodes[start : start + 500])
        await asyncio.sleep(max(0.0, stop_at - time.time()))
    return Counter.notifications


async def _modbus_client(port: int, stop_at: float) -> int:
    from pymodbus.client import AsyncModbusTcpClient  # noqa: PLC0415

    client = AsyncModbusTcpClient("127.0.0.1", port=port, retries=0, reconnect_delay=0)
    requests = 0
    try:
        if not await client.connect():
            return 0
        while time.time() < stop_at:
            # 125 registers of the SunSpec image (models 203 and 701): all mapped, so every
            # request is a real read, never an exception answer.
            answer = await client.read_holding_registers(40070, count=125, device_id=1)
            if answer.isError():
                return requests
            requests += 1
    except Exception:  # noqa: BLE001 - a load client only counts what it managed to do
        return requests
    finally:
        client.close()
    return requests


async def _load(
    url: str, node_ids: list[str], namespace: str, modbus_port: int | None, seconds: float
) -> str:
    stop_at = time.time() + seconds
    jobs = [_opcua_client(url, node_ids, namespace, stop_at) for _ in range(OPCUA_CLIENTS)]
    if modbus_port is not None:
        jobs += [_modbus_client(modbus_port, stop_at) for _ in range(MODBUS_CLIENTS)]
    counts = await asyncio.gather(*jobs, return_exceptions=True)
    opcua = [c for c in counts[:OPCUA_CLIENTS] if isinstance(c, int)]
    modbus = [c for c in counts[OPCUA_CLIENTS:] if isinstance(c, int)]
    text = f"{len(opcua)} OPC UA clients x {len(node_ids)} points: {sum(opcua) / seconds:,.0f} notifications/s"
    if modbus_port is not None:
        text += f"; {len(modbus)} Modbus clients: {sum(modbus) / seconds:,.0f} requests/s"
    return text


def load_process(
    args: tuple[str, list[str], str, int | None, float], result: multiprocessing.Queue[str]
) -> None:
    logging.basicConfig(level=logging.WARNING)
    result.put(asyncio.run(_load(*args)))


# -- the measurement --------------------------------------------------------------------


async def _keep_heartbeat(core: Core) -> None:
    counter = 0
    while True:
        counter += 1
        core.handle_command(
            CommandRequest(counter, "bench", "heartbeat", "heartbeat.counter", counter)
        )
        await asyncio.sleep(5)


async def _phase(core: Core, name: str, seconds: float, load: str) -> Phase:
    core.stats.lateness_s.clear()
    overruns = core.stats.overruns
    await asyncio.sleep(seconds)
    return Phase(
        name, [v * 1000 for v in core.stats.lateness_s], core.stats.overruns - overruns, load
    )


async def measure(seconds: float) -> list[Phase]:
    with tempfile.TemporaryDirectory() as tmp:
        config, ports = simulated_site_on_free_ports(Path(tmp))
        appliance = Appliance(config, simulate=True)
        core = await appliance.start()
        heartbeat = asyncio.create_task(_keep_heartbeat(core))
        try:
            for _ in range(200):
                if core.handle_command(
                    CommandRequest(0, "bench", "set_mode", "controller.mode", MAXSELF)
                ).accepted:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(3)  # faces up, site settled
            idle = await _phase(core, "idle (maxself)", seconds, "none")
            table = site_point_table(config)
            node_ids = [p.opcua_node_id for p in table]
            modbus_port = ports[5020] if _modbus_served(config) else None
            url = f"opc.tcp://127.0.0.1:{ports[4840]}/"
            context = multiprocessing.get_context("spawn")
            result: multiprocessing.Queue[str] = context.Queue()
            load_seconds = seconds + 8  # connecting and subscribing come first
            worker = context.Process(
                target=load_process,
                args=(
                    (url, node_ids, config.faces.opcua.namespace_uri, modbus_port, load_seconds),
                    result,
                ),
            )
            worker.start()
            await asyncio.sleep(6)
            loaded = await _phase(core, "faces loaded", seconds, "")
            text = await asyncio.to_thread(result.get, True, load_seconds + 60)
            await asyncio.to_thread(worker.join, 30)
            loaded.load = text
            return [idle, loaded]
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await appliance.stop()


def _modbus_served(config: SiteConfig) -> bool:
    """The Modbus face is configured and this version has it."""
    return (
        config.faces.modbus.enabled
        and importlib.util.find_spec("appliance.northbound.modbus") is not None
    )


def report(phases: list[Phase], seconds: float) -> str:
    lines = [
        "## Control loop lateness under face load (`bench/loop_lateness.py`)",
        "",
        f"Command: `.venv/bin/python -m bench.loop_lateness --seconds {seconds:g}`; "
        f"{platform.machine()}, {multiprocessing.cpu_count()} cores, Python {platform.python_version()}. "
        "Lateness is the start of a control cycle minus its slot on the 500 ms schedule; an "
        "overrun is a cycle a whole period late. The idle phase of the same run is the baseline.",
        "",
        "| phase | cycles | overruns | late p50 ms | late p99 ms | late max ms | load |",
        "|---|---|---|---|---|---|---|",
        *(p.row() for p in phases),
        "",
        "Goal: p99 under 20 ms and no overrun under load.",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each phase")
    parser.add_argument(
        "--no-write", action="store_true", help="print only, leave docs/performance.md"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    phases = asyncio.run(measure(args.seconds))
    section = report(phases, args.seconds)
    print(section)
    if not args.no_write:
        write_section("loop-lateness", section)
    loaded = phases[-1]
    values = sorted(loaded.lateness_ms)
    p99 = values[min(len(values) - 1, int(0.99 * len(values)))]
    return 0 if p99 < 20.0 and loaded.overruns == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
