"""SML smart meter (ISKRA MT691 and alike) on an optical head: framing, decoding and driver.

The meter pushes one SML telegram about every second (9600 8N1, no request). A reader thread
owns the serial port: it syncs on the SML v1 transport escape sequences, checks the frame CRC
(CRC-16/X-25), parses the messages with smllib's ``SmlFrame.parse_frame()`` and keeps the
latest valid reading. `SmlMeter.read` never touches the port; it returns that reading while it
is fresh and raises a typed error otherwise.

Why our own transport framing instead of smllib's ``SmlStreamReader`` (smllib 1.7):

* its end search is not aligned to the frame's 4-byte blocks, so payload bytes
  1B 1B 1B 1B 1A off a block boundary (inside a server id, say) end the frame early and the
  good telegram fails its CRC;
* after a truncated frame (optical head moved, meter restarted) it takes everything up to the
  *next* frame's end as one frame, fails the CRC and so loses the next, good telegram too.

Here the payload is read in 4-byte blocks from the start sequence, as libsml does; a start
sequence inside a frame (on a block boundary, or not) ends the broken frame and starts the new
one. ``SmlFrame.get_obis()`` is not used: it raises on some real frames (``InvalidBufferPos`` /
``WrongValueType``) where ``parse_frame()`` works.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import serial
from smllib.errors import SmlLibException
from smllib.sml.list_entry import SmlListEntry
from smllib.sml.response_get_list import SmlGetListResponse
from smllib.sml_frame import SmlFrame

from appliance.clock import Clock, SystemClock
from appliance.errors import DeviceProtocolError, DeviceUnavailable

_LOG = logging.getLogger(__name__)

ESCAPE = b"\x1b\x1b\x1b\x1b"
START = ESCAPE + b"\x01\x01\x01\x01"
_VERSION_1 = b"\x01\x01\x01\x01"
_END_MARK = 0x1A
MAX_FRAME_BYTES = 8192  # an MT691 telegram is about 240 bytes; anything longer is noise

# DLMS unit codes (IEC 62056-62) the meter uses for these values.
UNIT_W = 27
UNIT_WH = 30

#: OBIS groups A, C, D, E, F of the values read; B (the channel) is not compared. F = 255
#: ("not used") keeps historic values (F = billing period) out.
ObisKey = tuple[int, int, int, int, int]
OBIS_IMPORT: ObisKey = (1, 1, 8, 0, 255)  # 1-0:1.8.0*255, A+ energy total
OBIS_EXPORT: ObisKey = (1, 2, 8, 0, 255)  # 1-0:2.8.0*255, A- energy total
OBIS_POWER: ObisKey = (1, 16, 7, 0, 255)  # 1-0:16.7.0*255, total active power, > 0 = import
OBIS_POWER_L1: ObisKey = (1, 36, 7, 0, 255)
OBIS_POWER_L2: ObisKey = (1, 56, 7, 0, 255)
OBIS_POWER_L3: ObisKey = (1, 76, 7, 0, 255)

# smllib raises these (and its own SmlLibException) on malformed message data.
_PARSE_ERRORS = (SmlLibException, ValueError, TypeError, IndexError, KeyError, AttributeError)


def crc16_x25(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/X-25 (reflected 0x1021, init and xorout 0xFFFF); check("123456789") = 0x906E.

    SML sends it low byte first, for the frame CRC and for each message's CRC.
    """
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc ^ 0xFFFF


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class SmlReading:
    """One valid telegram. Power > 0 = import from the grid; phases are None if not sent."""

    import_kwh: float
    export_kwh: float
    active_power_w: float
    active_power_l1_w: float | None
    active_power_l2_w: float | None
    active_power_l3_w: float | None
    received_monotonic: float


@dataclass(frozen=True, slots=True)
class SmlLimits:
    """Plausible ranges; a telegram outside them is rejected (a direct meter is <= 100 A)."""

    max_power_w: float = 100_000.0  # total and per phase, either sign
    max_energy_kwh: float = 10_000_000.0


# --------------------------------------------------------------------------- transport framing


class SmlFramer:
    """Bytes in, CRC-checked and unescaped SML payloads out (fill bytes removed).

    Pure: no I/O, no clock. Counts what it rejects; never raises on input.
    """

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._max_frame_bytes = max_frame_bytes
        self._buf = bytearray()  # unconsumed input; while in a frame it starts with START
        self._in_frame = False
        self._pos = len(START)  # next 4-byte block of the current frame
        self._payload = bytearray()
        self.crc_errors = 0
        self.malformed_frames = 0
        self.discarded_bytes = 0  # outside any frame: noise, or a frame we joined half-way
        self.last_error: str | None = None

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the payloads of the frames they completed."""
        self._buf += data
        payloads: list[bytes] = []
        while self._in_frame or self._hunt():
            outcome = self._scan()
            if outcome is None:
                break
            if isinstance(outcome, bytes):
                payloads.append(outcome)
        return payloads

    def _hunt(self) -> bool:
        """Drop bytes up to the next start sequence; False if there is none yet."""
        index = self._buf.find(START)
        if index < 0:
            keep = len(START) - 1  # a start sequence may be split across reads
            if len(self._buf) > keep:
                self.discarded_bytes += len(self._buf) - keep
                del self._buf[:-keep]
            return False
        self.discarded_bytes += index
        del self._buf[:index]
        self._begin()
        return True

    def _begin(self) -> None:
        self._in_frame = True
        self._pos = len(START)
        self._payload.clear()

    def _reject(self, reason: str, *, consumed: int, crc: bool = False) -> bool:
        if crc:
            self.crc_errors += 1
        else:
            self.malformed_frames += 1
        self.last_error = reason
        del self._buf[:consumed]
        self._in_frame = False
        return False

    def _unaligned_start(self) -> int:
        """Index of a start sequence not on a block boundary of this frame, or -1."""
        index = self._buf.find(START, 1)
        while index > 0 and index % 4 == 0:
            index = self._buf.find(START, index + 1)
        return index

    def _scan(self) -> bytes | bool | None:
        """Advance in the current frame: payload, False (rejected), or None (need more)."""
        buf = self._buf
        restart = self._unaligned_start()
        while self._pos + 4 <= len(buf):
            pos = self._pos
            if 0 < restart < pos + 4:
                # The sender started over: the frame so far was cut short.
                return self._reject("truncated frame (new start sequence)", consumed=restart)
            if pos > self._max_frame_bytes:
                return self._reject(f"no end sequence within {pos} bytes", consumed=pos)
            if buf[pos : pos + 4] != ESCAPE:
                self._payload += buf[pos : pos + 4]
                self._pos += 4
                continue
            if pos + 8 > len(buf):
                return None
            outcome = self._escape(pos, bytes(buf[pos + 4 : pos + 8]))
            if outcome is not None:
                return outcome
        return None

    def _escape(self, pos: int, command: bytes) -> bytes | bool | None:
        """An escape sequence at ``pos``: None if the frame goes on."""
        if command == ESCAPE:  # an escaped 1B1B1B1B inside the payload
            self._payload += ESCAPE
            self._pos += 8
            return None
        if command == _VERSION_1:
            return self._reject("truncated frame (new start sequence)", consumed=pos)
        if command[0] == _END_MARK:
            return self._finish(pos, command)
        return self._reject(f"unknown escape sequence {command.hex()}", consumed=pos + 4)

    def _finish(self, pos: int, command: bytes) -> bytes | bool:
        end = pos + 8
        fill, sent = command[1], command[2] | command[3] << 8
        computed = crc16_x25(memoryview(self._buf)[: pos + 6])
        if sent != computed:
            return self._reject(
                f"frame CRC {sent:04X} != computed {computed:04X}", consumed=end, crc=True
            )
        # Fill bytes pad the frame to whole blocks; most meters send 0..3, DZG sends 4 where 0
        # would do. A wrong count leaves zeros or cuts a message, which the parser rejects.
        if fill > len(self._payload):
            return self._reject(f"fill byte count {fill} exceeds the payload", consumed=end)
        payload = bytes(self._payload[: len(self._payload) - fill])
        del self._buf[:end]
        self._in_frame = False
        return payload


# --------------------------------------------------------------------------- decoding


def _obis_key(entry: SmlListEntry) -> ObisKey:
    a, _, c, d, e, f = bytes.fromhex(str(entry.obis))  # smllib checked it is 6 bytes
    return (a, c, d, e, f)


def _scaled(entry: SmlListEntry, *, unit: int, exponent: int, what: str) -> float:
    """The entry's value in ``unit`` x 10**exponent (e.g. Wh, exponent 3 -> kWh)."""
    value, scaler = entry.value, entry.scaler
    if not isinstance(value, int) or isinstance(value, bool):
        raise DeviceProtocolError(f"{what}: value {value!r} is not an integer")
    if scaler is None:
        scaler = 0
    if not isinstance(scaler, int) or not -15 <= scaler <= 15:
        raise DeviceProtocolError(f"{what}: scaler {scaler!r} out of -15..15")
    if entry.unit not in (unit, None):
        raise DeviceProtocolError(f"{what}: unit code {entry.unit!r}, expected {unit}")
    power = scaler - exponent
    # Dividing by an exact power of ten rounds once (0.1 Wh steps stay exact in kWh).
    return float(value * 10**power) if power >= 0 else value / 10**-power


def _entries(messages: list[object]) -> dict[ObisKey, SmlListEntry]:
    entries: dict[ObisKey, SmlListEntry] = {}
    for message in messages:
        body = getattr(message, "message_body", None)
        if isinstance(body, SmlGetListResponse):
            for entry in body.val_list:
                entries.setdefault(_obis_key(entry), entry)
    return entries


def _check_range(what: str, value: float, low: float, high: float) -> float:
    if not math.isfinite(value) or not low <= value <= high:
        raise DeviceProtocolError(f"{what} = {value!r} outside plausible range [{low}, {high}]")
    return value


def decode_payload(
    payload: bytes, *, received_monotonic: float, limits: SmlLimits | None = None
) -> SmlReading:
    """Unescaped SML messages -> reading; DeviceProtocolError if malformed or implausible."""
    limits = limits or SmlLimits()
    try:
        entries = _entries(list(SmlFrame(payload).parse_frame()))
    except _PARSE_ERRORS as exc:
        raise DeviceProtocolError(f"unparsable SML messages: {type(exc).__name__}: {exc}") from exc
    missing = [
        name
        for key, name in ((OBIS_IMPORT, "1.8.0"), (OBIS_EXPORT, "2.8.0"), (OBIS_POWER, "16.7.0"))
        if key not in entries
    ]
    if missing:
        raise DeviceProtocolError(
            f"telegram without {', '.join(missing)} (is the meter's InF output enabled with its PIN?)"
        )
    max_kwh, max_w = limits.max_energy_kwh, limits.max_power_w

    def energy(key: ObisKey, name: str) -> float:
        kwh = _scaled(entries[key], unit=UNIT_WH, exponent=3, what=name)
        return _check_range(f"{name} (kWh)", kwh, 0.0, max_kwh)

    def power(key: ObisKey, name: str) -> float:
        watts = _scaled(entries[key], unit=UNIT_W, exponent=0, what=name)
        return _check_range(f"{name} (W)", watts, -max_w, max_w)

    def phase(key: ObisKey, name: str) -> float | None:
        return power(key, name) if key in entries else None

    return SmlReading(
        import_kwh=energy(OBIS_IMPORT, "1.8.0"),
        export_kwh=energy(OBIS_EXPORT, "2.8.0"),
        active_power_w=power(OBIS_POWER, "16.7.0"),
        active_power_l1_w=phase(OBIS_POWER_L1, "36.7.0"),
        active_power_l2_w=phase(OBIS_POWER_L2, "56.7.0"),
        active_power_l3_w=phase(OBIS_POWER_L3, "76.7.0"),
        received_monotonic=received_monotonic,
    )


# --------------------------------------------------------------------------- receiver


class SmlReceiver:
    """Bytes in; the latest valid reading, the counters, and why there is none if so.

    No I/O: the reader thread feeds it, `SmlMeter.read` asks it. Thread-safe.
    """

    def __init__(
        self,
        *,
        name: str,
        stale_after_s: float,
        limits: SmlLimits | None = None,
        clock: Clock | None = None,
        line: str = "the line",
    ) -> None:
        if stale_after_s <= 0:
            raise ValueError(f"stale_after_s must be > 0, got {stale_after_s!r}")
        self._name = name
        self._line = line
        self._stale_after_s = stale_after_s
        self._limits = limits or SmlLimits()
        self._clock: Clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._framer = SmlFramer()
        self._latest: SmlReading | None = None
        self._since = self._clock.monotonic()
        self._rejected_at: float | None = None
        self._rejection: str | None = None
        self._decode_rejects = 0
        self._telegrams = 0
        self._healthy = True  # only for logging the transitions
        self._link_error: str | None = None
        self._listeners: list[Callable[[], None]] = []

    @property
    def telegrams(self) -> int:
        return self._telegrams

    @property
    def crc_errors(self) -> int:
        return self._framer.crc_errors

    @property
    def malformed_frames(self) -> int:
        return self._framer.malformed_frames + self._decode_rejects

    @property
    def discarded_bytes(self) -> int:
        return self._framer.discarded_bytes

    def restart(self) -> None:
        """Count staleness from now (a new reader thread started)."""
        with self._lock:
            self._since = self._clock.monotonic()

    def wait_left_s(self) -> float:
        """How long `SmlMeter.read` may still wait for the first telegram since `restart`."""
        with self._lock:
            if self._latest is not None and self._latest.received_monotonic >= self._since:
                return 0.0
            return self._stale_after_s - (self._clock.monotonic() - self._since)

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (on the feeding thread) after each valid telegram."""
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[], None]) -> None:
        with self._lock:
            self._listeners.remove(listener)

    def set_link_error(self, error: str | None) -> None:
        with self._lock:
            self._link_error = error

    def feed(self, data: bytes) -> None:
        """Process received bytes; never raises on their content."""
        now = self._clock.monotonic()
        with self._lock:
            rejected_before = self._framer.crc_errors + self._framer.malformed_frames
            payloads = self._framer.feed(data)
            if self._framer.crc_errors + self._framer.malformed_frames != rejected_before:
                self._rejected(now, self._framer.last_error or "rejected frame")
            for payload in payloads:
                self._decode(payload, now)

    def current(self) -> SmlReading:
        """The latest valid reading if fresh, else DeviceProtocolError / DeviceUnavailable."""
        now = self._clock.monotonic()
        with self._lock:
            latest = self._latest
            if latest is not None and now - latest.received_monotonic <= self._stale_after_s:
                return latest
            if latest is None:
                what = f"no valid telegram within {now - self._since:.1f} s"
            else:
                what = f"no valid telegram for {now - latest.received_monotonic:.1f} s"
            if self._rejected_at is not None and now - self._rejected_at <= self._stale_after_s:
                raise DeviceProtocolError(
                    f"{self._name}: {what}; last frame rejected: {self._rejection}"
                )
            if self._link_error is not None:
                raise DeviceUnavailable(f"{self._name}: {what}; {self._link_error}")
            raise DeviceUnavailable(
                f"{self._name}: {what}; {self._line} is silent"
                " (optical head on the meter? the meter's InF output on?)"
            )

    def _decode(self, payload: bytes, now: float) -> None:
        try:
            reading = decode_payload(payload, received_monotonic=now, limits=self._limits)
        except DeviceProtocolError as exc:
            self._decode_rejects += 1
            self._rejected(now, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a parser bug must not kill the reader thread
            _LOG.exception("%s: unexpected error decoding a telegram", self._name)
            self._decode_rejects += 1
            self._rejected(now, f"{type(exc).__name__}: {exc}")
            return
        self._telegrams += 1
        self._latest = reading
        for listener in self._listeners:
            listener()
        if not self._healthy:
            _LOG.info("%s: valid telegrams again", self._name)
            self._healthy = True

    def _rejected(self, now: float, reason: str) -> None:
        self._rejected_at, self._rejection = now, reason
        if self._healthy:
            _LOG.warning(
                "%s: rejected a telegram (%s); the last valid one stays in use for %.1f s",
                self._name,
                reason,
                self._stale_after_s,
            )
            self._healthy = False
        else:
            _LOG.debug("%s: rejected a telegram (%s)", self._name, reason)


# --------------------------------------------------------------------------- driver

_READ_TIMEOUT_S = 0.1  # longest a blocked read delays the reader thread's stop check
_JOIN_TIMEOUT_S = 2.0


class SmlMeter:
    """Reads the telegrams an SML meter pushes; `read` returns the latest valid one.

    ``serial_port`` is a device path, or any pyserial URL (``socket://host:port`` for a TCP
    bridge such as ser2net). The line is fixed at 8N1, the SML optical interface's framing.
    The reader thread starts on the first `read` (or `start`), reopens the port every
    ``reopen_delay_s`` while it is missing or failing, and stops on `close`.

    `read` raises DeviceUnavailable when nothing valid arrived for ``stale_after_s`` and the
    line was silent or the port could not be opened, and DeviceProtocolError when frames did
    arrive but were rejected (bad CRC, malformed, implausible values). A rejected telegram
    never replaces the last valid one, which `read` keeps returning while it is fresh. Before
    the first telegram after a start, `read` waits for it, up to ``stale_after_s``.
    """

    def __init__(
        self,
        serial_port: str,
        *,
        baudrate: int = 9600,
        name: str = "sml_meter",
        stale_after_s: float = 5.0,
        reopen_delay_s: float = 2.0,
        limits: SmlLimits | None = None,
        clock: Clock | None = None,
    ) -> None:
        if reopen_delay_s < 0:
            raise ValueError(f"reopen_delay_s must be >= 0, got {reopen_delay_s!r}")
        self._url = serial_port
        self._baudrate = baudrate
        self._name = name
        self._reopen_delay_s = reopen_delay_s
        self._receiver = SmlReceiver(
            name=name, stale_after_s=stale_after_s, limits=limits, clock=clock, line=serial_port
        )
        self._port_lock = threading.Lock()
        self._port: serial.SerialBase | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def name(self) -> str:
        return self._name

    @property
    def serial_port(self) -> str:
        return self._url

    @property
    def telegrams(self) -> int:
        """Valid telegrams decoded since construction."""
        return self._receiver.telegrams

    @property
    def crc_errors(self) -> int:
        return self._receiver.crc_errors

    @property
    def malformed_frames(self) -> int:
        """Frames rejected for anything but the CRC: framing, SML structure, values."""
        return self._receiver.malformed_frames

    @property
    def discarded_bytes(self) -> int:
        """Bytes outside any frame (line noise, the tail of a frame joined half-way)."""
        return self._receiver.discarded_bytes

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the reader thread (no-op while it runs); returns at once."""
        if self._thread is not None:
            return
        self._receiver.restart()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(self._stop,), name=f"sml-reader[{self._name}]", daemon=True
        )
        self._thread.start()

    async def read(self) -> SmlReading:
        """The latest valid reading if fresh; DeviceUnavailable / DeviceProtocolError if not."""
        self.start()
        try:
            return self._receiver.current()
        except (DeviceUnavailable, DeviceProtocolError):
            left_s = self._receiver.wait_left_s()
            if left_s <= 0:
                raise
        loop = asyncio.get_running_loop()
        arrived = asyncio.Event()

        def wake() -> None:  # called on the reader thread
            loop.call_soon_threadsafe(arrived.set)

        self._receiver.add_listener(wake)
        try:
            left_s = self._receiver.wait_left_s()  # again: one may have come meanwhile
            if left_s > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left_s):
                        await arrived.wait()
        finally:
            self._receiver.remove_listener(wake)
        return self._receiver.current()

    async def close(self) -> None:
        """Stop the reader thread and close the port; safe to call more than once."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        with self._port_lock:
            port = self._port
        cancel = getattr(port, "cancel_read", None)
        if cancel is not None:
            # Wakes a blocked read at once (POSIX ports); if the port went away meanwhile,
            # the read times out instead.
            with contextlib.suppress(OSError, serial.SerialException):
                cancel()
        await asyncio.to_thread(thread.join, _JOIN_TIMEOUT_S)
        if thread.is_alive():
            _LOG.warning(
                "%s: reader thread did not stop within %.1f s", self._name, _JOIN_TIMEOUT_S
            )
        else:
            _LOG.debug("%s: reader thread stopped", self._name)

    async def __aenter__(self) -> SmlMeter:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _run(self, stop: threading.Event) -> None:
        failures = 0
        while not stop.is_set():
            port = self._open(failures)
            if port is None:
                failures += 1
                stop.wait(self._reopen_delay_s)
                continue
            failures = 0
            try:
                while not stop.is_set():
                    data = port.read(port.in_waiting or 1)
                    if data:
                        self._receiver.feed(data)
            except (serial.SerialException, OSError) as exc:
                self._receiver.set_link_error(f"{self._url}: read failed: {exc}")
                _LOG.warning("%s: %s: read failed, reopening: %s", self._name, self._url, exc)
            finally:
                with self._port_lock:
                    self._port = None
                port.close()
            stop.wait(self._reopen_delay_s)

    def _open(self, failures: int) -> serial.SerialBase | None:
        try:
            port = serial.serial_for_url(
                self._url,
                baudrate=self._baudrate,
                bytesize=serial.EIGHTBITS,
                parity=serial.PARITY_NONE,
                stopbits=serial.STOPBITS_ONE,
                timeout=_READ_TIMEOUT_S,
                do_not_open=True,
            )
            port.open()
        except (serial.SerialException, OSError, ValueError) as exc:
            self._receiver.set_link_error(f"cannot open {self._url}: {exc}")
            log = _LOG.warning if failures == 0 else _LOG.debug
            log("%s: cannot open %s: %s", self._name, self._url, exc)
            return None
        with self._port_lock:
            self._port = port
        self._receiver.set_link_error(None)
        _LOG.info(
            "%s: reading SML telegrams on %s at %d baud", self._name, self._url, self._baudrate
        )
        return port
