"""Hostile clients against the faces, on loopback: abandoned sessions, half-open sockets, racing writes.

* OPC UA: 50 sessions (the real asyncua client, with a user login) opened and dropped without
  closing them, 20 raw sockets that send part of a HEL or OPN and go away; afterwards the
  server holds no session, connection or task of theirs, still serves a client, and its RSS
  grew by a bounded amount.
* Modbus: sockets that connect and never send, send half an MBAP header or half a PDU and
  stall, or reset mid-frame; a well-behaved client is served meanwhile, and the connection
  limit and idle timeout of docs/modbus.md ("Security") hold. Malformed frames are
  tests/northbound/test_modbus_fuzz.py's subject, not this file's.
* Both faces wired to the real core (the simulated site, its pollers and the 500 ms cycle, as
  in conftest.py) through the real command channel, with mode and setpoint commands racing
  from both: every command is answered and logged and the state machine ends consistent.

Two gaps this file found are fixed and pinned here: asyncua kept a logger per subscription
ever created (the face now drops it with the subscription), and the Modbus idle timer
restarted on any byte rather than on a complete request.

Timeouts are shortened where the configuration allows it (faces.modbus.idle_timeout_s 1 to
3 s, its schema minimum being 1 s; the OPC UA session timeout the client requests, raised by
the server to its 5 s floor, as faces.opcua has no session timeout key) so that the file runs
in under a minute. Figures are logged as "figure: ..." lines (run with -o log_cli=true to see them).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import itertools
import logging
import os
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from asyncua import ua
from asyncua.client.client import Client
from asyncua.server.binary_server_asyncio import OPCUAProtocol
from asyncua.server.internal_session import InternalSession
from asyncua.server.internal_subscription import InternalSubscription
from asyncua.server.uaprocessor import UaProcessor

from appliance.config import SiteConfig, simulated_site_config
from appliance.config.schema import SecurityPolicy
from appliance.control.command_types import CommandRequest, CommandResult, RejectCode
from appliance.control.modes import MODE_STATE, STATE_NUMBER, Mode
from appliance.northbound.face import FaceContext
from appliance.northbound.modbus import ModbusFace
from appliance.northbound.opcua import OpcUaFace
from appliance.northbound.opcua.uatypes import AttributeIds, ObjectIds, StatusCodes, node_id
from appliance.runtime.channel import CoreEnd, FacesChannel, FacesEnd
from appliance.runtime.faces import CommandPort
from appliance.runtime.site_table import site_point_table
from appliance.store import Sample, Value
from tests.northbound.test_modbus_support import (
    LOCALHOST,
    SITE_UNIT,
    RawClient,
    read_pdu,
    running_site,
    words_of,
    write_registers_pdu,
)
from tests.reliability.conftest import RunningSite, wait_until

pytestmark = pytest.mark.slow

log = logging.getLogger(__name__)

PASSWORDS = {"viewer": "viewer-demo", "operator": "operator-demo"}
#: NoSecurity for the clients, and a SignAndEncrypt policy so that the user token policy
#: encrypts the password (with NoSecurity alone, asyncua sends it in plain text).
POLICIES: tuple[SecurityPolicy, ...] = ("NoSecurity", "Basic256Sha256_SignAndEncrypt")
SESSION_TIMEOUT_MS = 5000.0  # what the clients request: asyncua's server floor (5 s)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


def with_faces(config: SiteConfig, data_dir: Path) -> SiteConfig:
    """`config` with the OPC UA face on a free loopback port and the Modbus face on port 0."""
    opcua = dataclasses.replace(
        config.faces.opcua, bind=LOCALHOST, port=free_port(), security_policies=POLICIES
    )
    modbus_settings = dataclasses.replace(config.faces.modbus, bind=LOCALHOST, port=0)
    faces = dataclasses.replace(config.faces, opcua=opcua, modbus=modbus_settings)
    return dataclasses.replace(config, data_dir=data_dir, faces=faces)


def opcua_url(config: SiteConfig) -> str:
    return f"opc.tcp://{LOCALHOST}:{config.faces.opcua.port}/"


def rss_bytes() -> int:
    """Resident set size of this process (/proc/self/statm, second field, in pages)."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN (SO_LINGER 0): the abrupt end of a crashed client."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def refuse_commands(
    source: str, command: str, point_id: str | None, value: Value | None, user: str | None = None
) -> CommandResult:
    """The core behind the OPC UA face of the session test: no command is expected there."""
    request = CommandRequest(0, source, command, point_id, value, user)
    return CommandResult.reject(request, RejectCode.UNAVAILABLE, "no core in this test")


# =========================================================================== OPC UA sessions


def new_client(url: str, user: str) -> Client:
    client = Client(url, timeout=4)
    client.session_timeout = int(SESSION_TIMEOUT_MS)
    client.set_user(user)
    client.set_password(PASSWORDS[user])
    return client


async def cancel(task: asyncio.Task[object] | None) -> None:
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def reset_connection(client: Client) -> None:
    """Reset the client's TCP connection (RST), sending nothing more."""
    protocol = client.uaclient.protocol
    assert protocol is not None
    assert protocol.transport is not None
    reset(protocol.transport.get_extra_info("socket"))
    protocol.transport.abort()
    client.disconnect_socket()


async def abandon(client: Client) -> None:
    """Drop the connection without CloseSession or CloseSecureChannel: an RST on the wire.

    asyncua has no API for this, so its private task attributes are used: the client's own
    background tasks (keep-alive, channel renewal, publish loop) are stopped first, locally,
    so that nothing of the client is left in this event loop; the server learns nothing
    until its socket is reset.
    """
    for task in (
        client._supervisor_task,
        client._stale_watchdog_task,
        client._renew_channel_task,
        client.uaclient.session._publish_task,
    ):
        await cancel(task)
    reset_connection(client)


async def session_then_drop(url: str, index: int) -> str:
    """One abandoned session; which kind depends on `index`. Returns the kind."""
    user = "operator" if index % 2 else "viewer"
    client = new_client(url, user)
    if index % 10 == 3:
        # Created, never activated: the low-level steps of Client.connect, then the drop.
        await client.connect_socket()
        await client.send_hello()
        await client.open_secure_channel()
        await client.create_session()
        reset_connection(client)
        return "created"
    await client.connect()
    await client.get_node(ObjectIds.Server_ServerStatus_State).read_value()
    if index % 8 == 5:
        # With a subscription the server keeps the session for its timeout after the
        # connection is lost (OPC UA Part 4 6.7: the client may reactivate it).
        subscription = await client.create_subscription(200, None)
        await subscription.subscribe_data_change(
            client.get_node(ObjectIds.Server_ServerStatus_CurrentTime)
        )
        await abandon(client)
        return "subscribed"
    await abandon(client)
    return "activated"


def hello_bytes(url: str) -> bytes:
    """An OPC UA TCP Hello (Part 6, 7.1.2.3): version, buffer sizes, limits, endpoint URL."""
    endpoint = url.encode()
    body = struct.pack("<IIIIIi", 0, 65536, 65536, 0, 0, len(endpoint)) + endpoint
    return b"HELF" + struct.pack("<I", 8 + len(body)) + body


async def raw_opcua_then_drop(url: str, port: int, index: int) -> str:
    """A raw socket that sends part of the handshake and goes away; kind by `index`."""
    reader, writer = await asyncio.open_connection(LOCALHOST, port)
    sock = writer.get_extra_info("socket")
    hello = hello_bytes(url)
    kind = index % 4
    try:
        if kind in (0, 1):
            writer.write(hello[: 5 + index % 7])  # part of the HEL header or body
            await writer.drain()
            await asyncio.sleep(0.01)
            return "partial HEL"
        writer.write(hello)
        await writer.drain()
        header = await asyncio.wait_for(reader.readexactly(8), 4)
        assert header[:3] == b"ACK", header
        await reader.readexactly(struct.unpack("<I", header[4:8])[0] - 8)
        # An OPN chunk that announces 4 KiB and delivers a header and a few bytes.
        opn = b"OPNF" + struct.pack("<II", 4096, 0) + struct.pack("<i", 47) + b"http://opcfo"
        writer.write(opn)
        await writer.drain()
        await asyncio.sleep(0.01)
        return "partial OPN"
    finally:
        if kind % 2:
            reset(sock)  # RST
            writer.transport.abort()
        else:
            writer.close()  # FIN
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@dataclass
class OpcUaRound:
    kinds: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


async def hostile_round(url: str, port: int, sessions: int, raw: int, lanes: int) -> OpcUaRound:
    """`sessions` abandoned sessions and `raw` raw sockets, over `lanes` concurrent lanes."""
    jobs: list[Callable[[], Awaitable[str]]] = []
    raw_every = max(1, sessions // raw) if raw else 0
    raw_left = raw
    for index in range(sessions):
        jobs.append(functools.partial(session_then_drop, url, index))
        if raw_left and index % raw_every == 0:
            jobs.append(functools.partial(raw_opcua_then_drop, url, port, index))
            raw_left -= 1
    queue: asyncio.Queue[Callable[[], Awaitable[str]]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    result = OpcUaRound()

    async def lane() -> None:
        while not queue.empty():
            job = queue.get_nowait()
            result.kinds[await job()] += 1

    started = time.monotonic()
    async with asyncio.timeout(60):
        await asyncio.gather(*(lane() for _ in range(lanes)))
    result.seconds = time.monotonic() - started
    return result


@dataclass(frozen=True)
class ServerHeld:
    """What the asyncua server holds for clients; all zero when no client is connected."""

    activated_sessions: int  # asyncua's count, the one max_sessions limits (a class attribute)
    registered_sessions: int
    connections: int
    transports: int
    closing_tasks: int  # still running (asyncua drops the finished ones every 10 s)
    subscriptions: int

    @classmethod
    def of(cls, face: OpcUaFace, activated_before: int) -> ServerHeld:
        assert face.server is not None
        assert face.server.bserver is not None
        iserver = face.server.iserver
        return cls(
            InternalSession._current_connections - activated_before,
            len(iserver._external_sessions),
            len(face.server.bserver.clients),
            len(iserver.asyncio_transports),
            sum(not t.done() for t in face.server.bserver.closing_tasks),
            len(iserver.subscription_service.subscriptions),
        )


NOTHING_HELD = ServerHeld(0, 0, 0, 0, 0, 0)


async def reclaimed(face: OpcUaFace, activated_before: int, timeout_s: float) -> float:
    """Seconds until the server holds nothing for any client."""
    try:
        return await wait_until(
            lambda: ServerHeld.of(face, activated_before) == NOTHING_HELD, timeout_s
        )
    except AssertionError:
        raise AssertionError(
            f"after {timeout_s} s the server still holds {ServerHeld.of(face, activated_before)}"
        ) from None


async def settled_objects(face: OpcUaFace, expected: Counter[str]) -> Counter[str]:
    """asyncua's per-client objects once its cleanup has run (polled up to 2 s for `expected`).

    asyncua drops its finished connection-closing tasks every 10 s, and one of them may
    still hold a session; that pass is run here rather than waited for.
    """
    assert face.server is not None
    assert face.server.bserver is not None
    await face.server.bserver._close_tasks()
    alive = server_objects()
    deadline = time.monotonic() + 2
    while alive != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        alive = server_objects()
    return alive


def new_tasks(baseline: set[asyncio.Task[object]]) -> list[str]:
    current = asyncio.current_task()
    return sorted(
        repr(t.get_coro())
        for t in asyncio.all_tasks() - baseline
        if t is not current and not t.done()
    )


#: asyncua's objects per connection, session and subscription.
SERVER_OBJECTS = (InternalSession, UaProcessor, OPCUAProtocol, InternalSubscription)


def server_objects() -> Counter[str]:
    """How many of asyncua's per-client objects are alive (after a full collection)."""
    gc.collect()
    return Counter(type(o).__name__ for o in gc.get_objects() if isinstance(o, SERVER_OBJECTS))


#: RSS growth allowed over the measured round (50 sessions, 20 raw sockets) after a warm-up
#: round. Measured on a 2-core box: +0.5 MiB over that round; over 14 rounds in a row the
#: allocator steps up once by 2-3 MiB (round 2 or 3), then RSS drifts by about 0.05 MiB per
#: round with a flat Python object count. 8 MiB is above that noise and catches a leak of
#: about 115 KiB or more per connection (for instance the 64 KiB buffers a HEL negotiates,
#: kept twice). It cannot see a leaked session (about 11 KiB each, measured: 50 abandoned
#: sessions kept alive with a subscription each add 0.5 MiB): the object counts do that.
RSS_GROWTH_LIMIT = 8 * 1024 * 1024


async def test_abandoned_opcua_sessions_are_reclaimed_and_the_face_keeps_serving(
    tmp_path: Path,
) -> None:
    config = with_faces(simulated_site_config(), tmp_path)
    face = OpcUaFace(FaceContext(config, site_point_table(config), {}, refuse_commands))
    activated_before = InternalSession._current_connections
    await face.start()
    try:
        url, port = opcua_url(config), config.faces.opcua.port
        assert ServerHeld.of(face, activated_before) == NOTHING_HELD
        baseline_tasks = set(asyncio.all_tasks())
        objects_at_start = server_objects()  # the server's own internal session
        timeout_s = SESSION_TIMEOUT_MS / 1000

        warm_up = await hostile_round(url, port, sessions=10, raw=4, lanes=5)
        assert warm_up.kinds["subscribed"] >= 1
        await reclaimed(face, activated_before, timeout_s + 3)
        assert await settled_objects(face, objects_at_start) == objects_at_start
        rss_before = rss_bytes()

        measured = await hostile_round(url, port, sessions=50, raw=20, lanes=5)
        assert sum(measured.kinds.values()) == 70, measured.kinds
        assert measured.kinds["subscribed"] >= 5
        assert measured.kinds["created"] >= 5
        assert {"partial HEL", "partial OPN"} <= set(measured.kinds)
        # The last connections' ends are processed within a few event loop turns.
        await wait_until(lambda: ServerHeld.of(face, activated_before).connections == 0, 2)
        held = ServerHeld.of(face, activated_before)
        # Sessions with a subscription outlive their connection, for their timeout at most.
        assert held.registered_sessions <= measured.kinds["subscribed"], held
        reclaimed_s = await reclaimed(face, activated_before, timeout_s + 3)

        leaked = new_tasks(baseline_tasks)
        for _ in range(50):  # a connection's tasks end shortly after its socket
            if not leaked:
                break
            await asyncio.sleep(0.02)
            leaked = new_tasks(baseline_tasks)
        assert leaked == []
        assert await settled_objects(face, objects_at_start) == objects_at_start
        growth = rss_bytes() - rss_before

        async with contextlib.AsyncExitStack() as stack:
            client = new_client(url, "operator")
            await client.connect()
            stack.push_async_callback(client.disconnect)
            state = await client.get_node(ObjectIds.Server_ServerStatus_State).read_value()
            assert state == ua.ServerState.Running
            ns = await client.get_namespace_index(config.faces.opcua.namespace_uri)
            mode = client.get_node(node_id("Site.Controller.Mode", ns))
            value = await mode.read_data_value(raise_on_bad_status=False)
            assert value.StatusCode is not None
            assert value.StatusCode.value == StatusCodes.BadWaitingForInitialData
            assert ServerHeld.of(face, activated_before).activated_sessions == 1
        await reclaimed(face, activated_before, 3)
        log.info(
            "figure: OPC UA: %s in %.2f s; server held nothing %.2f s later (session timeout "
            "%.0f s); asyncua objects back to %s; RSS %+.2f MiB after a warm-up (limit %d MiB)",
            dict(measured.kinds),
            measured.seconds,
            reclaimed_s,
            timeout_s,
            dict(objects_at_start),
            growth / 2**20,
            RSS_GROWTH_LIMIT // 2**20,
        )
        assert growth <= RSS_GROWTH_LIMIT, f"RSS grew {growth / 2**20:.1f} MiB"
    finally:
        await face.stop()


def subscription_loggers() -> set[str]:
    prefix = "asyncua.server.monitored_item_service."
    return {name for name in logging.Logger.manager.loggerDict if name.startswith(prefix)}


async def test_subscriptions_that_come_and_go_leave_nothing_behind(tmp_path: Path) -> None:
    config = with_faces(simulated_site_config(), tmp_path)
    face = OpcUaFace(FaceContext(config, site_point_table(config), {}, refuse_commands))
    await face.start()
    try:
        before = subscription_loggers()
        for index in range(20):
            client = new_client(opcua_url(config), "viewer")
            await client.connect()
            try:
                subscription = await client.create_subscription(200, None)
                await subscription.subscribe_data_change(
                    client.get_node(ObjectIds.Server_ServerStatus_CurrentTime)
                )
                if index % 2:
                    await subscription.delete()
            finally:
                await client.disconnect()  # deletes the subscriptions left
        assert face.server is not None
        assert face.server.iserver.subscription_service.subscriptions == {}
        assert subscription_loggers() - before == set()
    finally:
        await face.stop()


# =========================================================================== Modbus half-open


SUNS_READ = read_pdu(3, 40000, 2)


async def timed_read(client: RawClient) -> float:
    started = time.perf_counter()
    answer = await client.request(SITE_UNIT, SUNS_READ)
    elapsed = time.perf_counter() - started
    assert words_of(answer) == [0x5375, 0x6E53]  # "SunS"
    return elapsed


class Stalled:
    """A socket that stalls in one of the ways a broken or hostile client does."""

    KINDS = ("silent", "half MBAP", "half PDU")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self, port: int) -> Stalled:
        self.reader, self.writer = await asyncio.open_connection(LOCALHOST, port)
        frame = struct.pack(">HHHB", 1, 0, 6, SITE_UNIT) + SUNS_READ
        if self.kind == "half MBAP":
            self.writer.write(frame[:3])
        elif self.kind == "half PDU":
            self.writer.write(frame[:9])  # the header announces 6 bytes; 2 arrive
        await self.writer.drain()
        return self

    async def closed_by_server(self, timeout_s: float) -> bool:
        assert self.reader is not None
        try:
            async with asyncio.timeout(timeout_s):
                return await self.reader.read(1) == b""
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError):
                await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def stalled_sockets(port: int, count: int) -> AsyncIterator[list[Stalled]]:
    opened: list[Stalled] = []
    try:
        for index in range(count):
            opened.append(await Stalled(Stalled.KINDS[index % len(Stalled.KINDS)]).open(port))
        yield opened
    finally:
        for stalled in opened:
            await stalled.close()


async def reset_mid_frame(port: int, index: int) -> None:
    """Connect, send part of a frame, and reset the connection."""
    _, writer = await asyncio.open_connection(LOCALHOST, port)
    frame = struct.pack(">HHHB", index, 0, 6, SITE_UNIT) + SUNS_READ
    writer.write(frame[: 1 + index % (len(frame) - 1)])
    await writer.drain()
    reset(writer.get_extra_info("socket"))
    writer.transport.abort()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def test_half_open_modbus_connections_do_not_hold_up_a_well_behaved_client() -> None:
    idle_timeout_s = 3.0
    async with running_site(max_connections=8, idle_timeout_s=idle_timeout_s) as site:
        port, face = site.port, site.face
        good = await RawClient.open(port)
        try:
            baseline = [await timed_read(good) for _ in range(50)]
            async with stalled_sockets(port, 6) as stalled:
                await wait_until(lambda: face.connection_count == 7, 2)
                opened_at = time.monotonic()
                churned = 0

                async def churn() -> None:
                    nonlocal churned
                    for index in range(30):
                        await reset_mid_frame(port, index)
                        churned += 1
                        await asyncio.sleep(0.005)

                churning = asyncio.create_task(churn())
                loaded: list[float] = []
                while not churning.done() or len(loaded) < 50:
                    loaded.append(await timed_read(good))
                await churning
                assert churned == 30
                # (Else this machine is too slow for the test: the stalls timed out already.)
                assert time.monotonic() - opened_at < idle_timeout_s
                # A reset connection's slot is free again; the stalled ones keep theirs.
                await wait_until(lambda: face.connection_count == 7, 2)
                assert face.counters.idle_closed == 0
                # Served while six connections stall and thirty reset mid-frame: no request
                # waited for a stall to end (that would take the idle timeout, 3 s).
                assert max(loaded) < idle_timeout_s / 3, max(loaded)

                async def keep_polling() -> None:  # the good client is not idle meanwhile
                    while True:
                        await timed_read(good)
                        await asyncio.sleep(0.5)

                polling = asyncio.create_task(keep_polling())
                try:
                    closed = await asyncio.gather(
                        *(s.closed_by_server(idle_timeout_s + 2) for s in stalled)
                    )
                finally:
                    polling.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await polling
                assert closed == [True] * 6
                assert face.counters.idle_closed == 6
                assert face.connection_count == 1
            await timed_read(good)
        finally:
            await good.close()
        log.info(
            "figure: Modbus read latency, p50/p99/max: alone %.2f/%.2f/%.2f ms; with 6 stalled "
            "and 30 resetting connections %.2f/%.2f/%.2f ms (%d reads)",
            *(1000 * percentile(baseline, q) for q in (0.5, 0.99, 1.0)),
            *(1000 * percentile(loaded, q) for q in (0.5, 0.99, 1.0)),
            len(loaded),
        )
        await wait_until(lambda: face.connection_count == 0, 2)


async def test_stalled_modbus_connections_fill_the_limit_until_the_idle_timeout() -> None:
    """docs/modbus.md: max_connections (8), one more is closed as soon as it connects;
    idle_timeout_s, a connection without a request for this long is closed.

    So eight stalled sockets lock every other client out for up to idle_timeout_s (60 s by
    default), and an attacker who reconnects keeps it so: the documented behaviour, checked
    here as it is.
    """
    idle_timeout_s = 2.0
    async with running_site(max_connections=8, idle_timeout_s=idle_timeout_s) as site:
        port, face = site.port, site.face
        async with stalled_sockets(port, 8) as stalled:
            await wait_until(lambda: face.connection_count == 8, 2)
            opened_at = time.monotonic()
            most = 0
            for _ in range(20):
                extra = await Stalled("half MBAP").open(port)
                try:
                    most = max(most, face.connection_count)
                    assert await extra.closed_by_server(1.0)
                finally:
                    await extra.close()
            assert most == 8
            assert face.counters.connections_refused == 20
            refused = await RawClient.open(port)
            try:
                assert await refused.closed_by_server(1.0)
            finally:
                await refused.close()
            assert face.counters.connections_refused == 21
            # (Else this machine is too slow for the test: the stalls timed out already.)
            assert time.monotonic() - opened_at < idle_timeout_s
            closed = await asyncio.gather(
                *(s.closed_by_server(idle_timeout_s + 2) for s in stalled)
            )
            assert closed == [True] * 8
        assert face.counters.idle_closed == 8
        await wait_until(lambda: face.connection_count == 0, 2)
        good = await RawClient.open(port)
        try:
            await timed_read(good)
        finally:
            await good.close()


async def test_a_frame_dribbled_byte_by_byte_does_not_keep_a_connection_open() -> None:
    async with running_site(max_connections=8, idle_timeout_s=1.0) as site:
        reader, writer = await asyncio.open_connection(LOCALHOST, site.port)
        try:
            # A header announcing the longest request the face parses (260 bytes): it would
            # take 266 bytes, and the test sends one every 0.3 s for 2.7 s.
            frame = struct.pack(">HHHB", 1, 0, 260, SITE_UNIT) + bytes(259)
            for byte in frame[:10]:
                if reader.at_eof():
                    break
                writer.write(bytes([byte]))
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                await asyncio.sleep(0.3)
            assert site.face.counters.idle_closed == 1
            assert site.face.connection_count == 0
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


# =========================================================================== racing writes


MODE_REGISTER = 1500  # controller.mode, uint16; controller.state follows at 1501
SETPOINT_REGISTER = 1518  # controller.active_power_setpoint, float32
RACE_MODES = (Mode.ACTIVATE, Mode.MAXSELF, Mode.CHARGEONLY, Mode.SETPOINT, Mode.STOP)


@dataclass
class CountingPort:
    """The faces' command port, counting what goes in and what comes back."""

    port: CommandPort
    sent: list[tuple[str, str, str | None, Value | None]] = field(default_factory=list)
    answers: list[CommandResult] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    async def __call__(
        self,
        source: str,
        command: str,
        point_id: str | None,
        value: Value | None,
        user: str | None = None,
    ) -> CommandResult:
        self.sent.append((source, command, point_id, value))
        started = time.monotonic()
        result = await self.port(source, command, point_id, value, user)
        self.seconds.append(time.monotonic() - started)
        self.answers.append(result)
        return result


@dataclass
class Writer:
    """One client's sequence: (setpoint, mode) pairs, so that its last command is a mode."""

    name: str
    seed: int
    pairs: int
    commands: list[tuple[str, float | int]] = field(default_factory=list)
    answered: int = 0

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        for _ in range(self.pairs):
            # Beyond the nodes' limits (5 kW each) on purpose; multiples of 10 W are exact in
            # float32, so Modbus carries them unchanged.
            self.commands.append(("set_active_power", float(rng.randrange(-12000, 12001, 10))))
            self.commands.append(("set_mode", int(rng.choice(RACE_MODES))))

    @property
    def last_mode(self) -> int:
        return int(self.commands[-1][1])


async def opcua_writer(ns: int, writer: Writer, client: Client, methods: bool) -> None:
    mode_node = client.get_node(node_id("Site.Controller.Mode", ns))
    setpoint_node = client.get_node(node_id("Site.Controller.ExternalActivePowerSetpoint", ns))
    commands = client.get_node(node_id("Site.Commands", ns))
    for command, value in writer.commands:
        if command == "set_mode":
            variant = ua.Variant(int(value), ua.VariantType.UInt32)
            node, method = mode_node, "SetMode"
        else:
            variant = ua.Variant(float(value), ua.VariantType.Double)
            node, method = setpoint_node, "SetActivePower"
        if methods:
            await commands.call_method(f"{ns}:{method}", variant)  # raises unless Good
        else:
            params = ua.WriteParameters()
            item = ua.WriteValue()
            item.NodeId = node.nodeid
            item.AttributeId = AttributeIds.Value
            item.Value = ua.DataValue(variant)
            params.NodesToWrite.append(item)
            [code] = await client.uaclient.write(params)
            assert code.is_good(), (writer.name, command, value, code)
        writer.answered += 1


async def modbus_writer(client: RawClient, writer: Writer) -> None:
    for command, value in writer.commands:
        if command == "set_mode":
            request = struct.pack(">BHH", 6, MODE_REGISTER, int(value))
        else:
            words = list(struct.unpack(">HH", struct.pack(">f", float(value))))
            request = write_registers_pdu(SETPOINT_REGISTER, words)
        answer = await client.request(SITE_UNIT, request)
        assert answer == request[:5], (writer.name, command, value, answer.hex())
        writer.answered += 1


@dataclass
class Wiring:
    """Both faces on the real core, through the real command channel (as the supervisor
    wires the faces process, without the process): commands are taken and answered in the
    core's cycle hook, at most 64 per cycle, and each cycle's changes feed the faces."""

    running: RunningSite
    channel: FacesChannel = field(default_factory=FacesChannel)
    mirror: dict[str, Sample] = field(default_factory=dict)
    taken: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.core_end = CoreEnd(self.channel)
        self.faces_end = FacesEnd(self.channel)
        self.subscription = self.running.core.store.subscribe("hostile-test")
        self.mirror.update(self.subscription.collect())
        self.faces: list[OpcUaFace | ModbusFace] = []

    def on_cycle(self) -> None:  # what FacesSupervisor.on_cycle does with a live process
        for request in self.core_end.take_commands():
            self.taken += 1
            self.core_end.answer(self.running.core.handle_command(request))
        changes = self.subscription.collect()
        self.mirror.update(changes)
        for face in self.faces:
            face.apply(changes)

    def receive_results(self, loop: asyncio.AbstractEventLoop, port: CommandPort) -> None:
        while not self.stop.is_set():  # what FacesHost._receive_results does
            result = self.faces_end.next_result(0.05)
            if result is not None:
                loop.call_soon_threadsafe(port.resolve, result)

    def close(self) -> None:
        self.stop.set()
        self.running.core.store.unsubscribe(self.subscription)
        self.channel.close()


async def test_mode_and_setpoint_writes_racing_from_both_faces(
    running: RunningSite, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await running.set_mode("activate")  # waits for the BMS frames: the modes can be entered
    core, controller = running.core, running.core.controller
    config = with_faces(running.config, tmp_path / "faces")
    wiring = Wiring(running)
    port = CommandPort(wiring.faces_end, asyncio.get_running_loop())
    counting = CountingPort(port)
    context = FaceContext(config, core.table, wiring.mirror, counting)
    opcua, modbus = OpcUaFace(context), ModbusFace(context)
    results = threading.Thread(
        target=wiring.receive_results, args=(asyncio.get_running_loop(), port), daemon=True
    )
    results.start()
    core.cycle_hooks.append(wiring.on_cycle)
    exits = contextlib.AsyncExitStack()
    try:
        for face in (opcua, modbus):
            await face.start()
            exits.push_async_callback(face.stop)
            wiring.faces.append(face)
        url = opcua_url(config)
        clients = []
        for _ in range(3):
            client = new_client(url, "operator")
            await client.connect()
            exits.push_async_callback(client.disconnect)
            clients.append(client)
        ns = opcua.namespace_index
        raws = []
        for _ in range(6):
            raw = await RawClient.open(modbus.port or 0)
            exits.push_async_callback(raw.close)
            raws.append(raw)
        writers = [Writer(f"opcua-{i}", i, pairs=5) for i in range(6)]
        writers += [Writer(f"modbus-{i}", 100 + i, pairs=5) for i in range(6)]
        # The first command of every writer is a setpoint, so mode setpoint is never refused
        # for the want of one; clear the log so that it holds the race only (200 entries).
        controller.command_log.clear()
        caplog.set_level(logging.INFO, logger="appliance.runtime.core")
        caplog.clear()
        raced_from = time.monotonic()
        jobs = [
            opcua_writer(ns, writers[i], clients[i // 2], methods=bool(i % 2)) for i in range(6)
        ]
        jobs += [modbus_writer(raws[i], writers[6 + i]) for i in range(6)]
        started = time.monotonic()
        async with asyncio.timeout(40):
            await asyncio.gather(*jobs)
        race_s = time.monotonic() - started
        await asyncio.sleep(2 * core.period_s)  # two cycles: the state settles and is published

        sent = sum(len(w.commands) for w in writers)
        assert [w.answered for w in writers] == [len(w.commands) for w in writers]
        assert len(counting.sent) == len(counting.answers) == wiring.taken == sent
        assert port.timeouts == 0
        assert wiring.core_end.results_dropped == 0
        assert all(r.accepted for r in counting.answers), [
            r for r in counting.answers if not r.accepted
        ]
        # Every command is in the controller's log, once, as sent, in the order handled.
        logged = list(controller.command_log)
        assert len(logged) == sent
        assert Counter((e.source, e.command, e.point_id, e.value) for e in logged) == Counter(
            counting.sent
        )
        assert all(e.accepted for e in logged)
        core_lines = [
            r
            for r in caplog.records
            if r.name == "appliance.runtime.core" and str(r.msg).startswith("command %s from")
        ]
        assert len(core_lines) == sent  # and one line each in the core's log
        sources = [e.source for e in logged]
        assert sum(a != b for a, b in itertools.pairwise(sources)) >= 4  # they did interleave

        # The final mode is the last one the core applied, and that is one writer's last.
        final_value = next(e.value for e in reversed(logged) if e.command == "set_mode")
        assert isinstance(final_value, int)
        final = Mode(final_value)
        assert final in {Mode(w.last_mode) for w in writers}
        assert controller.requested is final
        assert controller.state is MODE_STATE[final]
        assert core.store.get("controller.mode").value == int(final)
        assert core.store.get("controller.state").value == STATE_NUMBER[MODE_STATE[final]]
        last_setpoint = next(e.value for e in reversed(logged) if e.command == "set_active_power")
        assert controller.setpoint_w == last_setpoint
        # Both faces show the same end state.
        mode_node = clients[0].get_node(node_id("Site.Controller.Mode", ns))
        assert await mode_node.read_value() == int(final)
        answer = await raws[0].request(SITE_UNIT, read_pdu(3, MODE_REGISTER, 2))
        assert words_of(answer) == [int(final), STATE_NUMBER[MODE_STATE[final]]]
        # Setpoints beyond the nodes' limits were asked for; none reached an inverter.
        checked = 0
        for node, submitted in running.submitted.items():
            limits = running.config.devices.battery_nodes[node - 1].limits
            for s in submitted:
                if s.at_s >= raced_from:
                    assert -limits.max_charge_w <= s.watts <= limits.max_discharge_w, (node, s)
                    checked += 1
        assert checked >= 2 * len(running.submitted)
        log.info(
            "figure: %d commands from 6 OPC UA and 6 Modbus writers answered in %.2f s "
            "(%d cycles of %.0f ms); answer after p50 %.0f ms, max %.0f ms; final mode %s",
            sent,
            race_s,
            round(race_s / core.period_s),
            core.period_s * 1000,
            1000 * percentile(counting.seconds, 0.5),
            1000 * max(counting.seconds),
            final.name.lower(),
        )
    finally:
        await exits.aclose()
        core.cycle_hooks.remove(wiring.on_cycle)
        wiring.stop.set()
        results.join(timeout=2)
        wiring.close()
