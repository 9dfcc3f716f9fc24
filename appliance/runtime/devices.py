"""Wiring from the site configuration to device drivers, their pollers and actuators.

This is the one place that knows which driver serves which configured device kind and which
points each driver's reading fills. Drivers stay ignorant of points and of the store.

A meter role whose block the point table does not (yet) have is still read: its poller counts
in the appliance's status and logs its outages; only the points that exist are written.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.clock import Clock
from appliance.config.loader import device_map_path
from appliance.config.schema import (
    SIMULATED_RADIO,
    BatteryNodeConfig,
    MeterConfig,
    SerialConnection,
    SiteConfig,
    SurplusLoadConfig,
    TcpConnection,
    ZigbeeConnection,
    serial_port_path,
)
from appliance.drivers.base import MeterReading
from appliance.drivers.generic_inverter import GenericInverter, parse_generic_inverter_map
from appliance.drivers.inverter_types import InverterReading
from appliance.drivers.modbus_link import ModbusLink
from appliance.drivers.pc321_clamp import ClampReading, Pc321Clamp
from appliance.drivers.pwm_heater import RelayDutyHeater, TimeProportioning
from appliance.drivers.pylontech_can import BmsReading, PylontechCanBms
from appliance.drivers.relay_module import RelayModule, RelayState, relay_coil
from appliance.drivers.sdm630 import Sdm630Meter
from appliance.drivers.sml_meter import SmlMeter, SmlReading
from appliance.drivers.sunspec_inverter import SunSpecInverter
from appliance.drivers.zigbee_app import (
    ControllerApplication,
    start_radio_application,
    stop_application,
)
from appliance.errors import ConfigError
from appliance.runtime.actuators import LatestValueWriter
from appliance.runtime.poller import Measurement, Poller
from appliance.runtime.site_table import MAX_SURPLUS_LOADS
from appliance.store import DataStore, Value

if TYPE_CHECKING:
    from appliance.simulation.zigbee_feed import SimulatedZigbeeRadio

log = logging.getLogger(__name__)

_PHASES = ("l1", "l2", "l3")
Closer = Callable[[], Awaitable[None]]
MeterDriver = Sdm630Meter | SmlMeter | Pc321Clamp


@dataclass
class Devices:
    """Everything the core talks to, built from the configuration."""

    pollers: list[Poller] = field(default_factory=list)
    inverter_writers: dict[int, LatestValueWriter[float]] = field(default_factory=dict)
    #: Relay contacts per surplus load (1-based load index), in the order of its channels.
    load_writers: dict[int, LatestValueWriter[tuple[bool, ...]]] = field(default_factory=dict)
    #: Heater level in % per PWM heater load; submitted every cycle, which also advances
    #: the time-proportioning of its relay.
    heater_writers: dict[int, LatestValueWriter[float]] = field(default_factory=dict)
    #: The meters' drivers by role (grid_meter, pv_meter, consumption_clamp, sml_meter).
    meters: dict[str, MeterDriver] = field(default_factory=dict)
    #: radio: simulated, by the (host, port) of its value feed (see appliance.simulation).
    simulated_radios: dict[tuple[str, int], SimulatedZigbeeRadio] = field(default_factory=dict)
    closers: list[Closer] = field(default_factory=list)

    async def close(self) -> None:
        for poller in self.pollers:
            await poller.close()
        for closer in reversed(self.closers):
            await closer()


# -- readings to point values ---------------------------------------------------------


def meter_values(block: str, reading: MeterReading) -> dict[str, Value | None]:
    """Grid block values from a three-phase meter reading."""
    values: dict[str, Value | None] = {}
    for i, phase in enumerate(_PHASES):
        values[f"{block}.voltage_{phase}"] = reading.voltage_v[i]
        values[f"{block}.current_{phase}"] = reading.current_a[i]
        values[f"{block}.active_power_{phase}"] = reading.active_power_w[i]
        values[f"{block}.reactive_power_{phase}"] = reading.reactive_power_var[i]
        values[f"{block}.power_factor_{phase}"] = reading.power_factor[i]
    values[f"{block}.frequency"] = reading.frequency_hz
    values[f"{block}.active_power"] = reading.total_active_power_w
    values[f"{block}.reactive_power"] = reading.total_reactive_power_var
    values[f"{block}.power_factor"] = reading.total_power_factor
    values[f"{block}.import_energy"] = reading.import_kwh
    values[f"{block}.export_energy"] = reading.export_kwh
    return values


def pv_meter_values(reading: MeterReading) -> dict[str, Value | None]:
    """PV block values; a PV meter measures production as import."""
    values: dict[str, Value | None] = {
        f"pv.active_power_{phase}": max(0.0, reading.active_power_w[i])
        for i, phase in enumerate(_PHASES)
    }
    values["pv.active_power"] = max(0.0, reading.total_active_power_w)
    values["pv.energy"] = reading.import_kwh
    return values


def sml_values(reading: SmlReading, block: str = "grid") -> dict[str, Value | None]:
    """Block values from the smart meter: power and energy registers only.

    `block` is grid when the smart meter is the grid meter, sml_meter for the sml_meter role.
    """
    values: dict[str, Value | None] = {
        f"{block}.active_power": reading.active_power_w,
        f"{block}.import_energy": reading.import_kwh,
        f"{block}.export_energy": reading.export_kwh,
    }
    per_phase = (reading.active_power_l1_w, reading.active_power_l2_w, reading.active_power_l3_w)
    for phase, power in zip(_PHASES, per_phase, strict=True):
        if power is not None:
            values[f"{block}.active_power_{phase}"] = power
    return values


def clamp_grid_values(reading: ClampReading, block: str = "grid") -> dict[str, Value | None]:
    """Block values from a ZigBee clamp (at the grid connection point for the grid block)."""
    values: dict[str, Value | None] = {f"{block}.active_power": reading.active_power_w}
    for phase in _PHASES:
        values[f"{block}.active_power_{phase}"] = getattr(reading, f"active_power_{phase}_w")
        values[f"{block}.voltage_{phase}"] = getattr(reading, f"voltage_{phase}_v")
        values[f"{block}.current_{phase}"] = getattr(reading, f"current_{phase}_a")
    return {k: v for k, v in values.items() if v is not None}


def clamp_house_values(reading: ClampReading) -> dict[str, Value | None]:
    """A consumption clamp: the house's consumption, and its own block where the table has it."""
    values = clamp_grid_values(reading, "consumption_clamp")
    values["consumption_clamp.energy"] = reading.energy_kwh
    values["house.active_power"] = reading.active_power_w
    return {k: v for k, v in values.items() if v is not None}


def bms_values(node: int, reading: BmsReading) -> dict[str, Value | None]:
    prefix = f"battery.{node}."
    return {
        prefix + "soc": reading.soc_pct,
        prefix + "soh": reading.soh_pct,
        prefix + "voltage": reading.voltage_v,
        prefix + "current": reading.current_a,
        prefix + "power": reading.power_w,
        prefix + "cell_voltage_min": reading.cell_voltage_min_v,
        prefix + "cell_voltage_max": reading.cell_voltage_max_v,
        prefix + "temperature_min": reading.temperature_min_c
        if reading.temperature_min_c is not None
        else reading.temperature_c,
        prefix + "temperature_max": reading.temperature_max_c
        if reading.temperature_max_c is not None
        else reading.temperature_c,
        prefix + "charge_current_limit": reading.charge_current_limit_a,
        prefix + "discharge_current_limit": reading.discharge_current_limit_a,
        prefix + "charge_voltage_limit": reading.charge_voltage_limit_v,
        prefix + "alarm_flags": reading.alarm_flags,
        prefix + "warning_flags": reading.warning_flags,
    }


def inverter_values(node: int, reading: InverterReading) -> dict[str, Value | None]:
    prefix = f"inverter.{node}."
    return {
        prefix + "active_power": reading.active_power_w,
        prefix + "setpoint": reading.setpoint_w,
        prefix + "state": int(reading.state),
        prefix + "max_charge_power": reading.max_charge_power_w,
        prefix + "max_discharge_power": reading.max_discharge_power_w,
    }


# -- builders -------------------------------------------------------------------------


class _Builder:
    def __init__(self, config: SiteConfig, store: DataStore) -> None:
        self.config = config
        self.store = store
        self.devices = Devices()
        self._zigbee_apps: dict[str, ControllerApplication] = {}

    def poller(
        self,
        name: str,
        read: Callable[[], Awaitable[Measurement]],
        block_prefix: str | tuple[str, ...],
        *,
        interval_s: float,
        comm_ok: str | None,
        close: Closer | None,
        staleness_s: float | None = None,
        event_driven: bool = False,
    ) -> None:
        if comm_ok is not None and comm_ok not in self.store.table:
            comm_ok = None  # a role whose block the table does not have
        point_ids = [
            p.id for p in self.store.table if p.id.startswith(block_prefix) and p.id != comm_ok
        ]
        if staleness_s is not None:
            # The configured device's own staleness replaces the table's default for its points.
            self.store.set_staleness(point_ids, staleness_s)
        self.devices.pollers.append(
            Poller(
                name,
                read,
                self.store,
                point_ids,
                interval_s=interval_s,
                comm_ok_point=comm_ok,
                close=close,
                startup_grace_s=(staleness_s or 5.0) if event_driven else 0.0,
            )
        )

    def published(self, values: dict[str, Value | None]) -> dict[str, Value | None]:
        """The values whose points the table has."""
        table = self.store.table
        return {k: v for k, v in values.items() if k in table}

    async def meter(self, name: str, meter: MeterConfig, block: str) -> None:
        connection = meter.connection
        if meter.kind == "sdm630" and isinstance(connection, TcpConnection | SerialConnection):
            sdm = _sdm630(name, _resolved(self.config, connection))
            self.devices.meters[name] = sdm
            convert = pv_meter_values if block == "pv" else lambda r: meter_values(block, r)

            async def read_sdm() -> Measurement:
                return Measurement(convert(await sdm.read()))

            self.poller(
                name, read_sdm, f"{block}.", interval_s=meter.poll_interval_s,
                comm_ok=f"{block}.comm_ok", close=sdm.close, staleness_s=meter.staleness_s,
            )  # fmt: skip
        elif (
            meter.kind == "sml"
            and block in ("grid", "sml_meter")
            and not isinstance(connection, ZigbeeConnection)
        ):
            # An optical head on a serial-to-TCP converter is reached as a pyserial URL; a
            # port relative to data_dir is a pty the simulated site publishes.
            port = (
                serial_port_path(self.config.data_dir, connection.port)
                if isinstance(connection, SerialConnection)
                else f"socket://{connection.host}:{connection.port}"
            )
            sml = SmlMeter(
                port, name=name, stale_after_s=meter.staleness_s,
                baudrate=connection.baudrate if isinstance(connection, SerialConnection) else 9600,
            )  # fmt: skip
            self.devices.meters[name] = sml

            async def read_sml() -> Measurement:
                reading = await sml.read()
                return Measurement(
                    self.published(sml_values(reading, block)), reading.received_monotonic
                )

            self.poller(
                name, read_sml, f"{block}.", interval_s=meter.poll_interval_s,
                comm_ok=f"{block}.comm_ok", close=sml.close, staleness_s=meter.staleness_s,
                event_driven=True,
            )  # fmt: skip
        elif (
            meter.kind == "pc321"
            and block in ("grid", "house")
            and isinstance(connection, ZigbeeConnection)
        ):
            app = await self.zigbee_app(name, connection)
            clamp = Pc321Clamp(app, connection.ieee, name=name, stale_after_s=meter.staleness_s)
            self.devices.meters[name] = clamp
            await clamp.connect()
            grid = block == "grid"

            async def read_clamp() -> Measurement:
                reading = await clamp.read()
                values = clamp_grid_values(reading) if grid else clamp_house_values(reading)
                return Measurement(self.published(values), reading.received_monotonic)

            self.poller(
                name, read_clamp, "grid." if grid else ("house.", "consumption_clamp."),
                interval_s=meter.poll_interval_s,
                comm_ok="grid.comm_ok" if grid else "consumption_clamp.comm_ok",
                close=clamp.close, staleness_s=meter.staleness_s, event_driven=True,
            )  # fmt: skip
        else:
            log.warning(
                "%s: no driver for kind '%s' over %s as %s meter; its points stay without data",
                name, meter.kind, connection.type, block,
            )  # fmt: skip

    async def zigbee_app(self, name: str, connection: ZigbeeConnection) -> ControllerApplication:
        """The zigpy application of the connection's radio, started once per radio."""
        if connection.radio == SIMULATED_RADIO:
            radio = await self.simulated_radio(connection)
            await radio.add_pc321(connection.ieee, name=name)
            return radio.app
        key = connection.device or ""
        if key not in self._zigbee_apps:
            app = await start_radio_application(
                connection.radio,
                key,
                baudrate=connection.baudrate,
                database_path=Path(self.config.data_dir) / "zigbee.db",
            )
            self._zigbee_apps[key] = app

            async def stop() -> None:
                await stop_application(app)

            self.devices.closers.append(stop)
        return self._zigbee_apps[key]

    async def simulated_radio(self, connection: ZigbeeConnection) -> SimulatedZigbeeRadio:
        """The simulated site's radio: a radio-less application fed over loopback."""
        # Imported here: a real site never loads the simulation.
        from appliance.simulation.zigbee_feed import SimulatedZigbeeRadio  # noqa: PLC0415

        key = (connection.host or "", connection.port or 0)
        radio = self.devices.simulated_radios.get(key)
        if radio is None:
            radio = await SimulatedZigbeeRadio.start(*key, name=f"zigbee[simulated {key[1]}]")
            self.devices.simulated_radios[key] = radio
            self.devices.closers.append(radio.stop)
        return radio

    def surplus_loads(self, loads: tuple[SurplusLoadConfig, ...]) -> None:
        """One relay module per bus address, shared by the loads wired to it."""
        modules: dict[
            tuple[str, object, int], tuple[RelayModule, list[tuple[int, SurplusLoadConfig]]]
        ] = {}
        for index, load in enumerate(loads[:MAX_SURPLUS_LOADS], start=1):
            _check_channels(load)
            key = _module_key(load)
            if key not in modules:
                modules[key] = (
                    _relay_module(f"relays[{load.name}]", _resolved(self.config, load.connection)),
                    [],
                )
            module, wired = modules[key]
            wired.append((index, load))
            if load.kind == "pwm_heater":
                self.devices.heater_writers[index] = LatestValueWriter(
                    f"{load.name}.heater", _heater_write(module, load, self.store.clock)
                )
            else:
                self.devices.load_writers[index] = LatestValueWriter(
                    f"{load.name}.relays", _relay_write(module, load), only_changes=True
                )
        for module, wired in modules.values():
            self._relay_poller(module, wired)

    def _relay_poller(
        self, module: RelayModule, wired: list[tuple[int, SurplusLoadConfig]]
    ) -> None:
        async def read_relays() -> Measurement:
            state = await module.read()
            values: dict[str, Value | None] = {}
            for index, load in wired:
                values.update(load_values(index, load, state))
            return Measurement(values)

        prefixes = tuple(f"surplus.{index}." for index, _ in wired)
        point_ids = [
            p.id
            for p in self.store.table
            if p.id.startswith(prefixes) and not p.id.endswith(".mode")
        ]
        self.devices.pollers.append(
            Poller(
                module.name, read_relays, self.store, point_ids, interval_s=1.0, close=module.close
            )
        )

    def battery_node(self, index: int, node: BatteryNodeConfig) -> None:
        bms_conn = node.bms.connection
        bms = PylontechCanBms.from_connection(
            bms_conn.interface,
            bms_conn.channel,
            host=bms_conn.host,
            port=bms_conn.port,
            bitrate=bms_conn.bitrate,
            name=f"{node.name}.bms",
            stale_after_s=node.bms.stale_after_s,
        )

        async def read_bms() -> Measurement:
            reading = await bms.read()
            return Measurement(bms_values(index, reading), reading.received_monotonic)

        self.poller(
            f"{node.name}.bms", read_bms, f"battery.{index}.", interval_s=0.5,
            comm_ok=f"battery.{index}.comm_ok", close=bms.close, staleness_s=node.bms.stale_after_s,
            event_driven=True,
        )  # fmt: skip
        inverter = _inverter(self.config, node)

        async def read_inverter() -> Measurement:
            return Measurement(inverter_values(index, await inverter.read()))

        async def write_setpoint(watts: float) -> None:
            await inverter.set_active_power_w(watts)

        self.poller(
            f"{node.name}.inverter", read_inverter, f"inverter.{index}.",
            interval_s=node.inverter.poll_interval_s, comm_ok=f"inverter.{index}.comm_ok",
            close=inverter.close,
        )  # fmt: skip
        self.devices.inverter_writers[index] = LatestValueWriter(
            f"{node.name}.inverter", write_setpoint
        )


def load_values(index: int, load: SurplusLoadConfig, state: RelayState) -> dict[str, Value | None]:
    """A relay load is on when any of its contacts is closed; its power is the rated power."""
    on = any(state.relay(channel) for channel in load.channels)
    prefix = f"surplus.{index}."
    return {
        prefix + "active": on,
        prefix + "power": load.rated_power_w if on else 0.0,
        prefix + "duty": 100.0 if on else 0.0,
    }


def _module_key(load: SurplusLoadConfig) -> tuple[str, object, int]:
    connection = load.connection
    where: object = (
        (connection.host, connection.port)
        if isinstance(connection, TcpConnection)
        else connection.port
    )
    return (connection.type, where, connection.unit_id)


def _resolved(
    config: SiteConfig, connection: TcpConnection | SerialConnection
) -> TcpConnection | SerialConnection:
    """A serial port relative to data_dir (a simulated site's pty) made a path."""
    if isinstance(connection, SerialConnection):
        port = serial_port_path(config.data_dir, connection.port)
        return dataclasses.replace(connection, port=port)
    return connection


def _relay_module(name: str, connection: TcpConnection | SerialConnection) -> RelayModule:
    if isinstance(connection, TcpConnection):
        return RelayModule.tcp(
            connection.host,
            connection.port,
            unit_id=connection.unit_id,
            timeout_s=connection.timeout_s,
            name=name,
        )
    return RelayModule.rtu(
        connection.port,
        unit_id=connection.unit_id,
        name=name,
        baudrate=connection.baudrate,
        parity=connection.parity,
        stopbits=connection.stopbits,
        bytesize=connection.bytesize,
        timeout_s=connection.timeout_s,
    )


def _inverter_link(name: str, connection: TcpConnection | SerialConnection) -> ModbusLink:
    if isinstance(connection, TcpConnection):
        return ModbusLink.tcp(
            connection.host, connection.port, name=name, timeout_s=connection.timeout_s
        )
    return ModbusLink.rtu(
        connection.port,
        name=name,
        baudrate=connection.baudrate,
        parity=connection.parity,
        stopbits=connection.stopbits,
        bytesize=connection.bytesize,
        timeout_s=connection.timeout_s,
    )


def _check_channels(load: SurplusLoadConfig) -> None:
    for channel in load.channels:
        try:
            relay_coil(channel)
        except ValueError as exc:
            raise ConfigError(f"surplus load {load.name}: channel {channel}: {exc}") from exc


def _inverter(config: SiteConfig, node: BatteryNodeConfig) -> SunSpecInverter | GenericInverter:
    settings = node.inverter
    name = f"{node.name}.inverter"
    link = _inverter_link(name, _resolved(config, settings.connection))
    unit_id = settings.connection.unit_id
    if settings.kind == "sunspec":
        return SunSpecInverter(
            link, unit_id=unit_id, name=name, revert_timeout_s=settings.revert_timeout_s
        )
    base_dir = Path(config.source).parent if config.source.startswith("/") else None
    path = device_map_path(settings.map or "", base_dir)
    if path is None:
        raise ConfigError(f"{config.source}: {name}: register map {settings.map!r} not found")
    register_map = parse_generic_inverter_map(path.read_text(encoding="utf-8"), str(path))
    return GenericInverter(
        link, register_map, unit_id=unit_id, name=name, revert_timeout_s=settings.revert_timeout_s
    )


def _relay_write(
    module: RelayModule, load: SurplusLoadConfig
) -> Callable[[tuple[bool, ...]], Awaitable[None]]:
    async def write(contacts: tuple[bool, ...]) -> None:
        for channel, on in zip(load.channels, contacts, strict=False):
            await module.set_relay(channel, on)

    return write


def _heater_write(
    module: RelayModule, load: SurplusLoadConfig, clock: Clock
) -> Callable[[float], Awaitable[None]]:
    heater = RelayDutyHeater(
        module,
        load.channels[0],
        timing=TimeProportioning(period_s=load.duty_period_s),
        name=f"{load.name}.heater",
    )

    async def write(level_pct: float) -> None:
        await heater.set_level_pct(level_pct)
        await heater.apply(clock.monotonic())

    return write


def _sdm630(name: str, connection: TcpConnection | SerialConnection) -> Sdm630Meter:
    if isinstance(connection, TcpConnection):
        return Sdm630Meter.tcp(
            connection.host,
            connection.port,
            unit_id=connection.unit_id,
            timeout_s=connection.timeout_s,
            name=name,
        )
    return Sdm630Meter.rtu(
        connection.port,
        baudrate=connection.baudrate,
        parity=connection.parity,
        stopbits=connection.stopbits,
        bytesize=connection.bytesize,
        unit_id=connection.unit_id,
        timeout_s=connection.timeout_s,
        name=name,
    )


async def build_devices(config: SiteConfig, store: DataStore) -> Devices:
    """Drivers, pollers and actuators for every device the configuration names."""
    builder = _Builder(config, store)
    devices = config.devices
    await builder.meter("grid_meter", devices.grid_meter, "grid")
    if devices.pv_meter is not None:
        await builder.meter("pv_meter", devices.pv_meter, "pv")
    if devices.consumption_clamp is not None:
        await builder.meter("consumption_clamp", devices.consumption_clamp, "house")
    if devices.sml_meter is not None:
        await builder.meter("sml_meter", devices.sml_meter, "sml_meter")
    for index, node in enumerate(devices.battery_nodes, start=1):
        builder.battery_node(index, node)
    builder.surplus_loads(devices.surplus_loads)
    return builder.devices
