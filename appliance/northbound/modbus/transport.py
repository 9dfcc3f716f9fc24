"""Modbus TCP and RTU on pymodbus 3.16.1's servers, with the face's own request path.

pymodbus provides the listeners (`ModbusTcpServer`, `ModbusSerialServer` on pyserial), the
connection objects and the ADU encoders; each connection here replaces pymodbus' request
handling, because in 3.16.1 that handling
* keeps one ``last_pdu`` per connection and reads it again after awaiting the datastore, so
  a second request arriving meanwhile gets its transaction id on the first one's answer;
* decodes one frame per received chunk and empties its receive buffer on every send, so
  pipelined requests are dropped, and a chunk over 264 bytes is discarded whole;
* waits forever on an MBAP header with a non-zero protocol id (the framer returns "need
  more data" and never skips it).

Here a connection parses every complete frame it has, queues the requests (at most
`MAX_PENDING`; a client that pipelines more is disconnected) and answers them in order from
one worker task. Modbus TCP: an MBAP header with a protocol id other than 0 or a length
outside 2 .. 260 closes the connection (the byte stream cannot be resynchronised). RTU: a
frame with a bad CRC is dropped byte by byte until a valid frame starts; bytes that form no
frame are dropped after `RTU_GAP_S` of silence.

Security (TCP): a client outside faces.modbus.allowed_networks, or one over
max_connections, is disconnected as soon as it connects; a connection without a request for
idle_timeout_s is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import struct
from collections.abc import Callable, Coroutine
from typing import Any

from pymodbus.framer import FramerType
from pymodbus.framer.rtu import FramerRTU
from pymodbus.framer.socket import FramerSocket
from pymodbus.pdu import DecodePDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

from appliance.northbound.modbus.handler import Client, RequestProcessor

log = logging.getLogger(__name__)

MAX_PENDING = 16
# The specification's limit is 254 (unit id + a 253-byte PDU); a little more is parsed so that
# e.g. a write of 124 registers answers 0x03 instead of losing the connection.
MBAP_LENGTH_MAX = 260
RTU_GAP_S = 0.05
# The listeners need a datastore to be built; requests never reach it (see the docstring).
_UNUSED_DATASTORE = SimDevice(0, [SimData(0, 1, 0, DataType.UINT16)])
_FRAMER_RTU = FramerRTU(DecodePDU(True))
_FRAMER_TCP = FramerSocket(DecodePDU(True))

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Policy:
    """Who may connect and write over TCP, how many at once, how long idle."""

    def __init__(
        self,
        allowed: tuple[str, ...],
        write: tuple[str, ...],
        max_connections: int,
        idle_timeout_s: float,
    ) -> None:
        self.allowed: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in allowed)
        self.write: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in write)
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s

    @staticmethod
    def contains(networks: tuple[Network, ...], host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in networks)


class Hub:
    """What the connections of every listener share: the processor, policy and tasks."""

    def __init__(self, processor: RequestProcessor, policy: Policy) -> None:
        self.processor = processor
        self.policy = policy
        self.connections: set[Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def drain(self) -> None:
        """Wait until the workers of closed connections have ended."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Connection(ServerRequestHandler):
    """One TCP client, or the serial line: frames in, queued requests, answers in order."""

    def __init__(self, listener: ModbusTcpServer | ModbusSerialServer, hub: Hub) -> None:
        super().__init__(listener, None, None, None)  # type: ignore[no-untyped-call]
        self.hub = hub
        self.client = Client("?", may_write=False)
        self._buffer = bytearray()
        self._queue: asyncio.Queue[tuple[int, int, bytes]] = asyncio.Queue(MAX_PENDING)
        self._worker: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    # pymodbus calls these ----------------------------------------------------------

    def callback_connected(self) -> None:
        super().callback_connected()
        client = self._admit()
        if client is None:
            self.hub.processor.counters.connections_refused += 1
            self.close()
            return
        self.client = client
        self.hub.processor.counters.connections_accepted += 1
        self.hub.connections.add(self)
        self._worker = self.hub.spawn(self._serve(), f"modbus {client.label}")
        self._activity()

    def callback_disconnected(self, exc: Exception | None) -> None:
        super().callback_disconnected(exc)
        self._release()

    def close(self, reconnect: bool = False) -> None:
        self._release()
        super().close(reconnect)

    def data_received(self, data: bytes) -> None:
        if self._worker is None:
            return  # refused, or closing
        self._buffer += data
        self._activity()
        self._deframe()

    # for subclasses ------------------------------------------------------------------

    def _admit(self) -> Client | None:
        raise NotImplementedError

    def _deframe(self) -> None:
        raise NotImplementedError

    def _frame(self, unit_id: int, transaction_id: int, response: bytes) -> bytes:
        raise NotImplementedError

    def _activity(self) -> None:
        """Something arrived: re-arm the subclass' timer (idle timeout, RTU gap)."""

    # shared ----------------------------------------------------------------------------

    def _enqueue(self, unit_id: int, transaction_id: int, request: bytes) -> None:
        try:
            self._queue.put_nowait((unit_id, transaction_id, request))
        except asyncio.QueueFull:
            log.warning(
                "modbus: %s sent more than %d requests ahead; disconnecting",
                self.client.label,
                MAX_PENDING,
            )
            self.close()

    def _malformed(self, what: str) -> None:
        self.hub.processor.counters.malformed_frames += 1
        log.debug("modbus: %s: %s", self.client.label, what)

    async def _serve(self) -> None:
        while True:
            unit_id, transaction_id, request = await self._queue.get()
            try:
                response = await self.hub.processor.handle(unit_id, request, self.client)
            except Exception:
                # A bug must not take the server down: answer 0x04 and keep serving.
                log.exception("modbus: request from %s failed", self.client.label)
                function = request[0] & 0x7F if request else 0
                response = bytes([function | 0x80, 0x04])
            if response is not None and self.transport is not None:
                self.transport.write(self._frame(unit_id, transaction_id, response))  # type: ignore[attr-defined]

    def _set_timer(self, delay_s: float, callback: Callable[[], None]) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(delay_s, callback)

    def _release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
        self.hub.connections.discard(self)


class TcpConnection(Connection):
    def _admit(self) -> Client | None:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        host, port = (str(peer[0]), int(peer[1])) if peer else ("?", 0)
        label = f"tcp:{host}:{port}"
        policy = self.hub.policy
        if not Policy.contains(policy.allowed, host):
            log.warning("modbus: refused %s: not in faces.modbus.allowed_networks", label)
            return None
        open_tcp = sum(isinstance(c, TcpConnection) for c in self.hub.connections)
        if open_tcp >= policy.max_connections:
            log.warning(
                "modbus: refused %s: %d connections open (faces.modbus.max_connections)",
                label,
                open_tcp,
            )
            return None
        log.info("modbus: %s connected", label)
        return Client(label, may_write=Policy.contains(policy.write, host))

    def _activity(self) -> None:
        # Armed once at connect; re-armed only by a complete request (`_deframe`): a client
        # that trickles a byte now and then is idle too, and must not keep a slot for ever.
        if self._timer is None:
            self._set_timer(self.hub.policy.idle_timeout_s, self._idle)

    def _idle(self) -> None:
        log.info(
            "modbus: closing %s: idle for %g s", self.client.label, self.hub.policy.idle_timeout_s
        )
        self.hub.processor.counters.idle_closed += 1
        self.close()

    def _deframe(self) -> None:
        buffer = self._buffer
        while len(buffer) >= 7:
            transaction_id, protocol, length, unit_id = struct.unpack(">HHHB", buffer[:7])
            if protocol != 0 or not 2 <= length <= MBAP_LENGTH_MAX:
                self._malformed(f"MBAP protocol {protocol}, length {length}: closing")
                self.close()
                return
            if len(buffer) < 6 + length:
                return
            request = bytes(buffer[7 : 6 + length])
            del buffer[: 6 + length]
            self._enqueue(unit_id, transaction_id, request)
            if self._worker is not None:  # not closed by the enqueue
                self._set_timer(self.hub.policy.idle_timeout_s, self._idle)

    def _frame(self, unit_id: int, transaction_id: int, response: bytes) -> bytes:
        return _FRAMER_TCP.encode(response, unit_id, transaction_id)


class RtuConnection(Connection):
    gap_s = RTU_GAP_S

    def _admit(self) -> Client | None:
        port = str(self.comm_params.host or "serial")
        return Client(f"rtu:{port}", may_write=True, serial=True)

    def callback_disconnected(self, exc: Exception | None) -> None:
        if exc is not None:
            # pymodbus does not reopen a server's serial port: RTU stays down until the
            # faces process restarts the face.
            log.error("modbus: serial line %s failed (%s); RTU is down", self.client.label, exc)
        super().callback_disconnected(exc)

    def _activity(self) -> None:
        self._set_timer(self.gap_s, self._silence)

    def _silence(self) -> None:
        if self._buffer:
            self._malformed(f"{len(self._buffer)} bytes form no frame")
            self._buffer.clear()

    def _deframe(self) -> None:
        buffer = self._buffer
        while len(buffer) >= 4:
            size = rtu_frame_size(buffer)
            if size is None or len(buffer) < size:
                return  # wait for the rest (or the silence that ends it)
            frame = bytes(buffer[:size])
            if not FramerRTU.check_CRC(frame[:-2], (frame[-2] << 8) | frame[-1]):
                del buffer[0]  # hunt: the next frame may start one byte later
                self._malformed("bad CRC")
                continue
            del buffer[:size]
            self._enqueue(frame[0], 0, frame[1:-2])

    def _frame(self, unit_id: int, transaction_id: int, response: bytes) -> bytes:
        return _FRAMER_RTU.encode(response, unit_id, transaction_id)


def rtu_frame_size(buffer: bytearray) -> int | None:
    """Size of the RTU frame at the start of `buffer`, None while it cannot be known yet.

    Requests of the served functions have a known size; any other function (answered 0x01)
    is taken to end where the burst ends, so the whole buffer is its frame.
    """
    function = buffer[1]
    if function in (1, 2, 3, 4, 5, 6):
        return 8
    if function in (15, 16):
        return 9 + buffer[6] if len(buffer) >= 7 else None
    return len(buffer)


class TcpListener(ModbusTcpServer):
    def __init__(self, hub: Hub, host: str, port: int) -> None:
        super().__init__(_UNUSED_DATASTORE, address=(host, port))
        self.hub = hub

    def callback_new_connection(self) -> TcpConnection:
        return TcpConnection(self, self.hub)

    @property
    def bound_port(self) -> int:
        listener = self.transport
        if not isinstance(listener, asyncio.Server) or not listener.sockets:
            raise RuntimeError("modbus: pymodbus did not create a TCP listener")
        return int(listener.sockets[0].getsockname()[1])


class RtuListener(ModbusSerialServer):
    def __init__(self, hub: Hub, port: str, baudrate: int, parity: str) -> None:
        super().__init__(
            _UNUSED_DATASTORE,
            framer=FramerType.RTU,
            port=port,
            baudrate=baudrate,
            parity=parity,
            reconnect_delay=0,
        )
        self.hub = hub
        self.port = port

    def callback_new_connection(self) -> RtuConnection:
        connection = RtuConnection(self, self.hub)
        # 3.5 character times at this line speed, but never below RTU_GAP_S (USB adapters
        # deliver a frame in pieces several milliseconds apart).
        connection.gap_s = max(RTU_GAP_S, 3.5 * 11 / self.comm_params.baudrate)
        return connection
