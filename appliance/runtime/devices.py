"""Wiring from the site configuration to device drivers and their pollers.

This is the one place that knows which driver serves which configured device kind, and
which points a driver's reading fills.
"""

from __future__ import annotations

import logging

from appliance.config.schema import MeterConfig, SerialConnection, SiteConfig, TcpConnection
from appliance.drivers.base import MeterReading
from appliance.drivers.sdm630 import Sdm630Meter
from appliance.runtime.poller import Measurement, Poller, ReadFn
from appliance.store import DataStore, Value

log = logging.getLogger(__name__)

_PHASES = ("l1", "l2", "l3")


def grid_meter_values(reading: MeterReading) -> dict[str, Value | None]:
    """Point values of the grid meter block from one meter reading."""
    values: dict[str, Value | None] = {}
    for i, phase in enumerate(_PHASES):
        values[f"grid.voltage_{phase}"] = reading.voltage_v[i]
        values[f"grid.current_{phase}"] = reading.current_a[i]
        values[f"grid.active_power_{phase}"] = reading.active_power_w[i]
        values[f"grid.reactive_power_{phase}"] = reading.reactive_power_var[i]
        values[f"grid.power_factor_{phase}"] = reading.power_factor[i]
    values["grid.frequency"] = reading.frequency_hz
    values["grid.active_power"] = reading.total_active_power_w
    values["grid.reactive_power"] = reading.total_reactive_power_var
    values["grid.power_factor"] = reading.total_power_factor
    values["grid.import_energy"] = reading.import_kwh
    values["grid.export_energy"] = reading.export_kwh
    return values


def pv_meter_values(reading: MeterReading) -> dict[str, Value | None]:
    """Point values of the PV block; a PV meter measures production as import."""
    values: dict[str, Value | None] = {
        f"pv.active_power_{phase}": max(0.0, reading.active_power_w[i])
        for i, phase in enumerate(_PHASES)
    }
    values["pv.active_power"] = max(0.0, reading.total_active_power_w)
    values["pv.energy"] = reading.import_kwh
    return values


def _meter(name: str, meter: MeterConfig) -> Sdm630Meter | None:
    connection = meter.connection
    if meter.kind != "sdm630":
        return None
    if isinstance(connection, TcpConnection):
        return Sdm630Meter.tcp(
            connection.host,
            connection.port,
            unit_id=connection.unit_id,
            timeout_s=connection.timeout_s,
            name=name,
        )
    if isinstance(connection, SerialConnection):
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
    return None


def _meter_poller(
    name: str,
    meter_config: MeterConfig,
    store: DataStore,
    block: str,
) -> Poller | None:
    meter = _meter(name, meter_config)
    if meter is None:
        log.warning(
            "%s: no driver for kind '%s' over %s in this version; its points stay without data",
            name,
            meter_config.kind,
            meter_config.connection.type,
        )
        return None
    convert = grid_meter_values if block == "grid" else pv_meter_values

    async def read() -> Measurement:
        return Measurement(convert(await meter.read()))

    read_fn: ReadFn = read
    point_ids = [p.id for p in store.table.in_block(block) if p.id != f"{block}.comm_ok"]
    return Poller(
        name,
        read_fn,
        store,
        point_ids,
        interval_s=meter_config.poll_interval_s,
        comm_ok_point=f"{block}.comm_ok",
        close=meter.close,
    )


def build_pollers(config: SiteConfig, store: DataStore) -> list[Poller]:
    """One poller per polled device the configuration names and this version can drive."""
    pollers: list[Poller] = []
    devices = config.devices
    grid = _meter_poller("grid_meter", devices.grid_meter, store, "grid")
    if grid is not None:
        pollers.append(grid)
    if devices.pv_meter is not None:
        pv = _meter_poller("pv_meter", devices.pv_meter, store, "pv")
        if pv is not None:
            pollers.append(pv)
    if devices.battery_nodes:
        log.warning(
            "battery nodes: BMS and inverter drivers are not part of this version; "
            "their points stay without data and no setpoint is sent"
        )
    return pollers
