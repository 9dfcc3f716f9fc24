"""The face over Modbus RTU on a serial line: two pty pairs joined back to back (a null modem).

pymodbus' serial client talks to the face through the line; the requests a client library
will not send (another unit id, broadcast, a bad CRC, garbage before a frame) are written
raw with pyserial from a worker thread, so that the face keeps serving on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import struct
import tty
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import serial
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.framer import FramerType
from pymodbus.framer.rtu import FramerRTU

from appliance.config.schema import ModbusRtuFace
from appliance.northbound.face import FaceContext
from appliance.northbound.modbus import ModbusFace
from appliance.runtime.site_table import site_point_table
from tests.northbound.test_modbus_support import Site, StandInCore, running_site, site_config

HEARTBEAT = 1600


@pytest.fixture
async def line() -> AsyncIterator[tuple[str, str]]:
    """Two pty slave names joined back to back: bytes written to one are read on the other."""
    loop = asyncio.get_running_loop()
    master_a, slave_a = os.openpty()
    master_b, slave_b = os.openpty()
    for fd in (master_a, slave_a, master_b, slave_b):
        tty.setraw(fd)
    for fd in (master_a, master_b):
        os.set_blocking(fd, False)

    def pump(src: int, dst: int) -> None:
        with contextlib.suppress(OSError):
            os.write(dst, os.read(src, 4096))

    loop.add_reader(master_a, pump, master_a, master_b)
    loop.add_reader(master_b, pump, master_b, master_a)
    try:
        yield os.ttyname(slave_a), os.ttyname(slave_b)
    finally:
        loop.remove_reader(master_a)
        loop.remove_reader(master_b)
        for fd in (master_a, slave_a, master_b, slave_b):
            os.close(fd)


@pytest.fixture
async def site(line: tuple[str, str]) -> AsyncIterator[Site]:
    async with running_site(rtu=ModbusRtuFace(port=line[0], baudrate=19200, parity="N")) as started:
        yield started


def rtu(unit: int, pdu: bytes) -> bytes:
    frame = bytes([unit]) + pdu
    return frame + FramerRTU.compute_CRC(frame).to_bytes(2, "big")


def exchange(port: str, frame: bytes, expect: int) -> bytes:
    """Write one raw frame and read up to `expect` bytes (fewer on silence); blocking."""
    with serial.Serial(port, baudrate=19200, parity="N", timeout=0.3) as link:
        link.write(frame)
        return bytes(link.read(expect))


async def test_rtu_serves_the_same_map_on_every_unit(site: Site, line: tuple[str, str]) -> None:
    site.set("grid.active_power", 812.5)
    client = AsyncModbusSerialClient(
        line[1], framer=FramerType.RTU, baudrate=19200, parity="N", timeout=1, retries=0
    )
    assert await client.connect()
    try:
        marker = await client.read_holding_registers(40000, count=4, device_id=1)
        node = await client.read_input_registers(40000, count=4, device_id=3)
        power = await client.read_holding_registers(1132, count=2, device_id=1)
        write = await client.write_register(HEARTBEAT, 9, device_id=1)
        refused = await client.write_register(1132, 9, device_id=1)
    finally:
        client.close()
    assert marker.registers == node.registers == [0x5375, 0x6E53, 1, 66]
    assert client.convert_from_registers(power.registers, client.DATATYPE.FLOAT32) == 812.5
    assert not write.isError()
    assert refused.exception_code == 2
    assert site.core.applied() == [("heartbeat", "heartbeat.counter", 9)]
    assert site.core.requests[0].user == f"rtu:{line[0]}"


async def test_rtu_framing_faults_and_other_units(site: Site, line: tuple[str, str]) -> None:
    port = line[1]
    read = struct.pack(">BHH", 3, 40000, 2)
    suns = rtu(1, bytes([3, 4, 0x53, 0x75, 0x6E, 0x53]))
    assert await asyncio.to_thread(exchange, port, rtu(1, read), 9) == suns
    assert await asyncio.to_thread(exchange, port, rtu(7, read), 9) == b""  # another device
    broadcast = rtu(0, struct.pack(">BHH", 6, HEARTBEAT, 4))
    assert await asyncio.to_thread(exchange, port, broadcast, 8) == b""
    bad_crc = rtu(1, read)[:-1] + b"\x00"
    assert await asyncio.to_thread(exchange, port, bad_crc, 9) == b""
    garbage_first = b"\x00\xff\x13" + rtu(1, read)
    assert await asyncio.to_thread(exchange, port, garbage_first, 9) == suns
    unknown = rtu(1, bytes([0x41, 1, 2, 3]))
    assert await asyncio.to_thread(exchange, port, unknown, 5) == rtu(1, bytes([0xC1, 0x01]))
    too_many = rtu(1, struct.pack(">BHH", 3, 40000, 126))
    assert await asyncio.to_thread(exchange, port, too_many, 5) == rtu(1, bytes([0x83, 0x03]))
    assert site.core.requests == []
    assert site.face.counters.malformed_frames >= 2


async def test_read_only_also_holds_on_the_serial_line(line: tuple[str, str]) -> None:
    rtu_face = ModbusRtuFace(port=line[0], baudrate=19200, parity="N")
    async with running_site(rtu=rtu_face, read_only=True) as site:
        write = rtu(1, struct.pack(">BHH", 6, HEARTBEAT, 5))
        answer = await asyncio.to_thread(exchange, line[1], write, 5)
        assert answer == rtu(1, bytes([0x86, 0x01]))
        assert site.core.requests == []
        assert dataclasses.asdict(site.config.faces.modbus)["read_only"] is True


async def test_a_serial_port_that_cannot_open_fails_the_start_and_frees_tcp(tmp_path: Path) -> None:
    missing = ModbusRtuFace(port=str(tmp_path / "ttyUSB9"))
    config = site_config(rtu=missing)
    table = site_point_table(config)
    face = ModbusFace(FaceContext(config, table, {}, StandInCore(table)))
    with pytest.raises(RuntimeError, match="listen"):
        await face.start()
    assert face.connection_count == 0
    assert face.port is not None
    with pytest.raises(ConnectionRefusedError):  # the TCP listener it had opened is closed
        await asyncio.open_connection("127.0.0.1", face.port)
