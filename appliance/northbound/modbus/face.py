"""The Modbus slave face: the site's points as a SunSpec-discoverable map, over TCP and RTU.

    face = ModbusFace(context)
    await face.start()      # faces.modbus.bind:port (and faces.modbus.rtu.port); raises if it cannot
    face.apply(changes)     # once per core cycle (nothing to do: reads encode the mirror)
    await face.stop()

Unit ids: the site is faces.modbus.unit_id (default 1), battery node n is unit_id + n. The
maps are in `layout.py` and `vendor.py`, the contract in docs/modbus.md, every register in
models/modbus/register-map.csv.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import appliance
from appliance.northbound.face import FaceContext
from appliance.northbound.modbus.handler import Counters, RequestProcessor, Unit
from appliance.northbound.modbus.layout import node_map, node_numbers, site_map
from appliance.northbound.modbus.registers import device_points
from appliance.northbound.modbus.transport import Hub, Policy, RtuListener, TcpListener
from appliance.points.table import PointTable, shipped_point_table
from appliance.store import Sample

log = logging.getLogger(__name__)

MANUFACTURER = "appliance"
SITE_MODEL = "PV + battery site appliance"
NODE_MODEL = "PV + battery site node"


class ModbusFace:
    name = "modbus"

    def __init__(self, context: FaceContext) -> None:
        self._context = context
        self._settings = context.config.faces.modbus
        settings = self._settings
        self.units = build_units(context)
        self.processor = RequestProcessor(
            context.table,
            self.units,
            settings.unit_id,
            context.mirror,
            context.submit,
            device_points(context.table),
            read_only=settings.read_only,
        )
        self._hub = Hub(
            self.processor,
            Policy(
                settings.allowed_networks,
                settings.write_networks,
                settings.max_connections,
                settings.idle_timeout_s,
            ),
        )
        self._tcp: TcpListener | None = None
        self._rtu: RtuListener | None = None
        self.port: int | None = (
            None  # the bound TCP port (faces.modbus.port, or the one picked for 0)
        )

    @property
    def counters(self) -> Counters:
        return self.processor.counters

    @property
    def connection_count(self) -> int:
        """Open connections (TCP clients, and the serial line while it is open)."""
        return len(self._hub.connections)

    async def start(self) -> None:
        settings = self._settings
        tcp = TcpListener(self._hub, settings.bind, settings.port)
        try:
            await tcp.serve_forever(background=True)
            self._tcp = tcp
            self.port = tcp.bound_port
            if settings.rtu is not None:
                rtu = RtuListener(
                    self._hub, settings.rtu.port, settings.rtu.baudrate, settings.rtu.parity
                )
                await rtu.serve_forever(background=True)
                self._rtu = rtu
        except BaseException:
            await self.stop()
            raise
        log.info(
            "modbus: serving tcp %s:%d%s, site unit %d, node units %s%s",
            settings.bind,
            self.port,
            f" and rtu {settings.rtu.port} at {settings.rtu.baudrate} baud" if settings.rtu else "",
            settings.unit_id,
            ", ".join(str(u) for u in sorted(self.units) if u != settings.unit_id) or "none",
            " (read-only)" if settings.read_only else "",
        )

    def apply(self, changes: Mapping[str, Sample]) -> None:
        """The host has updated the mirror: reads encode it afresh."""
        self.processor.mirror_changed()

    async def stop(self) -> None:
        for listener in (self._tcp, self._rtu):
            if listener is not None:
                await listener.shutdown()  # type: ignore[no-untyped-call]  # untyped in 3.16.1
        self._tcp = self._rtu = None
        await self._hub.drain()
        log.info("modbus: stopped")


def build_units(context: FaceContext) -> dict[int, Unit]:
    """The maps of the site unit and of each battery node's unit, with their identities."""
    config = context.config
    site_unit = config.faces.modbus.unit_id
    version = appliance.__version__
    units = {
        site_unit: Unit(
            site_map(context.table, layout_table=_layout_table(context.table)),
            {
                "Mn": MANUFACTURER,
                "Md": SITE_MODEL,
                "Opt": config.site.name,
                "Vr": version,
                "SN": config.site.id,
            },
        )
    }
    nodes = config.devices.battery_nodes
    for node in node_numbers(context.table):
        name = nodes[node - 1].name if node <= len(nodes) else f"node{node}"
        units[site_unit + node] = Unit(
            node_map(context.table, node),
            {
                "Mn": MANUFACTURER,
                "Md": NODE_MODEL,
                "Opt": name,
                "Vr": version,
                "SN": f"{config.site.id}/{name}",
            },
        )
    return units


def _layout_table(table: PointTable) -> PointTable:
    """The table whose templated blocks lay out the vendor model: the shipped one (all
    instances, so a site's vendor model looks like every other site's) when it contains
    the site's table, else the site's own."""
    shipped = shipped_point_table()
    return shipped if all(point.id in shipped for point in table) else table
