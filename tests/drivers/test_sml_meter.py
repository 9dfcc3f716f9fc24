"""SML meter driver: framing, decoding and staleness (pure), then against the simulator on ptys.

Pure tests feed bytes to `SmlReceiver` with a `ManualClock`. Link tests run the real
pyserial reader thread against `SmlMeterSimulator` through two raw pty pairs joined back to
back (pyserial can only open the named, slave end of a pty), or through socat where the test
needs the line to disappear and come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TypeVar

import pytest
from smllib.reader import SmlStreamReader

from appliance.clock import ManualClock
from appliance.drivers.sml_meter import (
    ESCAPE,
    START,
    SmlFramer,
    SmlMeter,
    SmlReading,
    SmlReceiver,
    crc16_x25,
)
from appliance.errors import DeviceProtocolError, DeviceUnavailable, DriverError
from appliance.simulation.devices.sml_sim import (
    DEFAULT_SERVER_ID,
    SmlMeterSimulator,
    SmlValues,
    build_telegram,
    close_response,
    get_list_response,
    list_entry,
    message,
    octets,
    open_response,
    signed,
    sml_values_from_grid,
    transport_frame,
    value_entries,
)
from appliance.simulation.plant import GridValues

DATA = Path(__file__).parent / "data"
STALE_S = 0.3  # link tests: the simulator sends every PERIOD_S
PERIOD_S = 0.05
VALUES = SmlValues(
    import_kwh=18619.04712,
    export_kwh=1234.56789,
    active_power_w=-1834.4,
    active_power_l1_w=-700.6,
    active_power_l2_w=-600.0,
    active_power_l3_w=-533.8,
)
OBIS_IMPORT = bytes.fromhex("0100010800ff")
OBIS_EXPORT = bytes.fromhex("0100020800ff")
OBIS_POWER = bytes.fromhex("0100100700ff")
TAG_OPEN, TAG_GET_LIST, TAG_CLOSE = 0x0101, 0x0701, 0x0201
ErrorT = TypeVar("ErrorT", bound=DriverError)


def load_hex(name: str) -> bytes:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    return bytes.fromhex(" ".join(line for line in lines if not line.startswith("#")))


def payload_with(entries: list[bytes], server_id: bytes = DEFAULT_SERVER_ID) -> bytes:
    """Open, GetList with ``entries``, Close: the messages of one telegram, unframed."""
    return b"".join(
        [
            message(1, TAG_OPEN, open_response(server_id, 1, 0)),
            message(2, TAG_GET_LIST, get_list_response(server_id, 0, entries)),
            message(3, TAG_CLOSE, close_response()),
        ]
    )


def energy_entry(obis: bytes, raw: int, *, scaler: int | None = -1, unit: int = 30) -> bytes:
    return list_entry(obis, signed(raw, 8), unit=unit, scaler=scaler)


def power_entry(obis: bytes, raw: int, *, scaler: int | None = 0, unit: int = 27) -> bytes:
    return list_entry(obis, signed(raw, 4), unit=unit, scaler=scaler)


def standard_entries() -> list[bytes]:
    return [
        energy_entry(OBIS_IMPORT, 2882106),
        energy_entry(OBIS_EXPORT, 1158333),
        power_entry(OBIS_POWER, 106),
    ]


def receiver(clock: ManualClock | None = None, stale_after_s: float = 5.0) -> SmlReceiver:
    return SmlReceiver(name="sml", stale_after_s=stale_after_s, clock=clock or ManualClock())


def assert_matches(reading: SmlReading, values: SmlValues) -> None:
    """Equal within the wire resolution: 0.1 Wh for energies, 1 W for powers."""
    assert reading.import_kwh == pytest.approx(values.import_kwh, abs=0.5e-4)
    assert reading.export_kwh == pytest.approx(values.export_kwh, abs=0.5e-4)
    assert reading.active_power_w == pytest.approx(values.active_power_w, abs=0.5)
    for field in ("active_power_l1_w", "active_power_l2_w", "active_power_l3_w"):
        expected = getattr(values, field)
        if expected is None:
            assert getattr(reading, field) is None
        else:
            assert getattr(reading, field) == pytest.approx(expected, abs=0.5)


@pytest.fixture(autouse=True)
def no_reader_thread_left() -> Iterator[None]:
    """Runs after the other fixtures closed their meters: no reader thread may survive."""
    yield
    assert not [t.name for t in threading.enumerate() if t.name.startswith("sml-reader")]


# ----------------------------------------------------------------------------- CRC and frames


def test_crc16_x25_check_value() -> None:
    assert crc16_x25(b"123456789") == 0x906E


def test_seed_frame_decodes_to_its_published_values() -> None:
    rx = receiver()
    rx.feed(load_hex("mt691_seed002.hex"))
    reading = rx.current()
    assert (rx.telegrams, rx.crc_errors, rx.malformed_frames) == (1, 0, 0)
    assert reading.import_kwh == 288.2106
    assert reading.export_kwh == 115.8333
    assert reading.active_power_w == 106.0
    assert (reading.active_power_l1_w, reading.active_power_l2_w) == (None, None)
    assert reading.active_power_l3_w is None


def test_seed_frame_fed_byte_by_byte_decodes_once() -> None:
    rx = receiver()
    for byte in load_hex("mt691_seed002.hex"):
        rx.feed(bytes([byte]))
    assert rx.telegrams == 1
    assert rx.current().import_kwh == 288.2106


def test_smllib_stream_reader_accepts_our_frames() -> None:
    """An independent CRC and parser: smllib's reader on the seed frame and on ours."""
    for frame in (load_hex("mt691_seed002.hex"), build_telegram(VALUES)):
        reader = SmlStreamReader()
        reader.add(frame)
        parsed = reader.get_frame()
        assert parsed is not None
        bodies = [type(m.message_body).__name__ for m in parsed.parse_frame()]
        assert bodies == ["SmlOpenResponse", "SmlGetListResponse", "SmlCloseResponse"]


def test_frame_with_wrong_crc_is_rejected_and_counted() -> None:
    clock = ManualClock()
    rx = receiver(clock)
    good = load_hex("mt691_seed002.hex")
    bad = good[:-1] + bytes([good[-1] ^ 0x01])
    rx.feed(bad)
    assert (rx.crc_errors, rx.telegrams, rx.malformed_frames) == (1, 0, 0)
    with pytest.raises(DeviceProtocolError, match="CRC"):
        rx.current()
    rx.feed(good)
    assert rx.current().import_kwh == 288.2106


@pytest.mark.parametrize(
    "server_id",
    [
        DEFAULT_SERVER_ID,
        b"\x01" + b"\x1b" * 7 + b"\x00\x01",  # holds 1B1B1B1B on a block boundary: escaped
        bytes(range(20)),  # longer than 14 bytes: a two-byte TL field
        b"\x00\x1b\x1b\x1b\x1b\x1a\x00\x00\x00\x00",  # looks like an end sequence off the blocks
    ],
    ids=["iskra", "escape-in-payload", "long-tl", "end-mark-in-payload"],
)
def test_encoder_round_trip(server_id: bytes) -> None:
    frame = build_telegram(VALUES, server_id=server_id)
    if b"\x1b" * 7 in server_id:
        assert ESCAPE + ESCAPE in frame
    rx = receiver()
    rx.feed(frame)
    assert (rx.telegrams, rx.crc_errors, rx.malformed_frames) == (1, 0, 0)
    assert_matches(rx.current(), VALUES)


@pytest.mark.parametrize(
    "values",
    [
        SmlValues(0.0, 0.0, 0.0),
        SmlValues(0.00006, 99999.99994, 1.4, 1.6, None, None),
        SmlValues(9_999_999.0, 5_000_000.5, 99_999.0, 33_333.0, -33_333.0, 0.0),
        SmlValues(42.1, 0.0, -99_999.0),
    ],
    ids=["zero", "rounding", "large", "export-no-phases"],
)
def test_values_survive_the_wire_within_resolution(values: SmlValues) -> None:
    rx = receiver()
    rx.feed(build_telegram(values))
    assert_matches(rx.current(), values)


def test_escaped_block_and_fill_bytes_are_removed() -> None:
    framer = SmlFramer()
    assert framer.feed(transport_frame(ESCAPE + b"abc")) == [ESCAPE + b"abc"]
    assert framer.feed(transport_frame(b"x" * 8)) == [b"x" * 8]
    assert (framer.crc_errors, framer.malformed_frames) == (0, 0)


@pytest.mark.parametrize("cut", [20, 21, 22, 23, 101, 150])
def test_truncated_frame_is_counted_and_the_next_one_decodes(cut: int) -> None:
    """A frame cut off (at a block boundary or not) must not cost the next frame."""
    good = build_telegram(VALUES)
    rx = receiver()
    rx.feed(b"noise" + good[:cut] + good)
    assert (rx.telegrams, rx.malformed_frames, rx.crc_errors) == (1, 1, 0)
    assert rx.discarded_bytes == len(b"noise")
    assert_matches(rx.current(), VALUES)


def test_garbage_between_frames_is_skipped() -> None:
    good = build_telegram(VALUES)
    rx = receiver()
    rx.feed(b"\x00\xff\x1b\x1b\x1b" + good + b"\x1b\x1b\x1b\x1b\x1a junk" + good + b"\x1b")
    assert (rx.telegrams, rx.malformed_frames, rx.crc_errors) == (2, 0, 0)
    assert rx.discarded_bytes >= 5 + 10


def test_unknown_escape_and_overlong_frames_are_malformed() -> None:
    good = build_telegram(VALUES)
    rx = receiver()
    rx.feed(START + b"\x76\x01\x02\x03" + ESCAPE + b"\x02\x00\x00\x00" + good)
    assert (rx.telegrams, rx.malformed_frames) == (1, 1)
    rx.feed(START + bytes(9000) + good)
    assert (rx.telegrams, rx.malformed_frames) == (2, 2)


def test_fill_count_larger_than_payload_is_malformed() -> None:
    body = START + ESCAPE + bytes([0x1A, 5])
    crc = crc16_x25(body)
    rx = receiver()
    rx.feed(body + bytes([crc & 0xFF, crc >> 8]))
    assert (rx.malformed_frames, rx.crc_errors) == (1, 0)
    with pytest.raises(DeviceProtocolError, match="fill byte count 5"):
        rx.current()


# ----------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    ("entry", "field", "expected"),
    [
        (energy_entry(OBIS_IMPORT, 2882106, scaler=-1), "import_kwh", 288.2106),
        (energy_entry(OBIS_IMPORT, 288210, scaler=0), "import_kwh", 288.21),
        (energy_entry(OBIS_IMPORT, 28821060, scaler=-2), "import_kwh", 288.2106),
        (energy_entry(OBIS_IMPORT, 28821, scaler=1), "import_kwh", 288.21),
        (energy_entry(OBIS_IMPORT, 288, scaler=3), "import_kwh", 288.0),
        (power_entry(OBIS_POWER, -12345, scaler=-2), "active_power_w", -123.45),
        (power_entry(OBIS_POWER, 12, scaler=2), "active_power_w", 1200.0),
        (power_entry(OBIS_POWER, 7, scaler=None), "active_power_w", 7.0),
    ],
    ids=["Wh/10", "Wh", "Wh/100", "Wh*10", "kWh", "W/100", "W*100", "no-scaler"],
)
def test_scaler_and_unit_are_applied(entry: bytes, field: str, expected: float) -> None:
    entries = [e for e in standard_entries() if e[2:8] != entry[2:8]] + [entry]
    rx = receiver()
    rx.feed(transport_frame(payload_with(entries)))
    assert getattr(rx.current(), field) == expected


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        (standard_entries()[:2], "without 16.7.0"),
        ([standard_entries()[0], standard_entries()[2]], "without 2.8.0"),
        (
            [energy_entry(OBIS_IMPORT, 10, unit=27), *standard_entries()[1:]],
            "1.8.0: unit code 27",
        ),
        (
            [*standard_entries()[:2], list_entry(OBIS_POWER, octets(b"x"), unit=27, scaler=0)],
            "16.7.0: value 'x' is not an integer",
        ),
        (
            [*standard_entries()[:2], power_entry(OBIS_POWER, 50_000_000)],
            r"16.7.0 \(W\) = 50000000.0 outside",
        ),
        ([energy_entry(OBIS_IMPORT, -10), *standard_entries()[1:]], r"1.8.0 \(kWh\) = -0.001"),
    ],
    ids=["no-power", "no-export", "wrong-unit", "string-value", "50-MW", "negative-energy"],
)
def test_malformed_or_implausible_telegram_is_rejected(entries: list[bytes], reason: str) -> None:
    rx = receiver()
    rx.feed(transport_frame(payload_with(entries)))
    assert (rx.telegrams, rx.malformed_frames, rx.crc_errors) == (0, 1, 0)
    with pytest.raises(DeviceProtocolError, match=reason):
        rx.current()


def test_historic_values_and_long_lists_are_handled() -> None:
    """1.8.0*101 (a billing period, F != 255) is not the register; 20 entries need a 2-byte TL."""
    historic = energy_entry(bytes.fromhex("010001080065"), 999)
    fillers = [list_entry(bytes([1, 0, 96, 90, n, 255]), octets(b"v")) for n in range(16)]
    entries = [historic, *fillers, *standard_entries()]
    frame = transport_frame(payload_with(entries))
    assert bytes([0xF1, 0x04]) in frame  # list of 0x14 entries
    rx = receiver()
    rx.feed(frame)
    assert rx.current().import_kwh == 288.2106


def test_unparsable_messages_are_rejected() -> None:
    rx = receiver()
    rx.feed(transport_frame(b"\x76\x05\x01\x02"))
    assert rx.malformed_frames == 1
    with pytest.raises(DeviceProtocolError, match="unparsable"):
        rx.current()


def test_fuzzed_payloads_never_escape_as_garbage(caplog: pytest.LogCaptureFixture) -> None:
    """Random byte errors behind a valid CRC: each frame is a reading in range or a reject."""
    rng = random.Random(1234)
    payload = payload_with(value_entries(VALUES, DEFAULT_SERVER_ID))
    rx = receiver()
    count = 300
    for _ in range(count):
        mutated = bytearray(payload)
        for _ in range(rng.randint(1, 3)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        rx.feed(transport_frame(bytes(mutated)))
        with contextlib.suppress(DeviceProtocolError):
            reading = rx.current()
            assert 0.0 <= reading.import_kwh <= 1e7
            assert abs(reading.active_power_w) <= 1e5
    assert rx.telegrams + rx.malformed_frames == count
    assert rx.malformed_frames > count // 2
    assert rx.crc_errors == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no unexpected errors


# ----------------------------------------------------------------------------- staleness


def test_rejected_telegram_keeps_the_last_valid_one_until_stale() -> None:
    clock = ManualClock()
    rx = receiver(clock, stale_after_s=5.0)
    rx.feed(build_telegram(VALUES))
    clock.advance(1.0)
    rx.feed(build_telegram(dataclasses.replace(VALUES, active_power_w=50e6)))
    assert rx.malformed_frames == 1
    assert_matches(rx.current(), VALUES)  # never the 50 MW
    clock.advance(4.5)
    with pytest.raises(DeviceProtocolError, match=r"for 5\.5 s; last frame rejected: 16\.7\.0"):
        rx.current()


def test_silence_makes_the_reading_unavailable_after_stale_after_s() -> None:
    clock = ManualClock()
    rx = receiver(clock, stale_after_s=5.0)
    rx.feed(build_telegram(VALUES))
    clock.advance(5.0)
    assert_matches(rx.current(), VALUES)
    clock.advance(0.1)
    with pytest.raises(
        DeviceUnavailable, match=r"no valid telegram for 5\.1 s; the line is silent"
    ):
        rx.current()
    rx.feed(build_telegram(VALUES))
    assert rx.current().received_monotonic == clock.monotonic()


def test_values_from_grid() -> None:
    grid = GridValues(
        voltage_v=(230.0, 231.0, 229.0),
        current_a=(1.0, 2.0, 3.0),
        active_power_w=(100.0, -200.0, 300.0),
        reactive_power_var=(0.0, 0.0, 0.0),
        power_factor=(1.0, -1.0, 1.0),
        frequency_hz=50.0,
        import_kwh=12.5,
        export_kwh=3.25,
        total_active_power_w=200.0,
        total_reactive_power_var=0.0,
        total_power_factor=1.0,
    )
    assert sml_values_from_grid(grid) == SmlValues(12.5, 3.25, 200.0, 100.0, -200.0, 300.0)


# ----------------------------------------------------------------------------- link fixtures


class Source:
    """A settable source()."""

    def __init__(self, values: SmlValues) -> None:
        self.values = values

    def __call__(self) -> SmlValues:
        return self.values


@pytest.fixture
async def sims() -> AsyncIterator[Callable[[SmlMeterSimulator], Awaitable[SmlMeterSimulator]]]:
    made: list[SmlMeterSimulator] = []

    async def started(sim: SmlMeterSimulator) -> SmlMeterSimulator:
        made.append(sim)
        await sim.start()
        return sim

    yield started
    for sim in made:
        await sim.stop()


@pytest.fixture
def source() -> Source:
    return Source(VALUES)


@pytest.fixture
async def link(
    serial_pair: tuple[str, str],
    source: Source,
    closing: Callable[[SmlMeter], SmlMeter],
    sims: Callable[[SmlMeterSimulator], Awaitable[SmlMeterSimulator]],
) -> tuple[SmlMeterSimulator, SmlMeter]:
    """The simulator on one end of the pty pair, the driver on the other."""
    meter_end, appliance_end = serial_pair
    sim = await sims(SmlMeterSimulator(source, meter_end, PERIOD_S))
    meter = closing(SmlMeter(appliance_end, name="grid_sml", stale_after_s=STALE_S))
    return sim, meter


async def until(condition: Callable[[], bool], timeout_s: float = 3.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def read_until_error(meter: SmlMeter, error: type[ErrorT], timeout_s: float = 3.0) -> ErrorT:
    for _ in range(int(timeout_s / 0.02)):
        try:
            reading = await meter.read()
        except error as exc:
            return exc
        assert reading.active_power_w != 50e6
        await asyncio.sleep(0.02)
    raise AssertionError(f"no {error.__name__} in time")


async def read_until(
    meter: SmlMeter, wanted: Callable[[SmlReading], bool], timeout_s: float = 3.0
) -> SmlReading:
    for _ in range(int(timeout_s / 0.02)):
        with contextlib.suppress(DriverError):
            reading = await meter.read()
            if wanted(reading):
                return reading
        await asyncio.sleep(0.02)
    raise AssertionError("no such reading in time")


async def read_until_ok(meter: SmlMeter, timeout_s: float = 3.0) -> SmlReading:
    return await read_until(meter, lambda _: True, timeout_s)


# ----------------------------------------------------------------------------- link tests


async def test_driver_reads_what_the_simulator_sends(
    link: tuple[SmlMeterSimulator, SmlMeter], source: Source
) -> None:
    sim, meter = link
    assert_matches(await meter.read(), VALUES)
    source.values = SmlValues(100.0, 200.0, 2500.0)  # no phase powers
    assert_matches(await read_until(meter, lambda r: r.active_power_w == 2500.0), source.values)
    assert (meter.crc_errors, meter.malformed_frames, sim.dropped_bytes) == (0, 0, 0)


async def test_silent_meter_is_unavailable_then_recovers(
    link: tuple[SmlMeterSimulator, SmlMeter],
) -> None:
    sim, meter = link
    await meter.read()
    sim.faults.silent = True
    exc = await read_until_error(meter, DeviceUnavailable)
    assert "is silent" in str(exc)
    sim.faults.silent = False
    assert_matches(await read_until_ok(meter), VALUES)


async def test_bad_crc_is_a_protocol_error_then_recovers(
    link: tuple[SmlMeterSimulator, SmlMeter],
) -> None:
    sim, meter = link
    await meter.read()
    sim.faults.bad_crc = True
    exc = await read_until_error(meter, DeviceProtocolError)
    assert "CRC" in str(exc)
    assert meter.crc_errors >= 2
    sim.faults.bad_crc = False
    assert_matches(await read_until_ok(meter), VALUES)


async def test_garbage_between_telegrams_costs_no_reading(
    link: tuple[SmlMeterSimulator, SmlMeter],
) -> None:
    sim, meter = link
    await meter.read()
    sim.faults.garbage = True
    before = meter.telegrams
    await until(lambda: meter.malformed_frames >= 4)
    assert_matches(await meter.read(), VALUES)  # never stale: every real telegram decodes
    assert meter.telegrams >= before + 4
    assert meter.discarded_bytes > 0
    assert meter.crc_errors == 0
    sim.faults.garbage = False
    await asyncio.sleep(3 * PERIOD_S)
    rejected = meter.malformed_frames
    await until(lambda: meter.telegrams >= before + 10)
    assert meter.malformed_frames == rejected


async def test_out_of_range_values_are_never_returned(
    link: tuple[SmlMeterSimulator, SmlMeter],
) -> None:
    sim, meter = link
    await meter.read()
    sim.faults.out_of_range = True
    exc = await read_until_error(meter, DeviceProtocolError)  # asserts no 50 MW on the way
    assert "16.7.0 (W) = 50000000.0 outside plausible range" in str(exc)
    assert meter.malformed_frames >= 2
    sim.faults.out_of_range = False
    assert_matches(await read_until_ok(meter), VALUES)


async def test_slow_telegrams_are_reassembled_or_stale(
    link: tuple[SmlMeterSimulator, SmlMeter],
) -> None:
    sim, meter = link
    await meter.read()
    sim.faults.delay_s = 0.1  # arrives in pieces, still within STALE_S
    count = meter.telegrams
    await until(lambda: meter.telegrams >= count + 3)
    assert_matches(await meter.read(), VALUES)
    sim.faults.delay_s = 2 * STALE_S  # now older than STALE_S between telegrams
    exc = await read_until_error(meter, DeviceUnavailable)
    assert "no valid telegram for" in str(exc)
    sim.faults.delay_s = 0.0
    assert_matches(await read_until_ok(meter), VALUES)
    assert (meter.crc_errors, meter.malformed_frames) == (0, 0)


async def test_close_stops_the_reader_thread(link: tuple[SmlMeterSimulator, SmlMeter]) -> None:
    _, meter = link
    await meter.read()
    running_before = meter.running  # (a local: mypy would keep the narrowing past close())
    assert running_before
    assert "sml-reader[grid_sml]" in {t.name for t in threading.enumerate()}
    started = time.monotonic()
    await meter.close()
    assert time.monotonic() - started < 0.5  # cancel_read wakes the blocked read
    assert not meter.running
    assert "sml-reader[grid_sml]" not in {t.name for t in threading.enumerate()}
    counted = meter.telegrams
    await asyncio.sleep(4 * PERIOD_S)
    assert meter.telegrams == counted
    await meter.close()  # twice is fine


async def test_reader_restarts_after_close(link: tuple[SmlMeterSimulator, SmlMeter]) -> None:
    _, meter = link
    await meter.read()
    await meter.close()
    await asyncio.sleep(2 * STALE_S)  # what it had is stale now
    assert_matches(await meter.read(), VALUES)  # restarts the thread, waits for a telegram
    assert meter.running


# ----------------------------------------------------------------------------- socat, TCP


async def test_missing_port_is_unavailable_until_it_appears_and_after_it_goes(
    tmp_path: Path,
    source: Source,
    closing: Callable[[SmlMeter], SmlMeter],
    socat_link: Callable[[Path, Path], AbstractAsyncContextManager[None]],
) -> None:
    meter_end, appliance_end = tmp_path / "ttyMETER", tmp_path / "ttyUSB1"
    meter = closing(SmlMeter(str(appliance_end), stale_after_s=STALE_S, reopen_delay_s=0.05))
    with pytest.raises(DeviceUnavailable, match=f"cannot open {appliance_end}"):
        await meter.read()
    for _ in range(2):  # the adapter appears, is unplugged, and appears again
        async with (
            socat_link(meter_end, appliance_end),
            SmlMeterSimulator(source, str(meter_end), PERIOD_S),
        ):
            assert_matches(await read_until_ok(meter), VALUES)
        exc = await read_until_error(meter, DeviceUnavailable)
        assert str(appliance_end) in str(exc)


@pytest.fixture
async def tcp_bridge() -> AsyncIterator[int]:
    """A ser2net-like TCP port on 127.0.0.1 that pushes telegrams to whoever connects."""
    frame = build_telegram(VALUES)
    handlers: set[asyncio.Task[None]] = set()

    async def push(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            while True:
                writer.write(frame)
                await writer.drain()
                await asyncio.sleep(PERIOD_S)
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(push, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    server.close()
    for task in handlers:
        task.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)
    await server.wait_closed()


async def test_reads_through_a_tcp_bridge_url(
    tcp_bridge: int, closing: Callable[[SmlMeter], SmlMeter]
) -> None:
    meter = closing(SmlMeter(f"socket://127.0.0.1:{tcp_bridge}", stale_after_s=STALE_S))
    assert_matches(await meter.read(), VALUES)
    await until(lambda: meter.telegrams >= 2)
    await meter.close()
    assert not meter.running
