"""WP8024ADAM relay module driver against its simulator: real pymodbus client and server.

TCP on 127.0.0.1 with ephemeral ports; RTU through two raw pty pairs joined back to back
(a null-modem cable): the `serial_pair` fixture of conftest.py.
"""

from __future__ import annotations

import asyncio
import os
import time
import tty
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from appliance.drivers.modbus_link import ModbusExceptionResponse
from appliance.drivers.relay_module import (
    RelayModule,
    RelayReader,
    RelayState,
    RelaySwitch,
    relay_coil,
)
from appliance.errors import DeviceProtocolError, DeviceTimeout, DeviceUnavailable
from appliance.simulation.devices.relay_module_sim import RelayModuleSimulator

LOCALHOST = "127.0.0.1"
TIMEOUT_S = 0.3
OFF4 = (False, False, False, False)
#: DI_02, DI_07, DI_08 active: the manual's example answer 01 02 01 C2 20 19.
MANUAL_INPUTS = (False, True, False, False, False, False, True, True)


class Plant:
    """The simulator's plant side: records relay changes, serves settable inputs."""

    def __init__(self) -> None:
        self.changes: list[tuple[bool, ...]] = []
        self.inputs: tuple[bool, ...] = MANUAL_INPUTS
        self.error: Exception | None = None

    def on_change(self, relays: tuple[bool, ...]) -> None:
        self.changes.append(relays)

    def read_inputs(self) -> tuple[bool, ...]:
        if self.error is not None:
            raise self.error
        return self.inputs


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def plant() -> Plant:
    return Plant()


@pytest.fixture
async def sim(plant: Plant) -> AsyncIterator[RelayModuleSimulator]:
    simulator = RelayModuleSimulator(plant.on_change, plant.read_inputs, unit_id=1)
    yield simulator
    await simulator.stop()


@pytest.fixture
async def tcp_port(sim: RelayModuleSimulator) -> int:
    return await sim.start_tcp(LOCALHOST, 0)


@pytest.fixture
async def module(tcp_port: int, closing: Callable[[RelayModule], RelayModule]) -> RelayModule:
    return closing(RelayModule.tcp(LOCALHOST, tcp_port, timeout_s=TIMEOUT_S, name="boiler"))


@pytest.fixture
async def rtu_module(
    sim: RelayModuleSimulator,
    serial_pair: tuple[str, str],
    closing: Callable[[RelayModule], RelayModule],
) -> RelayModule:
    sim_end, driver_end = serial_pair
    await sim.start_rtu(sim_end, baudrate=9600)
    return closing(RelayModule.rtu(driver_end, baudrate=9600, unit_id=1, timeout_s=TIMEOUT_S))


async def exchange_raw(port: str, request: bytes, answer_len: int) -> bytes:
    """Write one raw frame to a pty and read ``answer_len`` bytes back (1 s at most)."""
    loop = asyncio.get_running_loop()
    fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd)
    received = bytearray()
    done: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        try:
            received.extend(os.read(fd, 256))
        except BlockingIOError:
            return
        if len(received) >= answer_len and not done.done():
            done.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        os.write(fd, request)
        async with asyncio.timeout(1.0):
            await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return bytes(received)


# ----------------------------------------------------------------------------- channel mapping


@pytest.mark.parametrize(("channel", "coil"), [(1, 0x0000), (2, 0x0001), (3, 0x0002), (4, 0x0003)])
def test_relay_coil_maps_config_channel_to_zero_based_coil(channel: int, coil: int) -> None:
    assert relay_coil(channel) == coil


@pytest.mark.parametrize("channel", [0, 5, -1, 32])
def test_relay_coil_out_of_range_is_value_error(channel: int) -> None:
    with pytest.raises(ValueError, match=r"relay channel must be 1\.\.4"):
        relay_coil(channel)


def test_relay_coil_bool_is_type_error() -> None:
    with pytest.raises(TypeError):
        relay_coil(True)


def test_relay_state_accessors_are_one_based() -> None:
    state = RelayState(relays=(False, True, False, False), inputs=MANUAL_INPUTS)
    assert (state.relay(1), state.relay(2)) == (False, True)
    assert [state.input(n) for n in (1, 2, 7, 8)] == [False, True, True, True]
    with pytest.raises(ValueError, match="input channel"):
        state.input(9)


# ----------------------------------------------------------------------------- reading and switching


async def test_read_returns_relays_and_inputs_over_tcp(
    module: RelayModule, sim: RelayModuleSimulator
) -> None:
    assert isinstance(module, RelayReader)
    assert isinstance(module, RelaySwitch)
    sim.reset_request_count()
    state = await module.read()
    assert state == RelayState(relays=OFF4, inputs=MANUAL_INPUTS)
    assert (sim.request_count(1), sim.request_count(2), sim.request_count()) == (1, 1, 2)


async def test_inputs_follow_the_plant(module: RelayModule, plant: Plant) -> None:
    plant.inputs = (True,) + (False,) * 7  # a grid operator's load-shedding contact on DI_01
    assert (await module.read()).input(1) is True
    plant.inputs = (False,) * 8
    assert (await module.read()).inputs == (False,) * 8


async def test_set_relay_switches_and_reads_back(
    module: RelayModule, sim: RelayModuleSimulator, plant: Plant
) -> None:
    sim.reset_request_count()
    await module.set_relay(2, True)
    assert sim.relays == (False, True, False, False)
    assert plant.changes == [(False, True, False, False)]
    assert (sim.request_count(5), sim.request_count(1)) == (1, 1)  # write, then read-back
    await module.set_relay(2, False)
    assert (await module.read()).relays == OFF4
    assert plant.changes[-1] == OFF4
    assert module.readback_mismatches == 0


async def test_set_relays_switches_all_in_one_fc15(
    module: RelayModule, sim: RelayModuleSimulator, plant: Plant
) -> None:
    sim.reset_request_count()
    await module.set_relays((True, False, True, True))
    assert sim.relays == (True, False, True, True)
    assert plant.changes == [(True, False, True, True)]
    assert (sim.request_count(15), sim.request_count(1), sim.request_count()) == (1, 1, 2)


async def test_switching_over_rtu(rtu_module: RelayModule, sim: RelayModuleSimulator) -> None:
    await rtu_module.set_relay(4, True)
    await rtu_module.set_relays((True, True, False, True))
    state = await rtu_module.read()
    assert state == RelayState(relays=(True, True, False, True), inputs=MANUAL_INPUTS)
    assert sim.relays == (True, True, False, True)


@pytest.mark.parametrize(
    ("request_hex", "answer_hex"),
    [
        ("01 02 00 00 00 08 79 CC", "01 02 01 C2 20 19"),  # read 8 DI: DI_08, DI_07, DI_02
        ("01 0F 00 00 00 04 01 03 7E 97", "01 0F 00 00 00 04 54 08"),  # RY1 + RY2 on
        ("01 05 00 00 FF 00 8C 3A", "01 05 00 00 FF 00 8C 3A"),  # RY1 on, echoed
    ],
    ids=["read-inputs", "write-4-coils", "write-1-coil"],
)
async def test_simulator_answers_the_manuals_example_frames(
    sim: RelayModuleSimulator, serial_pair: tuple[str, str], request_hex: str, answer_hex: str
) -> None:
    sim_end, test_end = serial_pair
    await sim.start_rtu(sim_end, baudrate=9600)
    answer = bytes.fromhex(answer_hex)
    assert await exchange_raw(test_end, bytes.fromhex(request_hex), len(answer)) == answer


async def test_simulator_answers_the_manuals_read_relays_frame(
    sim: RelayModuleSimulator, serial_pair: tuple[str, str]
) -> None:
    sim_end, test_end = serial_pair
    await sim.start_rtu(sim_end, baudrate=9600)
    await exchange_raw(test_end, bytes.fromhex("01 0F 00 00 00 04 01 03 7E 97"), 8)
    answer = bytes.fromhex("01 01 01 03 11 89")  # RY1 and RY2 on
    assert await exchange_raw(test_end, bytes.fromhex("01 01 00 00 00 04 3D C9"), 6) == answer


# ----------------------------------------------------------------------------- refused before I/O


@pytest.mark.parametrize("channel", [0, 5])
async def test_channel_out_of_range_is_refused_before_any_io(
    module: RelayModule, sim: RelayModuleSimulator, channel: int
) -> None:
    with pytest.raises(ValueError, match="relay channel"):
        await module.set_relay(channel, True)
    assert sim.connections_accepted == 0
    assert sim.request_count() == 0


@pytest.mark.parametrize(
    "states",
    [(True, False, True), (True, False, True, False, True), (1, 0, 0, 0)],
    ids=["three", "five", "ints"],
)
async def test_set_relays_needs_four_bools_before_any_io(
    module: RelayModule, sim: RelayModuleSimulator, states: tuple[object, ...]
) -> None:
    with pytest.raises(ValueError, match="4 bools"):
        await module.set_relays(states)  # type: ignore[arg-type]
    assert sim.connections_accepted == 0


# ----------------------------------------------------------------------------- stuck relay


async def test_stuck_relay_is_detected_by_the_read_back(
    module: RelayModule, sim: RelayModuleSimulator, plant: Plant
) -> None:
    sim.faults.stuck_channels = {3}
    with pytest.raises(DeviceProtocolError, match=r"relay 3 \(coil 0x0002\) reads back off"):
        await module.set_relay(3, True)
    assert module.readback_mismatches == 1
    assert module.malformed_frames == 0  # the answers were well formed
    assert sim.relays == OFF4
    assert plant.changes == []
    await module.set_relay(1, True)  # the other relays still switch
    sim.faults.stuck_channels = set()
    await module.set_relay(3, True)  # recovered
    assert sim.relays == (True, False, True, False)


async def test_stuck_relay_is_detected_in_a_multiple_write(
    module: RelayModule, sim: RelayModuleSimulator
) -> None:
    await module.set_relays((True, True, True, True))
    sim.faults.stuck_channels = {2}
    with pytest.raises(DeviceProtocolError, match=r"read back \[off, on, off, off\]"):
        await module.set_relays(OFF4)
    assert module.readback_mismatches == 1
    assert sim.relays == (False, True, False, False)


# ----------------------------------------------------------------------------- faults


async def test_silent_module_times_out_then_recovers(
    module: RelayModule, sim: RelayModuleSimulator
) -> None:
    await module.read()
    sim.faults.silent = True
    started = time.monotonic()
    with pytest.raises(DeviceTimeout, match="no answer"):
        await module.read()
    assert time.monotonic() - started < TIMEOUT_S + 0.2
    with pytest.raises(DeviceTimeout):
        await module.set_relay(1, True)
    assert sim.relays == OFF4  # the silent module ignored the write
    sim.faults.silent = False
    await module.set_relay(1, True)
    assert sim.relays == (True, False, False, False)


async def test_silent_module_over_rtu_times_out_then_recovers(
    rtu_module: RelayModule, sim: RelayModuleSimulator
) -> None:
    sim.faults.silent = True
    with pytest.raises(DeviceTimeout):
        await rtu_module.read()
    sim.faults.silent = False
    assert (await rtu_module.read()).inputs == MANUAL_INPUTS


async def test_slow_answer_within_the_timeout_is_accepted(
    module: RelayModule, sim: RelayModuleSimulator
) -> None:
    sim.faults.delay_s = TIMEOUT_S / 4
    started = time.monotonic()
    await module.set_relay(1, True)
    assert time.monotonic() - started >= 2 * TIMEOUT_S / 4  # write and read-back both slow
    assert sim.relays == (True, False, False, False)


async def test_too_slow_answer_times_out_then_recovers(
    module: RelayModule, sim: RelayModuleSimulator
) -> None:
    sim.faults.delay_s = 5.0  # released by sim.stop() at teardown
    with pytest.raises(DeviceTimeout):
        await module.read()
    sim.faults.delay_s = 0.0
    assert (await module.read()).relays == OFF4
    assert sim.connections_accepted == 2  # the late answer's connection was dropped


async def test_garbage_answers_are_rejected_counted_then_recover(
    module: RelayModule, sim: RelayModuleSimulator
) -> None:
    sim.faults.garbage = True
    with pytest.raises(DeviceProtocolError, match="got 0 bits, expected 4"):
        await module.read()
    with pytest.raises(DeviceProtocolError, match="echo 0x0001"):
        await module.set_relay(1, True)
    with pytest.raises(DeviceProtocolError, match="does not match the request"):
        await module.set_relays((True, True, False, False))
    assert module.malformed_frames == 3
    assert module.readback_mismatches == 0
    sim.faults.garbage = False
    assert await module.read() == RelayState(
        relays=(True, True, False, False), inputs=MANUAL_INPUTS
    )


async def test_bad_crc_over_rtu_is_no_answer_then_recovers(
    rtu_module: RelayModule, sim: RelayModuleSimulator
) -> None:
    # pymodbus' RTU framer drops a frame with a bad CRC silently: the driver sees no answer.
    sim.faults.bad_crc = True
    with pytest.raises(DeviceTimeout):
        await rtu_module.read()
    sim.faults.bad_crc = False
    assert (await rtu_module.read()).relays == OFF4


async def test_dropped_connection_costs_one_request_then_reconnects(
    module: RelayModule, sim: RelayModuleSimulator
) -> None:
    await module.read()
    assert await sim.drop_connections() == 1
    # The next request leaves before the FIN is seen; pymodbus does not fail it on
    # connection loss, so it ends at the timeout as DeviceUnavailable (link lost).
    with pytest.raises(DeviceUnavailable, match="lost"):
        await module.read()
    assert (await module.read()).inputs == MANUAL_INPUTS
    assert sim.connections_accepted == 2


async def test_drop_connections_leaves_an_rtu_line_serving(
    rtu_module: RelayModule, sim: RelayModuleSimulator
) -> None:
    await rtu_module.read()
    assert await sim.drop_connections() == 0  # RS485 has no connection to drop
    assert (await rtu_module.read()).inputs == MANUAL_INPUTS


async def test_simulator_down_is_unavailable_then_reconnects(
    module: RelayModule, sim: RelayModuleSimulator, tcp_port: int
) -> None:
    await module.set_relay(2, True)
    await sim.stop()
    with pytest.raises(DeviceUnavailable):
        await module.read()
    assert await sim.start_tcp(LOCALHOST, tcp_port) == tcp_port
    assert (await module.read()).relay(2) is True  # the contacts survive a link outage


async def test_plant_failure_is_exception_4_not_malformed(
    module: RelayModule, plant: Plant
) -> None:
    plant.error = RuntimeError("input card fault")
    with pytest.raises(ModbusExceptionResponse, match="exception 0x04") as info:
        await module.read()
    assert info.value.exception_code == 4
    assert module.malformed_frames == 0
    plant.error = None
    assert (await module.read()).inputs == MANUAL_INPUTS


async def test_other_unit_id_gets_no_answer(
    tcp_port: int, closing: Callable[[RelayModule], RelayModule]
) -> None:
    module = closing(RelayModule.tcp(LOCALHOST, tcp_port, unit_id=7, timeout_s=0.2))
    with pytest.raises(DeviceTimeout):
        await module.read()


# ----------------------------------------------------------------------------- simulator map


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda c: c.read_coils(0, count=5, device_id=1), 2),  # coil 4 does not exist
        (lambda c: c.read_coils(4, count=1, device_id=1), 2),
        (lambda c: c.read_discrete_inputs(0, count=9, device_id=1), 2),
        (lambda c: c.read_discrete_inputs(8, count=1, device_id=1), 2),
        (lambda c: c.write_coil(4, True, device_id=1), 2),
        (lambda c: c.write_coils(2, [True, True, True], device_id=1), 2),
        (lambda c: c.read_holding_registers(0, count=1, device_id=1), 2),
        (lambda c: c.write_register(0x64, 5, device_id=1), 2),  # address change not simulated
        (lambda c: c.read_input_registers(0, count=1, device_id=1), 1),
        (lambda c: c.write_registers(0x64, [1, 2], device_id=1), 2),
    ],
    ids=[
        "coils-past-4",
        "coil-4",
        "inputs-past-8",
        "input-8",
        "write-coil-4",
        "write-coils-past-4",
        "holding-0",
        "write-address",
        "fc04",
        "fc16-read-only",
    ],
)
async def test_simulator_refuses_unmapped_addresses_and_functions(
    raw_client: AsyncModbusTcpClient,
    sim: RelayModuleSimulator,
    call: Callable[[AsyncModbusTcpClient], object],
    code: int,
) -> None:
    response = await call(raw_client)  # type: ignore[misc]
    assert response.isError()
    assert response.exception_code == code
    assert sim.relays == OFF4


async def test_simulator_commissioning_registers(raw_client: AsyncModbusTcpClient) -> None:
    response = await raw_client.read_holding_registers(0x64, count=2, device_id=1)
    assert list(response.registers) == [1, 2]  # unit 1; line code 2 = 9600 8N1


async def test_missing_serial_port_is_unavailable(
    tmp_path: Path, closing: Callable[[RelayModule], RelayModule]
) -> None:
    module = closing(RelayModule.rtu(str(tmp_path / "ttyNONE"), timeout_s=TIMEOUT_S))
    with pytest.raises(DeviceUnavailable):
        await module.set_relay(1, True)
