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
from appliance.runtime.parent import stop_when_parent_exits
from appliance.simulation.devices.pylontech_sim import (
    BmsValues,
    PylontechSimulator,
    bms_values_from_node,
)
from appliance.simulation.devices.relay_module_sim import RelayModuleSimulator
from appliance.simulation.devices.sdm630_sim import Sdm630Simulator
from appliance.simulation.devices.socketcand_server import SocketcandServer
from appliance.simulation.devices.sunspec_inverter_sim import (
    InverterValues,
    SunSpecInverterSimulator,
    inverter_values_from_node,
)
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
    _loopback(f"{name}.connection.host", connection.host)
    return connection


def _loopback(name: str, host: str) -> None:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        # A simulator must never answer for a real device's address.
        raise ConfigError(
            f"{name}: {host} is not a loopback address; the simulated site serves on 127.0.0.0/8 only"
        )


def _reading(values: Callable[[], GridValues]) -> Callable[[], MeterReading]:
    def source() -> MeterReading:
        return MeterReading(**dataclasses.asdict(values()))

    return source


class SimulatedSite:
    def __init__(self, config: SiteConfig) -> None:
        self.config = config
        self.plant = Plant(plant_params(config))
        self.simulators: list[Sdm630Simulator] = []
        self.bms_simulators: list[PylontechSimulator] = []
        self.inverter_simulators: list[SunSpecInverterSimulator] = []
        self.relay_simulators: dict[tuple[str, int, int], RelayModuleSimulator] = {}
        self.can_bridges: dict[tuple[str, int], SocketcandServer] = {}
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
        await self._start_bms()
        await self._start_inverters()
        await self._start_relay_modules()

    async def _start_relay_modules(self) -> None:
        """One relay module per address; a closed contact switches its load on in the plant."""
        wiring: dict[tuple[str, int, int], list[tuple[str, tuple[int, ...], float]]] = {}
        for load in self.config.devices.surplus_loads:
            connection = load.connection
            if not isinstance(connection, TcpConnection):
                log.warning("%s: only loads on Modbus TCP are simulated; not simulated", load.name)
                continue
            _loopback(f"{load.name}.connection.host", connection.host)
            key = (connection.host, connection.port, connection.unit_id)
            wiring.setdefault(key, []).append((load.name, load.channels, load.rated_power_w))
        for (host, port, unit_id), loads in wiring.items():
            simulator = RelayModuleSimulator(
                _relay_sink(self.plant, loads),
                _no_inputs,
                unit_id=unit_id,
                name=f"sim.relays:{port}",
            )
            bound = await simulator.start_tcp(host, port)
            self.relay_simulators[(host, port, unit_id)] = simulator
            names = ", ".join(name for name, _, _ in loads)
            self.endpoints.append(f"relay module (WP8024, Modbus TCP) {host}:{bound} for {names}")

    async def _start_inverters(self) -> None:
        params = self.plant.params
        for index, node in enumerate(self.config.devices.battery_nodes):
            connection = node.inverter.connection
            if node.inverter.kind != "sunspec" or not isinstance(connection, TcpConnection):
                log.warning(
                    "%s.inverter: only SunSpec over TCP is simulated; not simulated", node.name
                )
                continue
            _loopback(f"{node.name}.inverter.connection.host", connection.host)
            simulator = SunSpecInverterSimulator(
                _inverter_source(self.plant, index),
                _setpoint_sink(self.plant, index + 1),
                unit_id=connection.unit_id,
                name=f"sim.{node.name}.inverter",
                rated_charge_w=params.node_max_charge_w,
                rated_discharge_w=params.node_max_discharge_w,
                rated_power_w=max(params.node_max_charge_w, params.node_max_discharge_w),
                capacity_wh=params.node_capacity_wh,
            )
            port = await simulator.start_tcp(connection.host, connection.port)
            self.inverter_simulators.append(simulator)
            self.endpoints.append(
                f"{node.name}.inverter (SunSpec, Modbus TCP) {connection.host}:{port}"
            )

    async def _start_bms(self) -> None:
        """One socketcand bridge per host:port, a channel per node, a Pylontech BMS on each."""
        nodes = self.config.devices.battery_nodes
        bridged = [
            (index, node.name, node.bms.connection)
            for index, node in enumerate(nodes)
            if node.bms.connection.interface == "socketcand"
        ]
        channels: dict[tuple[str, int], list[str]] = {}
        for _, name, conn in bridged:
            if conn.host is None or conn.port is None:  # the config refuses this already
                continue
            _loopback(f"{name}.bms.connection.host", conn.host)
            channels.setdefault((conn.host, conn.port), []).append(conn.channel)
        for (host, port), names in channels.items():
            server = SocketcandServer(tuple(names), name=f"sim.socketcand:{port}")
            await server.start(host, port)
            self.can_bridges[(host, port)] = server
            self.endpoints.append(
                f"BMS CAN bridge (socketcand) {host}:{port} channels {', '.join(names)}"
            )
        for index, name, conn in bridged:
            server = self.can_bridges[(conn.host or "", conn.port or 0)]
            simulator = PylontechSimulator(
                _bms_source(self.plant, index), server.bus(conn.channel), name=f"sim.{name}.bms",
                extension_frames=True,
            )  # fmt: skip
            await simulator.start()
            self.bms_simulators.append(simulator)
        for _, name, conn in [(i, n.name, n.bms.connection) for i, n in enumerate(nodes)]:
            if conn.interface != "socketcand":
                log.warning(
                    "%s.bms: interface %s cannot reach another process; use socketcand to simulate it",
                    name, conn.interface,
                )  # fmt: skip

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
        for relays in self.relay_simulators.values():
            await relays.stop()
        self.relay_simulators.clear()
        for inverter in self.inverter_simulators:
            await inverter.stop()
        self.inverter_simulators.clear()
        for bms in self.bms_simulators:
            await bms.stop()
        for bridge in self.can_bridges.values():
            await bridge.stop()
        for simulator in self.simulators:
            await simulator.stop()
        self.simulators.clear()
        self.bms_simulators.clear()
        self.can_bridges.clear()


def _no_inputs() -> tuple[bool, ...]:
    return (False,) * 8


def _relay_sink(
    plant: Plant, loads: list[tuple[str, tuple[int, ...], float]]
) -> Callable[[tuple[bool, ...]], None]:
    def sink(relays: tuple[bool, ...]) -> None:
        for name, channels, rated_w in loads:
            on = any(relays[channel - 1] for channel in channels)
            plant.set_switched_load_w(name, rated_w if on else 0.0)

    return sink


def _inverter_source(plant: Plant, index: int) -> Callable[[], InverterValues]:
    def source() -> InverterValues:
        return inverter_values_from_node(plant.state.nodes[index])

    return source


def _setpoint_sink(plant: Plant, node: int) -> Callable[[float], None]:
    def sink(watts: float) -> None:
        plant.set_inverter_setpoint(node, watts)

    return sink


def _bms_source(plant: Plant, index: int) -> Callable[[], BmsValues]:
    def source() -> BmsValues:
        return bms_values_from_node(plant.state.nodes[index])

    return source


async def _serve(config: SiteConfig, ready: MpEvent | None, parent_pid: int | None) -> None:
    site = SimulatedSite(config)
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    if parent_pid is not None:
        stop_when_parent_exits(parent_pid, loop, stopped, "simulated site")
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


def simulated_site_main(
    config: SiteConfig, ready: MpEvent | None = None, parent_pid: int | None = None
) -> None:
    """Entry point of the simulated-site process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the appliance decides when we stop
    logging.basicConfig(
        level=config.logging.level,
        format="%(asctime)s %(levelname)-7s %(processName)s %(name)s: %(message)s",
    )
    asyncio.run(_serve(config, ready, parent_pid))
