"""The simulated site: the plant model stepped in real time, its devices on loopback.

Each simulated device speaks its real protocol on the address the site configuration gives
for it, so the appliance reaches the simulation exactly as it reaches a real site. It runs in
its own process (`simulated_site_main`): the plant and its servers never share the core's
event loop, as real devices would not.

What it serves, by device kind:

* SDM630 meters, SunSpec inverters, the relay module: pymodbus servers on 127.0.0.1;
* Pylontech BMSs: CAN frames through a socketcand bridge on 127.0.0.1;
* an SML meter: telegrams once a second on a pty published as a symlink at the meter's
  serial port, a path relative to data_dir (`sml_line.PtyLine`);
* a PC321 ZigBee clamp (``radio: simulated``): its measured values on a loopback line feed
  (`zigbee_feed.ClampFeedServer`); the appliance's radio-less zigpy application turns them
  into the device's ZCL reports (`zigbee_feed.SimulatedZigbeeRadio`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import math
import signal
from collections.abc import Callable
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path

from appliance.config.schema import (
    SIMULATED_RADIO,
    MeterConfig,
    SerialConnection,
    SiteConfig,
    TcpConnection,
    ZigbeeConnection,
    is_relative_serial_port,
    serial_port_path,
)
from appliance.drivers.base import MeterReading
from appliance.errors import ConfigError
from appliance.runtime.parent import stop_when_parent_exits
from appliance.simulation.devices.pc321_sim import ClampValues, clamp_values_from_grid
from appliance.simulation.devices.pylontech_sim import (
    BmsValues,
    PylontechSimulator,
    bms_values_from_node,
)
from appliance.simulation.devices.relay_module_sim import RelayModuleSimulator
from appliance.simulation.devices.sdm630_sim import Sdm630Simulator
from appliance.simulation.devices.sml_sim import SmlMeterSimulator, sml_values_from_grid
from appliance.simulation.devices.socketcand_server import SocketcandServer
from appliance.simulation.devices.sunspec_inverter_sim import (
    InverterValues,
    SunSpecInverterSimulator,
    inverter_values_from_node,
)
from appliance.simulation.plant import GridValues, Plant, PlantParams, PlantState
from appliance.simulation.plant_grid import EnergyRegister
from appliance.simulation.sml_line import PtyLine
from appliance.simulation.zigbee_feed import ClampFeedServer

log = logging.getLogger(__name__)

STEP_S = 0.1  # plant integration step, real time
SML_PERIOD_S = 1.0  # an MT691 pushes a telegram about once a second


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


def house_meter_values(state: PlantState, register: EnergyRegister) -> GridValues:
    """What a meter on the house's own supply sees (a consumption clamp): the load.

    The plant feeds PV and the inverters evenly into the three phases at unity power factor,
    so each phase's load is its grid import plus a third of what they feed, and the house
    draws all the reactive power. `register` integrates the load (`SimulatedSite.run`).
    """
    grid = state.grid
    fed_per_phase = (state.pv_w + state.battery_ac_w) / 3.0
    p = tuple(grid.active_power_w[k] + fed_per_phase for k in range(3))
    q = grid.reactive_power_var
    current = tuple(math.hypot(p[k], q[k]) / grid.voltage_v[k] for k in range(3))
    pf = tuple(_power_factor(p[k], q[k]) for k in range(3))
    total_q = math.fsum(q)
    return GridValues(
        voltage_v=grid.voltage_v,
        current_a=(current[0], current[1], current[2]),
        active_power_w=(p[0], p[1], p[2]),
        reactive_power_var=q,
        power_factor=(pf[0], pf[1], pf[2]),
        frequency_hz=grid.frequency_hz,
        import_kwh=register.import_kwh,
        export_kwh=register.export_kwh,
        total_active_power_w=state.load_w,
        total_reactive_power_var=total_q,
        total_power_factor=_power_factor(state.load_w, total_q),
    )


def _power_factor(p_w: float, q_var: float) -> float:
    s = math.hypot(p_w, q_var)
    return 1.0 if s == 0.0 else p_w / s


class SimulatedSite:
    def __init__(self, config: SiteConfig) -> None:
        self.config = config
        self.plant = Plant(plant_params(config))
        self.simulators: list[Sdm630Simulator] = []
        self.bms_simulators: list[PylontechSimulator] = []
        self.inverter_simulators: list[SunSpecInverterSimulator] = []
        self.relay_simulators: dict[tuple[str, int, int], RelayModuleSimulator] = {}
        self.can_bridges: dict[tuple[str, int], SocketcandServer] = {}
        #: SML meters by role, and the pty line each pushes its telegrams on.
        self.sml_simulators: dict[str, SmlMeterSimulator] = {}
        self.sml_lines: dict[str, PtyLine] = {}
        #: PC321 value feeds by (host, port).
        self.clamp_feeds: dict[tuple[str, int], ClampFeedServer] = {}
        #: The house's consumed energy, integrated as the plant steps (for a consumption clamp).
        self.house_register = EnergyRegister()
        self.endpoints: list[str] = []

    def meter_values(self, role: str) -> GridValues:
        """What the meter in `role` measures now (the plant's state after its last step)."""
        state = self.plant.state
        if role == "pv_meter":
            return state.pv_meter
        if role == "consumption_clamp":
            return house_meter_values(state, self.house_register)
        return state.grid  # grid_meter, sml_meter: both at the grid connection point

    def _values(self, role: str) -> Callable[[], GridValues]:
        return lambda: self.meter_values(role)

    async def start(self) -> None:
        clamps: list[tuple[str, ZigbeeConnection]] = []
        for name, meter in self.config.devices.meters().items():
            if meter.kind == "sdm630":
                await self._start_sdm630(name, meter)
            elif meter.kind == "sml":
                await self._start_sml(name, meter)
            elif meter.kind == "pc321" and isinstance(meter.connection, ZigbeeConnection):
                clamps.append((name, meter.connection))
        await self._start_clamp_feeds(clamps)
        await self._start_bms()
        await self._start_inverters()
        await self._start_relay_modules()

    async def _start_sdm630(self, name: str, meter: MeterConfig) -> None:
        connection = _loopback_tcp(name, meter)
        if connection is None:
            return
        simulator = Sdm630Simulator(
            _reading(self._values(name)), unit_id=connection.unit_id, name=f"sim.{name}"
        )
        port = await simulator.start_tcp(connection.host, connection.port)
        self.simulators.append(simulator)
        self.endpoints.append(f"{name} (SDM630, Modbus TCP) {connection.host}:{port}")

    async def _start_sml(self, name: str, meter: MeterConfig) -> None:
        """Telegrams once a second on a pty, published at the meter's (relative) serial port."""
        connection = meter.connection
        if not isinstance(connection, SerialConnection) or not is_relative_serial_port(
            connection.port
        ):
            # A simulator must never stand in for a real serial port (/dev/...).
            log.warning(
                "%s: the simulated site publishes an SML meter only at a serial port relative "
                "to data_dir (such as sim/sml-meter); not simulated",
                name,
            )
            return
        line = PtyLine(
            Path(serial_port_path(self.config.data_dir, connection.port)), name=f"sim.{name}.line"
        )
        await line.open()
        self.sml_lines[name] = line
        values = self._values(name)
        simulator = SmlMeterSimulator(
            lambda: sml_values_from_grid(values()),
            line.meter_end,
            SML_PERIOD_S,
            baudrate=connection.baudrate,
            name=f"sim.{name}",
        )
        await simulator.start()
        self.sml_simulators[name] = simulator
        self.endpoints.append(
            f"{name} (SML, serial {connection.baudrate} 8N1) {line.link} -> {line.appliance_end}"
        )

    async def _start_clamp_feeds(self, clamps: list[tuple[str, ZigbeeConnection]]) -> None:
        """One value feed per host:port for the clamps on the simulated radio."""
        feeds: dict[tuple[str, int], dict[str, Callable[[], ClampValues]]] = {}
        for name, connection in clamps:
            if connection.radio != SIMULATED_RADIO or connection.host is None:
                log.warning(
                    "%s: only a clamp on radio simulated is simulated (radio %s); not simulated",
                    name,
                    connection.radio,
                )
                continue
            _loopback(f"{name}.connection.host", connection.host)
            key = (connection.host, connection.port or 0)
            feeds.setdefault(key, {})[connection.ieee] = _clamp_source(self._values(name))
        for (host, port), sources in feeds.items():
            feed = ClampFeedServer(sources, name=f"sim.zigbee-feed:{port}")
            bound = await feed.start(host, port)
            self.clamp_feeds[(host, port)] = feed
            self.endpoints.append(
                f"PC321 clamp values (radio simulated, JSON lines) {host}:{bound} "
                f"for {', '.join(sources)}"
            )

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
            dt_s = max(now - last, 1e-3)
            state = self.plant.step(dt_s)
            self.house_register.add(state.load_w, dt_s)
            last = now

    async def stop(self) -> None:
        for sml in self.sml_simulators.values():
            await sml.stop()
        self.sml_simulators.clear()
        for line in self.sml_lines.values():
            await line.close()
        self.sml_lines.clear()
        for feed in self.clamp_feeds.values():
            await feed.stop()
        self.clamp_feeds.clear()
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


def _clamp_source(values: Callable[[], GridValues]) -> Callable[[], ClampValues]:
    def source() -> ClampValues:
        return clamp_values_from_grid(values())

    return source


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
    stepping: asyncio.Task[None] | None = None
    try:
        await site.start()
        for endpoint in site.endpoints:
            log.info("simulated site: %s", endpoint)
        if ready is not None:
            ready.set()
        stepping = asyncio.create_task(site.run(), name="simulation.plant")
        await stopped.wait()
    finally:
        if stepping is not None:
            stepping.cancel()
            await asyncio.gather(stepping, return_exceptions=True)
        # Also after a failed start: what did start is stopped, a published pty link removed.
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
