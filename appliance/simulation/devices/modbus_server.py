"""What every protocol-level Modbus device simulator shares: real pymodbus 3.16 servers.

`ModbusDeviceServer` runs one simulated device on any number of pymodbus servers (TCP and/or
RTU) and does the transport side; a subclass builds the device (`_device`, a SimDevice with
its ``action`` hook) and decides what a request does:

* `start_tcp` (``port=0`` picks a free port; the bound one is returned), `start_rtu`, `stop`
  (every server; also releases answers held back by ``faults.delay_s``), `drop_connections`;
* requests for another unit id get no answer, as on an RS485 line (without that filter
  pymodbus 3.16.1 answers an unknown unit id with exception 0x04: its SimCore raises
  KeyError, which the request handler turns into DEVICE_FAILURE);
* ``request_count`` (the subclass counts with `_count`), ``connections_accepted`` (TCP);
* faults (``faults``, a `ModbusFaults`, effective from the next request): ``silent`` (no
  answer), ``delay_s`` (answer late: the subclass' action awaits `_maybe_delay`),
  ``garbage`` (an answer that frames correctly but does not fit its request), ``bad_crc``
  (RTU only; TCP has no CRC and ignores it);
* `_refusal`: a request the device refuses outright, before pymodbus' own checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusBaseServer, ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import SimDevice

from appliance.drivers.modbus_link import check_unit_id

_LOG = logging.getLogger(__name__)


@dataclass
class ModbusFaults:
    """Faults every simulated Modbus device can show (see the module docstring)."""

    silent: bool = False
    delay_s: float = 0.0
    garbage: bool = False
    bad_crc: bool = False


class _Refusal(ModbusPDU):
    """Stands in for a request the device refuses: its only effect is the exception answer.

    Needed where pymodbus' own checks are not enough (e.g. bit ranges: pymodbus keeps coils
    and discrete inputs in 16-bit words, so it would serve coils 4..15 of a 4-coil device, and
    its ``action`` hook is not told how many bits a read asks for). The request itself is
    checked in the ``trace_pdu`` hook instead.
    """

    def __init__(self, request: ModbusPDU, code: ExcCodes) -> None:
        super().__init__(dev_id=request.dev_id, transaction_id=request.transaction_id)
        self.function_code = request.function_code
        self._code = code

    async def datastore_update(self, context: Any, device_id: int) -> ModbusPDU:
        return ExceptionResponse(self.function_code, self._code)


class ModbusDeviceServer:
    """Servers (TCP and/or RTU), unit filtering, request counts, faults; subclasses add the device."""

    faults: ModbusFaults

    def __init__(self, *, unit_id: int, name: str) -> None:
        check_unit_id(unit_id)
        self._unit_id = unit_id
        self._name = name
        self._servers: list[ModbusBaseServer] = []
        self._requests: Counter[int] = Counter()
        self._connections = 0
        self._stopping = asyncio.Event()
        self._in_flight = 0
        self.faults = ModbusFaults()

    @property
    def name(self) -> str:
        return self._name

    @property
    def unit_id(self) -> int:
        return self._unit_id

    @property
    def connections_accepted(self) -> int:
        """TCP connections accepted since construction (a reconnect shows as +1)."""
        return self._connections

    def request_count(self, function_code: int | None = None) -> int:
        """Requests that reached the device model (all, or of one function code)."""
        if function_code is None:
            return sum(self._requests.values())
        return self._requests[function_code]

    def reset_request_count(self) -> None:
        self._requests.clear()

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve Modbus TCP; returns the bound port (useful with ``port=0``)."""
        server = ModbusTcpServer(
            self._device(parity=None, baudrate=None),
            address=(host, port),
            trace_pdu=self._trace_pdu,  # type: ignore[arg-type]  # may return None
            trace_packet=functools.partial(self._trace_packet, rtu=False),
            trace_connect=self._trace_connect,
        )
        await self._listen(server, f"tcp://{host}:{port}")
        listener = server.transport
        if not isinstance(listener, asyncio.Server) or not listener.sockets:
            self._servers.remove(server)
            await self._shutdown(server)
            raise RuntimeError(f"{self._name}: pymodbus did not create a TCP listener")
        bound = int(listener.sockets[0].getsockname()[1])
        _LOG.info(
            "%s: serving Modbus TCP on %s:%d, unit %d", self._name, host, bound, self._unit_id
        )
        return bound

    async def start_rtu(
        self,
        serial_port: str,
        baudrate: int = 9600,
        *,
        parity: Literal["N", "E", "O"] = "N",
        stopbits: int = 1,
        bytesize: int = 8,
    ) -> None:
        """Serve Modbus RTU on a serial port (pymodbus' own default would be 19200)."""
        server = ModbusSerialServer(
            self._device(parity=parity, baudrate=baudrate),
            framer=FramerType.RTU,
            port=serial_port,
            baudrate=baudrate,
            parity=parity,
            stopbits=stopbits,
            bytesize=bytesize,
            trace_pdu=self._trace_pdu,  # type: ignore[arg-type]  # may return None
            trace_packet=functools.partial(self._trace_packet, rtu=True),
        )
        await self._listen(server, serial_port)
        _LOG.info(
            "%s: serving Modbus RTU on %s at %d baud, unit %d",
            self._name,
            serial_port,
            baudrate,
            self._unit_id,
        )

    async def drop_connections(self) -> int:
        """Close every open TCP connection (the server keeps listening); returns how many."""
        dropped = 0
        for server in self._servers:
            if not isinstance(server, ModbusTcpServer):
                continue  # a serial server's one "connection" is the port: closing it deafens it
            for connection in list(server.active_connections.values()):
                connection.close()
                dropped += 1
        _LOG.info("%s: dropped %d connection(s)", self._name, dropped)
        return dropped

    async def stop(self) -> None:
        """Stop every server and release delayed answers; safe to call more than once."""
        self._stopping.set()
        servers, self._servers = self._servers, []
        for server in servers:
            await self._shutdown(server)
        # Let delayed request handlers (pymodbus runs each as a task) finish before returning.
        for _ in range(100):
            if not self._in_flight:
                break
            await asyncio.sleep(0.01)
        self._stopping = asyncio.Event()

    # ------------------------------------------------------------------ for subclasses

    def _device(self, *, parity: str | None, baudrate: int | None) -> SimDevice:
        """The SimDevice to serve; ``parity`` / ``baudrate`` are the RTU line's, None on TCP."""
        raise NotImplementedError

    def _refusal(self, request: ModbusPDU) -> ExcCodes | None:
        """Exception code for a request the device refuses outright, else None (the default)."""
        return None

    def _garbled(self, answer: ModbusPDU) -> ModbusPDU:
        """The answer sent while ``faults.garbage``: well framed, but not fitting its request."""
        if answer.isError():
            return answer
        if answer.function_code in (1, 2):
            answer.bits = []  # byte count 0
        elif answer.function_code in (3, 4):
            answer.registers = []  # byte count 0
        elif answer.function_code in (5, 6):
            answer.address = (answer.address + 1) & 0xFFFF  # echo of another address
        elif answer.function_code in (15, 16):
            answer.count += 1
        return answer

    def _trace_packet(self, sending: bool, packet: bytes, *, rtu: bool) -> bytes:
        """pymodbus hook on every frame; breaks the CRC of RTU answers while ``faults.bad_crc``."""
        if rtu and sending and self.faults.bad_crc and len(packet) >= 4:
            return packet[:-1] + bytes([packet[-1] ^ 0xFF])
        return packet

    def _count(self, function_code: int) -> None:
        """Count a request that reached the device model (see `request_count`)."""
        self._requests[function_code] += 1

    async def _maybe_delay(self) -> None:
        """Hold the answer for ``faults.delay_s`` (ended early by `stop`)."""
        delay_s = self.faults.delay_s
        if delay_s <= 0:
            return
        self._in_flight += 1
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay_s):
                    await self._stopping.wait()
        finally:
            self._in_flight -= 1

    # ------------------------------------------------------------------ internals

    async def _listen(self, server: ModbusBaseServer, where: str) -> None:
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus: "Could not start listen"
            await self._shutdown(server)
            raise RuntimeError(f"{self._name}: cannot serve on {where}: {exc}") from exc
        self._servers.append(server)

    async def _shutdown(self, server: ModbusBaseServer) -> None:
        await server.shutdown()  # type: ignore[no-untyped-call]  # untyped in pymodbus 3.16.1
        _LOG.debug("%s: server %s stopped", self._name, server)

    def _trace_connect(self, connected: bool) -> None:
        if connected:
            self._connections += 1

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU | None:
        """pymodbus hook on every decoded request and every answer (None = no answer)."""
        if sending:
            return self._garbled(pdu) if self.faults.garbage else pdu
        if pdu.dev_id != self._unit_id:
            _LOG.debug("%s: ignoring request for unit %d", self._name, pdu.dev_id)
            return None
        if self.faults.silent:
            _LOG.debug("%s: silent fault: no answer to FC%02d", self._name, pdu.function_code)
            return None
        if (code := self._refusal(pdu)) is not None:
            return _Refusal(pdu, code)
        return pdu
