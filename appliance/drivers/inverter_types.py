"""What the rest of the appliance sees of a battery inverter, shared by every inverter driver.

* `InverterReading`: one snapshot; power > 0 = discharge (the battery delivers AC power).
* `Inverter` (read) and `PowerControl` (set / release the active power setpoint): the two
  capabilities, checked once at wiring time.
* `clamp_setpoint_w`: the one rule both drivers apply before they write a setpoint.

Both Modbus inverter drivers talk through `appliance.drivers.modbus_link.ModbusLink`, whose
FC 16 writes map to the same typed errors as its reads.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

#: Below this magnitude of measured AC power a running inverter counts as standing by.
IDLE_BAND_W = 10.0


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
