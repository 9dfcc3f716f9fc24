"""Sending setpoints to actuators without ever making the control cycle wait.

The cycle calls `submit()` with the latest command; one task per actuator writes it. A write
that is still in flight when the next cycle comes is not queued behind: the newer value
replaces the waiting one (only the latest command matters to an inverter), and the
replacement is counted. Shutdown writes a safe value (0 W) to every actuator before the
appliance exits.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from appliance.aio import raise_if_cancelled
from appliance.errors import DriverError

log = logging.getLogger(__name__)

T = TypeVar("T")


class LatestValueWriter(Generic[T]):
    """Writes the most recent submitted value to one actuator, one write at a time.

    With `only_changes`, a value equal to the last one written is not written again (relays:
    the bus time of an RS485 module is precious); without it every submitted value is
    written (inverter setpoints: every write also restarts the inverter's revert timer).
    """

    def __init__(
        self,
        name: str,
        write: Callable[[T], Awaitable[None]],
        *,
        timeout_s: float = 2.0,
        only_changes: bool = False,
    ) -> None:
        self.name = name
        self._write = write
        self._timeout_s = timeout_s
        self._only_changes = only_changes
        self._pending: T | None = None
        self._wake = asyncio.Event()
        self.last_written: T | None = None
        self.writes = 0
        self.failures = 0
        self.replaced = 0  # submitted values overtaken by a newer one before being written
        self._failing = False

    def submit(self, value: T) -> None:
        """Called from the cycle: never blocks, never raises for a bad value."""
        if isinstance(value, float) and not math.isfinite(value):
            log.error("%s: refusing to send non-finite setpoint %r", self.name, value)
            return
        if self._only_changes and not self._failing and value == self.last_written:
            return
        if self._pending is not None:
            self.replaced += 1
        self._pending = value
        self._wake.set()

    async def _write_once(self, value: T) -> bool:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._write(value)
        except (DriverError, TimeoutError) as exc:
            self.failures += 1
            if not self._failing:
                log.error("%s: %r not written (%s)", self.name, value, exc)
            self._failing = True
            return False
        if self._failing:
            log.info("%s: setpoints written again", self.name)
        self._failing = False
        self.writes += 1
        self.last_written = value
        return True

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            value, self._pending = self._pending, None
            if value is not None:
                await self._write_once(value)
                raise_if_cancelled()  # pymodbus can swallow a stop, see appliance.aio

    async def write_safe(self, value: T) -> bool:
        """The last write at shutdown; returns whether the actuator took it."""
        self._pending = None
        return await self._write_once(value)
