"""SDM630 driver against the SDM630 simulator: real pymodbus client and server, both sides.

TCP on 127.0.0.1 with ephemeral ports; RTU through two raw pty pairs joined back to back
(a null-modem cable), since pyserial can only open the named (slave) end of a pty.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from appliance.drivers.base import MeterReading, PowerMeter
from appliance.drivers.modbus_link import ModbusExceptionResponse
from appliance.drivers.sdm630 import Sdm630Meter, load_sdm630_map
from appliance.errors import ConfigError, DeviceProtocolError, DeviceTimeout, DeviceUnavailable
from appliance.simulation.devices.sdm630_sim import Sdm630Simulator

LOCALHOST = "127.0.0.1"
TIMEOUT_S = 0.3
MAP_PATH = Path(__file__).resolve().parents[2] / "models" / "devices" / "sdm630.yaml"


def make_reading(**changes: object) -> MeterReading:
    base = MeterReading(
        voltage_v=(230.2, 231.0, 229.5),
        current_a=(5.0, 4.25, 3.1),
        active_power_w=(1100.0, 950.5, 640.0),
        reactive_power_var=(120.0, 60.0, -25.0),
        power_factor=(0.99, 0.98, -0.97),
        frequency_hz=50.01,
        total_active_power_w=2690.5,
        total_reactive_power_var=155.0,
        total_power_factor=0.985,
        import_kwh=12345.6,
        export_kwh=789.1,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def f32(value: float) -> float:
    """What a float32 register pair carries for ``value``."""
    return float(struct.unpack(">f", struct.pack(">f", value))[0])


def as_float32(reading: MeterReading) -> MeterReading:
    changes: dict[str, object] = {}
    for field in dataclasses.fields(reading):
        value = getattr(reading, field.name)
        changes[field.name] = (
            tuple(f32(v) for v in value) if isinstance(value, tuple) else f32(value)
        )
    return dataclasses.replace(reading, **changes)  # type: ignore[arg-type]


class Source:
    """A settable source(); counts calls."""

    def __init__(self, reading: MeterReading) -> None:
        self.reading = reading
        self.calls = 0
        self.error: Exception | None = None

    def __call__(self) -> MeterReading:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.reading


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def source() -> Source:
    return Source(make_reading())


@pytest.fixture
async def sim(source: Source) -> AsyncIterator[Sdm630Simulator]:
    simulator = Sdm630Simulator(source, unit_id=1, serial_number=20240117)
    yield simulator
    await simulator.stop()


@pytest.fixture
async def tcp_port(sim: Sdm630Simulator) -> int:
    return await sim.start_tcp(LOCALHOST, 0)


# ----------------------------------------------------------------------------- the map


def test_map_covers_the_reading_in_one_request() -> None:
    register_map = load_sdm630_map()
    assert [(b.start, b.count) for b in register_map.read_blocks] == [(0x0000, 76)]
    assert all(b.count <= register_map.max_registers_per_request for b in register_map.read_blocks)
    fields = {(r.field, r.phase) for r in register_map.input_registers if r.field}
    assert len(fields) == 5 * 3 + 6
    assert register_map.holding("serial_number").address == 0xFC00


def test_map_missing_field_is_a_config_error(tmp_path: Path) -> None:
    text = MAP_PATH.read_text(encoding="utf-8")
    broken = "\n".join(line for line in text.splitlines() if "field: frequency_hz" not in line)
    path = tmp_path / "sdm630.yaml"
    path.write_text(broken, encoding="utf-8")
    with pytest.raises(ConfigError, match="frequency_hz"):
        load_sdm630_map(path)


# ----------------------------------------------------------------------------- reading


async def test_reads_what_the_simulator_serves_over_tcp(
    tcp_port: int, source: Source, closing: Callable[[Sdm630Meter], Sdm630Meter]
) -> None:
    meter = closing(Sdm630Meter.tcp(LOCALHOST, tcp_port, timeout_s=TIMEOUT_S, name="grid"))
    assert isinstance(meter, PowerMeter)
    await meter.connect()
    assert await meter.read() == as_float32(source.reading)


async def test_reads_what_the_simulator_serves_over_rtu(
    sim: Sdm630Simulator,
    source: Source,
    serial_pair: tuple[str, str],
    closing: Callable[[Sdm630Meter], Sdm630Meter],
) -> None:
    sim_end, driver_end = serial_pair
    await sim.start_rtu(sim_end, baudrate=9600)
    meter = closing(Sdm630Meter.rtu(driver_end, baudrate=9600, unit_id=1, timeout_s=1.0))
    assert await meter.read() == as_float32(source.reading)
    source.reading = make_reading(frequency_hz=49.9)
    assert (await meter.read()).frequency_hz == f32(49.9)
    assert await meter.read_serial_number() == 20240117


async def test_wire_format_is_float32_high_word_first(
    raw_client: AsyncModbusTcpClient, source: Source
) -> None:
    # The reference frame (protocols.md 1.1) carries 43 66 33 34 = 230.20001220703125 V;
    # Python rounds 230.2 itself to 43 66 33 33, one unit in the last place lower.
    meter_value = struct.unpack(">f", bytes.fromhex("43663334"))[0]
    source.reading = make_reading(voltage_v=(meter_value, 231.0, 229.5))
    response = await raw_client.read_input_registers(0x0000, count=2, device_id=1)
    assert not response.isError()
    assert list(response.registers) == [0x4366, 0x3334]
    source.reading = make_reading(voltage_v=(230.2, 231.0, 229.5))
    response = await raw_client.read_input_registers(0x0000, count=4, device_id=1)
    assert list(response.registers) == [0x4366, 0x3333, 0x4367, 0x0000]  # 230.2, 231.0


async def test_one_request_per_read(
    sim: Sdm630Simulator,
    tcp_port: int,
    source: Source,
    closing: Callable[[Sdm630Meter], Sdm630Meter],
) -> None:
    meter = closing(Sdm630Meter.tcp(LOCALHOST, tcp_port, timeout_s=TIMEOUT_S))
    sim.reset_request_count()
    for _ in range(3):
        await meter.read()
    assert sim.request_count(4) == 3
    assert sim.request_count() == 3
    assert source.calls == 3  # one snapshot per request


async def test_values_follow_the_source(
    tcp_port: int, source: Source, closing: Callable[[Sdm630Meter], Sdm630Meter]
) -> None:
    meter = closing(Sdm630Meter.tcp(LOCALHOST, tcp_port, timeout_s=TIMEOUT_S))
    first = await meter.read()
    source.reading = make_reading(
        active_power_w=(-2000.0, -1500.0, -1000.0), total_active_power_w=-4500.0, export_kwh=800.0
    )
    second = await meter.read()
    assert first.total_active_power_w == f32(2690.5)
    assert second.total_active_power_w == -4500.0
    assert second.active_power_w == (-2000.0, -1500.0, -1000.0)
    assert second.export_kwh == 800.0


async def test_each_response_is_one_snapshot(
    closing: Callable[[Sdm630Meter], Sdm630Meter],
) -> None:
    calls = 0

    def changing() -> MeterReading:  # a new snapshot on every call
        nonlocal calls
        calls += 1
        return make_reading(voltage_v=(200.0 + calls,) * 3, import_kwh=float(calls))

    sim = Sdm630Simulator(changing)
    try:
        port = await sim.start_tcp(LOCALHOST, 0)
        meter = closing(Sdm630Meter.tcp(LOCALHOST, port, timeout_s=TIMEOUT_S))
        for expected in (1.0, 2.0, 3.0):
            reading = await meter.read()
            assert reading.import_kwh == expected
            assert reading.voltage_v == (200.0 + expected,) * 3
    finally:
        await sim.stop()


# ----------------------------------------------------------------------------- failures


async def test_nothing_listening_is_unavailable(
    closed_port: int, closing: Callable[[Sdm630Meter], Sdm630Meter]
) -> None:
    meter = closing(Sdm630Meter.tcp(LOCALHOST, closed_port, timeout_s=TIMEOUT_S))
    with pytest.raises(DeviceUnavailable, match=f"tcp://{LOCALHOST}:{closed_port}"):
        await meter.read()


async def test_simulator_down_is_unavailable_then_reconnects(
    sim: Sdm630Simulator, tcp_port: int, closing: Callable[[Sdm630Meter], Sdm630Meter]
) -> None:
    meter = closing(Sdm630Meter.tcp(LOCALHOST, tcp_port, timeout_s=TIMEOUT_S))
    await meter.read()
    await sim.stop()
    started = time.monotonic()
    with pytest.raises(DeviceUnavailable):  # the request may go out before the FIN arrives
        await meter.read()
    assert time.monotonic() - started < TIMEOUT_S + 0.2
    assert await sim.start_tcp(LOCALHOST, tcp_port) == tcp_port
    assert (await meter.read()).frequency_hz == f32(50.01)


async def test_missing_serial_port_is_unavailable(
    tmp_path: Path, closing: Callable[[Sdm630Meter], Sdm630Meter]
) -> None:
    meter = closing(Sdm630Meter.rtu(str(tmp_path / "ttyNONE"), timeout_s=TIMEOUT_S))
    with pytest.raises(DeviceUnavailable):
        await meter.read()


async def test_no_answer_times_out_within_the_timeout(
    silent_port: int, closing: Callable[[Sdm630Meter], Sdm630Meter]
) -> None:
    meter = closing(Sdm630Meter.tcp(LOCALHOST, silent_port, timeout_s=TIMEOUT_S))
    started = time.monotonic()
    with pytest.raises(DeviceTimeout):
        await meter.read()
    assert time.monotonic() - started < TIMEOUT_S + 0.2


async def test_other_unit_id_gets_no_answer(
    tcp_port: int, closing: Callable[[Sdm630Meter], Sdm630Meter]
) -> None:
    meter = closing(Sdm630Meter.tcp(LOCALHOST, tcp_port, unit_id=7, timeout_s=0.2))
    with pytest.raises(DeviceTimeout):
        await meter.read()


@pytest.mark.parametrize(
    ("changes", "register"),
    [
        ({"voltage_v": (math.nan, 230.0, 230.0)}, "voltage_l1"),
        ({"import_kwh": math.inf}, "import_active_energy"),
        ({"power_factor": (0.9, 1.5, 0.9)}, "power_factor_l2"),
        ({"frequency_hz": 0.0}, "frequency"),
    ],
)
async def test_nan_inf_and_implausible_values_are_protocol_errors(
    tcp_port: int,
    source: Source,
    closing: Callable[[Sdm630Meter], Sdm630Meter],
    changes: dict[str, object],
    register: str,
) -> None:
    source.reading = make_reading(**changes)
    meter = closing(Sdm630Meter.tcp(LOCALHOST, tcp_port, timeout_s=TIMEOUT_S, name="grid"))
    with pytest.raises(DeviceProtocolError, match=f"grid: {register} "):
        await meter.read()


async def test_exception_response_is_a_protocol_error_with_its_code(
    tcp_port: int, source: Source, closing: Callable[[Sdm630Meter], Sdm630Meter]
) -> None:
    source.error = RuntimeError("meter firmware crashed")
    meter = closing(Sdm630Meter.tcp(LOCALHOST, tcp_port, timeout_s=TIMEOUT_S))
    with pytest.raises(ModbusExceptionResponse, match="exception 0x04") as info:
        await meter.read()
    assert info.value.exception_code == 4
    assert isinstance(info.value, DeviceProtocolError)
    source.error = None
    await meter.read()  # the connection survives an exception response


@pytest.mark.parametrize(
    ("function", "address", "count"),
    [
        ("read_input_registers", 0x0100, 2),  # unmapped
        ("read_input_registers", 0x004C, 6),  # runs past the end of the map
        ("read_holding_registers", 0xFC02, 1),  # between serial number and version
        ("read_holding_registers", 0x0006, 2),  # an input-only address
    ],
)
async def test_unmapped_addresses_answer_exception_2(
    raw_client: AsyncModbusTcpClient, function: str, address: int, count: int
) -> None:
    response = await getattr(raw_client, function)(address, count=count, device_id=1)
    assert response.isError()
    assert response.exception_code == 2


async def test_writes_are_refused(raw_client: AsyncModbusTcpClient) -> None:
    single = await raw_client.write_register(0x0014, 5, device_id=1)
    multiple = await raw_client.write_registers(0x0000, [0x4366, 0x3334], device_id=1)
    coil = await raw_client.write_coil(0, True, device_id=1)
    assert (single.exception_code, multiple.exception_code, coil.exception_code) == (2, 2, 1)
    node = await raw_client.read_holding_registers(0x0014, count=2, device_id=1)
    assert list(node.registers) == [0x3F80, 0x0000]  # still 1.0


async def test_commissioning_holding_registers(
    raw_client: AsyncModbusTcpClient,
    tcp_port: int,
    closing: Callable[[Sdm630Meter], Sdm630Meter],
) -> None:
    meter = closing(Sdm630Meter.tcp(LOCALHOST, tcp_port, timeout_s=TIMEOUT_S))
    assert await meter.read_serial_number() == 20240117
    baud = await raw_client.read_holding_registers(0x001C, count=2, device_id=1)
    assert raw_client.convert_from_registers(
        baud.registers, raw_client.DATATYPE.FLOAT32
    ) == pytest.approx(2.0)  # 9600
