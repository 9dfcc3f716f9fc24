"""The socketcand server against python-can's real socketcand client, on 127.0.0.1 only.

python-can's client is blocking (sockets + select), so every call to it runs in a worker
thread; the server runs on the test's event loop.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import can
import pytest

from appliance.drivers.pylontech_can import BmsReading, PylontechCanBms
from appliance.errors import DeviceProtocolError, DeviceUnavailable
from appliance.simulation.devices.pylontech_sim import BmsValues, PylontechSimulator
from appliance.simulation.devices.socketcand_server import (
    SocketcandServer,
    format_frame,
    parse_send,
)

LOCALHOST = "127.0.0.1"
STALE_S = 0.4

ClientFactory = Callable[..., Awaitable[can.BusABC]]


def msg(can_id: int, data: bytes, *, extended: bool = False) -> can.Message:
    return can.Message(arbitration_id=can_id, data=data, is_extended_id=extended)


def same_frame(a: can.Message | None, b: can.Message) -> bool:
    return (
        a is not None
        and a.arbitration_id == b.arbitration_id
        and a.is_extended_id == b.is_extended_id
        and bytes(a.data) == bytes(b.data)
    )


async def recv(bus: can.BusABC, timeout_s: float = 1.0) -> can.Message | None:
    return await asyncio.to_thread(bus.recv, timeout_s)


VALUES = BmsValues(
    soc_pct=81.0,
    soh_pct=97.0,
    voltage_v=52.47,
    current_a=-23.4,  # charging
    temperature_c=18.3,
    charge_voltage_limit_v=53.2,
    charge_current_limit_a=74.0,
    discharge_current_limit_a=74.0,
    discharge_voltage_limit_v=46.0,
    manufacturer="PYLON",
    cell_voltage_min_v=3.28,
    cell_voltage_max_v=3.301,
    temperature_min_c=17.0,
    temperature_max_c=19.0,
)


@pytest.fixture
async def server() -> AsyncIterator[SocketcandServer]:
    srv = SocketcandServer(["can0", "can1"])
    await srv.start(LOCALHOST, 0)
    yield srv
    await srv.stop()


@pytest.fixture
async def client(server: SocketcandServer) -> AsyncIterator[ClientFactory]:
    """Opens python-can socketcand clients; shuts them down afterwards."""
    opened: list[can.BusABC] = []

    async def open_client(channel: str = "can0") -> can.BusABC:
        bus = await asyncio.to_thread(
            can.Bus, interface="socketcand", host=LOCALHOST, port=server.port, channel=channel
        )
        opened.append(bus)
        return bus

    yield open_client
    for bus in opened:
        await asyncio.to_thread(bus.shutdown)


async def eventually_read(driver: PylontechCanBms, timeout_s: float = 3.0) -> BmsReading:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            return await driver.read()
        except (DeviceUnavailable, DeviceProtocolError):
            if loop.time() > deadline:
                raise
        await asyncio.sleep(0.01)


async def eventually_raises_unavailable(driver: PylontechCanBms, timeout_s: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        try:
            await driver.read()
        except DeviceUnavailable:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the driver kept reading while the simulator was silent")


# --------------------------------------------------------------------------- wire format


def test_frame_format_is_socketcands() -> None:
    frame = msg(0x351, bytes.fromhex("1402740E740ECC01"))
    assert format_frame(frame, 1700000000.25) == "< frame 351 1700000000.250000 1402740E740ECC01 >"
    assert format_frame(msg(0x5, b""), 1.0) == "< frame 005 1.000000  >"
    assert format_frame(msg(0x1ABCDEF0, b"\x01", extended=True), 2.5) == (
        "< frame 1ABCDEF0 2.500000 01 >"
    )


@pytest.mark.parametrize(
    "fields",
    [
        ["send", "123"],  # no length
        ["send", "123", "2", "1"],  # length and bytes disagree
        ["send", "123", "9", *["0"] * 9],  # more than 8 bytes
        ["send", "800", "0"],  # 3 digits but above 0x7FF
        ["send", "123", "1", "100"],  # byte above 0xFF
        ["send", "xyz", "0"],
    ],
)
def test_parse_send_rejects_malformed_commands(fields: list[str]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011  # every parse failure is a ValueError
        parse_send(fields)


async def test_raw_protocol_session(server: SocketcandServer) -> None:
    reader, writer = await asyncio.open_connection(LOCALHOST, server.port)
    try:

        async def expect(text: str) -> None:
            got = await asyncio.wait_for(reader.readexactly(len(text)), 1.0)
            assert got.decode() == text

        await expect("< hi >")
        writer.write(b"< bogus >")
        await expect("< error unknown command >")
        writer.write(b"< open nope >")
        await expect("< error could not open bus >")
        writer.write(b"< open can0 >")
        await expect("< ok >")
        writer.write(b"< rawmode >")
        await expect("< ok >")
        await server.wait_for_clients(1, "can0")
        # In raw mode an unknown command gets no answer (python-can would read an error
        # frame); bad sends are dropped; the session goes on.
        writer.write(b"< bogus >< send 123 2 1 >< echo >")
        await expect("< echo >")
        assert server.bad_commands == 3
        server.bus("can0").send(msg(0x351, bytes.fromhex("1402740E740ECC01")))
        server.bus("can0").send(msg(0x7FF, b""))
        server.bus("can1").send(msg(0x100, b"\x01"))  # other channel: not for this client
        line = (await asyncio.wait_for(reader.readuntil(b">"), 1.0)).decode()
        assert re.fullmatch(r"< frame 351 \d+\.\d{6} 1402740E740ECC01 >", line), line
        line = (await asyncio.wait_for(reader.readuntil(b">"), 1.0)).decode()
        assert re.fullmatch(r"< frame 7FF \d+\.\d{6}  >", line), line
        # What python-can's client writes: lower case, unpadded bytes.
        writer.write(b"< send 305 8 0 0 0 0 0 0 0 0 >< send 1abcdef0 3 a 0 ff >")
        await writer.drain()
        got = [await asyncio.to_thread(server.bus("can0").recv, 1.0) for _ in range(2)]
        assert same_frame(got[0], msg(0x305, bytes(8)))
        assert same_frame(got[1], msg(0x1ABCDEF0, b"\x0a\x00\xff", extended=True))
        assert server.frames_from_clients == 2
    finally:
        writer.close()
        await writer.wait_closed()


# --------------------------------------------------------------------------- python-can's client


async def test_frames_reach_the_python_can_client(
    server: SocketcandServer, client: ClientFactory
) -> None:
    bus = await client()
    await server.wait_for_clients(1, "can0")
    frames = [
        msg(0x351, bytes.fromhex("1402740E740ECC01")),
        msg(0x35C, b""),  # DLC 0
        msg(0x18FF50E5, bytes.fromhex("0102030405060708"), extended=True),
    ]
    for frame in frames:
        server.bus("can0").send(frame)
    for frame in frames:
        assert same_frame(await recv(bus), frame)
    # A frame sent from another thread (a simulator outside the loop) arrives as well.
    await asyncio.to_thread(server.bus("can0").send, msg(0x355, b"\x1a\x00\x64\x00"))
    assert same_frame(await recv(bus), msg(0x355, b"\x1a\x00\x64\x00"))


async def test_client_frames_reach_the_server_and_the_other_clients(
    server: SocketcandServer, client: ClientFactory
) -> None:
    a, b, other = await client("can0"), await client("can0"), await client("can1")
    await server.wait_for_clients(3)
    frame = msg(0x305, bytes([0x00, 0x0F, 0xA0, 0xFF]))
    await asyncio.to_thread(a.send, frame)
    assert same_frame(await asyncio.to_thread(server.bus("can0").recv, 1.0), frame)
    assert same_frame(await recv(b), frame)
    assert await recv(a, 0.1) is None  # the sender does not hear itself
    assert await recv(other, 0.1) is None  # another channel does not hear it either
    assert server.frames_from_clients == 1


async def test_unknown_channel_is_refused(server: SocketcandServer) -> None:
    with pytest.raises(can.CanError, match="Expected '< ok >'"):
        await asyncio.to_thread(
            can.Bus, interface="socketcand", host=LOCALHOST, port=server.port, channel="vcan9"
        )


async def test_handshake_survives_a_busy_bus(
    server: SocketcandServer, client: ClientFactory
) -> None:
    stop = asyncio.Event()

    async def flood() -> None:
        while not stop.is_set():
            server.bus("can0").send(msg(0x356, bytes.fromhex("02130000 4A01")))
            await asyncio.sleep(0.001)

    task = asyncio.create_task(flood())
    try:
        for n in range(1, 6):
            bus = await client()  # would raise CanError if a frame shared the "< ok >" read
            await server.wait_for_clients(n)
            assert same_frame(await recv(bus), msg(0x356, bytes.fromhex("021300004A01")))
    finally:
        stop.set()
        await task


async def test_drop_connections_resets_the_client(
    server: SocketcandServer, client: ClientFactory
) -> None:
    bus = await client()
    await server.wait_for_clients(1)
    await server.drop_connections()
    assert server.clients() == 0
    with pytest.raises(can.CanError, match="Connection reset"):
        await recv(bus)


# --------------------------------------------------------------------------- driver over socketcand


async def test_driver_round_trip_and_recovery_over_socketcand(
    server: SocketcandServer, drivers: list[PylontechCanBms]
) -> None:
    sim = PylontechSimulator(lambda: VALUES, server.bus("can1"), 0.03, extension_frames=True)
    driver = PylontechCanBms.from_connection(
        "socketcand", "can1", host=LOCALHOST, port=server.port, stale_after_s=STALE_S
    )
    drivers.append(driver)
    await driver.start()
    await sim.start()
    try:
        r = await eventually_read(driver)
        assert (r.soc_pct, r.voltage_v, r.current_a) == (81.0, 52.47, -23.4)
        assert (r.cell_voltage_min_v, r.cell_voltage_max_v) == (3.28, 3.301)
        assert (r.temperature_min_c, r.temperature_max_c) == (17.0, 19.0)
        assert r.power_w == pytest.approx(52.47 * -23.4)
        # The connection is reset: the driver reopens it and reads again.
        await server.drop_connections()
        await asyncio.sleep(0.05)
        r = await eventually_read(driver)
        assert r.soc_pct == 81.0
        assert driver.opens == 2
        assert server.clients("can1") == 1
        # Silent simulator: stale, then back.
        sim.faults.silent = True
        await eventually_raises_unavailable(driver)
        sim.faults.silent = False
        assert (await eventually_read(driver)).soc_pct == 81.0
    finally:
        await sim.stop()


async def test_driver_fails_fast_when_no_server_listens(drivers: list[PylontechCanBms]) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind((LOCALHOST, 0))
        port = probe.getsockname()[1]
    driver = PylontechCanBms.from_connection("socketcand", "can0", host=LOCALHOST, port=port)
    drivers.append(driver)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(DeviceUnavailable, match="cannot open the CAN bus"):
            await driver.read()
        await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert loop.time() - started < 1.0  # not python-can's 10 s connect retry loop
    assert ticks >= 5  # the loop kept running meanwhile
    assert not driver.is_open
