"""Pylontech low-voltage ("SMA Sunny Island compatible") CAN BMS: frame map and driver.

The BMS broadcasts its frames about once a second without being asked; nothing is sent to it.
The frame layout lives in ``models/devices/pylontech.dbc`` (package ``appliance.models``), is
decoded with cantools and shared with the simulator (`appliance.simulation.devices.pylontech_sim`).
Its signal ranges double as the plausibility limits.

Event-driven: a `can.Notifier` thread reads the bus and hands each frame to the event loop
(`loop.call_soon_threadsafe`), where `PylontechFrameState` keeps the latest decoded content per
frame. `PylontechCanBms.read` only assembles the latest complete state; it never waits for the
bus. One bus (one python-can connection) per battery node.

Current sign: on the wire, positive = charging (Battery-Emulator writes its datalayer current,
positive = charging, straight into 0x356; Battery-Emulator issue 2919 / PR 2920). `BmsReading`
uses the appliance convention, positive = discharge; ``current_positive_on_wire`` flips the
conversion for a BMS that sends the other sign.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import importlib.resources
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import can
import cantools
from cantools.database.can import Database as CanDatabase
from cantools.database.errors import UnsupportedDatabaseFormatError

from appliance.errors import ConfigError, DeviceProtocolError, DeviceUnavailable

_LOG = logging.getLogger(__name__)

DBC_RESOURCE = ("devices", "pylontech.dbc")

# Frame identifiers (CAN 2.0A, 11 bit). Layout and sources: the DBC comments.
ID_INVERTER_KEEPALIVE = 0x305  # inverter -> BMS, optional; documented, never sent
ID_LIMITS = 0x351  # CVL, CCL, DCL, DVL
ID_SOC_SOH = 0x355
ID_MEASUREMENTS = 0x356  # pack voltage, current, temperature
ID_FLAGS = 0x359  # alarm / warning flags, module count
ID_REQUEST = 0x35C  # charge / discharge enable, force charge
ID_MANUFACTURER = 0x35E
ID_CELL_EXTREMES = 0x373  # Victron/SMA extension: min/max cell voltage and temperature

#: Frames a reading needs, each received within ``stale_after_s``.
CORE_FRAME_IDS: tuple[int, ...] = (ID_LIMITS, ID_SOC_SOH, ID_MEASUREMENTS, ID_FLAGS, ID_REQUEST)
#: Fewest data bytes accepted per frame: the bytes the driver decodes. Longer frames are fine
#: (0x351 comes as DLC 6 or 8, 0x355 as 4, 6 or 8, 0x359 as 7 or 8); shorter ones are malformed.
MIN_DATA_LENGTH: Mapping[int, int] = {
    ID_LIMITS: 6,
    ID_SOC_SOH: 4,
    ID_MEASUREMENTS: 6,
    ID_FLAGS: 4,
    ID_REQUEST: 1,
    ID_MANUFACTURER: 1,
    ID_CELL_EXTREMES: 8,
}
FRAME_IDS: tuple[int, ...] = tuple(MIN_DATA_LENGTH)

#: TCP port of the socketcand daemon unless configured otherwise.
SOCKETCAND_DEFAULT_PORT = 29536

CanInterface = Literal["socketcan", "virtual", "udp_multicast", "socketcand"]
WireCurrentSign = Literal["charge", "discharge"]

# The Notifier thread's recv() timeout: how long `close` may wait for the thread to end.
_NOTIFIER_POLL_S = 0.1
_NOTIFIER_STOP_S = 2.0
_CONNECT_TIMEOUT_S = 2.0


class ProtectionFlag(enum.IntFlag):
    """0x359 alarm (bytes 0-1) and warning (bytes 2-3) bits, byte 0 in the low 8 bits.

    Same layout as `appliance.simulation.plant.BmsFlag`.
    """

    OVERVOLTAGE = 0x0002
    UNDERVOLTAGE = 0x0004
    OVERTEMPERATURE = 0x0008
    UNDERTEMPERATURE = 0x0010
    DISCHARGE_OVERCURRENT = 0x0080
    CHARGE_OVERCURRENT = 0x0100
    SYSTEM_ERROR = 0x0800


class RequestFlag(enum.IntFlag):
    """0x35C byte 0."""

    FULL_CHARGE = 0x08
    FORCE_CHARGE_II = 0x10
    FORCE_CHARGE_I = 0x20  # "charge immediately"
    DISCHARGE_ENABLE = 0x40
    CHARGE_ENABLE = 0x80


@dataclass(frozen=True, slots=True)
class BmsReading:
    """The latest complete state of one BMS. Current and power > 0 = discharge."""

    soc_pct: float
    soh_pct: float
    voltage_v: float
    current_a: float  # > 0 discharge (converted from the wire, see the module docstring)
    power_w: float  # voltage_v * current_a, > 0 discharge
    temperature_c: float  # the pack temperature of 0x356
    cell_voltage_min_v: float | None  # None: the BMS does not send 0x373
    cell_voltage_max_v: float | None
    temperature_min_c: float | None
    temperature_max_c: float | None
    charge_voltage_limit_v: float
    charge_current_limit_a: float  # >= 0
    discharge_current_limit_a: float  # >= 0 (the absolute value of what the BMS sends)
    discharge_voltage_limit_v: float | None  # None: 0x351 came with DLC 6
    alarm_flags: int  # ProtectionFlag bits
    warning_flags: int  # ProtectionFlag bits
    request_flags: int  # RequestFlag bits
    manufacturer: str  # "" until 0x35E was received
    module_count: int | None  # packs in parallel, None if 0x359 is shorter than 5 bytes
    received_monotonic: float  # when the oldest frame this reading is built from arrived


@runtime_checkable
class BatteryMonitor(Protocol):
    """A BMS the poll loop can read; reconnection is the driver's job, back-off the caller's."""

    async def read(self) -> BmsReading:
        """The latest complete state; raises a `DriverError` subclass when there is none."""
        ...

    async def close(self) -> None:
        """Release the bus; safe to call more than once."""
        ...


# --------------------------------------------------------------------------- frame map


def load_pylontech_dbc(path: Path | None = None) -> CanDatabase:
    """The frame map (the packaged DBC unless ``path`` is given); raises ConfigError."""
    if path is None:
        return _packaged_dbc()
    return _parse_dbc(path.read_text(encoding="utf-8"), str(path))


@functools.cache
def _packaged_dbc() -> CanDatabase:
    try:
        resource = importlib.resources.files("appliance.models") / DBC_RESOURCE[0] / DBC_RESOURCE[1]
        return _parse_dbc(resource.read_text(encoding="utf-8"), str(resource))
    except ModuleNotFoundError:
        # Dev tree whose editable install does not map models/ to appliance.models.
        path = Path(__file__).resolve().parents[2] / "models" / Path(*DBC_RESOURCE)
        return _parse_dbc(path.read_text(encoding="utf-8"), str(path))


def _parse_dbc(text: str, source: str) -> CanDatabase:
    try:
        db = cantools.database.load_string(text, database_format="dbc")
    except (UnsupportedDatabaseFormatError, ValueError) as exc:
        raise ConfigError(f"{source}: not a loadable DBC: {exc}") from exc
    if not isinstance(db, CanDatabase):
        raise ConfigError(f"{source}: not a CAN database")
    for frame_id in FRAME_IDS:
        try:
            db.get_message_by_frame_id(frame_id)
        except KeyError:
            raise ConfigError(f"{source}: no message 0x{frame_id:03X}") from None
    return db


# --------------------------------------------------------------------------- decoding


@dataclass(frozen=True, slots=True)
class _Frame:
    values: Mapping[str, Any]
    received: float


@dataclass(frozen=True, slots=True)
class _Malformed:
    reason: str
    received: float


class PylontechFrameState:
    """The latest decoded content per frame id, and the reading built from it.

    Pure: no I/O, time passed in. `feed` never raises: a malformed frame (too short,
    undecodable, non-ASCII name) is counted in `malformed_frames` and remembered until a good
    frame of the same id replaces it. `reading` raises DeviceUnavailable (a core frame missing
    or older than ``stale_after_s``) or DeviceProtocolError (the latest core frame malformed, a
    value outside the DBC range).
    """

    def __init__(
        self,
        *,
        name: str = "pylontech",
        stale_after_s: float = 5.0,
        current_positive_on_wire: WireCurrentSign = "charge",
        database: CanDatabase | None = None,
    ) -> None:
        if not (math.isfinite(stale_after_s) and stale_after_s > 0):
            raise ValueError(f"stale_after_s must be > 0, got {stale_after_s!r}")
        if current_positive_on_wire not in ("charge", "discharge"):
            raise ValueError(f"current_positive_on_wire: {current_positive_on_wire!r}")
        self._name = name
        self._stale_after_s = stale_after_s
        self._to_discharge_positive = -1.0 if current_positive_on_wire == "charge" else 1.0
        self._db = database or load_pylontech_dbc()
        self._messages = {i: self._db.get_message_by_frame_id(i) for i in FRAME_IDS}
        self._frames: dict[int, _Frame] = {}
        self._malformed: dict[int, _Malformed] = {}
        self.frames_accepted = 0
        self.malformed_frames = 0
        self.ignored_frames = 0  # other ids, extended ids, remote and error frames

    @property
    def stale_after_s(self) -> float:
        return self._stale_after_s

    def feed(
        self,
        frame_id: int,
        data: bytes,
        now: float,
        *,
        is_extended_id: bool = False,
        is_remote_frame: bool = False,
        is_error_frame: bool = False,
    ) -> bool:
        """Take one received frame; returns whether it was decoded and kept."""
        if is_extended_id or is_remote_frame or is_error_frame or frame_id not in MIN_DATA_LENGTH:
            self.ignored_frames += 1
            return False
        need = MIN_DATA_LENGTH[frame_id]
        if len(data) < need:
            self._reject(frame_id, f"{len(data)} data bytes, needs at least {need}", now)
            return False
        try:
            values = self._decode(frame_id, data)
        except (cantools.database.DecodeError, ValueError) as exc:
            self._reject(frame_id, f"undecodable: {exc}", now)
            return False
        if frame_id in self._malformed:
            _LOG.info("%s: well-formed 0x%03X frames again", self._name, frame_id)
            del self._malformed[frame_id]
        self._frames[frame_id] = _Frame(values, now)
        self.frames_accepted += 1
        return True

    def last_received(self) -> float | None:
        """When the newest accepted frame of any id arrived (None: none yet)."""
        return max((f.received for f in self._frames.values()), default=None)

    def is_stale(self, now: float) -> bool:
        """Whether a core frame is missing or older than ``stale_after_s``."""
        return any(
            (frame := self._frames.get(i)) is None or now - frame.received > self._stale_after_s
            for i in CORE_FRAME_IDS
        )

    def reading(self, now: float) -> BmsReading:
        """The latest complete state; raises DeviceUnavailable or DeviceProtocolError."""
        for frame_id in CORE_FRAME_IDS:
            bad = self._malformed.get(frame_id)
            if bad is not None and now - bad.received <= self._stale_after_s:
                raise DeviceProtocolError(
                    f"{self._name}: latest 0x{frame_id:03X} frame is malformed ({bad.reason});"
                    f" {self.malformed_frames} malformed frame(s) so far"
                )
        frames = {i: self._fresh(i, now) for i in CORE_FRAME_IDS}
        limits = frames[ID_LIMITS].values
        soc = frames[ID_SOC_SOH].values
        meas = frames[ID_MEASUREMENTS].values
        flags = frames[ID_FLAGS].values
        voltage_v = self._checked(ID_MEASUREMENTS, "BatteryVoltage", meas)
        current_a = self._to_discharge_positive * self._checked(
            ID_MEASUREMENTS, "BatteryCurrent", meas
        )
        cells = self._cell_extremes(now)
        dvl = limits.get("DischargeVoltageLimit")
        module_count = flags.get("ModuleCount")
        manufacturer = self._frames.get(ID_MANUFACTURER)
        return BmsReading(
            soc_pct=self._checked(ID_SOC_SOH, "StateOfCharge", soc),
            soh_pct=self._checked(ID_SOC_SOH, "StateOfHealth", soc),
            voltage_v=voltage_v,
            current_a=current_a,
            power_w=voltage_v * current_a,
            temperature_c=self._checked(ID_MEASUREMENTS, "BatteryTemperature", meas),
            cell_voltage_min_v=cells[0],
            cell_voltage_max_v=cells[1],
            temperature_min_c=cells[2],
            temperature_max_c=cells[3],
            charge_voltage_limit_v=self._checked(ID_LIMITS, "ChargeVoltageLimit", limits),
            charge_current_limit_a=self._checked(ID_LIMITS, "ChargeCurrentLimit", limits),
            # Pylontech sends the DCL positive, diyBMS negative: the magnitude is the limit.
            discharge_current_limit_a=abs(
                self._checked(ID_LIMITS, "DischargeCurrentLimit", limits)
            ),
            discharge_voltage_limit_v=(
                None if dvl is None else self._checked(ID_LIMITS, "DischargeVoltageLimit", limits)
            ),
            alarm_flags=int(flags["AlarmFlags"]),
            warning_flags=int(flags["WarningFlags"]),
            request_flags=int(frames[ID_REQUEST].values["RequestFlags"]),
            manufacturer="" if manufacturer is None else str(manufacturer.values["name"]),
            module_count=None if module_count is None else int(module_count),
            received_monotonic=min(f.received for f in frames.values()),
        )

    # ------------------------------------------------------------------ internals

    def _decode(self, frame_id: int, data: bytes) -> dict[str, Any]:
        if frame_id == ID_MANUFACTURER:
            # A DBC cannot describe a variable-length string (Pytes sends 5 bytes).
            text = data.rstrip(b" \x00")
            if not text or any(not 0x20 <= b <= 0x7E for b in text):
                raise ValueError(f"manufacturer name {bytes(data)!r} is not printable ASCII")
            return {"name": text.decode("ascii")}
        message = self._messages[frame_id]
        # allow_truncated: decode what the DLC carries (0x351 without the DVL, 0x359 without
        # the module count); MIN_DATA_LENGTH already rejected frames too short to be useful.
        decoded = message.decode(data, decode_choices=False, allow_truncated=True)
        if not isinstance(decoded, Mapping):  # container messages only; none in this DBC
            raise ValueError(f"unexpected decode result {type(decoded).__name__}")
        values: dict[str, Any] = {}
        for signal in message.signals:
            value = decoded.get(signal.name)
            if value is None:  # beyond this frame's DLC
                continue
            if not isinstance(value, int | float):
                raise ValueError(f"{signal.name} decoded to {value!r}")
            # Round away the binary noise of the scaling (48.660000000000004 -> 48.66).
            values[signal.name] = round(float(value), _decimals(signal.scale))
        return values

    def _reject(self, frame_id: int, reason: str, now: float) -> None:
        self.malformed_frames += 1
        if frame_id not in self._malformed:
            _LOG.warning("%s: malformed 0x%03X frame: %s", self._name, frame_id, reason)
        else:
            _LOG.debug("%s: malformed 0x%03X frame: %s", self._name, frame_id, reason)
        self._malformed[frame_id] = _Malformed(reason, now)

    def _fresh(self, frame_id: int, now: float) -> _Frame:
        frame = self._frames.get(frame_id)
        if frame is None:
            raise DeviceUnavailable(f"{self._name}: no 0x{frame_id:03X} frame received yet")
        age = now - frame.received
        if age > self._stale_after_s:
            raise DeviceUnavailable(
                f"{self._name}: no 0x{frame_id:03X} frame for {age:.1f} s"
                f" (stale after {self._stale_after_s:g} s)"
            )
        return frame

    def _checked(self, frame_id: int, signal_name: str, values: Mapping[str, Any]) -> float:
        value = float(values[signal_name])
        signal = self._messages[frame_id].get_signal_by_name(signal_name)
        low = -math.inf if signal.minimum is None else float(signal.minimum)
        high = math.inf if signal.maximum is None else float(signal.maximum)
        if not (math.isfinite(value) and low <= value <= high):
            _LOG.warning(
                "%s: 0x%03X %s = %r %s outside [%s, %s]",
                self._name,
                frame_id,
                signal_name,
                value,
                signal.unit or "",
                low,
                high,
            )
            raise DeviceProtocolError(
                f"{self._name}: 0x{frame_id:03X} {signal_name} = {value!r} {signal.unit or ''}"
                f" outside plausible range [{low:g}, {high:g}]"
            )
        return value

    def _cell_extremes(
        self, now: float
    ) -> tuple[float | None, float | None, float | None, float | None]:
        frame = self._frames.get(ID_CELL_EXTREMES)
        # Optional frame: absent, stale or malformed means "not sent"; a well-formed but
        # implausible one is an error like any other value the control relies on.
        if frame is None or now - frame.received > self._stale_after_s:
            return (None, None, None, None)
        v = frame.values
        cell_min, cell_max, t_min, t_max = (
            self._checked(ID_CELL_EXTREMES, name, v)
            for name in (
                "MinCellVoltage",
                "MaxCellVoltage",
                "MinCellTemperature",
                "MaxCellTemperature",
            )
        )
        if cell_min > cell_max or t_min > t_max:
            raise DeviceProtocolError(
                f"{self._name}: 0x373 minimum above maximum (cells {cell_min}/{cell_max} V,"
                f" temperatures {t_min}/{t_max} degC)"
            )
        return (cell_min, cell_max, t_min, t_max)


def _decimals(scale: float) -> int:
    """Decimal places of a DBC scale factor (0.01 -> 2, 1 -> 0)."""
    return max(0, -math.floor(math.log10(abs(scale)) + 1e-9)) if scale else 0


# --------------------------------------------------------------------------- bus plumbing


class _LoopForwarder(can.Listener):
    """Runs in the Notifier's thread and hands every frame to the event loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_frame: Callable[[can.Message], None],
        on_error: Callable[[Exception], None],
    ) -> None:
        self._loop = loop
        self._on_frame = on_frame
        self._on_error = on_error
        self._failed = False
        self.notifier: can.Notifier | None = None

    def on_message_received(self, msg: can.Message) -> None:
        # RuntimeError: the loop closed during shutdown; the frame no longer matters.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._on_frame, msg)

    def on_error(self, exc: Exception) -> None:
        # The bus failed (interface down, socketcand connection reset). Without a loop the
        # Notifier calls recv() again at once, and a dead bus fails again at once: stop this
        # Notifier's thread (timeout 0: never join the current thread) and tell the driver,
        # which reopens the bus on the next read.
        if self.notifier is not None:
            self.notifier.stop(timeout=0)
        if not self._failed:
            self._failed = True
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._on_error, exc)

    def stop(self) -> None:
        """Nothing buffered here."""


def _frame_filters() -> list[dict[str, Any]]:
    return [{"can_id": i, "can_mask": 0x7FF, "extended": False} for i in FRAME_IDS]


def _open_python_can(
    interface: CanInterface, channel: str, host: str | None, port: int | None, bitrate: int
) -> can.BusABC:
    """Blocking: runs in a worker thread."""
    filters = _frame_filters()
    if interface == "socketcand":
        if host is None:
            raise ValueError("socketcand needs a host")
        port = SOCKETCAND_DEFAULT_PORT if port is None else port
        # python-can's client retries a refused connection in a tight loop for 10 s (one
        # WARNING per attempt) before it raises; probe once so a missing server fails at once.
        with socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT_S):
            pass
        return can.Bus(
            interface="socketcand", channel=channel, host=host, port=port, can_filters=filters
        )
    if interface == "socketcan":
        # The bit rate belongs to the kernel interface (ip link set can0 type can bitrate ...).
        return can.Bus(interface="socketcan", channel=channel, can_filters=filters)
    if interface == "virtual":
        return can.Bus(interface="virtual", channel=channel, can_filters=filters)
    if interface == "udp_multicast":
        return can.Bus(interface="udp_multicast", channel=channel, can_filters=filters)
    raise ValueError(f"unsupported CAN interface {interface!r} (bit rate {bitrate})")


class PylontechCanBms:
    """One Pylontech-protocol BMS on its own CAN bus; implements `BatteryMonitor`.

    Build it with `from_connection` (or pass any ``open_bus`` callable, e.g. for a bus that
    tests already share). The bus opens on the first `read` (or `start`). `read` also reopens
    it after the Notifier reported a bus error, and when frames have been missing for
    ``stale_after_s`` since the last (re)open: that recovers a socketcand connection the
    server dropped and a SocketCAN interface that went down and up again.
    """

    def __init__(
        self,
        open_bus: Callable[[], can.BusABC],
        *,
        name: str = "pylontech",
        stale_after_s: float = 5.0,
        current_positive_on_wire: WireCurrentSign = "charge",
        clock: Callable[[], float] = time.monotonic,
        database: CanDatabase | None = None,
    ) -> None:
        self._open_bus = open_bus
        self._name = name
        self._clock = clock
        self._state = PylontechFrameState(
            name=name,
            stale_after_s=stale_after_s,
            current_positive_on_wire=current_positive_on_wire,
            database=database,
        )
        self._lock = asyncio.Lock()
        self._bus: can.BusABC | None = None
        self._notifier: can.Notifier | None = None
        self._bus_error: Exception | None = None
        self._opened_at = 0.0
        self._down_logged = False
        self.opens = 0  # successful bus (re)opens

    @classmethod
    def from_connection(
        cls,
        interface: CanInterface,
        channel: str,
        *,
        host: str | None = None,
        port: int | None = None,
        bitrate: int = 500_000,
        name: str = "pylontech",
        stale_after_s: float = 5.0,
        current_positive_on_wire: WireCurrentSign = "charge",
        clock: Callable[[], float] = time.monotonic,
    ) -> PylontechCanBms:
        """A BMS behind a python-can interface: socketcan (the appliance), virtual (tests),
        udp_multicast, or socketcand (``host``, ``port``: a socketcand bridge or simulator)."""
        if interface == "socketcand" and host is None:
            raise ValueError("interface socketcand needs host (and port, default 29536)")
        if interface != "socketcand" and (host is not None or port is not None):
            raise ValueError(f"host and port are only used with socketcand, not {interface}")
        opener = functools.partial(_open_python_can, interface, channel, host, port, bitrate)
        return cls(
            opener,
            name=name,
            stale_after_s=stale_after_s,
            current_positive_on_wire=current_positive_on_wire,
            clock=clock,
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def stale_after_s(self) -> float:
        return self._state.stale_after_s

    @property
    def malformed_frames(self) -> int:
        """Frames rejected as too short or undecodable (never raised from the reader)."""
        return self._state.malformed_frames

    @property
    def frames_accepted(self) -> int:
        return self._state.frames_accepted

    @property
    def ignored_frames(self) -> int:
        return self._state.ignored_frames

    @property
    def is_open(self) -> bool:
        return self._bus is not None

    async def start(self) -> None:
        """Open the bus now (optional: `read` opens on demand). Raises DeviceUnavailable."""
        async with self._lock:
            if self._bus is None:
                await self._open()

    async def read(self) -> BmsReading:
        """The latest complete state, from frames already received (no bus I/O waited for).

        Raises DeviceUnavailable (bus cannot be opened, a core frame missing or older than
        ``stale_after_s``) or DeviceProtocolError (latest core frame malformed, value outside
        its plausible range).
        """
        async with self._lock:
            await self._ensure_bus()
        reading = self._state.reading(self._clock())
        self._down_logged = False
        return reading

    async def close(self) -> None:
        """Stop the Notifier thread and shut the bus down; safe to call more than once."""
        async with self._lock:
            await self._close_bus()

    # ------------------------------------------------------------------ internals

    async def _ensure_bus(self) -> None:
        now = self._clock()
        if self._bus is not None:
            reason = None
            if self._bus_error is not None:
                reason = f"bus error: {_summary(self._bus_error)}"
            elif self._state.is_stale(now) and now - self._opened_at >= self.stale_after_s:
                reason = f"no frames for {self.stale_after_s:g} s"
            if reason is not None:
                level = logging.DEBUG if self._down_logged else logging.WARNING
                _LOG.log(level, "%s: reopening the CAN bus (%s)", self._name, reason)
                self._down_logged = True
                await self._close_bus()
        if self._bus is None:
            await self._open()

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, self._open_bus)
        try:
            bus = await asyncio.shield(future)
        except asyncio.CancelledError:
            # The worker thread still finishes opening: shut that bus down when it does.
            future.add_done_callback(_shutdown_result)
            raise
        except (can.CanError, OSError, ValueError) as exc:
            raise DeviceUnavailable(f"{self._name}: cannot open the CAN bus: {exc}") from exc
        forwarder = _LoopForwarder(loop, self._on_frame, functools.partial(self._on_bus_error, bus))
        try:
            notifier = can.Notifier(bus, [forwarder], timeout=_NOTIFIER_POLL_S)
        except Exception:
            bus.shutdown()
            raise
        forwarder.notifier = notifier
        self._bus, self._notifier, self._bus_error = bus, notifier, None
        self._opened_at = self._clock()
        self.opens += 1
        _LOG.debug("%s: listening on %s", self._name, bus.channel_info)

    async def _close_bus(self) -> None:
        notifier, bus = self._notifier, self._bus
        self._notifier, self._bus = None, None
        # Both block (join the reader thread, close sockets): run them off the loop.
        if notifier is not None:
            await asyncio.to_thread(notifier.stop, _NOTIFIER_STOP_S)
        if bus is not None:
            await asyncio.to_thread(bus.shutdown)

    def _on_frame(self, msg: can.Message) -> None:
        """In the loop thread, for every frame the Notifier read."""
        self._state.feed(
            msg.arbitration_id,
            bytes(msg.data),
            self._clock(),
            is_extended_id=bool(msg.is_extended_id),
            is_remote_frame=bool(msg.is_remote_frame),
            is_error_frame=bool(msg.is_error_frame),
        )

    def _on_bus_error(self, bus: can.BusABC, exc: Exception) -> None:
        """In the loop thread, when the Notifier's reader of ``bus`` failed."""
        if bus is not self._bus:  # a bus already closed and replaced
            return
        self._bus_error = exc
        _LOG.warning("%s: CAN bus failed: %s", self._name, _summary(exc))


def _summary(exc: BaseException) -> str:
    """First line only: python-can's socketcand errors carry a whole traceback."""
    lines = str(exc).strip().splitlines()
    first = lines[0].split("  Traceback")[0] if lines else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _shutdown_result(future: asyncio.Future[can.BusABC]) -> None:
    """Shut down a bus whose open finished after its opener was cancelled.

    This runs as a done-callback in the event loop's thread, and a bus shutdown joins reader
    threads and closes sockets: do it on a thread of its own so the loop never waits for it.
    """
    if not future.cancelled() and future.exception() is None:
        bus = future.result()
        threading.Thread(target=bus.shutdown, name="can-bus-shutdown", daemon=True).start()
