"""A minimal socketcand server (raw mode) on asyncio: CAN across processes over loopback TCP.

python-can's ``virtual`` bus is in-process only and the simulation host has no SocketCAN, so
the simulated site serves its CAN channels with the ASCII protocol of the socketcand daemon
(https://github.com/linux-can/socketcand). The appliance then reads them with
``can.Bus(interface="socketcand", host=..., port=..., channel=...)``, exactly as it could read
a real socketcand bridge.

Protocol, as python-can 4.6's client (``can/interfaces/socketcand``) speaks it:

* server: ``< hi >``; client: ``< open CHANNEL >``; server: ``< ok >`` (unknown channel:
  ``< error could not open bus >``, which the client turns into a CanError);
* client: ``< rawmode >``; server: ``< ok >``; from then on
* server -> client, per frame: ``< frame ID SECONDS.USEC DATA >``: ID as 3 hex digits
  (standard) or 8 (extended: the client tells them apart by the length), DATA as unspaced
  hex, empty for DLC 0 (socketcand's own format);
* client -> server: ``< send ID LEN B0 B1 ... >``: hex fields, the client writes the data
  bytes lower case and unpadded (``< send 305 8 0 0 0 0 0 0 0 0 >``).

Two traps of that client, handled here:

* it reads each handshake reply with one ``recv(256)`` and compares the whole chunk to
  ``< ok >``. A frame sent right after the rawmode ``< ok >`` may share that chunk and fail
  the handshake, so frames reach a new client only ``rawmode_quiet_s`` after its ``< ok >``
  (frames sent before that are not queued for it, as on a bus one joins late);
* it parses any ``< error ...>`` in raw mode as a CAN error frame and its reader dies on the
  unparsable ID, so unknown commands in raw mode are logged and ignored, never answered.

The simulator side: `SocketcandServer.bus(channel)` is a python-can bus whose `send` fans a
frame out to the clients in raw mode on that channel and whose `recv` returns the frames the
clients sent (which also reach the channel's other clients, as on a shared bus).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import socket
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import can

_LOG = logging.getLogger(__name__)

_MAX_TOKEN = 512  # longest "< ... >" command a client may send; longer is garbage
_MAX_BACKLOG = 1 << 20  # bytes queued for a client that does not read: drop it


def format_frame(msg: can.Message, timestamp: float | None = None) -> str:
    """A frame as socketcand sends it in raw mode."""
    ts = msg.timestamp if timestamp is None else timestamp
    seconds = int(ts)
    usec = min(999_999, round((ts - seconds) * 1e6))
    can_id = (
        f"{msg.arbitration_id & 0x1FFFFFFF:08X}"
        if msg.is_extended_id
        else f"{msg.arbitration_id & 0x7FF:03X}"
    )
    return f"< frame {can_id} {seconds}.{usec:06d} {bytes(msg.data).hex().upper()} >"


def parse_send(fields: list[str]) -> can.Message:
    """``["send", ID, LEN, B0, ...]`` -> Message; raises ValueError when malformed."""
    if len(fields) < 3:
        raise ValueError("send needs ID and LEN")
    id_text, len_text, byte_texts = fields[1], fields[2], fields[3:]
    can_id, length = int(id_text, 16), int(len_text, 16)
    extended = len(id_text) > 3
    if can_id < 0 or can_id > (0x1FFFFFFF if extended else 0x7FF):
        raise ValueError(f"identifier {id_text} out of range")
    if not 0 <= length <= 8 or length != len(byte_texts):
        raise ValueError(f"length {len_text} does not match {len(byte_texts)} data bytes")
    data = bytes(int(b, 16) for b in byte_texts)  # ValueError if a byte is > 0xFF
    return can.Message(
        arbitration_id=can_id, is_extended_id=extended, data=data, dlc=length, is_rx=True
    )


class SocketcandChannelBus(can.BusABC):
    """The server-side end of one channel, for simulators: `send` reaches the clients."""

    def __init__(self, server: SocketcandServer, channel: str) -> None:
        self._server = server
        self._rx: queue.SimpleQueue[can.Message] = queue.SimpleQueue()
        self.channel_name = channel
        self.channel_info = f"socketcand server channel {channel!r}"
        super().__init__(channel=channel)

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        """Fan ``msg`` out to the channel's clients; callable from any thread."""
        if self._is_shutdown:
            raise can.CanOperationError(f"{self.channel_info} is shut down")
        self._server.submit(self.channel_name, msg)

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        try:
            if timeout is not None and timeout <= 0:
                return self._rx.get_nowait(), False
            return self._rx.get(timeout=timeout), False
        except queue.Empty:
            return None, False

    def deliver(self, msg: can.Message) -> None:
        """A frame a client sent (called by the server)."""
        if not self._is_shutdown:
            self._rx.put(msg)


@dataclass(eq=False)
class _Client:
    peer: str
    writer: asyncio.StreamWriter
    channel: str | None = None
    raw: bool = False  # raw mode: frames are forwarded to this client
    forward_after: float = 0.0  # loop time from which frames are forwarded
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class SocketcandServer:
    """socketcand raw mode on TCP for a fixed set of channel names (default ``can0``)."""

    def __init__(
        self,
        channels: Iterable[str] = ("can0",),
        *,
        name: str = "socketcand-sim",
        rawmode_quiet_s: float = 0.05,
    ) -> None:
        names = list(channels)
        if not names or any(not c or any(ch.isspace() for ch in c) for c in names):
            raise ValueError(f"channels must be non-empty names without spaces, got {names!r}")
        self._name = name
        self._quiet_s = rawmode_quiet_s
        self._buses = {c: SocketcandChannelBus(self, c) for c in names}
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._clients: set[_Client] = set()
        self._changed = asyncio.Condition()
        self.port: int | None = None
        self.frames_to_clients = 0  # frames written, counted once per client
        self.frames_from_clients = 0
        self.bad_commands = 0

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(self._buses)

    def bus(self, channel: str = "can0") -> SocketcandChannelBus:
        """The simulator's end of ``channel`` (owned by the server: `stop` shuts it down)."""
        return self._buses[channel]

    def clients(self, channel: str | None = None) -> int:
        """Clients in raw mode (on ``channel``, or on any)."""
        return sum(1 for c in self._clients if c.raw and channel in (None, c.channel))

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen; returns the bound port (useful with ``port=0``)."""
        if self._server is not None:
            raise RuntimeError(f"{self._name}: already started")
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._server = await asyncio.start_server(self._serve, host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        _LOG.info(
            "%s: socketcand on %s:%d, channels %s", self._name, host, self.port, self.channels
        )
        return self.port

    async def stop(self) -> None:
        """Stop listening, drop every client, shut the channel buses down; idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        # Drop the clients before wait_closed: from Python 3.12 on it waits for them.
        await self.drop_connections()
        if server is not None:
            await server.wait_closed()
        for bus in self._buses.values():
            bus.shutdown()

    async def drop_connections(self) -> None:
        """Reset every client connection (TCP RST, like a pulled cable) and wait for them."""
        clients = list(self._clients)
        for client in clients:
            _abort(client.writer)
        # No cancel(): on Python 3.11 asyncio's start_server callback calls exception() on a
        # cancelled handler task and logs the CancelledError. An aborted transport ends the
        # handler's read at once anyway.
        tasks = [
            c.task for c in clients if c.task is not None and c.task is not asyncio.current_task()
        ]
        if tasks:
            await asyncio.wait(tasks)

    async def wait_for_clients(self, count: int, channel: str | None = None) -> None:
        """Until at least ``count`` clients are in raw mode and past their quiet time."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.clients(channel) >= count)
        latest = max((c.forward_after for c in self._clients if c.raw), default=0.0)
        await asyncio.sleep(max(0.0, latest - asyncio.get_running_loop().time()))

    def submit(self, channel: str, msg: can.Message) -> None:
        """Fan ``msg`` out on ``channel``: from the loop thread at once, else via the loop."""
        if self._loop is None or self._server is None:
            return  # not serving: nobody is listening, the frame is lost as on an idle bus
        if threading.get_ident() == self._loop_thread:
            self._fan_out(channel, msg, None)
        else:
            with contextlib.suppress(RuntimeError):  # loop closed meanwhile
                self._loop.call_soon_threadsafe(self._fan_out, channel, msg, None)

    # ------------------------------------------------------------------ internals

    def _fan_out(self, channel: str, msg: can.Message, sender: _Client | None) -> None:
        if self._loop is None:
            return
        now = self._loop.time()
        line: bytes | None = None
        for client in list(self._clients):
            if client is sender or not client.raw or client.channel != channel:
                continue
            if now < client.forward_after or client.writer.is_closing():
                continue
            if line is None:
                line = format_frame(msg, time.time()).encode("ascii")
            if client.writer.transport.get_write_buffer_size() > _MAX_BACKLOG:
                _LOG.warning(
                    "%s: %s does not read its frames; dropping it", self._name, client.peer
                )
                _abort(client.writer)
                continue
            client.writer.write(line)
            self.frames_to_clients += 1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = str(writer.get_extra_info("peername"))
        client = _Client(peer, writer, task=asyncio.current_task())
        self._clients.add(client)
        _LOG.debug("%s: %s connected", self._name, peer)
        try:
            writer.write(b"< hi >")
            await writer.drain()
            buffer = b""
            while chunk := await reader.read(4096):
                buffer += chunk
                buffer = await self._commands(client, buffer)
        except (ConnectionError, OSError, ValueError) as exc:
            _LOG.debug("%s: %s: %s", self._name, peer, exc)
        finally:
            self._clients.discard(client)
            _abort(writer)
            await self._notify()
            _LOG.debug("%s: %s disconnected", self._name, peer)

    async def _commands(self, client: _Client, buffer: bytes) -> bytes:
        """Handle every complete ``< ... >`` in ``buffer``; returns the unfinished rest."""
        while True:
            start = buffer.find(b"<")
            if start < 0:
                return b""  # socketcand ignores anything outside < >
            end = buffer.find(b">", start)
            if end < 0:
                if len(buffer) - start > _MAX_TOKEN:
                    raise ValueError("command too long")
                return buffer[start:]
            token = buffer[start + 1 : end].decode("ascii")  # UnicodeDecodeError: ValueError
            buffer = buffer[end + 1 :]
            await self._command(client, token.split())

    async def _command(self, client: _Client, fields: list[str]) -> None:
        verb = fields[0] if fields else ""
        if verb == "open" and client.channel is None and len(fields) == 2:
            if fields[1] in self._buses:
                client.channel = fields[1]
                await self._reply(client, "< ok >")
            else:
                await self._reply(client, "< error could not open bus >")
        elif verb == "rawmode" and client.channel is not None and not client.raw:
            await self._reply(client, "< ok >")
            client.raw = True
            client.forward_after = asyncio.get_running_loop().time() + self._quiet_s
            await self._notify()
        elif verb == "bcmmode" and client.raw:
            client.raw = False
            await self._reply(client, "< ok >")
        elif verb == "echo":
            await self._reply(client, "< echo >")
        elif verb == "send" and client.channel is not None:
            self._client_frame(client, client.channel, fields)
        else:
            self.bad_commands += 1
            _LOG.warning("%s: %s: unsupported command %r", self._name, client.peer, fields)
            if not client.raw:  # in raw mode python-can would parse the error as a frame
                await self._reply(client, "< error unknown command >")

    def _client_frame(self, client: _Client, channel: str, fields: list[str]) -> None:
        try:
            msg = parse_send(fields)
        except ValueError as exc:
            self.bad_commands += 1
            _LOG.warning("%s: %s: bad send %r: %s", self._name, client.peer, fields, exc)
            return
        msg.timestamp = time.time()
        msg.channel = channel
        self.frames_from_clients += 1
        self._buses[channel].deliver(msg)
        self._fan_out(channel, msg, client)

    async def _reply(self, client: _Client, text: str) -> None:
        client.writer.write(text.encode("ascii"))
        await client.writer.drain()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with RST: the peer's next recv fails instead of seeing an orderly end."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
