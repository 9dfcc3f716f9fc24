"""Fuzz: thousands of random and malformed Modbus/TCP frames; the face answers each and keeps serving.

Hypothesis drives a blocking socket client in a worker thread (derandomized, so every run
sends the same frames) while the face serves on the test's event loop. Well-framed requests
(a valid MBAP header around any PDU, any unit id) must each get a well-formed answer with
their transaction id: the normal response of their function, or an exception with a code the
face documents. Raw garbage may close the connection, but a new connection is served after it.
"""

from __future__ import annotations

import asyncio
import socket
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.northbound.test_modbus_support import LOCALHOST, running_site

FUNCTIONS = (1, 2, 3, 4, 5, 6, 15, 16)
EXCEPTION_CODES = {0x01, 0x02, 0x03, 0x04, 0x0B}
INTERESTING = (0, 1, 31, 32, 1000, 1132, 1500, 1503, 1600, 1703, 2000, 9100, 40000, 40068,
               40088, 40354, 40356, 40427, 40472, 41160, 41162, 65535)  # fmt: skip
SERVED_UNITS = {0, 1, 2, 3, 255}


def _words_pdu(function: int, address: int, count: int, data: bytes, honest: bool) -> bytes:
    """FC 15 / 16 with a byte count that fits `count` (honest) or just the data sent.

    The PDU stays within the 253 bytes of a valid ADU (longer frames close the connection).
    """
    byte_count = 2 * count if function == 16 else (count + 7) // 8
    if not honest or byte_count > 247:
        byte_count = len(data)
    data = data.ljust(byte_count, b"\0")[:byte_count]
    return struct.pack(">BHHB", function, address, count & 0xFFFF, byte_count) + data


@st.composite
def plausible_pdus(draw: st.DrawFn) -> bytes:
    """Requests of the served functions around the mapped addresses, sometimes inconsistent."""
    function = draw(st.sampled_from(FUNCTIONS))
    address = draw(st.one_of(st.sampled_from(INTERESTING), st.integers(0, 0xFFFF)))
    address = min(0xFFFF, address + draw(st.integers(-2, 2)) % 0x10000)
    count = draw(st.one_of(st.integers(0, 130), st.integers(0, 0xFFFF)))
    if function in (15, 16):
        data = draw(st.binary(max_size=247))
        return _words_pdu(function, address, min(count, 300), data, draw(st.booleans()))
    value = (
        count if function in (1, 2, 3, 4) else draw(st.sampled_from([0, 1, 0xFF00, 0xFFFF, count]))
    )
    return struct.pack(">BHH", function, address, value)


pdus = st.one_of(
    plausible_pdus(),
    st.binary(min_size=1, max_size=253),  # any function code, any data
    st.builds(lambda f, d: bytes([f]) + d, st.sampled_from(FUNCTIONS), st.binary(max_size=12)),
)
units = st.one_of(st.sampled_from(sorted(SERVED_UNITS)), st.integers(0, 255))


def check_answer(request: bytes, unit: int, answer: bytes) -> None:
    """A well-formed answer to `request`: its function's response or a documented exception."""
    function = request[0]
    if answer[0] == (function & 0x7F) | 0x80:
        assert len(answer) == 2, answer.hex()
        assert answer[1] in EXCEPTION_CODES, answer.hex()
        if unit not in SERVED_UNITS:
            assert answer[1] == 0x0B
        elif function not in FUNCTIONS:
            assert answer[1] == 0x01
        return
    assert unit in SERVED_UNITS, (request.hex(), answer.hex())
    assert answer[0] == function, (request.hex(), answer.hex())
    _, count = struct.unpack(">HH", request[1:5])
    if function in (3, 4):
        assert answer[1] == 2 * count == len(answer) - 2
    elif function in (1, 2):
        assert answer[1] == (count + 7) // 8 == len(answer) - 2
    else:  # writes echo address and value (FC 05 / 06) or address and quantity (FC 15 / 16)
        assert answer == request[:5]


class Client:
    def __init__(self, port: int) -> None:
        self.port = port
        self.tid = 0
        self.sock = self._connect()

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((LOCALHOST, self.port), timeout=2)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def receive_exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            assert chunk, "the server closed a connection after a well-framed request"
            data += chunk
        return data

    def ask(self, unit: int, request: bytes) -> bytes:
        self.tid = (self.tid + 1) & 0xFFFF
        self.sock.sendall(struct.pack(">HHHB", self.tid, 0, len(request) + 1, unit) + request)
        tid, protocol, length, answered_unit = struct.unpack(">HHHB", self.receive_exactly(7))
        assert (tid, protocol, answered_unit) == (self.tid, 0, unit)
        assert 2 <= length <= 254
        return self.receive_exactly(length - 1)

    def close(self) -> None:
        self.sock.close()


def fuzz_framed(port: int, examples: int) -> int:
    client = Client(port)
    sent = 0

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(unit=units, request=pdus)
    def one(unit: int, request: bytes) -> None:
        nonlocal sent
        sent += 1
        check_answer(request, unit, client.ask(unit, request))

    try:
        one()
    finally:
        client.close()
    return sent


def fuzz_garbage(port: int, examples: int) -> int:
    sent = 0

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None)
    @given(garbage=st.binary(min_size=1, max_size=300))
    def one(garbage: bytes) -> None:
        nonlocal sent
        sent += 1
        with socket.create_connection((LOCALHOST, port), timeout=2) as sock:
            sock.sendall(garbage)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):  # answers to whatever framed, until the server closes
                pass
        healthy = Client(port)
        try:
            assert healthy.ask(1, struct.pack(">BHH", 3, 40000, 2))[2:] == b"SunS"
        finally:
            healthy.close()

    one()
    return sent


async def test_framed_fuzz_every_request_gets_a_valid_answer() -> None:
    async with running_site(max_connections=4) as site:
        sent = await asyncio.to_thread(fuzz_framed, site.port, 2000)
        assert sent >= 1500
        assert site.face.counters.requests == sent
        assert sum(site.face.counters.exceptions.values()) > sent // 2
        assert site.face.counters.connections_accepted == 1  # one connection took them all


async def test_garbage_fuzz_the_server_keeps_serving() -> None:
    async with running_site(max_connections=4) as site:
        sent = await asyncio.to_thread(fuzz_garbage, site.port, 300)
        assert sent >= 250
        for _ in range(100):
            if site.face.connection_count == 0:
                break
            await asyncio.sleep(0.01)
        assert site.face.connection_count == 0
