"""Helpers the Modbus face tests share (no tests here): a face on 127.0.0.1, a stand-in core, raw TCP.

The "core" behind `submit` runs the real command validation (`validate_command`) on the
site's table and records every request; a test can make it refuse with a given code, for
the refusals that depend on the core's state.
"""

from __future__ import annotations

import asyncio
import dataclasses
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from appliance.config import SiteConfig, simulated_site_config
from appliance.control.command_types import CommandRequest, CommandResult, RejectCode
from appliance.control.commands import validate_command
from appliance.northbound.face import FaceContext
from appliance.northbound.modbus import ModbusFace
from appliance.points.table import PointTable
from appliance.runtime.site_table import site_point_table
from appliance.store import Quality, Sample, Value

LOCALHOST = "127.0.0.1"
T0 = 1_795_000_000.0
SITE_UNIT = 1


@dataclass
class StandInCore:
    """Validates like the core (the real `validate_command`) and records every request."""

    table: PointTable
    requests: list[CommandRequest] = field(default_factory=list)
    refuse_with: RejectCode | None = None

    async def __call__(
        self,
        source: str,
        command: str,
        point_id: str | None,
        value: Value | None,
        user: str | None = None,
    ) -> CommandResult:
        request = CommandRequest(len(self.requests) + 1, source, command, point_id, value, user)
        if self.refuse_with is not None:
            return CommandResult.reject(request, self.refuse_with, "refused by the test")
        result = validate_command(self.table, request)
        if result.accepted:
            self.requests.append(request)
        return result

    def applied(self) -> list[tuple[str, str | None, Value | None]]:
        return [(r.command, r.point_id, r.value) for r in self.requests]


@dataclass
class Site:
    face: ModbusFace
    config: SiteConfig
    table: PointTable
    mirror: dict[str, Sample]
    core: StandInCore

    @property
    def port(self) -> int:
        assert self.face.port is not None
        return self.face.port

    def set(self, point_id: str, value: Value | None, quality: Quality = Quality.GOOD) -> None:
        assert point_id in self.table, point_id
        # As the faces host does: update the mirror, then tell the face.
        self.mirror[point_id] = Sample(value, T0, quality, 0.0)
        self.face.apply({point_id: self.mirror[point_id]})


def sample(value: Value | None, quality: Quality = Quality.GOOD) -> Sample:
    return Sample(value, T0, quality, 0.0)


def site_config(**modbus: Any) -> SiteConfig:
    config = simulated_site_config()
    settings = dataclasses.replace(config.faces.modbus, bind=LOCALHOST, port=0, **modbus)
    return dataclasses.replace(config, faces=dataclasses.replace(config.faces, modbus=settings))


def good_mirror(table: PointTable) -> dict[str, Sample]:
    """Every point GOOD, at a value inside its range (the middle, or a state, or 1)."""
    mirror: dict[str, Sample] = {}
    for point in table:
        if point.states:
            value: Value = min(point.states)
        elif point.range is not None:
            value = round((point.range[0] + point.range[1]) / 2 + point.range[1] / 7, 1)
        else:
            value = 1
        mirror[point.id] = sample(value)
    return mirror


@asynccontextmanager
async def running_site(**modbus: Any) -> AsyncIterator[Site]:
    config = site_config(**modbus)
    table = site_point_table(config)
    mirror = good_mirror(table)
    core = StandInCore(table)
    face = ModbusFace(FaceContext(config, table, mirror, core))
    await face.start()
    try:
        yield Site(face, config, table, mirror, core)
    finally:
        await face.stop()


# --------------------------------------------------------------------------- raw Modbus/TCP


class RawClient:
    """Modbus/TCP frames by hand, for requests a well-behaved client library will not send."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.tid = 0

    @classmethod
    async def open(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection(LOCALHOST, port)
        return cls(reader, writer)

    def frame(self, unit: int, request: bytes, tid: int | None = None) -> bytes:
        if tid is None:
            self.tid = (self.tid + 1) & 0xFFFF
            tid = self.tid
        return struct.pack(">HHHB", tid, 0, len(request) + 1, unit) + request

    async def receive(self, timeout_s: float = 2.0) -> tuple[int, int, bytes]:
        """(transaction id, unit, response PDU) of the next answer."""
        async with asyncio.timeout(timeout_s):
            head = await self.reader.readexactly(7)
            tid, protocol, length, unit = struct.unpack(">HHHB", head)
            assert protocol == 0
            body = await self.reader.readexactly(length - 1)
        return tid, unit, body

    async def request(self, unit: int, request: bytes) -> bytes:
        self.writer.write(self.frame(unit, request))
        await self.writer.drain()
        tid, answered_unit, body = await self.receive()
        assert (tid, answered_unit) == (self.tid, unit)
        return body

    async def closed_by_server(self, timeout_s: float = 2.0) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                return await self.reader.read(1) == b""
        except (ConnectionResetError, TimeoutError):
            return False

    async def close(self) -> None:
        self.writer.close()
        with suppress(ConnectionResetError, BrokenPipeError):
            await self.writer.wait_closed()


@asynccontextmanager
async def raw_client(port: int) -> AsyncIterator[RawClient]:
    client = await RawClient.open(port)
    try:
        yield client
    finally:
        await client.close()


def read_pdu(function: int, address: int, count: int) -> bytes:
    return struct.pack(">BHH", function, address, count)


def write_registers_pdu(address: int, words: list[int]) -> bytes:
    return struct.pack(f">BHHB{len(words)}H", 16, address, len(words), 2 * len(words), *words)


def words_of(response: bytes) -> list[int]:
    """The registers of an FC 03 / 04 answer (asserting it is one)."""
    assert response[0] in (3, 4), response.hex()
    assert response[1] == len(response) - 2
    return list(struct.unpack(f">{response[1] // 2}H", response[2:]))


def exception_code(response: bytes) -> int | None:
    return response[1] if response[0] & 0x80 else None
