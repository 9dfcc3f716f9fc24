"""The simulated site: the plant model stepped in real time, its devices on loopback.

Each simulated device speaks its real protocol on the address the site configuration gives
for it, so the appliance reaches the simulation exactly as it reaches a real site. It runs in
its own process (`simulated_site_main`): the plant and its servers never share the core's
event loop, as real devices would not.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import signal
from collections.abc import Callable
from multiprocessing.synchronize import Event as MpEvent

from appliance.config.schema import MeterConfig, SiteConfig, TcpConnection
from appliance.drivers.base import MeterReading
from appliance.errors import ConfigError
from appliance.simulation.devices.sdm630_sim import Sdm630Simulator
from appliance.simulation.plant import GridValues, Plant, PlantParams

log = logging.getLogger(__name__)

STEP_S = 0.1  # plant integration step, real time


def plant_params(config: SiteConfig) -> PlantParams:
    simulation = config.simulation
    if simulation is None:
        raise ConfigError(
            f"{config.source}: simulation: section missing; the simulated site needs it"
        )
    nodes = len(config.devices.battery_nodes) or simulation.battery_nodes
    return PlantParams(
        seed=simulation.seed,
        battery_nodes=nodes,
        pv_peak_w=simulation.pv_peak_w,
        start_hour=simulation.start_hour,
    )


def _loopback_tcp(name: str, meter: MeterConfig) -> TcpConnection | None:
    connection = meter.connection
    if not isinstance(connection, TcpConnection):
        log.warning("%s: the simulated site serves meters on Modbus TCP only; not simulated", name)
        return None
    try:
        loopback = ipaddress.ip_address(connection.host).is_loopback
    except ValueError:
        loopback = connection.host == "localhost"
    if not loopback:
        # A simulator must never answer for a real device's address.
        raise ConfigError(
            f"{name}.connection.host: {connection.host} is not a loopback address; "
            "the simulated site serves on 127.0.0.0/8 only"
        )
    return connection


def _reading(values: Callable[[], GridValues]) -> Callable[[], MeterReading]:
    def source() -> MeterReading:
        return MeterReading(**dataclasses.asdict(values()))

    return source


class SimulatedSite:
    def __init__(self, config: SiteConfig) -> None:
        self.config = config
        self.plant = Plant(plant_params(config))
        self.simulators: list[Sdm630Simulator] = []
        self.endpoints: list[str] = []

    async def start(self) -> None:
        devices = self.config.devices
        meters = [("grid_meter", devices.grid_meter, lambda: self.plant.state.grid)]
        if devices.pv_meter is not None:
            meters.append(("pv_meter", devices.pv_meter, lambda: self.plant.state.pv_meter))
        for name, meter, values in meters:
            if meter.kind != "sdm630":
                log.warning("%s: kind '%s' is not simulated in this version", name, meter.kind)
                continue
            connection = _loopback_tcp(name, meter)
            if connection is None:
                continue
            simulator = Sdm630Simulator(
                _reading(values), unit_id=connection.unit_id, name=f"sim.{name}"
            )
            port = await simulator.start_tcp(connection.host, connection.port)
            self.simulators.append(simulator)
            self.endpoints.append(f"{name} (SDM630, Modbus TCP) {connection.host}:{port}")

    async def run(self) -> None:
        """Step the plant in real time; a late step integrates the real elapsed time."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(STEP_S)
            now = loop.time()
            self.plant.step(max(now - last, 1e-3))
            last = now

    async def stop(self) -> None:
        for simulator in self.simulators:
            await simulator.stop()
        self.simulators.clear()


async def _serve(config: SiteConfig, ready: MpEvent | None) -> None:
    site = SimulatedSite(config)
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    await site.start()
    for endpoint in site.endpoints:
        log.info("simulated site: %s", endpoint)
    if ready is not None:
        ready.set()
    stepping = asyncio.create_task(site.run(), name="simulation.plant")
    try:
        await stopped.wait()
    finally:
        stepping.cancel()
        await asyncio.gather(stepping, return_exceptions=True)
        await site.stop()


def simulated_site_main(config: SiteConfig, ready: MpEvent | None = None) -> None:
    """Entry point of the simulated-site process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the appliance decides when we stop
    logging.basicConfig(
        level=config.logging.level,
        format="%(asctime)s %(levelname)-7s %(processName)s %(name)s: %(message)s",
    )
    asyncio.run(_serve(config, ready))
