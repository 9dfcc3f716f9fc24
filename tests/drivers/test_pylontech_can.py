"""Pylontech CAN BMS: the DBC, the pure frame decoder, and driver + simulator on a virtual bus.

The hand-built frames are the published samples of protocols.md section 2 (setfirelabs.com via
OpenDTU-OnBattery PR 1213 / diyBMS issue 87; diyBMS's own 0x351; a Daly 0x373 log).
python-can's ``virtual`` bus is in-process; every test uses its own channel name.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import can
import cantools
import pytest

from appliance.drivers.pylontech_can import (
    CORE_FRAME_IDS,
    FRAME_IDS,
    BatteryMonitor,
    BmsReading,
    ProtectionFlag,
    PylontechCanBms,
    PylontechFrameState,
    RequestFlag,
    load_pylontech_dbc,
)
from appliance.errors import ConfigError, DeviceProtocolError, DeviceUnavailable
from appliance.simulation.devices.pylontech_sim import (
    BmsValues,
    PylontechSimulator,
    bms_values_from_node,
)
from appliance.simulation.plant import BmsFlag, Plant

DBC_PATH = Path(__file__).resolve().parents[2] / "models" / "devices" / "pylontech.dbc"
T = TypeVar("T")

# The published Pylontech sample set (protocols.md 2.2), byte for byte.
SAMPLE = {
    0x351: "14 02 74 0E 74 0E CC 01",
    0x355: "1A 00 64 00",
    0x356: "02 13 00 00 4A 01",
    0x359: "00 00 00 00 0A 50 4E",
    0x35C: "C0 00",
    0x35E: "50 59 4C 4F 4E 20 20 20",
}
STALE_S = 0.4
PERIOD_S = 0.03


def frame_bytes(text: str) -> bytes:
    return bytes.fromhex(text)


def fed_state(
    frames: dict[int, str] | None = None, now: float = 10.0, **kwargs: object
) -> PylontechFrameState:
    state = PylontechFrameState(**kwargs)  # type: ignore[arg-type]
    for frame_id, text in (frames or SAMPLE).items():
        assert state.feed(frame_id, frame_bytes(text), now)
    return state


def make_values(**changes: object) -> BmsValues:
    base = BmsValues(
        soc_pct=55.0,
        soh_pct=98.0,
        voltage_v=51.23,
        current_a=12.3,  # discharging
        temperature_c=24.5,
        charge_voltage_limit_v=53.2,
        charge_current_limit_a=100.0,
        discharge_current_limit_a=120.0,
        discharge_voltage_limit_v=46.0,
        alarm_flags=int(ProtectionFlag.UNDERTEMPERATURE),
        warning_flags=int(ProtectionFlag.OVERVOLTAGE | ProtectionFlag.CHARGE_OVERCURRENT),
        request_flags=int(RequestFlag.CHARGE_ENABLE | RequestFlag.FORCE_CHARGE_I),
        module_count=3,
        manufacturer="PYLON",
        cell_voltage_min_v=3.301,
        cell_voltage_max_v=3.312,
        temperature_min_c=20.0,
        temperature_max_c=26.0,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


# Resolution of each field on the wire: a round trip must match within half of it.
RESOLUTION = {
    "soc_pct": 1.0,
    "soh_pct": 1.0,
    "voltage_v": 0.01,
    "current_a": 0.1,
    "temperature_c": 0.1,
    "charge_voltage_limit_v": 0.1,
    "charge_current_limit_a": 0.1,
    "discharge_current_limit_a": 0.1,
    "discharge_voltage_limit_v": 0.1,
    "cell_voltage_min_v": 0.001,
    "cell_voltage_max_v": 0.001,
    "temperature_min_c": 1.0,
    "temperature_max_c": 1.0,
}


def assert_matches(reading: BmsReading, values: BmsValues) -> None:
    for name, resolution in RESOLUTION.items():
        assert getattr(reading, name) == pytest.approx(
            getattr(values, name), abs=resolution / 2 + 1e-9
        ), name
    assert reading.alarm_flags == values.alarm_flags
    assert reading.warning_flags == values.warning_flags
    assert reading.request_flags == values.request_flags
    assert reading.module_count == values.module_count
    assert reading.manufacturer == values.manufacturer
    assert reading.power_w == pytest.approx(reading.voltage_v * reading.current_a)


class Source:
    """A settable source()."""

    def __init__(self, values: BmsValues) -> None:
        self.values = values

    def __call__(self) -> BmsValues:
        return self.values


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def eventually(fn: Callable[[], Awaitable[T]], timeout_s: float = 3.0) -> T:
    """fn()'s result as soon as it stops raising a DriverError."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            return await fn()
        except (DeviceUnavailable, DeviceProtocolError):
            if loop.time() > deadline:
                raise
        await asyncio.sleep(0.01)


async def eventually_raises(
    fn: Callable[[], Awaitable[object]], error: type[Exception], timeout_s: float = 3.0
) -> Exception:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        try:
            await fn()
        except error as exc:
            return exc
        except (DeviceUnavailable, DeviceProtocolError):
            pass
        await asyncio.sleep(0.01)
    raise AssertionError(f"{error.__name__} not raised within {timeout_s} s")


def notifier_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("Notifier for bus")]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def channel() -> str:
    return f"pylontech-test-{uuid.uuid4().hex}"


@pytest.fixture
def sim_bus(channel: str) -> Iterator[can.BusABC]:
    bus = can.Bus(interface="virtual", channel=channel)
    yield bus
    bus.shutdown()


@pytest.fixture
def make_driver(channel: str, drivers: list[PylontechCanBms]) -> Callable[..., PylontechCanBms]:
    def make(**kwargs: object) -> PylontechCanBms:
        kwargs.setdefault("stale_after_s", STALE_S)
        driver = PylontechCanBms.from_connection("virtual", channel, **kwargs)  # type: ignore[arg-type]
        drivers.append(driver)
        return driver

    return make


@pytest.fixture
async def sim(sim_bus: can.BusABC) -> AsyncIterator[PylontechSimulator]:
    simulator = PylontechSimulator(
        Source(make_values()), sim_bus, PERIOD_S, extension_frames=True, seed=7
    )
    yield simulator
    await simulator.stop()


# --------------------------------------------------------------------------- the DBC


def test_dbc_loads_with_cantools_and_comments_name_the_sources() -> None:
    db = cantools.database.load_file(DBC_PATH)
    assert isinstance(db, cantools.database.can.Database)
    by_id = {m.frame_id: m for m in db.messages}
    assert set(FRAME_IDS) <= set(by_id)
    for frame_id in FRAME_IDS:
        message = by_id[frame_id]
        assert message.comment, f"0x{frame_id:03X} has no comment"
        assert not message.is_extended_frame
        assert all(s.byte_order == "little_endian" for s in message.signals)
    # Each core frame's comment names at least one of the sources of protocols.md 2.2.
    for frame_id in CORE_FRAME_IDS:
        comment = by_id[frame_id].comment or ""
        assert any(src in comment for src in ("OpenDTU", "bsc_fw", "Battery-Emulator")), comment
    assert load_pylontech_dbc(DBC_PATH).get_message_by_frame_id(0x356).length == 6


def test_a_dbc_without_a_needed_frame_is_a_config_error(tmp_path: Path) -> None:
    text = DBC_PATH.read_text(encoding="utf-8")
    start = text.index("BO_ 883 ")
    end = text.index("\n\n", start)
    broken = tmp_path / "broken.dbc"
    broken.write_text(text[:start] + text[end:].replace("CM_ BO_ 883", "CM_ BO_ 862"), "utf-8")
    with pytest.raises(ConfigError, match="0x373"):
        load_pylontech_dbc(broken)


# --------------------------------------------------------------------------- pure decoding


def test_published_sample_frames_decode_as_published() -> None:
    reading = fed_state().reading(10.5)
    assert reading.charge_voltage_limit_v == 53.2
    assert reading.charge_current_limit_a == 370.0
    assert reading.discharge_current_limit_a == 370.0
    assert reading.discharge_voltage_limit_v == 46.0
    assert (reading.soc_pct, reading.soh_pct) == (26.0, 100.0)
    assert reading.voltage_v == 48.66
    assert reading.current_a == 0.0
    assert reading.power_w == 0.0
    assert reading.temperature_c == 33.0
    assert (reading.alarm_flags, reading.warning_flags, reading.module_count) == (0, 0, 10)
    assert reading.request_flags == RequestFlag.CHARGE_ENABLE | RequestFlag.DISCHARGE_ENABLE
    assert reading.manufacturer == "PYLON"
    assert reading.cell_voltage_min_v is None  # no 0x373 in the Pylontech set
    assert reading.temperature_max_c is None
    assert reading.received_monotonic == 10.0


def test_other_published_variants() -> None:
    state = fed_state()
    # Battery-Emulator's Pylon emulation: 0x351 with DLC 6, no discharge voltage limit.
    assert state.feed(0x351, frame_bytes("14 02 74 0E 74 0E"), 11.0)
    assert state.reading(11.0).discharge_voltage_limit_v is None
    # diyBMS's example sends the DCL negative (9C FF = -10.0 A): the magnitude is the limit.
    assert state.feed(0x351, frame_bytes("44 02 64 00 9C FF 3F 02"), 11.0)
    reading = state.reading(11.0)
    assert reading.charge_voltage_limit_v == 58.0
    assert reading.charge_current_limit_a == 10.0
    assert reading.discharge_current_limit_a == 10.0
    assert reading.discharge_voltage_limit_v == 57.5
    # Pytes: 5-byte name, "PY" marker in 0x359.
    assert state.feed(0x35E, b"PYTES", 11.0)
    assert state.feed(0x359, frame_bytes("00 00 00 00 02 50 59"), 11.0)
    assert state.reading(11.0).manufacturer == "PYTES"
    # Daly log (serialbattery issue 212): 3331 / 3332 mV, 294 / 294 K.
    assert state.feed(0x373, frame_bytes("03 0D 04 0D 26 01 26 01"), 11.0)
    reading = state.reading(11.0)
    assert (reading.cell_voltage_min_v, reading.cell_voltage_max_v) == (3.331, 3.332)
    assert (reading.temperature_min_c, reading.temperature_max_c) == (21.0, 21.0)


def test_flags_decode_by_byte() -> None:
    state = fed_state()
    # Alarms: byte 0 = under-voltage | discharge over-current, byte 1 = system error;
    # warnings: byte 2 = over-temperature, byte 3 = charge over-current.
    assert state.feed(0x359, frame_bytes("84 08 08 01 0A 50 4E"), 10.0)
    assert state.feed(0x35C, frame_bytes("A0 00"), 10.0)
    reading = state.reading(10.0)
    assert reading.alarm_flags == (
        ProtectionFlag.UNDERVOLTAGE
        | ProtectionFlag.DISCHARGE_OVERCURRENT
        | ProtectionFlag.SYSTEM_ERROR
    )
    assert (
        reading.warning_flags == ProtectionFlag.OVERTEMPERATURE | ProtectionFlag.CHARGE_OVERCURRENT
    )
    assert reading.request_flags == RequestFlag.CHARGE_ENABLE | RequestFlag.FORCE_CHARGE_I
    # The plant's BmsFlag uses the same bit layout.
    assert int(BmsFlag.CELL_UNDERVOLTAGE) == int(ProtectionFlag.UNDERVOLTAGE)
    assert int(BmsFlag.OVERTEMPERATURE) == int(ProtectionFlag.OVERTEMPERATURE)


@pytest.mark.parametrize(
    ("wire_sign", "expected_a"),
    [("charge", -12.6), ("discharge", 12.6)],
)
def test_current_sign_is_converted_to_discharge_positive(wire_sign: str, expected_a: float) -> None:
    # +12.6 A on the wire (7E 00); the default reads it as charging.
    state = fed_state(current_positive_on_wire=wire_sign)
    assert state.feed(0x356, frame_bytes("02 13 7E 00 4A 01"), 10.0)
    reading = state.reading(10.0)
    assert reading.current_a == expected_a
    assert reading.power_w == pytest.approx(48.66 * expected_a)


@pytest.mark.parametrize(
    ("frame_id", "data"),
    [
        (0x351, "14 02 74"),  # shorter than CVL + CCL + DCL
        (0x355, "1A 00"),
        (0x356, ""),
        (0x359, "00 00 00"),
        (0x35C, ""),
    ],
)
def test_malformed_core_frame_is_counted_reported_and_recovered(frame_id: int, data: str) -> None:
    state = fed_state()
    assert not state.feed(frame_id, frame_bytes(data), 10.1)
    assert state.malformed_frames == 1
    with pytest.raises(DeviceProtocolError, match=f"0x{frame_id:03X}"):
        state.reading(10.2)
    assert state.feed(frame_id, frame_bytes(SAMPLE[frame_id]), 10.3)
    assert state.reading(10.3).soc_pct == 26.0
    assert state.malformed_frames == 1


def test_malformed_optional_frames_do_not_block_the_reading() -> None:
    state = fed_state()
    assert not state.feed(0x35E, b"\xff\xfe\x00", 10.0)  # not ASCII
    assert not state.feed(0x35E, b"", 10.0)
    assert not state.feed(0x373, frame_bytes("01 00 00 00"), 10.0)  # Discover's 4-byte 0x373
    assert state.malformed_frames == 3
    reading = state.reading(10.0)
    assert reading.manufacturer == "PYLON"  # the last good name stays
    assert reading.cell_voltage_min_v is None


def test_frames_for_someone_else_are_ignored() -> None:
    state = fed_state()
    assert not state.feed(0x123, b"\x01", 10.0)
    assert not state.feed(0x355, frame_bytes("96 00 64 00"), 10.0, is_extended_id=True)
    assert not state.feed(0x355, b"", 10.0, is_remote_frame=True)
    assert not state.feed(0x355, b"\x00", 10.0, is_error_frame=True)
    assert state.ignored_frames == 4
    assert state.malformed_frames == 0
    assert state.reading(10.0).soc_pct == 26.0


@pytest.mark.parametrize(
    ("frame_id", "data", "signal"),
    [
        (0x355, "96 00 64 00", "StateOfCharge"),  # 150 %
        (0x356, "4E 13 02 03 04 05", "BatteryTemperature"),  # diyBMS test pattern: 128.4 degC
        (0x351, "14 02 F6 FF 74 0E CC 01", "ChargeCurrentLimit"),  # -1.0 A
        (0x373, "00 00 04 0D 26 01 26 01", "MinCellVoltage"),  # 0 V
        (0x373, "04 0D 03 0D 26 01 26 01", "minimum above maximum"),
    ],
)
def test_implausible_values_are_protocol_errors(frame_id: int, data: str, signal: str) -> None:
    state = fed_state()
    assert state.feed(frame_id, frame_bytes(data), 10.0)  # well-formed, so accepted
    with pytest.raises(DeviceProtocolError, match=signal):
        state.reading(10.0)


def test_staleness_per_frame() -> None:
    state = fed_state(now=10.0, stale_after_s=5.0)
    assert state.feed(0x373, frame_bytes("03 0D 04 0D 26 01 26 01"), 10.0)
    assert state.reading(15.0).cell_voltage_min_v == 3.331
    with pytest.raises(DeviceUnavailable, match="stale after 5 s"):
        state.reading(15.1)
    for frame_id in CORE_FRAME_IDS:
        state.feed(frame_id, frame_bytes(SAMPLE[frame_id]), 15.1)
    reading = state.reading(15.2)
    assert reading.cell_voltage_min_v is None  # the optional frame went stale on its own
    missing = PylontechFrameState()
    for frame_id in (0x351, 0x355, 0x356, 0x359):
        missing.feed(frame_id, frame_bytes(SAMPLE[frame_id]), 1.0)
    with pytest.raises(DeviceUnavailable, match="no 0x35C frame received yet"):
        missing.reading(1.0)


def test_old_malformed_frame_ends_as_unavailable_not_protocol_error() -> None:
    state = fed_state(now=10.0, stale_after_s=5.0)
    state.feed(0x355, b"", 11.0)
    with pytest.raises(DeviceProtocolError):
        state.reading(12.0)
    with pytest.raises(DeviceUnavailable):
        state.reading(16.5)


# --------------------------------------------------------------------------- simulator


def test_bms_values_from_a_plant_node_round_trip_through_the_frames(sim_bus: can.BusABC) -> None:
    plant = Plant()
    plant.set_inverter_setpoint(1, 1500.0)
    for _ in range(20):
        plant.step(0.5)
    node = plant.state.nodes[0]
    values = bms_values_from_node(node)
    assert values.current_a == node.current_a
    assert values.temperature_c == node.temperature_max_c
    assert values.alarm_flags == int(node.alarm_flags)
    expected_request = (RequestFlag.CHARGE_ENABLE if node.charge_current_limit_a > 0 else 0) | (
        RequestFlag.DISCHARGE_ENABLE if node.discharge_current_limit_a > 0 else 0
    )
    assert values.request_flags == expected_request
    sim = PylontechSimulator(Source(values), sim_bus, extension_frames=True)
    state = PylontechFrameState()
    for msg in sim.frames(values):
        assert state.feed(msg.arbitration_id, bytes(msg.data), 1.0)
    assert_matches(state.reading(1.0), values)


def test_simulator_frame_lengths_follow_the_reference(sim_bus: can.BusABC) -> None:
    sim = PylontechSimulator(Source(make_values()), sim_bus, extension_frames=True)
    lengths = {m.arbitration_id: len(m.data) for m in sim.frames(make_values())}
    assert lengths == {0x351: 8, 0x355: 4, 0x356: 6, 0x359: 7, 0x35C: 2, 0x35E: 8, 0x373: 8}
    no_dvl = make_values(discharge_voltage_limit_v=None, cell_voltage_min_v=None)
    lengths = {m.arbitration_id: len(m.data) for m in sim.frames(no_dvl)}
    assert lengths[0x351] == 6
    assert 0x373 not in lengths  # not all four extension values present


def test_simulator_skips_a_cycle_it_cannot_encode(sim_bus: can.BusABC) -> None:
    source = Source(make_values(voltage_v=400.0))  # does not fit int16 x 0.01 V
    sim = PylontechSimulator(source, sim_bus)
    assert sim.send_cycle() == 0
    source.values = make_values()
    assert sim.send_cycle() == 6


# --------------------------------------------------------------------------- driver on a virtual bus


async def test_hand_built_frames_through_the_bus(
    sim_bus: can.BusABC, make_driver: Callable[..., PylontechCanBms]
) -> None:
    driver = make_driver()
    assert isinstance(driver, BatteryMonitor)
    await driver.start()
    for frame_id, text in SAMPLE.items():
        sim_bus.send(
            can.Message(arbitration_id=frame_id, data=frame_bytes(text), is_extended_id=False)
        )
    sim_bus.send(can.Message(arbitration_id=0x123, data=b"\x00", is_extended_id=False))
    reading = await eventually(driver.read)
    assert (reading.soc_pct, reading.voltage_v, reading.charge_current_limit_a) == (26, 48.66, 370)
    assert reading.manufacturer == "PYLON"
    assert driver.frames_accepted == 6
    assert driver.malformed_frames == 0


async def test_round_trip_simulator_to_driver(
    sim: PylontechSimulator, make_driver: Callable[..., PylontechCanBms]
) -> None:
    driver = make_driver()
    await driver.start()
    assert len(notifier_threads()) == 1
    await sim.start()
    reading = await eventually(driver.read)
    assert_matches(reading, make_values())
    assert reading.current_a > 0  # discharging in the source, discharging in the reading
    await driver.close()
    assert notifier_threads() == []
    assert not driver.is_open
    await driver.close()  # idempotent


async def test_first_read_opens_the_bus_and_reports_no_frames_yet(
    make_driver: Callable[..., PylontechCanBms],
) -> None:
    driver = make_driver()
    assert not driver.is_open
    with pytest.raises(DeviceUnavailable, match="no 0x351 frame received yet"):
        await driver.read()
    assert driver.is_open


async def test_staleness_and_reopen_with_an_injected_clock(
    sim_bus: can.BusABC, make_driver: Callable[..., PylontechCanBms]
) -> None:
    clock = FakeClock()
    driver = make_driver(clock=clock, stale_after_s=5.0)
    await driver.start()
    sim = PylontechSimulator(Source(make_values()), sim_bus)
    sim.send_cycle()
    first = await eventually(driver.read)
    assert first.received_monotonic == clock.now
    clock.now += 4.9
    assert (await driver.read()).soc_pct == 55.0
    clock.now += 0.2
    with pytest.raises(DeviceUnavailable, match="stale after 5 s"):
        await driver.read()
    assert driver.opens == 2  # stale since the last open: the bus was reopened
    sim.send_cycle()
    assert (await eventually(driver.read)).received_monotonic == clock.now


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("silent", DeviceUnavailable),
        ("garbage", DeviceProtocolError),
        ("out_of_range", DeviceProtocolError),
        ("delay_s", DeviceUnavailable),
    ],
)
async def test_fault_outcome_and_recovery(
    sim: PylontechSimulator,
    make_driver: Callable[..., PylontechCanBms],
    fault: str,
    error: type[Exception],
) -> None:
    driver = make_driver()
    await sim.start()
    await eventually(driver.read)
    setattr(sim.faults, fault, 1.0 if fault == "delay_s" else True)
    exc = await eventually_raises(driver.read, error)
    if fault == "garbage":
        assert driver.malformed_frames > 0
        assert "malformed" in str(exc)
    if fault == "out_of_range":
        assert "StateOfCharge = 150.0" in str(exc)
    sim.faults.clear()
    assert_matches(await eventually(driver.read), make_values())


async def test_slow_but_within_staleness_still_reads(
    sim: PylontechSimulator, make_driver: Callable[..., PylontechCanBms]
) -> None:
    driver = make_driver(stale_after_s=1.0)
    sim.faults.delay_s = 0.2
    await sim.start()
    await eventually(driver.read)
    for _ in range(5):
        await asyncio.sleep(0.1)
        assert (await driver.read()).soc_pct == 55.0


def test_from_connection_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="only used with socketcand"):
        PylontechCanBms.from_connection("virtual", "x", host="127.0.0.1")
    with pytest.raises(ValueError, match="needs host"):
        PylontechCanBms.from_connection("socketcand", "can0")
