"""What the rest of the appliance sees of a southbound device: readings and small Protocols.

Drivers raise the typed errors of `appliance.errors` (DeviceTimeout, DeviceProtocolError,
DeviceUnavailable, NotSupported); nothing pymodbus-specific leaks through these types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

#: One value per phase, L1, L2, L3.
PhaseTriple = tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class MeterReading:
    """One consistent snapshot of a three-phase meter.

    Sign convention: as the meter reports it (Eastron: import from the grid is positive).
    """

    voltage_v: PhaseTriple  # line-to-neutral
    current_a: PhaseTriple
    active_power_w: PhaseTriple
    reactive_power_var: PhaseTriple
    power_factor: PhaseTriple
    frequency_hz: float
    total_active_power_w: float
    total_reactive_power_var: float
    total_power_factor: float
    import_kwh: float
    export_kwh: float


#: MeterReading attributes that are per-phase triples, and those that are single values.
PHASE_FIELDS: tuple[str, ...] = (
    "voltage_v",
    "current_a",
    "active_power_w",
    "reactive_power_var",
    "power_factor",
)
SCALAR_FIELDS: tuple[str, ...] = (
    "frequency_hz",
    "total_active_power_w",
    "total_reactive_power_var",
    "total_power_factor",
    "import_kwh",
    "export_kwh",
)


@runtime_checkable
class PowerMeter(Protocol):
    """A meter the poll loop can read; reconnection and back-off are the caller's job."""

    async def read(self) -> MeterReading:
        """Read one snapshot; raises a `DriverError` subclass on failure."""
        ...

    async def close(self) -> None:
        """Release the link; safe to call more than once."""
        ...
