"""Wellpro WP8024ADAM relay / digital-input module: 4 relays and 8 inputs over Modbus.

Register map (WP8024ADAM user's manual V1.42, protocols.md section 6):

* coils 0x0000..0x0003 = RY1..RY4, read with FC 01, switched with FC 05 (one) or FC 15 (all);
  a set coil (FC 05 value 0xFF00) energises the relay and closes its normally-open contact;
* discrete inputs 0x0000..0x0007 = DI_01..DI_08, read with FC 02; a set bit means the input
  is active, which on this module is a low level (opto input pulled to its common);
* holding registers 0x0064 (slave address) and 0x0065 (line parameters) are for commissioning
  only and not used by this driver.

Channel numbering: the site config and every method here count relays and inputs from 1, as
printed on the module (RY1..RY4, DI_01..DI_08). Relay channel ``n`` is coil ``n - 1`` and input
``n`` is discrete input ``n - 1``; `relay_coil` does that mapping and its range check.

Default line: 9600 baud 8N1, unit 1. At 9600 baud a transaction takes about 16 ms (read inputs)
to 21 ms (write four coils), so a `read` (two requests) costs about 40 ms of bus time.

Every write is read back (FC 01) before it counts as done: a relay module that acknowledges a
write but does not switch (stuck output, module in manual mode, a second master on the bus)
raises DeviceProtocolError instead of letting the controller believe the load is on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, Unpack, runtime_checkable

from appliance.drivers.modbus_link import (
    ModbusExceptionResponse,
    ModbusLink,
    RtuSettings,
    check_unit_id,
)
from appliance.errors import DeviceProtocolError

_LOG = logging.getLogger(__name__)
_T = TypeVar("_T")

RELAY_COUNT = 4  # RY1..RY4
INPUT_COUNT = 8  # DI_01..DI_08
FIRST_COIL = 0x0000  # RY1
FIRST_INPUT = 0x0000  # DI_01


def relay_coil(channel: int) -> int:
    """Config relay channel (1..4, as printed on the module) -> 0-based coil address.

    Raises ValueError for anything else; call it at wiring time to reject a bad config early.
    """
    if isinstance(channel, bool) or not isinstance(channel, int):
        raise TypeError(f"relay channel must be an int, got {channel!r}")
    if not 1 <= channel <= RELAY_COUNT:
        raise ValueError(
            f"relay channel must be 1..{RELAY_COUNT} (RY1..RY{RELAY_COUNT}), got {channel}"
        )
    return FIRST_COIL + channel - 1


@dataclass(frozen=True, slots=True)
class RelayState:
    """One snapshot of the module; index 0 is channel 1 (RY1 / DI_01)."""

    relays: tuple[bool, ...]  # RELAY_COUNT entries, True = relay energised (contact closed)
    inputs: tuple[bool, ...]  # INPUT_COUNT entries, True = input active (low level)

    def relay(self, channel: int) -> bool:
        """State of relay ``channel`` (1..4)."""
        return self.relays[relay_coil(channel) - FIRST_COIL]

    def input(self, channel: int) -> bool:
        """State of digital input ``channel`` (1..8)."""
        if isinstance(channel, bool) or not isinstance(channel, int):
            raise TypeError(f"input channel must be an int, got {channel!r}")
        if not 1 <= channel <= INPUT_COUNT:
            raise ValueError(f"input channel must be 1..{INPUT_COUNT}, got {channel}")
        return self.inputs[channel - 1]


@runtime_checkable
class RelaySwitch(Protocol):
    """Something that switches numbered relays (1-based channels) and confirms the switch."""

    async def set_relay(self, channel: int, on: bool) -> None:
        """Switch one relay; raises a `DriverError` subclass when it is not confirmed."""
        ...


@runtime_checkable
class RelayReader(Protocol):
    """A relay / input module the poll loop can read."""

    async def read(self) -> RelayState:
        """Read relays and inputs; raises a `DriverError` subclass on failure."""
        ...

    async def close(self) -> None:
        """Release the link; safe to call more than once."""
        ...


# --------------------------------------------------------------------------- driver


class RelayModule:
    """A WP8024ADAM on Modbus RTU (RS485) or TCP (gateway); implements `RelaySwitch`.

    Build it with `RelayModule.tcp` or `RelayModule.rtu`. Requests are serialised by a lock,
    so a poll never slips between a write and its read-back. Counters, for metrics:
    ``malformed_frames`` (answers that did not fit their request) and ``readback_mismatches``
    (writes acknowledged but not confirmed by the read-back).
    """

    def __init__(self, link: ModbusLink, *, unit_id: int = 1, name: str = "wp8024") -> None:
        check_unit_id(unit_id)
        self._link = link
        self._unit_id = unit_id
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
        timeout_s: float = 1.0,
        name: str = "wp8024",
    ) -> RelayModule:
        """Module behind a Modbus TCP gateway."""
        return cls(
            ModbusLink.tcp(host, port, name=name, timeout_s=timeout_s), unit_id=unit_id, name=name
        )

    @classmethod
    def rtu(
        cls,
        serial_port: str,
        *,
        unit_id: int = 1,
        name: str = "wp8024",
        **line: Unpack[RtuSettings],
    ) -> RelayModule:
        """Module on an RS485 line (factory default 9600 8N1, unit 1); ``line``: `RtuSettings`."""
        return cls(ModbusLink.rtu(serial_port, name=name, **line), unit_id=unit_id, name=name)

    @property
    def name(self) -> str:
        return self._name

    @property
    def unit_id(self) -> int:
        return self._unit_id

    @property
    def connected(self) -> bool:
        return self._link.connected

    async def connect(self) -> None:
        """Open the link now (optional: every call connects on demand). Raises DeviceUnavailable."""
        await self._link.connect()

    async def close(self) -> None:
        await self._link.close()

    async def read(self) -> RelayState:
        """Relays (FC 01) and inputs (FC 02), two requests.

        Raises DeviceUnavailable, DeviceTimeout or DeviceProtocolError.
        """
        async with self._lock:
            relays = await self._read_relays()
            inputs = await self._counted(
                self._link.read_discrete_inputs(FIRST_INPUT, INPUT_COUNT, unit_id=self._unit_id)
            )
        return RelayState(relays=relays, inputs=tuple(inputs))

    async def set_relay(self, channel: int, on: bool) -> None:
        """Switch relay ``channel`` (1..4) with FC 05, then confirm with a read-back.

        A bad channel raises ValueError / TypeError before any I/O. Raises DeviceProtocolError
        when the read-back differs (the write was acknowledged but the relay did not follow).
        """
        coil = relay_coil(channel)
        if not isinstance(on, bool):
            raise TypeError(f"relay state must be a bool, got {on!r}")
        async with self._lock:
            await self._counted(self._link.write_coil(coil, on, unit_id=self._unit_id))
            relays = await self._read_relays()
            if relays[coil - FIRST_COIL] != on:
                self._mismatch(f"relay {channel} (coil 0x{coil:04X}) reads back {_word(not on)}")
        _LOG.debug("%s: relay %d switched %s", self._name, channel, _word(on))

    async def set_relays(self, states: Sequence[bool]) -> None:
        """Switch all four relays at once with FC 15 (``states[0]`` is RY1), then read back.

        ``states`` must hold exactly four bools (checked before any I/O).
        """
        wanted = tuple(states)
        if len(wanted) != RELAY_COUNT or not all(isinstance(s, bool) for s in wanted):
            raise ValueError(f"states must be {RELAY_COUNT} bools (RY1 first), got {states!r}")
        async with self._lock:
            await self._counted(self._link.write_coils(FIRST_COIL, wanted, unit_id=self._unit_id))
            relays = await self._read_relays()
            if relays != wanted:
                self._mismatch(f"relays read back {_words(relays)} after writing {_words(wanted)}")
        _LOG.debug("%s: relays switched to %s", self._name, _words(wanted))

    async def _read_relays(self) -> tuple[bool, ...]:
        bits = await self._counted(
            self._link.read_coils(FIRST_COIL, RELAY_COUNT, unit_id=self._unit_id)
        )
        return tuple(bits)

    async def _counted(self, request: Awaitable[_T]) -> _T:
        try:
            return await request
        except ModbusExceptionResponse:
            raise  # a well-formed refusal, not a malformed frame
        except DeviceProtocolError as exc:
            self.malformed_frames += 1
            _LOG.warning("%s: malformed answer rejected: %s", self._name, exc)
            raise

    def _mismatch(self, detail: str) -> None:
        self.readback_mismatches += 1
        _LOG.warning("%s: %s: write acknowledged but not executed", self._name, detail)
        raise DeviceProtocolError(
            f"{self._name}: {detail}: write acknowledged but not executed "
            "(stuck relay, manual mode or another master?)"
        )


def _word(on: bool) -> str:
    return "on" if on else "off"


def _words(states: Sequence[bool]) -> str:
    return "[" + ", ".join(_word(s) for s in states) + "]"
