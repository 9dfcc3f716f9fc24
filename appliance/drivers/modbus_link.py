"""A thin wrapper around one pymodbus async client: timeouts and typed errors.

Error mapping (every pymodbus error becomes an `appliance.errors` type):

* cannot connect (refused, serial port missing), connection lost -> DeviceUnavailable
* no answer within ``timeout_s``                                  -> DeviceTimeout
* Modbus exception response                                       -> ModbusExceptionResponse
  (a DeviceProtocolError carrying ``exception_code``)
* malformed / mismatched answer                                   -> DeviceProtocolError
  (too few registers or bits, a write echo with another address, value or count)

pymodbus is configured so that it never works behind the caller's back: ``retries=0`` (one
request per call), ``reconnect_delay=0`` (no background reconnect task). The link connects
once on demand; retry policy and back-off belong to the poll loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, TypedDict

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from appliance.errors import DeviceProtocolError, DeviceTimeout, DeviceUnavailable

_LOG = logging.getLogger(__name__)

# pymodbus' own per-request timer is set this much longer than ours, so that ours (an
# asyncio.timeout around the call) always fires first and pymodbus never retries.
_PYMODBUS_TIMEOUT_MARGIN_S = 1.0

_PARITIES = ("N", "E", "O")

#: FC 16 carries at most this many registers (Modbus PDU limit).
MAX_WRITE_REGISTERS = 123


class RtuSettings(TypedDict, total=False):
    """Line settings a driver's ``rtu`` constructor passes on to `ModbusLink.rtu`.

    Any left out take `ModbusLink.rtu`'s defaults: 9600 baud 8N1, ``timeout_s`` 1 s.
    """

    baudrate: int
    parity: Literal["N", "E", "O"]
    stopbits: int
    bytesize: int
    timeout_s: float


def check_unit_id(unit_id: int) -> None:
    """ValueError unless ``unit_id`` is a Modbus unit address a device can have (1..247)."""
    if not 1 <= unit_id <= 247:
        raise ValueError(f"unit_id must be 1..247, got {unit_id!r}")


class ModbusExceptionResponse(DeviceProtocolError):
    """The device answered with a Modbus exception response (function code | 0x80)."""

    def __init__(self, message: str, *, function_code: int, exception_code: int) -> None:
        super().__init__(message)
        self.function_code = function_code
        self.exception_code = exception_code


class ModbusLink:
    """One Modbus TCP or RTU connection, used by one driver.

    Build it with `ModbusLink.tcp` or `ModbusLink.rtu`. Register reads (FC 03/04), bit reads
    (FC 01/02) and writes (FC 05/06/15/16) all go through `_request`, so they share one error
    mapping (the table above); answers that do not fit their request raise DeviceProtocolError.
    """

    def __init__(
        self,
        client: AsyncModbusTcpClient | AsyncModbusSerialClient,
        *,
        name: str,
        endpoint: str,
        timeout_s: float,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self._client = client
        self._name = name
        self._endpoint = endpoint
        self._timeout_s = timeout_s
        self._was_connected = False

    @classmethod
    def tcp(cls, host: str, port: int = 502, *, name: str, timeout_s: float = 1.0) -> ModbusLink:
        """Modbus TCP (MBAP framing) to ``host:port``."""
        client = AsyncModbusTcpClient(
            host,
            port=port,
            name=name,
            timeout=timeout_s + _PYMODBUS_TIMEOUT_MARGIN_S,
            retries=0,
            reconnect_delay=0,
        )
        return cls(client, name=name, endpoint=f"tcp://{host}:{port}", timeout_s=timeout_s)

    @classmethod
    def rtu(
        cls,
        serial_port: str,
        *,
        name: str,
        baudrate: int = 9600,
        parity: Literal["N", "E", "O"] = "N",
        stopbits: int = 1,
        bytesize: int = 8,
        timeout_s: float = 1.0,
    ) -> ModbusLink:
        """Modbus RTU on a serial port (RS485 adapter)."""
        if parity not in _PARITIES:
            raise ValueError(f"parity must be one of {_PARITIES}, got {parity!r}")
        if stopbits not in (1, 2):
            raise ValueError(f"stopbits must be 1 or 2, got {stopbits!r}")
        if bytesize not in (7, 8):
            raise ValueError(f"bytesize must be 7 or 8, got {bytesize!r}")
        client = AsyncModbusSerialClient(
            serial_port,
            framer=FramerType.RTU,
            baudrate=baudrate,
            bytesize=bytesize,
            parity=parity,
            stopbits=stopbits,
            name=name,
            timeout=timeout_s + _PYMODBUS_TIMEOUT_MARGIN_S,
            retries=0,
            reconnect_delay=0,
        )
        endpoint = f"rtu://{serial_port}?{baudrate}{parity}{bytesize}{stopbits}"
        return cls(client, name=name, endpoint=endpoint, timeout_s=timeout_s)

    @property
    def endpoint(self) -> str:
        """Where the link goes, for log messages (``tcp://host:port`` / ``rtu://port?9600N81``)."""
        return self._endpoint

    @property
    def timeout_s(self) -> float:
        return self._timeout_s

    @property
    def connected(self) -> bool:
        return bool(self._client.connected)

    async def connect(self) -> None:
        """Open the connection; raises DeviceUnavailable (refused, missing port, or too slow)."""
        try:
            async with asyncio.timeout(self._timeout_s):
                ok = await self._client.connect()
        except TimeoutError:
            ok = False
        except OSError as exc:
            self._client.close()
            raise DeviceUnavailable(
                f"{self._name}: cannot connect to {self._endpoint}: {exc}"
            ) from exc
        if not ok:
            self._client.close()
            raise DeviceUnavailable(f"{self._name}: cannot connect to {self._endpoint}")
        self._was_connected = True
        _LOG.debug("%s: connected to %s", self._name, self._endpoint)

    async def ensure_connected(self) -> None:
        """Connect if the link is down (one attempt)."""
        if self.connected:
            return
        if self._was_connected:
            _LOG.info("%s: link down, reconnecting to %s", self._name, self._endpoint)
        await self.connect()

    async def read_input_registers(self, address: int, count: int, *, unit_id: int) -> list[int]:
        """FC 04; returns exactly ``count`` registers."""
        return await self._read_registers(4, address, count, unit_id)

    async def read_holding_registers(self, address: int, count: int, *, unit_id: int) -> list[int]:
        """FC 03; returns exactly ``count`` registers."""
        return await self._read_registers(3, address, count, unit_id)

    async def read_coils(self, address: int, count: int, *, unit_id: int) -> list[bool]:
        """FC 01; returns exactly ``count`` bits."""
        return await self._read_bits(1, address, count, unit_id)

    async def read_discrete_inputs(self, address: int, count: int, *, unit_id: int) -> list[bool]:
        """FC 02; returns exactly ``count`` bits."""
        return await self._read_bits(2, address, count, unit_id)

    async def write_coil(self, address: int, on: bool, *, unit_id: int) -> None:
        """FC 05 (0xFF00 = on, 0x0000 = off); checks the echo."""
        what = f"FC05 0x{address:04X}={'on' if on else 'off'} unit {unit_id}"
        response = await self._request(
            what, lambda: self._client.write_coil(address, on, device_id=unit_id)
        )
        self._check_echo(what, response, address, list(response.bits), on)

    async def write_coils(self, address: int, values: Sequence[bool], *, unit_id: int) -> None:
        """FC 15; checks that the answer names the same start and count."""
        bits = [bool(v) for v in values]
        what = f"FC15 0x{address:04X}+{len(bits)} unit {unit_id}"
        response = await self._request(
            what, lambda: self._client.write_coils(address, bits, device_id=unit_id)
        )
        if response.address != address or response.count != len(bits):
            raise DeviceProtocolError(
                f"{self._name}: {what}: answer 0x{response.address:04X}+{response.count} "
                "does not match the request"
            )

    async def write_register(self, address: int, value: int, *, unit_id: int) -> None:
        """FC 06; checks the echo."""
        if not 0 <= value <= 0xFFFF:
            raise ValueError(f"register value must be 0..0xFFFF, got {value!r}")
        what = f"FC06 0x{address:04X}={value} unit {unit_id}"
        response = await self._request(
            what, lambda: self._client.write_register(address, value, device_id=unit_id)
        )
        self._check_echo(what, response, address, list(response.registers), value)

    async def write_registers(self, address: int, values: Sequence[int], *, unit_id: int) -> None:
        """FC 16; checks that the answer echoes the address and the count.

        A write that got no answer may or may not have been applied; the caller repeats it.
        """
        if not 1 <= len(values) <= MAX_WRITE_REGISTERS:
            raise ValueError(f"FC 16 writes 1..{MAX_WRITE_REGISTERS} registers, got {len(values)}")
        words = [int(v) for v in values]
        what = f"FC16 0x{address:04X}+{len(words)} unit {unit_id}"
        response = await self._request(
            what, lambda: self._client.write_registers(address, words, device_id=unit_id)
        )
        if int(response.address) != address or int(response.count) != len(words):
            raise DeviceProtocolError(
                f"{self._name}: {what}: answer echoes 0x{int(response.address):04X}"
                f"+{int(response.count)}"
            )

    async def close(self) -> None:
        """Close the connection; safe to call more than once."""
        self._client.close()

    async def _request(self, what: str, call: Callable[[], Awaitable[ModbusPDU]]) -> ModbusPDU:
        """Send one request (connecting first if need be); every failure as a typed error.

        Returns the answer unless it is a Modbus exception response.
        """
        await self.ensure_connected()
        try:
            async with asyncio.timeout(self._timeout_s):
                response = await call()
        except TimeoutError as exc:
            raise await self._no_answer(what) from exc
        except ConnectionException as exc:
            await self.close()
            raise DeviceUnavailable(f"{self._name}: {what}: {self._endpoint}: {exc}") from exc
        except ModbusIOException as exc:
            # Only reached if pymodbus' own timer fired first (it should not, see margin).
            if "No response" in str(exc):
                raise await self._no_answer(what) from exc
            raise DeviceProtocolError(f"{self._name}: {what}: {exc}") from exc
        except ModbusException as exc:
            raise DeviceProtocolError(f"{self._name}: {what}: {exc}") from exc
        except OSError as exc:
            await self.close()
            raise DeviceUnavailable(f"{self._name}: {what}: {self._endpoint}: {exc}") from exc
        if response.isError():
            code = int(response.exception_code)
            raise ModbusExceptionResponse(
                f"{self._name}: {what}: Modbus exception 0x{code:02X}",
                function_code=int(response.function_code),
                exception_code=code,
            )
        return response

    def _check_echo(
        self, what: str, response: ModbusPDU, address: int, echo: Sequence[int], value: int
    ) -> None:
        """FC 05/06: the answer repeats the request's address and value."""
        if response.address != address or echo[:1] != [value]:
            raise DeviceProtocolError(
                f"{self._name}: {what}: echo 0x{response.address:04X}={echo[:1]} "
                "does not match the request"
            )

    async def _no_answer(self, what: str) -> DeviceTimeout | DeviceUnavailable:
        """Build the error for a request that got no answer, and drop the connection.

        Dropping it discards a late answer that would otherwise be taken as the answer to
        the next request (RTU has no transaction id to tell them apart).
        """
        was_connected = self.connected
        await self.close()
        if not was_connected:
            return DeviceUnavailable(f"{self._name}: {what}: connection to {self._endpoint} lost")
        return DeviceTimeout(
            f"{self._name}: {what}: no answer from {self._endpoint} within {self._timeout_s} s"
        )

    async def _read_registers(
        self, function_code: int, address: int, count: int, unit_id: int
    ) -> list[int]:
        what = f"FC{function_code:02d} 0x{address:04X}+{count} unit {unit_id}"
        call = (
            self._client.read_input_registers
            if function_code == 4
            else self._client.read_holding_registers
        )
        response = await self._request(what, lambda: call(address, count=count, device_id=unit_id))
        registers = [int(r) for r in response.registers]
        if len(registers) != count:
            raise DeviceProtocolError(
                f"{self._name}: {what}: got {len(registers)} registers, expected {count}"
            )
        return registers

    async def _read_bits(
        self, function_code: int, address: int, count: int, unit_id: int
    ) -> list[bool]:
        what = f"FC{function_code:02d} 0x{address:04X}+{count} unit {unit_id}"
        call = self._client.read_coils if function_code == 1 else self._client.read_discrete_inputs
        response = await self._request(what, lambda: call(address, count=count, device_id=unit_id))
        # The answer carries whole bytes (padded with 0 bits): fewer than `count` is malformed.
        bits = [bool(b) for b in response.bits]
        if len(bits) < count:
            raise DeviceProtocolError(
                f"{self._name}: {what}: got {len(bits)} bits, expected {count}"
            )
        return bits[:count]
