"""Heater power actuators: a 0..100 % level, on a PWM controller or time-proportioned on a relay.

Seed 002 drives a heating element through a power controller (e.g. KEMO M240) from a PWM
output 0..100 %. The appliance sees that as the `PowerLevel` capability, with two
implementations:

* `ModbusPwmController`: a generic PWM controller with one holding register holding the level
  in steps of full scale (default 0..1000 = permille) at a configurable address (`PwmRegister`);
  written with FC 06 and read back with FC 03;
* `RelayDutyHeater`: a heater on a plain relay (e.g. a WP8024 channel), switched by
  time-proportioning (`TimeProportioning`, pure: time is passed in): within each period the
  relay is on for ``level %`` of the period.

Levels are clamped to 0..100; NaN is refused (ValueError) rather than guessed.

What stays with the controller (not here): seed 002's temperature derating (full power up to
4 °C below the maximum temperature, then 25 %/°C less), the shut-off on a broken sensor, and the
shut-off when no power reading arrived for 10 s.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import Protocol, Unpack, runtime_checkable

from appliance.drivers.modbus_link import (
    ModbusExceptionResponse,
    ModbusLink,
    RtuSettings,
    check_unit_id,
)
from appliance.drivers.relay_module import RelaySwitch, relay_coil
from appliance.errors import DeviceProtocolError

_LOG = logging.getLogger(__name__)


@runtime_checkable
class PowerLevel(Protocol):
    """An actuator that sets a load's power as a share of its rated power."""

    async def set_level_pct(self, pct: float) -> None:
        """Set the level, 0..100 % (clamped; NaN raises ValueError)."""
        ...


def clamp_level_pct(pct: float) -> float:
    """0..100 % (infinities clamp too); NaN raises ValueError: it means a broken controller."""
    if isinstance(pct, bool) or not isinstance(pct, int | float):
        raise TypeError(f"level must be a number, got {pct!r}")
    if math.isnan(pct):
        raise ValueError("level is NaN; refusing to guess a heater power")
    return min(100.0, max(0.0, float(pct)))


# --------------------------------------------------------------------------- Modbus PWM controller


@dataclass(frozen=True, slots=True)
class PwmRegister:
    """Where and how a PWM controller takes its level: one holding register, 0..full_scale."""

    address: int = 0  # 0-based PDU address (register number address + 40001)
    full_scale: int = 1000  # raw value for 100 % (1000 = permille)

    def __post_init__(self) -> None:
        if not 0 <= self.address <= 0xFFFE:
            raise ValueError(f"PWM register address must be 0..0xFFFE, got {self.address!r}")
        if not 1 <= self.full_scale <= 0xFFFF:
            raise ValueError(f"PWM full_scale must be 1..65535, got {self.full_scale!r}")

    def to_raw(self, level_pct: float) -> int:
        """Clamped level -> register value (rounded to the nearest step)."""
        return round(clamp_level_pct(level_pct) * self.full_scale / 100.0)

    def to_pct(self, raw: int) -> float:
        return 100.0 * raw / self.full_scale


class ModbusPwmController:
    """A PWM power controller on Modbus TCP or RTU; implements `PowerLevel`.

    Every write is read back. ``malformed_frames`` counts answers rejected as malformed or
    implausible (a level above full scale), ``readback_mismatches`` writes that were
    acknowledged but not executed.
    """

    def __init__(
        self,
        link: ModbusLink,
        *,
        unit_id: int = 1,
        register: PwmRegister | None = None,
        name: str = "pwm-heater",
    ) -> None:
        check_unit_id(unit_id)
        self._link = link
        self._unit_id = unit_id
        self._register = register or PwmRegister()
        self._name = name
        self._lock = asyncio.Lock()
        self.malformed_frames = 0
        self.readback_mismatches = 0

    @classmethod
    def tcp(
        cls,
        host: str,
        port: int = 502,
        *,
        unit_id: int = 1,
        register: PwmRegister | None = None,
        timeout_s: float = 1.0,
        name: str = "pwm-heater",
    ) -> ModbusPwmController:
        link = ModbusLink.tcp(host, port, name=name, timeout_s=timeout_s)
        return cls(link, unit_id=unit_id, register=register, name=name)

    @classmethod
    def rtu(
        cls,
        serial_port: str,
        *,
        unit_id: int = 1,
        register: PwmRegister | None = None,
        name: str = "pwm-heater",
        **line: Unpack[RtuSettings],
    ) -> ModbusPwmController:
        link = ModbusLink.rtu(serial_port, name=name, **line)
        return cls(link, unit_id=unit_id, register=register, name=name)

    @property
    def name(self) -> str:
        return self._name

    @property
    def register(self) -> PwmRegister:
        return self._register

    async def close(self) -> None:
        await self._link.close()

    async def read_level_pct(self) -> float:
        """The level the controller outputs now (FC 03)."""
        async with self._lock:
            return self._register.to_pct(await self._read_raw())

    async def set_level_pct(self, pct: float) -> None:
        """Write the level (FC 06), then read it back (FC 03).

        ValueError for NaN before any I/O. DeviceProtocolError when the read-back differs.
        """
        raw = self._register.to_raw(pct)
        async with self._lock:
            await self._counted_write(raw)
            back = await self._read_raw()
            if back != raw:
                self.readback_mismatches += 1
                _LOG.warning(
                    "%s: wrote %d, reads back %d: write acknowledged but not executed",
                    self._name,
                    raw,
                    back,
                )
                raise DeviceProtocolError(
                    f"{self._name}: PWM register 0x{self._register.address:04X}: wrote {raw}, "
                    f"reads back {back}: write acknowledged but not executed"
                )
        _LOG.debug("%s: level set to %d/%d", self._name, raw, self._register.full_scale)

    async def _counted_write(self, raw: int) -> None:
        try:
            await self._link.write_register(self._register.address, raw, unit_id=self._unit_id)
        except ModbusExceptionResponse:
            raise
        except DeviceProtocolError as exc:
            self._malformed(str(exc))
            raise

    async def _read_raw(self) -> int:
        address = self._register.address
        try:
            (raw,) = await self._link.read_holding_registers(address, 1, unit_id=self._unit_id)
        except ModbusExceptionResponse:
            raise
        except DeviceProtocolError as exc:
            self._malformed(str(exc))
            raise
        if raw > self._register.full_scale:
            detail = (
                f"PWM register 0x{address:04X} = {raw} above full scale {self._register.full_scale}"
            )
            self._malformed(detail)
            raise DeviceProtocolError(f"{self._name}: {detail}")
        return raw

    def _malformed(self, detail: str) -> None:
        self.malformed_frames += 1
        _LOG.warning("%s: answer rejected: %s", self._name, detail)


# --------------------------------------------------------------------------- time-proportioning


@dataclass(frozen=True, slots=True)
class DutyState:
    """Where the current period started and the on-time latched for it (None: not started)."""

    period_start_s: float | None = None
    on_time_s: float = 0.0


@dataclass(frozen=True, slots=True)
class TimeProportioning:
    """Turns a 0..100 % level into relay on/off timing; pure, time passed in.

    Each period starts with the relay on for ``on_time_s(level)``, then off for the rest.
    The on-time is fixed at the start of a period, so a relay switches on at most once per
    period whatever the level does; a *lower* level takes effect at once (a shut-off must not
    wait for the period to end). Pulses and gaps shorter than ``min_pulse_s`` are not made:
    the level rounds to all off or all on, sparing the contactor.
    """

    period_s: float = 10.0
    min_pulse_s: float = 0.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.period_s) or self.period_s <= 0:
            raise ValueError(f"period_s must be > 0, got {self.period_s!r}")
        if not 0 <= self.min_pulse_s < self.period_s / 2:
            raise ValueError(
                f"min_pulse_s must be 0 <= min_pulse_s < period_s / 2, got {self.min_pulse_s!r}"
            )

    def on_time_s(self, level_pct: float) -> float:
        """Seconds on per period for ``level_pct`` (clamped; NaN raises ValueError)."""
        on_s = self.period_s * clamp_level_pct(level_pct) / 100.0
        if on_s < self.min_pulse_s:
            return 0.0
        if self.period_s - on_s < self.min_pulse_s:
            return self.period_s
        return on_s

    def off_time_s(self, level_pct: float) -> float:
        return self.period_s - self.on_time_s(level_pct)

    def step(self, level_pct: float, now_s: float, state: DutyState) -> tuple[bool, DutyState]:
        """Relay output at ``now_s`` (monotonic seconds) and the state for the next call."""
        wanted_s = self.on_time_s(level_pct)
        start = state.period_start_s
        if start is None or now_s < start:  # first call, or a clock that went back: restart
            start, on_time_s = now_s, wanted_s
        elif now_s >= start + self.period_s:
            # Keep the period grid: a late call still lands in the period it belongs to.
            start += math.floor((now_s - start) / self.period_s) * self.period_s
            on_time_s = wanted_s
        else:
            on_time_s = min(state.on_time_s, wanted_s)
        on = now_s - start < on_time_s
        state = DutyState(start, on_time_s)
        return on, state


class RelayDutyHeater:
    """A heater on one relay channel, time-proportioned; implements `PowerLevel`.

    `set_level_pct` only stores the level; the runtime calls `apply` every control cycle with
    the monotonic time, and `apply` switches the relay when the output changes (the relay
    driver confirms each switch by read-back). After a failed switch the relay state is
    unknown, so the next `apply` writes again.
    """

    def __init__(
        self,
        relays: RelaySwitch,
        channel: int,
        *,
        timing: TimeProportioning | None = None,
        name: str = "relay-heater",
    ) -> None:
        relay_coil(channel)  # refuse a bad channel now, not at the first switch
        self._relays = relays
        self._channel = channel
        self._timing = timing or TimeProportioning()
        self._name = name
        self._level_pct = 0.0
        self._state = DutyState()
        self._relay_on: bool | None = None  # None: unknown (not yet written, or a write failed)

    @property
    def level_pct(self) -> float:
        return self._level_pct

    @property
    def relay_on(self) -> bool | None:
        return self._relay_on

    async def set_level_pct(self, pct: float) -> None:
        self._level_pct = clamp_level_pct(pct)

    async def apply(self, now_s: float) -> bool:
        """Switch the relay as the duty cycle says at ``now_s``; returns the output.

        Raises the relay driver's errors (DriverError subclasses).
        """
        on, self._state = self._timing.step(self._level_pct, now_s, self._state)
        if on != self._relay_on:
            self._relay_on = None
            await self._relays.set_relay(self._channel, on)
            self._relay_on = on
            _LOG.debug("%s: relay %d %s", self._name, self._channel, "on" if on else "off")
        return on
