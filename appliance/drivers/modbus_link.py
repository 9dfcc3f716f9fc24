"""A thin wrapper around one pymodbus async client: timeouts and typed errors.

Error mapping (every pymodbus error becomes an `appliance.errors` type):

* cannot connect (refused, serial port missing), connection lost -> DeviceUnavailable
* no answer within ``timeout_s``                                  -> DeviceTimeout
* Modbus exception response                                       -> ModbusExceptionResponse
  (a DeviceProtocolError carrying ``exception_code``)
* malformed / mismatched answer                                   -> DeviceProtocolError

pymodbus is configured so that it never works behind the caller's back: ``retries=0`` (one
request per call), ``reconnect_delay=0`` (no background reconnect task). The link connects
once on demand; retry policy and back-off belong to the poll loop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

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


class ModbusExceptionResponse(DeviceProtocolError):
    """The device answered with a Modbus exception response (function code | 0x80)."""

    def __init__(self, message: str, *, function_code: int, exception_code: int) -> None:
        super().__init__(message)
        self.function_code = function_code
        self.exception_code = exception_code


class ModbusLink:
    """One Modbus TCP or RTU connection, used by one driver.

    Build it with `ModbusLink.tcp` or `ModbusLink.rtu`.
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
        return await self._read(4, address, count, unit_id)

    async def read_holding_registers(self, address: int, count: int, *, unit_id: int) -> list[int]:
        """FC 03; returns exactly ``count`` registers."""
        return await self._read(3, address, count, unit_id)

    async def close(self) -> None:
        """Close the connection; safe to call more than once."""
        self._client.close()

    async def _read(self, function_code: int, address: int, count: int, unit_id: int) -> list[int]:
        await self.ensure_connected()
        what = f"FC{function_code:02d} 0x{address:04X}+{count} unit {unit_id}"
        call = (
            self._client.read_input_registers
            if function_code == 4
            else self._client.read_holding_registers
        )
        try:
            async with asyncio.timeout(self._timeout_s):
                response: ModbusPDU = await call(address, count=count, device_id=unit_id)
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
        return self._check(response, what, count)

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

    def _check(self, response: ModbusPDU, what: str, count: int) -> list[int]:
        if response.isError():
            code = int(response.exception_code)
            function_code = int(response.function_code)
            raise ModbusExceptionResponse(
                f"{self._name}: {what}: Modbus exception 0x{code:02X}",
                function_code=function_code,
                exception_code=code,
            )
        registers = [int(r) for r in response.registers]
        if len(registers) != count:
            raise DeviceProtocolError(
                f"{self._name}: {what}: got {len(registers)} registers, expected {count}"
            )
        return registers
