"""What the rest of the appliance sees of a battery inverter, shared by every inverter driver.

* `InverterReading`: one snapshot; power > 0 = discharge (the battery delivers AC power).
* `Inverter` (read) and `PowerControl` (set / release the active power setpoint): the two
  capabilities, checked once at wiring time.
* `clamp_setpoint_w`: the one rule both drivers apply before they write a setpoint.
* `InverterModbusLink`: `ModbusLink` plus FC 16 (write multiple registers), which the
  read-only meter link does not have.
"""

from __future__ import annotations

import asyncio
import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from appliance.drivers.modbus_link import ModbusExceptionResponse, ModbusLink
from appliance.errors import DeviceProtocolError, DeviceUnavailable

#: Below this magnitude of measured AC power a running inverter counts as standing by.
IDLE_BAND_W = 10.0

#: FC 16 carries at most this many registers (Modbus PDU limit).
MAX_WRITE_REGISTERS = 123


class InverterState(enum.IntEnum):
    """Operating state; the values are those of the ``inverter.state`` point (points.yaml)."""

    OFF = 0
    STANDBY = 1
    CHARGING = 2
    DISCHARGING = 3
    FAULT = 4


@dataclass(frozen=True, slots=True)
class InverterReading:
    """One consistent snapshot of a battery inverter.

    Sign: power and setpoint > 0 = discharge (AC power delivered to the site), < 0 = charge.
    """

    active_power_w: float  # measured AC power
    setpoint_w: float | None  # setpoint in force, read back; None while remote control is off
    state: InverterState
    max_charge_power_w: float  # >= 0, what the inverter accepts now
    max_discharge_power_w: float  # >= 0
    soc_pct: float | None  # None when the inverter does not report it


@runtime_checkable
class Inverter(Protocol):
    """An inverter the poll loop can read; reconnection and back-off are the caller's job."""

    async def read(self) -> InverterReading:
        """Read one snapshot; raises a `DriverError` subclass on failure."""
        ...

    async def close(self) -> None:
        """Release the link; safe to call more than once."""
        ...


@runtime_checkable
class PowerControl(Protocol):
    """An inverter whose active power the controller commands."""

    async def set_active_power_w(self, watts: float) -> float:
        """Command ``watts`` (> 0 discharge), clamped to the inverter's limits.

        Returns the value actually written. Raises ValueError for NaN / inf, and a
        `DriverError` subclass when the write fails.
        """
        ...

    async def release(self) -> None:
        """Give control back to the inverter (remote setpoint disabled)."""
        ...


def clamp_setpoint_w(watts: float, *, max_charge_w: float, max_discharge_w: float) -> float:
    """``watts`` limited to ``[-max_charge_w, +max_discharge_w]``; NaN / inf are refused.

    A refused value is a bug in the caller, not a device fault, hence ValueError.
    """
    if not math.isfinite(watts):
        raise ValueError(f"setpoint must be a finite number of watts, got {watts!r}")
    if not (max_charge_w >= 0.0 and max_discharge_w >= 0.0):
        raise ValueError(f"limits must be >= 0, got {max_charge_w!r} / {max_discharge_w!r}")
    return min(max_discharge_w, max(-max_charge_w, watts))


def state_from_power(power_w: float, idle_band_w: float = IDLE_BAND_W) -> InverterState:
    """State of a running inverter from its measured power (> 0 discharge)."""
    if power_w > idle_band_w:
        return InverterState.DISCHARGING
    if power_w < -idle_band_w:
        return InverterState.CHARGING
    return InverterState.STANDBY


class InverterModbusLink(ModbusLink):
    """`ModbusLink` with FC 16 writes, mapped to the same typed errors as its reads.

    A write that got no answer may or may not have been applied; the caller repeats it.
    """

    @classmethod
    def tcp(
        cls, host: str, port: int = 502, *, name: str, timeout_s: float = 1.0
    ) -> InverterModbusLink:
        return _narrow(super().tcp(host, port, name=name, timeout_s=timeout_s))

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
    ) -> InverterModbusLink:
        link = super().rtu(
            serial_port,
            name=name,
            baudrate=baudrate,
            parity=parity,
            stopbits=stopbits,
            bytesize=bytesize,
            timeout_s=timeout_s,
        )
        return _narrow(link)

    async def write_registers(self, address: int, values: Sequence[int], *, unit_id: int) -> None:
        """FC 16; checks that the answer echoes the address and the count."""
        if not 1 <= len(values) <= MAX_WRITE_REGISTERS:
            raise ValueError(f"FC 16 writes 1..{MAX_WRITE_REGISTERS} registers, got {len(values)}")
        await self.ensure_connected()
        what = f"FC16 0x{address:04X}+{len(values)} unit {unit_id}"
        try:
            async with asyncio.timeout(self.timeout_s):
                response: ModbusPDU = await self._client.write_registers(
                    address, [int(v) for v in values], device_id=unit_id
                )
        except TimeoutError as exc:
            raise await self._no_answer(what) from exc
        except ConnectionException as exc:
            await self.close()
            raise DeviceUnavailable(f"{self._name}: {what}: {self.endpoint}: {exc}") from exc
        except ModbusIOException as exc:
            if "No response" in str(exc):
                raise await self._no_answer(what) from exc
            raise DeviceProtocolError(f"{self._name}: {what}: {exc}") from exc
        except ModbusException as exc:
            raise DeviceProtocolError(f"{self._name}: {what}: {exc}") from exc
        except OSError as exc:
            await self.close()
            raise DeviceUnavailable(f"{self._name}: {what}: {self.endpoint}: {exc}") from exc
        if response.isError():
            code = int(response.exception_code)
            raise ModbusExceptionResponse(
                f"{self._name}: {what}: Modbus exception 0x{code:02X}",
                function_code=int(response.function_code),
                exception_code=code,
            )
        if int(response.address) != address or int(response.count) != len(values):
            raise DeviceProtocolError(
                f"{self._name}: {what}: answer echoes 0x{int(response.address):04X}"
                f"+{int(response.count)}"
            )


def _narrow(link: ModbusLink) -> InverterModbusLink:
    # ModbusLink's constructors build ``cls(...)``; only their annotation says ModbusLink.
    if not isinstance(link, InverterModbusLink):
        raise TypeError(f"expected an InverterModbusLink, got {type(link).__name__}")
    return link
