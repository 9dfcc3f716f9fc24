"""One Modbus request, whatever the transport: route by unit id, read, or validate and write.

Writes go to the command interface (`FaceContext.submit`), never into the registers. A write
request is checked completely before the first command leaves:

1. writes are allowed at all (faces.modbus.read_only) and from this client
   (faces.modbus.write_networks; a serial line always may): else 0x01;
2. every register (bit) it touches is mapped (else 0x02) and belongs to a writable point
   (else 0x02); every multi-register value is written whole (else 0x03);
3. every value decodes (no "not implemented" marker, no unmapped symbol) and passes the
   table's checks (`validate_command`: type, range, states): else 0x03.

Only then are the commands submitted, in address order; the core may still refuse one for
its state (0x03) or not answer in time (0x04). The core applies commands one by one, so
when it refuses the second value of a request the first one has been applied: requests that
touch several command points are accepted or refused as a whole only for the checks above.

| RejectCode | Exception |
|---|---|
| OUT_OF_RANGE, INVALID_VALUE, INVALID_STATE | 0x03 ILLEGAL_DATA_VALUE |
| NOT_WRITABLE | 0x02 ILLEGAL_DATA_ADDRESS |
| ACCESS_DENIED | 0x01 ILLEGAL_FUNCTION |
| UNAVAILABLE (the core did not answer in time), no code | 0x04 SERVER_DEVICE_FAILURE |
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from pymodbus.constants import ExcCodes

from appliance.control.command_types import CommandRequest, RejectCode
from appliance.control.commands import validate_command
from appliance.northbound.face import CommandSubmitter
from appliance.northbound.modbus import pdu
from appliance.northbound.modbus.layout import Field, UnitMap
from appliance.northbound.modbus.registers import (
    ReadContext,
    decode_bit,
    decode_write,
    read_bits,
    read_registers,
)
from appliance.points.model import Point
from appliance.points.table import PointTable
from appliance.store import Sample, Value

log = logging.getLogger(__name__)

SOURCE = "modbus"
GATEWAY_NO_RESPONSE = ExcCodes.GATEWAY_NO_RESPONSE  # 0x0B: no such unit behind this server
TCP_SITE_ALIASES = (0, 255)  # Modbus/TCP: "the server itself" when it is not a gateway

REJECT_EXCEPTION: dict[RejectCode, ExcCodes] = {
    RejectCode.OUT_OF_RANGE: ExcCodes.ILLEGAL_VALUE,
    RejectCode.INVALID_VALUE: ExcCodes.ILLEGAL_VALUE,
    RejectCode.INVALID_STATE: ExcCodes.ILLEGAL_VALUE,
    RejectCode.NOT_WRITABLE: ExcCodes.ILLEGAL_ADDRESS,
    RejectCode.ACCESS_DENIED: ExcCodes.ILLEGAL_FUNCTION,
    RejectCode.UNAVAILABLE: ExcCodes.DEVICE_FAILURE,
}


@dataclass(frozen=True, slots=True)
class Client:
    """Who sent a request: its label for the log and whether it may write."""

    label: str  # "tcp:10.0.0.5:50122" or "rtu:/dev/ttyUSB2"
    may_write: bool
    serial: bool = False


@dataclass
class Counters:
    """What the face has done since start (for logs, metrics and tests)."""

    requests: int = 0
    exceptions: dict[int, int] = field(default_factory=dict)
    commands_accepted: int = 0
    commands_rejected: int = 0
    malformed_frames: int = 0
    connections_accepted: int = 0
    connections_refused: int = 0
    idle_closed: int = 0


@dataclass(frozen=True)
class Unit:
    """One unit id the face answers: its map and the texts of its Common model."""

    map: UnitMap
    identity: Mapping[str, str]


MAX_CACHED_ANSWERS = 256


class RequestProcessor:
    """Answers request PDUs for the units of one site; shared by every connection."""

    def __init__(
        self,
        table: PointTable,
        units: Mapping[int, Unit],
        site_unit: int,
        mirror: Mapping[str, Sample],
        submit: CommandSubmitter,
        devices: Mapping[tuple[str, int | None], tuple[str, ...]],
        *,
        read_only: bool = False,
    ) -> None:
        self._table = table
        self._units = dict(units)
        self._site_unit = site_unit
        self._mirror = mirror
        self._submit = submit
        self._devices = devices
        self.read_only = read_only
        self.counters = Counters()
        # Read answers of the current mirror: SCADA clients poll the same blocks again and
        # again, and the mirror changes once per core cycle, so most reads are answered
        # without encoding. Cleared by `mirror_changed`; bounded against address scans.
        self._answers: dict[tuple[int, int, int, int], bytes] = {}

    def mirror_changed(self) -> None:
        """The host has applied new samples to the mirror: cached answers are void."""
        self._answers.clear()

    async def handle(self, unit_id: int, request_pdu: bytes, client: Client) -> bytes | None:
        """The response PDU, or None when nothing must answer (RTU: another unit, broadcast)."""
        self.counters.requests += 1
        routed = self._route(unit_id, client)
        if routed is None:
            return None
        unit = self._units.get(routed)
        request = pdu.parse(request_pdu)
        if unit is None:
            answer = pdu.exception(request_pdu[0] if request_pdu else 0, GATEWAY_NO_RESPONSE)
        else:
            answer = await self._answer(routed, unit, request, client)
        if answer[0] & 0x80:
            code = answer[1]
            self.counters.exceptions[code] = self.counters.exceptions.get(code, 0) + 1
        return answer

    def _route(self, unit_id: int, client: Client) -> int | None:
        if client.serial:
            # RS485: 0 is a broadcast (never acted on: a setpoint to "everyone" is not a
            # command this site takes), another unit id is another device on the bus.
            return unit_id if unit_id in self._units else None
        return self._site_unit if unit_id in TCP_SITE_ALIASES else unit_id

    async def _answer(
        self, unit_id: int, unit: Unit, request: pdu.Request, client: Client
    ) -> bytes:
        if isinstance(request, pdu.Refused):
            return pdu.exception(request.function, request.code)
        if isinstance(request, pdu.Read):
            return self._read(unit_id, unit, request)
        code = await self._write(unit, request, client)
        if code is not None:
            return pdu.exception(request.function, code)
        return pdu.write_response(request)

    def _read(self, unit_id: int, unit: Unit, request: pdu.Read) -> bytes:
        key = (unit_id, request.function, request.address, request.count)
        answer = self._answers.get(key)
        if answer is None:
            answer = self._encode_read(unit_id, unit, request)
            if len(self._answers) >= MAX_CACHED_ANSWERS:
                self._answers.clear()
            self._answers[key] = answer
        return answer

    def _encode_read(self, unit_id: int, unit: Unit, request: pdu.Read) -> bytes:
        # No await from here to the return: the words are one snapshot of the mirror.
        context = ReadContext(self._mirror, unit.identity, unit_id, self._devices)
        if request.bits:
            bits = read_bits(unit.map, request.address, request.count, context)
            if isinstance(bits, ExcCodes):
                return pdu.exception(request.function, bits)
            return pdu.read_bits_response(request.function, bits)
        words = read_registers(unit.map, request.address, request.count, context)
        if isinstance(words, ExcCodes):
            return pdu.exception(request.function, words)
        return pdu.read_registers_response(request.function, words)

    async def _write(
        self, unit: Unit, request: pdu.WriteRegisters | pdu.WriteBits, client: Client
    ) -> ExcCodes | None:
        if self.read_only or not client.may_write:
            why = (
                "faces.modbus.read_only" if self.read_only else "not in faces.modbus.write_networks"
            )
            log.info("modbus: write from %s refused (%s)", client.label, why)
            return ExcCodes.ILLEGAL_FUNCTION
        planned = self._plan(unit, request)
        if isinstance(planned, ExcCodes):
            return planned
        for point_id, command, value in planned:
            result = await self._submit(SOURCE, command, point_id, value, client.label)
            if not result.accepted:
                self.counters.commands_rejected += 1
                code = (
                    REJECT_EXCEPTION.get(result.code, ExcCodes.DEVICE_FAILURE)
                    if result.code
                    else ExcCodes.DEVICE_FAILURE
                )
                log.info(
                    "modbus: %s %s=%r from %s rejected (0x%02X): %s",
                    command, point_id, value, client.label, int(code), result.reason,
                )  # fmt: skip
                return code
            self.counters.commands_accepted += 1
            # A heartbeat arrives every few seconds for ever: not worth an INFO line each.
            level = logging.DEBUG if command == "heartbeat" else logging.INFO
            log.log(
                level, "modbus: %s %s=%r from %s accepted", command, point_id, value, client.label
            )
        return None

    def _plan(
        self, unit: Unit, request: pdu.WriteRegisters | pdu.WriteBits
    ) -> list[tuple[str, str, Value]] | ExcCodes:
        """Every command of a write request, or the exception if any register is refused."""
        touched = _touched(unit.map, request)
        if isinstance(touched, ExcCodes):
            return touched
        planned: list[tuple[str, str, Value]] = []
        for fld, values in touched:
            point = self._point(fld.point_id)
            if point is None or point.command is None:
                return ExcCodes.ILLEGAL_ADDRESS  # a point of a node this site does not have
            if isinstance(request, pdu.WriteBits):
                value: Value | None = decode_bit(point, bool(values[0]))
            else:
                value = decode_write(fld, [int(v) for v in values], point)
            if value is None:
                return ExcCodes.ILLEGAL_VALUE
            check = validate_command(
                self._table, CommandRequest(0, SOURCE, point.command, point.id, value)
            )
            if not check.accepted:
                return REJECT_EXCEPTION.get(
                    check.code or RejectCode.INVALID_VALUE, ExcCodes.ILLEGAL_VALUE
                )
            planned.append((point.id, point.command, value))
        return planned

    def _point(self, point_id: str | None) -> Point | None:
        """The table's point, None for a field of a device this site does not have."""
        if point_id is None or point_id not in self._table:
            return None
        return self._table[point_id]


def _touched(
    unit: UnitMap, request: pdu.WriteRegisters | pdu.WriteBits
) -> list[tuple[Field, tuple[int, ...] | tuple[bool, ...]]] | ExcCodes:
    """The fields a write covers with their new words (bits), or why it is refused."""
    bits = isinstance(request, pdu.WriteBits)
    lookup = unit.bit if bits else unit.register
    start, end = request.address, request.address + len(request.values)
    touched: list[tuple[Field, tuple[int, ...] | tuple[bool, ...]]] = []
    cursor = start
    incomplete = False
    while cursor < end:
        fld = lookup(cursor)
        if fld is None or not fld.writable or fld.point_id is None:
            return ExcCodes.ILLEGAL_ADDRESS
        if fld.address < start or fld.end > end:
            incomplete = True  # reported after the address checks of the whole request
        else:
            touched.append((fld, request.values[fld.address - start : fld.end - start]))
        cursor = fld.end
    return ExcCodes.ILLEGAL_VALUE if incomplete else touched
