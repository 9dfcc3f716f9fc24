"""Protocol-level SML meter simulator (ISKRA MT691-like): real telegrams pushed on a serial port.

Each telegram is one SML v1 transport frame holding three messages, as the MT691 sends them:
OpenResponse, GetListResponse (manufacturer, server id, 1.8.0, 2.8.0, 16.7.0 and the phase
powers 36.7.0 / 56.7.0 / 76.7.0 when the source has them) and CloseResponse. Energies go out
in 0.1 Wh steps (unit Wh, scaler -1, int64), powers in whole watts (unit W, scaler 0, int32),
each message with its CRC16 and the frame with its fill bytes, escapes and CRC-16/X-25.

The encoder is ours (smllib, which the driver parses with, is not used here), so a round trip
through the driver checks one implementation against another; only the CRC function is shared,
and the tests check it against smllib's reader and the published check value.

Faults (`SmlMeterSimulator.faults`): ``silent``, ``bad_crc``, ``garbage``, ``out_of_range``,
``delay_s``. There is no connection to drop on a serial line; ``silent`` is the unplugged head.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import serial

from appliance.drivers.sml_meter import ESCAPE, START, UNIT_W, UNIT_WH, crc16_x25
from appliance.simulation.plant import GridValues

_LOG = logging.getLogger(__name__)

DEFAULT_SERVER_ID = bytes.fromhex("0a01") + b"ISK" + bytes.fromhex("0000000001")
_LIST_NAME = bytes.fromhex("0100620affff")
_TYPE_OCTETS, _TYPE_INT, _TYPE_UINT, _TYPE_LIST = 0x00, 0x50, 0x60, 0x70
_TAG_OPEN, _TAG_CLOSE, _TAG_GET_LIST = 0x0101, 0x0201, 0x0701
_ABSENT = b"\x01"  # an optional field that is not sent
_OUT_OF_RANGE_POWER_W = 50_000_000  # what the out_of_range fault sends: 50 MW on a house meter
_TRICKLE_CHUNKS = 8  # a slow telegram arrives in this many pieces


@dataclass(frozen=True, slots=True)
class SmlValues:
    """What the meter shows. Power > 0 = import; a phase that is None is not sent."""

    import_kwh: float
    export_kwh: float
    active_power_w: float
    active_power_l1_w: float | None = None
    active_power_l2_w: float | None = None
    active_power_l3_w: float | None = None


def sml_values_from_grid(grid: GridValues) -> SmlValues:
    """The plant's grid meter as the SML meter at the house connection reports it."""
    l1, l2, l3 = grid.active_power_w
    return SmlValues(
        import_kwh=grid.import_kwh,
        export_kwh=grid.export_kwh,
        active_power_w=grid.total_active_power_w,
        active_power_l1_w=l1,
        active_power_l2_w=l2,
        active_power_l3_w=l3,
    )


# --------------------------------------------------------------------------- encoder


def _tl(type_bits: int, length: int) -> bytes:
    """Type-length field; for scalars ``length`` is the data length (TL bytes are added)."""
    if type_bits == _TYPE_LIST:
        count, nibbles = length, 1
        while count >> (4 * nibbles):
            nibbles += 1
    else:
        nibbles = 1
        while length + nibbles >= 1 << (4 * nibbles):
            nibbles += 1
        count = length + nibbles
    out = bytearray()
    for i in reversed(range(nibbles)):
        nibble = (count >> (4 * i)) & 0x0F
        more = 0x80 if i else 0x00
        out.append(more | (type_bits if i == nibbles - 1 else 0) | nibble)
    return bytes(out)


def octets(data: bytes) -> bytes:
    return _tl(_TYPE_OCTETS, len(data)) + data


def unsigned(value: int, size: int) -> bytes:
    return _tl(_TYPE_UINT, size) + value.to_bytes(size, "big", signed=False)


def signed(value: int, size: int) -> bytes:
    return _tl(_TYPE_INT, size) + value.to_bytes(size, "big", signed=True)


def sml_list(items: Sequence[bytes]) -> bytes:
    return _tl(_TYPE_LIST, len(items)) + b"".join(items)


def list_entry(
    obis: bytes,
    value: bytes,
    *,
    unit: int | None = None,
    scaler: int | None = None,
    status: bytes = _ABSENT,
) -> bytes:
    """One SML_ListEntry: objName, status, valTime, unit, scaler, value, valueSignature."""
    return sml_list(
        [
            octets(obis),
            status,
            _ABSENT,
            _ABSENT if unit is None else unsigned(unit, 1),
            _ABSENT if scaler is None else signed(scaler, 1),
            value,
            _ABSENT,
        ]
    )


def message(transaction_id: int, tag: int, body: bytes) -> bytes:
    """One SML_Message with its CRC16 (over the message up to the CRC, low byte first)."""
    fields = _tl(_TYPE_LIST, 6) + b"".join(
        [
            octets(transaction_id.to_bytes(4, "big")),
            unsigned(0, 1),  # groupNo
            unsigned(0, 1),  # abortOnError
            sml_list([unsigned(tag, 2), body]),
        ]
    )
    crc = crc16_x25(fields)
    return fields + bytes([0x63, crc & 0xFF, crc >> 8]) + b"\x00"  # crc16, endOfSmlMsg


def seconds_index(seconds: int) -> bytes:
    """SML_Time as secIndex (choice 1): the meter's seconds counter."""
    return sml_list([unsigned(1, 1), unsigned(seconds & 0xFFFFFFFF, 4)])


def open_response(server_id: bytes, file_id: int, seconds: int) -> bytes:
    return sml_list(
        [
            _ABSENT,  # codepage
            _ABSENT,  # clientId
            octets(file_id.to_bytes(4, "big")),
            octets(server_id),
            seconds_index(seconds),
            unsigned(1, 1),  # SML version 1
        ]
    )


def get_list_response(server_id: bytes, seconds: int, entries: Sequence[bytes]) -> bytes:
    return sml_list(
        [
            _ABSENT,  # clientId
            octets(server_id),
            octets(_LIST_NAME),
            seconds_index(seconds),
            sml_list(entries),
            _ABSENT,  # listSignature
            _ABSENT,  # actGatewayTime
        ]
    )


def close_response() -> bytes:
    return sml_list([_ABSENT])  # globalSignature


def transport_frame(payload: bytes, *, corrupt_crc: bool = False) -> bytes:
    """SML v1 transport: start, payload with escapes and fill bytes, end, CRC (low byte first).

    The payload is escaped block by block from the start sequence: a 4-byte block equal to
    1B1B1B1B is sent twice, which keeps every escape sequence on a block boundary.
    """
    fill = -len(payload) % 4
    padded = payload + bytes(fill)
    body = bytearray(START)
    for i in range(0, len(padded), 4):
        block = padded[i : i + 4]
        body += block
        if block == ESCAPE:
            body += ESCAPE
    body += ESCAPE + bytes([0x1A, fill])
    crc = crc16_x25(body) ^ (0x0001 if corrupt_crc else 0)
    return bytes(body + bytes([crc & 0xFF, crc >> 8]))


def _obis(c: int, d: int, e: int, a: int = 1, b: int = 0, f: int = 0xFF) -> bytes:
    return bytes([a, b, c, d, e, f])


def value_entries(values: SmlValues, server_id: bytes) -> list[bytes]:
    """The MT691's list: manufacturer, server id, energies, total and phase powers."""

    def energy(kwh: float) -> bytes:
        return signed(round(kwh * 10_000), 8)  # 0.1 Wh steps

    def power(watts: float) -> bytes:
        return signed(round(watts), 4)

    entries = [
        list_entry(_obis(96, 50, 1, f=0x01), octets(b"ISK")),
        list_entry(_obis(96, 1, 0), octets(server_id)),
        list_entry(
            _obis(1, 8, 0),
            energy(values.import_kwh),
            unit=UNIT_WH,
            scaler=-1,
            status=unsigned(0x001C0104, 4),
        ),
        list_entry(_obis(2, 8, 0), energy(values.export_kwh), unit=UNIT_WH, scaler=-1),
        list_entry(_obis(16, 7, 0), power(values.active_power_w), unit=UNIT_W, scaler=0),
    ]
    phases = (values.active_power_l1_w, values.active_power_l2_w, values.active_power_l3_w)
    for c, watts in zip((36, 56, 76), phases, strict=True):
        if watts is not None:
            entries.append(list_entry(_obis(c, 7, 0), power(watts), unit=UNIT_W, scaler=0))
    return entries


def build_telegram(
    values: SmlValues,
    *,
    server_id: bytes = DEFAULT_SERVER_ID,
    transaction_id: int = 0x004BF37B,
    seconds: int = 0,
    corrupt_crc: bool = False,
) -> bytes:
    """One complete frame as the meter pushes it (raises ValueError / OverflowError if a value
    is not finite or does not fit its integer field)."""
    for value in (values.import_kwh, values.export_kwh, values.active_power_w):
        if not math.isfinite(value):
            raise ValueError(f"cannot encode {value!r}")
    payload = b"".join(
        [
            message(transaction_id, _TAG_OPEN, open_response(server_id, transaction_id, seconds)),
            message(
                transaction_id + 1,
                _TAG_GET_LIST,
                get_list_response(server_id, seconds, value_entries(values, server_id)),
            ),
            message(transaction_id + 2, _TAG_CLOSE, close_response()),
        ]
    )
    return transport_frame(payload, corrupt_crc=corrupt_crc)


# --------------------------------------------------------------------------- simulator


@dataclass
class SmlFaults:
    """Faults to inject; change them at any time, they apply from the next telegram."""

    silent: bool = False  # send nothing (optical head off the meter, InF switched off)
    bad_crc: bool = False  # frame CRC off by one bit
    garbage: bool = False  # line noise and a cut-off frame before each telegram
    out_of_range: bool = False  # 16.7.0 = 50 MW
    delay_s: float = 0.0  # each telegram trickles out in pieces over this long


class SmlMeterSimulator:
    """Pushes one telegram every ``period_s`` from ``source()`` on a serial port (a pty).

    Like the meter, it sends whether or not anyone listens: bytes the port cannot take at once
    are dropped and counted (`dropped_bytes`).
    """

    def __init__(
        self,
        source: Callable[[], SmlValues],
        serial_port: str,
        period_s: float = 1.0,
        *,
        baudrate: int = 9600,
        name: str = "sml-sim",
        server_id: bytes = DEFAULT_SERVER_ID,
        seed: int = 0,
    ) -> None:
        if period_s <= 0:
            raise ValueError(f"period_s must be > 0, got {period_s!r}")
        self._source = source
        self._port_name = serial_port
        self._period_s = period_s
        self._baudrate = baudrate
        self._name = name
        self._server_id = server_id
        self._rng = random.Random(seed)
        self.faults = SmlFaults()
        self.telegrams_sent = 0
        self.dropped_bytes = 0
        self._transaction_id = 0x004BF37B
        self._port: serial.Serial | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        """Open the port and start pushing; RuntimeError if the port cannot be opened."""
        if self._task is not None:
            return
        try:
            self._port = serial.Serial(self._port_name, baudrate=self._baudrate, write_timeout=0)
        except (serial.SerialException, OSError) as exc:
            raise RuntimeError(f"{self._name}: cannot open {self._port_name}: {exc}") from exc
        self._task = asyncio.create_task(self._push(), name=f"{self._name}.push")
        _LOG.info(
            "%s: pushing SML telegrams on %s every %.2f s",
            self._name,
            self._port_name,
            self._period_s,
        )

    async def stop(self) -> None:
        """Stop pushing and close the port; safe to call more than once."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        port, self._port = self._port, None
        if port is not None:
            port.close()

    async def __aenter__(self) -> SmlMeterSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _push(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            await self._send_one()
            next_at += self._period_s
            now = loop.time()
            next_at = max(next_at, now)  # a slow telegram delays the next, as on the meter
            await asyncio.sleep(next_at - now)

    def _telegram(self) -> bytes | None:
        try:
            values = self._source()
        except Exception as exc:  # noqa: BLE001 - a failing source means the meter sends nothing
            _LOG.warning("%s: source failed, no telegram: %r", self._name, exc)
            return None
        if self.faults.out_of_range:
            values = SmlValues(
                values.import_kwh,
                values.export_kwh,
                _OUT_OF_RANGE_POWER_W,
                values.active_power_l1_w,
                values.active_power_l2_w,
                values.active_power_l3_w,
            )
        seconds = round(self.telegrams_sent * self._period_s)
        try:
            frame = build_telegram(
                values,
                server_id=self._server_id,
                transaction_id=self._transaction_id,
                seconds=seconds,
                corrupt_crc=self.faults.bad_crc,
            )
        except (ValueError, OverflowError) as exc:
            _LOG.warning("%s: cannot encode %r, no telegram: %s", self._name, values, exc)
            return None
        self._transaction_id = (self._transaction_id + 3) & 0xFFFFFFFF
        return frame

    def _garbage(self) -> bytes:
        """Noise, a partial escape, then a frame cut off after a few bytes."""
        rng = self._rng
        noise = rng.randbytes(rng.randint(16, 48))
        cut_off = START + rng.randbytes(rng.randint(9, 16))
        return noise + b"\x1b\x1b\x1b" + cut_off

    async def _send_one(self) -> None:
        if self.faults.silent:
            return
        frame = self._telegram()
        if frame is None:
            return
        data = (self._garbage() if self.faults.garbage else b"") + frame
        delay_s = self.faults.delay_s
        if delay_s > 0:
            step = -(-len(data) // _TRICKLE_CHUNKS)
            for i in range(0, len(data), step):
                self._write(data[i : i + step])
                await asyncio.sleep(delay_s / _TRICKLE_CHUNKS)
        else:
            self._write(data)
        self.telegrams_sent += 1

    def _write(self, data: bytes) -> None:
        port = self._port
        if port is None:
            return
        try:
            # Non-blocking fd (pyserial opens it so): a full buffer must not stall the loop.
            written = os.write(port.fileno(), data)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            _LOG.debug("%s: write failed: %s", self._name, exc)
            written = 0
        self.dropped_bytes += len(data) - written
