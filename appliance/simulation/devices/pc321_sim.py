"""Protocol-level Owon PC321 simulator on a radio-less zigpy application.

The simulator adds an interviewed PC321 (endpoint 1: Basic, Identify, Metering in; Identify,
Time, OTA out; manufacturer code 0x113C) to a `RadiolessApplication` and sends what the device
sends: Report_Attributes frames on Metering, serialized to bytes and handed to zigpy's
``packet_received``, the call a radio library makes for every received frame. zigpy parses
them, deduplicates, dispatches to the cluster and emits its attribute events, exactly as for a
real device. Each report is three frames:

1. standard attributes (no manufacturer code): 0x0400 instantaneous_demand, 0x0000
   current_summ_delivered, raw in the unit the multiplier/divisor give (default W / Wh);
2. manufacturer-specific (0x113C): per-phase active power, voltage (0.1 V), current (mA);
3. manufacturer-specific: 0x5005 AC frequency (Hz), which the driver does not use.

It also answers Read_Attributes on Metering (formatting and the standard attributes), so a
driver's read of multiplier/divisor crosses zigpy's request/response path.

Faults (`Pc321Simulator.faults`): ``silent`` (no frames, no answers), ``delay_s`` (each report
and each answer that much later), ``out_of_range`` (implausible values in well-formed frames),
``malformed`` (values sent with a wrong ZCL data type: character strings), ``garbage``
(truncated frames zigpy cannot parse). `leave` and `repair` act out a device leaving the
network and being paired again (zigpy then holds a new device object).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import zigpy.endpoint
import zigpy.types as t
import zigpy.zdo.types as zdo_t
from zigpy.profiles import zha
from zigpy.zcl import foundation

from appliance.drivers.pc321_clamp import (
    ATTRIBUTES_BY_ID,
    DEFAULT_MULTIPLIER,
    ENDPOINT_ID,
    METERING_CLUSTER_ID,
    MODEL,
    OWON_MANUFACTURER_CODE,
)
from appliance.drivers.zigbee_app import RadiolessApplication, zigpy_int
from appliance.simulation.plant_grid import GridValues

_LOG = logging.getLogger(__name__)

Phase3 = tuple[float, float, float]

#: The real device reports 3 to 5 times a minute (zigbee2mqtt#14645).
REPORT_PERIOD_S = 15.0
MANUFACTURER_NAME = "OWON Technology Inc."
INPUT_CLUSTERS = (0x0000, 0x0003, METERING_CLUSTER_ID)
OUTPUT_CLUSTERS = (0x0003, 0x000A, 0x0019)

_DT = foundation.DataTypeId
_REPORT = foundation.GeneralCommand.Report_Attributes
_READ = foundation.GeneralCommand.Read_Attributes
_READ_RSP = foundation.GeneralCommand.Read_Attributes_rsp
_COORDINATOR_NWK = 0x0000

# Wire types by ZCL data type id.
_WIRE_TYPES: dict[foundation.DataTypeId, type] = {
    _DT.int24: t.int24s,
    _DT.uint24: t.uint24_t,
    _DT.uint48: t.uint48_t,
    _DT.uint8: t.uint8_t,
    _DT.enum8: t.enum8,
}


@dataclass(frozen=True, slots=True)
class ClampValues:
    """What the clamp measures; power > 0 = import (CTs in their arrow direction)."""

    active_power_w: Phase3
    voltage_v: Phase3
    current_a: Phase3
    energy_kwh: float  # delivered energy counter (0x0000)
    frequency_hz: float = 50.0


def clamp_values_from_grid(grid: GridValues) -> ClampValues:
    """A clamp at the grid connection point sees what the grid meter sees."""
    return ClampValues(
        active_power_w=grid.active_power_w,
        voltage_v=grid.voltage_v,
        current_a=grid.current_a,
        energy_kwh=grid.import_kwh,
        frequency_hz=grid.frequency_hz,
    )


@dataclass(slots=True)
class Pc321Faults:
    silent: bool = False
    delay_s: float = 0.0
    out_of_range: bool = False
    malformed: bool = False
    garbage: bool = False


def _raw(attr_id: int, value: float) -> int:
    """Per-phase value -> raw, with the divisor of the driver's attribute table."""
    return round(value * (ATTRIBUTES_BY_ID[attr_id].divisor or 1))


# (attribute id, ZCL data type id, raw value)
_Record = tuple[int, foundation.DataTypeId, int]


class Pc321Simulator:
    """One PC321 on a radio-less application; values come from ``source()`` at each report."""

    def __init__(
        self,
        app: RadiolessApplication,
        source: Callable[[], ClampValues],
        ieee: str,
        period_s: float = REPORT_PERIOD_S,
        *,
        nwk: int | None = None,
        name: str = "pc321-sim",
        manufacturer_specific_frames: bool = True,
        power_wire_type: Literal["int24", "uint24"] = "int24",
        divisor: int = 1000,
    ) -> None:
        if not period_s > 0:
            raise ValueError(f"period_s must be > 0, got {period_s!r}")
        if not 0 < divisor <= 0xFFFFFF:
            raise ValueError(f"divisor must be 1..0xFFFFFF, got {divisor!r}")
        self._app = app
        self._source = source
        self._ieee = t.EUI64.convert(ieee)
        # Any fixed short address will do; derived from the IEEE so two simulators differ.
        default_nwk = 0x0001 + int.from_bytes(self._ieee.serialize(), "little") % 0xFFF0
        self._nwk = zigpy_int(t.NWK, default_nwk if nwk is None else nwk)
        self._period_s = period_s
        self._name = name
        # Whether the device sets the manufacturer-specific bit is not known: both are served.
        self._manufacturer = OWON_MANUFACTURER_CODE if manufacturer_specific_frames else None
        # zigbee2mqtt declares the per-phase powers int24, ZHA uint24 (two's complement).
        self._power_type = _DT.int24 if power_wire_type == "int24" else _DT.uint24
        self._divisor = divisor
        self.faults = Pc321Faults()
        self.frames_sent = 0
        self.frames_rejected = 0  # frames zigpy raised on
        self._zcl_tsn = 0
        self._aps_tsn = 0
        self._task: asyncio.Task[None] | None = None
        self._answers: set[asyncio.Task[None]] = set()  # delayed answers to requests
        self._unregister: Callable[[], None] | None = None

    @property
    def ieee(self) -> str:
        return str(self._ieee)

    @property
    def nwk(self) -> int:
        return int(self._nwk)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Pair the device (unless the application knows it already) and start reporting."""
        if self.running:
            return
        if self._ieee not in self._app.devices:
            self._pair()
        self._unregister = self._app.register_responder(self._nwk, self._on_packet)
        self._task = asyncio.create_task(self._run(), name=f"{self._name}-reports")
        _LOG.info("%s: reporting every %g s as %s", self._name, self._period_s, self._ieee)

    async def stop(self) -> None:
        """Stop reporting and answering (the device stays paired, as if switched off)."""
        if self._unregister is not None:
            self._unregister()
            self._unregister = None
        tasks = [*self._answers, *([self._task] if self._task is not None else [])]
        self._answers.clear()
        self._task = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def leave(self) -> None:
        """The device leaves the network: zigpy is told, reports stop (`stop` included)."""
        await self.stop()
        self._app.handle_leave(self._nwk, self._ieee)

    async def repair(self) -> None:
        """Pair again: zigpy replaces the device object (as after a re-interview); reports resume."""
        await self.stop()
        self._pair()
        await self.start()

    def send_report(self) -> int:
        """Send one report now (unless silent); returns the number of frames handed to zigpy."""
        if self.faults.silent:
            return 0
        try:
            values = self._source()
        except Exception as exc:  # noqa: BLE001  # a broken source: the device sends nothing
            _LOG.warning("%s: source failed, no report: %r", self._name, exc)
            return 0
        sent = 0
        for manufacturer, records in self._report_frames(values):
            self._deliver(self._zcl_frame(_REPORT, manufacturer, records, self._next_zcl_tsn()))
            sent += 1
        return sent

    # ------------------------------------------------------------------ device

    def _pair(self) -> None:
        dev = self._app.add_device(ieee=self._ieee, nwk=self._nwk)
        dev.node_desc = zdo_t.NodeDescriptor(  # type: ignore[no-untyped-call]
            logical_type=zdo_t.LogicalType.Router,
            mac_capability_flags=(
                zdo_t.NodeDescriptor.MACCapabilityFlags.MainsPowered
                | zdo_t.NodeDescriptor.MACCapabilityFlags.RxOnWhenIdle
                | zdo_t.NodeDescriptor.MACCapabilityFlags.AllocateAddress
            ),
            manufacturer_code=OWON_MANUFACTURER_CODE,
        )
        dev.manufacturer = MANUFACTURER_NAME
        dev.model = MODEL
        ep = dev.add_endpoint(ENDPOINT_ID)
        ep.status = zigpy.endpoint.Status.ZDO_INIT
        ep.profile_id = zha.PROFILE_ID
        ep.device_type = zha.DeviceType.CONSUMPTION_AWARENESS_DEVICE
        for cluster_id in INPUT_CLUSTERS:
            ep.add_input_cluster(cluster_id)
        for cluster_id in OUTPUT_CLUSTERS:
            ep.add_output_cluster(cluster_id)
        self._app.device_initialized(dev)  # what zigpy does at the end of an interview
        _LOG.info("%s: paired as %s (NWK 0x%04X)", self._name, self._ieee, self._nwk)

    # ------------------------------------------------------------------ reports

    async def _run(self) -> None:
        while True:
            if self.faults.delay_s > 0:
                await asyncio.sleep(self.faults.delay_s)
            self.send_report()
            await asyncio.sleep(self._period_s)

    def _standard_raw(self, values: ClampValues) -> tuple[int, int]:
        """0x0400 and 0x0000 raw: value (kW / kWh) * divisor / multiplier."""
        factor = self._divisor / DEFAULT_MULTIPLIER
        return (
            round(sum(values.active_power_w) / 1000.0 * factor),
            round(values.energy_kwh * factor),
        )

    def _report_frames(self, values: ClampValues) -> list[tuple[int | None, list[_Record]]]:
        power_raw, energy_raw = self._standard_raw(values)
        phase_power = [_raw(0x2000 + i, p) for i, p in enumerate(values.active_power_w)]
        voltage = [_raw(0x3000 + i, v) for i, v in enumerate(values.voltage_v)]
        current = [_raw(0x3100 + i, c) for i, c in enumerate(values.current_a)]
        if self.faults.out_of_range:
            power_raw = 0x7FFFFF  # 8.4 MW
            voltage[0] = 0xFFFFFF  # 1.7 MV
            current[1] = 0xFFFFFF  # 16.8 kA
        standard = [(0x0400, _DT.int24, power_raw), (0x0000, _DT.uint48, energy_raw)]
        phases = [(0x2000 + i, self._power_type, p) for i, p in enumerate(phase_power)]
        phases += [(0x3000 + i, _DT.uint24, v) for i, v in enumerate(voltage)]
        phases += [(0x3100 + i, _DT.uint24, c) for i, c in enumerate(current)]
        frequency = [(0x5005, _DT.uint8, round(values.frequency_hz))]
        return [
            (None, standard),
            (self._manufacturer, phases),
            (self._manufacturer, frequency),
        ]

    def _attribute(
        self, attr_id: int, type_id: foundation.DataTypeId, raw: int
    ) -> foundation.Attribute | None:
        if self.faults.malformed:
            # A wrong data type with a plausible payload: the number as a character string.
            value: Any = t.CharacterString(str(raw))
            type_id = _DT.string
        else:
            if type_id == _DT.uint24 and raw < 0:
                raw += 0x1000000  # two's complement, as a device declaring uint24 sends it
            try:
                value = _WIRE_TYPES[type_id](raw)
            except (ValueError, OverflowError):
                _LOG.warning(
                    "%s: 0x%04X = %r does not fit its ZCL type; not sent", self._name, attr_id, raw
                )
                return None
        return foundation.Attribute(attr_id, foundation.TypeValue(type=type_id, value=value))

    def _zcl_frame(
        self,
        command: foundation.GeneralCommand,
        manufacturer: int | None,
        records: list[_Record],
        tsn: int,
    ) -> bytes:
        hdr = foundation.ZCLHeader.general(
            tsn=tsn,
            command_id=command,
            manufacturer=manufacturer,
            direction=foundation.Direction.Server_to_Client,
        )
        attributes = [a for r in records if (a := self._attribute(*r)) is not None]
        schema = foundation.GENERAL_COMMANDS[command].schema
        payload: bytes = schema(attribute_reports=attributes).serialize()
        return bytes(hdr.serialize()) + payload

    def _next_zcl_tsn(self) -> int:
        # zigpy drops a frame identical to one of the last 10 s; the ZCL sequence number
        # (inside the frame) is what makes successive reports with equal values differ.
        self._zcl_tsn = (self._zcl_tsn + 1) & 0xFF
        return self._zcl_tsn

    def _deliver(self, data: bytes) -> None:
        if self.faults.garbage:
            data = data[:-2]  # cut inside the last attribute record
        self._aps_tsn = (self._aps_tsn + 1) & 0xFF
        packet = t.ZigbeePacket(
            src=t.AddrModeAddress(addr_mode=t.AddrMode.NWK, address=self._nwk),
            src_ep=zigpy_int(t.uint8_t, ENDPOINT_ID),
            dst=t.AddrModeAddress(
                addr_mode=t.AddrMode.NWK, address=zigpy_int(t.NWK, _COORDINATOR_NWK)
            ),
            dst_ep=zigpy_int(t.uint8_t, ENDPOINT_ID),
            tsn=zigpy_int(t.uint8_t, self._aps_tsn),
            profile_id=zigpy_int(t.uint16_t, zha.PROFILE_ID),
            cluster_id=zigpy_int(t.uint16_t, METERING_CLUSTER_ID),
            data=t.SerializableBytes(data),
            lqi=zigpy_int(t.uint8_t, 200),
            rssi=zigpy_int(t.int8s, -60),
        )
        self.frames_sent += 1
        try:
            self._app.packet_received(packet)
        except Exception as exc:  # noqa: BLE001  # a radio library logs and goes on, too
            self.frames_rejected += 1
            _LOG.warning("%s: zigpy raised on a frame: %r", self._name, exc)

    # ------------------------------------------------------------------ requests

    def _on_packet(self, packet: t.ZigbeePacket) -> None:
        """A frame the application sent to the device (see RadiolessApplication)."""
        if self.faults.silent or packet.cluster_id != METERING_CLUSTER_ID:
            return
        try:
            hdr, rest = foundation.ZCLHeader.deserialize(packet.data.serialize())
            if not hdr.frame_control.is_general or hdr.command_id != _READ:
                return
            request: Any
            request, _ = foundation.GENERAL_COMMANDS[_READ].schema.deserialize(rest)
        except (ValueError, KeyError) as exc:
            _LOG.warning("%s: cannot parse a request: %r", self._name, exc)
            return
        data = self._read_response(hdr, list(request.attribute_ids))
        if self.faults.delay_s > 0:
            task = asyncio.create_task(self._answer_later(data, self.faults.delay_s))
            self._answers.add(task)
            task.add_done_callback(self._answers.discard)
        else:
            self._deliver(data)

    async def _answer_later(self, data: bytes, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        if not self.faults.silent:
            self._deliver(data)

    def _read_response(self, hdr: foundation.ZCLHeader, attr_ids: list[int]) -> bytes:
        current: dict[int, tuple[foundation.DataTypeId, int]] = {
            0x0300: (_DT.enum8, 0),  # unit of measure: kW / kWh
            0x0301: (_DT.uint24, DEFAULT_MULTIPLIER),
            0x0302: (_DT.uint24, self._divisor),
        }
        with contextlib.suppress(Exception):
            power_raw, energy_raw = self._standard_raw(self._source())
            current[0x0400] = (_DT.int24, power_raw)
            current[0x0000] = (_DT.uint48, energy_raw)
        records = []
        for attr_id in attr_ids:
            if attr_id in current and (attr := self._attribute(attr_id, *current[attr_id])):
                records.append(
                    foundation.ReadAttributeRecord(
                        attrid=zigpy_int(t.uint16_t, attr_id),
                        status=foundation.Status.SUCCESS,
                        value=attr.value,
                    )
                )
            else:
                records.append(
                    foundation.ReadAttributeRecord(
                        attrid=zigpy_int(t.uint16_t, attr_id),
                        status=foundation.Status.UNSUPPORTED_ATTRIBUTE,
                    )
                )
        rsp = foundation.ZCLHeader.general(
            tsn=hdr.tsn,
            command_id=_READ_RSP,
            manufacturer=hdr.manufacturer,
            direction=foundation.Direction.Server_to_Client,
        )
        body: bytes = (
            foundation.GENERAL_COMMANDS[_READ_RSP].schema(status_records=records).serialize()
        )
        return bytes(rsp.serialize()) + body
