"""Heater actuators: the pure duty-cycle helper, the Modbus PWM controller against its
simulator, and the relay-driven heater against the WP8024 simulator (real pymodbus both sides).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable

import pytest
from pymodbus.client import AsyncModbusTcpClient

from appliance.drivers.modbus_link import ModbusExceptionResponse
from appliance.drivers.pwm_heater import (
    DutyState,
    ModbusPwmController,
    PowerLevel,
    PwmRegister,
    RelayDutyHeater,
    TimeProportioning,
    clamp_level_pct,
)
from appliance.drivers.relay_module import RelayModule
from appliance.errors import DeviceProtocolError, DeviceTimeout, DeviceUnavailable
from appliance.simulation.devices.relay_module_sim import (
    PwmControllerSimulator,
    RelayModuleSimulator,
)

LOCALHOST = "127.0.0.1"
TIMEOUT_S = 0.3
REGISTER = PwmRegister(address=0x0100, full_scale=1000)

# ----------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("pct", "expected"),
    [
        (0.0, 0.0),
        (42.5, 42.5),
        (100, 100.0),
        (100.1, 100.0),  # above full power clamps
        (-0.1, 0.0),  # below zero clamps
        (math.inf, 100.0),
        (-math.inf, 0.0),
    ],
)
def test_clamp_level_pct(pct: float, expected: float) -> None:
    assert clamp_level_pct(pct) == expected


def test_clamp_level_pct_refuses_nan() -> None:
    with pytest.raises(ValueError, match="NaN"):
        clamp_level_pct(math.nan)
    with pytest.raises(TypeError):
        clamp_level_pct("50")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("register", "pct", "raw"),
    [
        (REGISTER, 0.0, 0),
        (REGISTER, 42.5, 425),  # permille
        (REGISTER, 12.34, 123),  # rounds to the nearest permille
        (REGISTER, 100.0, 1000),
        (REGISTER, 120.0, 1000),  # clamped
        (REGISTER, -3.0, 0),  # clamped
        (PwmRegister(full_scale=255), 50.0, 128),  # 8-bit PWM as in seed 002: 127.5 rounds to 128
    ],
    ids=["off", "permille", "rounding", "full", "over", "under", "8-bit"],
)
def test_pwm_register_scaling(register: PwmRegister, pct: float, raw: int) -> None:
    assert register.to_raw(pct) == raw


@pytest.mark.parametrize(
    "kwargs", [{"address": -1}, {"address": 0xFFFF}, {"full_scale": 0}, {"full_scale": 65536}]
)
def test_pwm_register_rejects_bad_map(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="PWM"):
        PwmRegister(**kwargs)


# Time-proportioning over a 10 s period: (name, level %, min pulse s, expected on-time s).
ON_TIME_TABLE = [
    ("0 % is always off", 0.0, 0.0, 0.0),
    ("25 % of 10 s is 2.5 s on", 25.0, 0.0, 2.5),
    ("50 % of 10 s is 5 s on", 50.0, 0.0, 5.0),
    ("100 % is on for the whole period", 100.0, 0.0, 10.0),
    ("150 % clamps to 100 %", 150.0, 0.0, 10.0),
    ("-5 % clamps to 0 %", -5.0, 0.0, 0.0),
    ("3 % would be a 0.3 s pulse, under the 0.5 s minimum: off", 3.0, 0.5, 0.0),
    ("5 % is exactly the 0.5 s minimum pulse: kept", 5.0, 0.5, 0.5),
    ("97 % would leave a 0.3 s gap, under the minimum: on", 97.0, 0.5, 10.0),
    ("95 % leaves exactly a 0.5 s gap: kept", 95.0, 0.5, 9.5),
]


@pytest.mark.parametrize(
    ("level_pct", "min_pulse_s", "on_s"),
    [row[1:] for row in ON_TIME_TABLE],
    ids=[row[0] for row in ON_TIME_TABLE],
)
def test_duty_cycle_on_time_table(level_pct: float, min_pulse_s: float, on_s: float) -> None:
    timing = TimeProportioning(period_s=10.0, min_pulse_s=min_pulse_s)
    assert timing.on_time_s(level_pct) == pytest.approx(on_s)
    assert timing.off_time_s(level_pct) == pytest.approx(10.0 - on_s)


# Multi-cycle: (now s, level %, relay on?, why). Period 10 s, no minimum pulse.
STEP_TABLE = [
    (0.0, 30.0, True, "period 1 starts: on for 30 % of 10 s = 3 s"),
    (2.9, 30.0, True, "still inside the 3 s on-time"),
    (3.0, 30.0, False, "the 3 s on-time is over"),
    (5.0, 80.0, False, "a higher level waits for the next period: one pulse per period"),
    (10.0, 80.0, True, "period 2 starts with the new level: on for 8 s"),
    (17.9, 80.0, True, "inside the 8 s on-time"),
    (18.0, 80.0, False, "the 8 s on-time is over"),
    (20.0, 80.0, True, "period 3 starts on"),
    (21.0, 5.0, False, "a lower level applies at once: its 0.5 s is already used up"),
    (21.5, 80.0, False, "raising it again in the same period does not switch on twice"),
    (30.0, 5.0, True, "period 4: a 0.5 s pulse"),
    (30.5, 5.0, False, "the pulse is over"),
    (47.0, 100.0, True, "a late call lands in period 5 (40..50 s) of the grid: 100 % is on"),
    (51.0, 0.0, False, "0 % is off at once"),
]


def test_duty_cycle_multi_cycle_table() -> None:
    timing = TimeProportioning(period_s=10.0)
    state = DutyState()
    for now_s, level_pct, expected, why in STEP_TABLE:
        on, state = timing.step(level_pct, now_s, state)
        assert on is expected, f"t={now_s} s, {level_pct} %: {why}"
    assert state.period_start_s == 50.0


def test_duty_cycle_clock_going_back_restarts_the_period() -> None:
    timing = TimeProportioning(period_s=10.0)
    on, state = timing.step(50.0, 100.0, DutyState())
    assert on
    on, state = timing.step(50.0, 96.0, state)  # monotonic clock of another process
    assert on
    assert state == DutyState(period_start_s=96.0, on_time_s=5.0)


def test_duty_cycle_refuses_nan_level() -> None:
    with pytest.raises(ValueError, match="NaN"):
        TimeProportioning().step(math.nan, 0.0, DutyState())


@pytest.mark.parametrize(
    ("period_s", "min_pulse_s"), [(0.0, 0.0), (-1.0, 0.0), (math.nan, 0.0), (10.0, 5.0)]
)
def test_duty_cycle_rejects_bad_timing(period_s: float, min_pulse_s: float) -> None:
    with pytest.raises(ValueError, match="period_s"):
        TimeProportioning(period_s=period_s, min_pulse_s=min_pulse_s)


# ----------------------------------------------------------------------------- fixtures


class Output:
    """The simulated heater: records every level the controller outputs."""

    def __init__(self) -> None:
        self.levels: list[float] = []

    def __call__(self, level_pct: float) -> None:
        self.levels.append(level_pct)


@pytest.fixture
def output() -> Output:
    return Output()


@pytest.fixture
async def pwm_sim(output: Output) -> AsyncIterator[PwmControllerSimulator]:
    simulator = PwmControllerSimulator(output, unit_id=3, register=REGISTER)
    yield simulator
    await simulator.stop()


@pytest.fixture
async def pwm_port(pwm_sim: PwmControllerSimulator) -> int:
    return await pwm_sim.start_tcp(LOCALHOST, 0)


@pytest.fixture
async def controller(
    pwm_port: int, closing: Callable[[ModbusPwmController], ModbusPwmController]
) -> ModbusPwmController:
    return closing(
        ModbusPwmController.tcp(
            LOCALHOST, pwm_port, unit_id=3, register=REGISTER, timeout_s=TIMEOUT_S, name="buffer"
        )
    )


# ----------------------------------------------------------------------------- Modbus PWM controller


async def test_set_level_writes_permille_and_reads_back(
    controller: ModbusPwmController, pwm_sim: PwmControllerSimulator, output: Output
) -> None:
    assert isinstance(controller, PowerLevel)
    await controller.set_level_pct(42.5)
    assert pwm_sim.raw == 425
    assert output.levels == [42.5]
    assert (pwm_sim.request_count(6), pwm_sim.request_count(3)) == (1, 1)  # write + read-back
    assert await controller.read_level_pct() == 42.5
    await controller.set_level_pct(250.0)  # clamped to full power
    assert pwm_sim.raw == 1000
    assert controller.readback_mismatches == controller.malformed_frames == 0


async def test_set_level_over_rtu(
    pwm_sim: PwmControllerSimulator,
    serial_pair: tuple[str, str],
    closing: Callable[[ModbusPwmController], ModbusPwmController],
) -> None:
    sim_end, driver_end = serial_pair
    await pwm_sim.start_rtu(sim_end, baudrate=19200)
    controller = closing(
        ModbusPwmController.rtu(
            driver_end, baudrate=19200, unit_id=3, register=REGISTER, timeout_s=1.0
        )
    )
    await controller.set_level_pct(7.0)
    assert pwm_sim.level_pct == 7.0
    assert await controller.read_level_pct() == 7.0


async def test_nan_level_is_refused_before_any_io(
    controller: ModbusPwmController, pwm_sim: PwmControllerSimulator
) -> None:
    with pytest.raises(ValueError, match="NaN"):
        await controller.set_level_pct(math.nan)
    assert pwm_sim.connections_accepted == 0


async def test_wrong_register_address_is_exception_2(
    pwm_port: int, closing: Callable[[ModbusPwmController], ModbusPwmController]
) -> None:
    controller = closing(
        ModbusPwmController.tcp(LOCALHOST, pwm_port, unit_id=3, timeout_s=TIMEOUT_S)
    )
    with pytest.raises(ModbusExceptionResponse, match="exception 0x02"):
        await controller.set_level_pct(10.0)  # default address 0; the simulator serves 0x0100
    assert controller.malformed_frames == 0


async def test_stuck_output_is_detected_by_the_read_back(
    controller: ModbusPwmController, pwm_sim: PwmControllerSimulator, output: Output
) -> None:
    await controller.set_level_pct(20.0)
    pwm_sim.faults.stuck = True
    with pytest.raises(DeviceProtocolError, match="wrote 600, reads back 200"):
        await controller.set_level_pct(60.0)
    assert controller.readback_mismatches == 1
    assert output.levels == [20.0]
    pwm_sim.faults.stuck = False
    await controller.set_level_pct(60.0)
    assert output.levels == [20.0, 60.0]


async def test_out_of_range_level_is_rejected_counted_then_recovers(
    controller: ModbusPwmController, pwm_sim: PwmControllerSimulator
) -> None:
    pwm_sim.faults.out_of_range = True
    with pytest.raises(DeviceProtocolError, match="65535 above full scale 1000"):
        await controller.read_level_pct()
    with pytest.raises(DeviceProtocolError, match="above full scale"):
        await controller.set_level_pct(30.0)
    assert controller.malformed_frames == 2
    pwm_sim.faults.out_of_range = False
    assert await controller.read_level_pct() == 30.0  # the write itself had gone through


async def test_garbage_answers_are_rejected_counted_then_recover(
    controller: ModbusPwmController, pwm_sim: PwmControllerSimulator
) -> None:
    pwm_sim.faults.garbage = True
    with pytest.raises(DeviceProtocolError, match="does not match the request"):
        await controller.set_level_pct(50.0)
    with pytest.raises(DeviceProtocolError, match="got 0 registers"):
        await controller.read_level_pct()
    assert controller.malformed_frames == 2
    pwm_sim.faults.garbage = False
    await controller.set_level_pct(55.0)
    assert pwm_sim.level_pct == 55.0


@pytest.mark.parametrize("fault", ["silent", "slow"])
async def test_no_timely_answer_times_out_then_recovers(
    controller: ModbusPwmController, pwm_sim: PwmControllerSimulator, fault: str
) -> None:
    if fault == "silent":
        pwm_sim.faults.silent = True
    else:
        pwm_sim.faults.delay_s = 5.0  # released by stop() at teardown
    with pytest.raises(DeviceTimeout):
        await controller.set_level_pct(10.0)
    pwm_sim.faults.silent, pwm_sim.faults.delay_s = False, 0.0
    await controller.set_level_pct(10.0)
    assert await controller.read_level_pct() == 10.0


async def test_dropped_connection_costs_one_request_then_reconnects(
    controller: ModbusPwmController, pwm_sim: PwmControllerSimulator
) -> None:
    await controller.set_level_pct(1.0)
    assert await pwm_sim.drop_connections() == 1
    with pytest.raises(DeviceUnavailable, match="lost"):
        await controller.set_level_pct(2.0)
    await controller.set_level_pct(2.0)
    assert pwm_sim.level_pct == 2.0
    assert pwm_sim.connections_accepted == 2


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda c: c.write_register(0x0100, 1001, device_id=3), 3),  # beyond full scale
        (lambda c: c.read_holding_registers(0x0100, count=2, device_id=3), 2),
        (lambda c: c.read_coils(0, count=1, device_id=3), 1),
        (lambda c: c.read_input_registers(0, count=1, device_id=3), 1),
    ],
    ids=["over-full-scale", "past-the-register", "fc01", "fc04"],
)
async def test_pwm_simulator_refuses_bad_requests(
    pwm_port: int,
    pwm_sim: PwmControllerSimulator,
    call: Callable[[AsyncModbusTcpClient], object],
    code: int,
) -> None:
    client = AsyncModbusTcpClient(LOCALHOST, port=pwm_port, timeout=1, retries=0)
    try:
        assert await client.connect()
        response = await call(client)  # type: ignore[misc]
    finally:
        client.close()
    assert response.isError()
    assert response.exception_code == code
    assert pwm_sim.raw == 0


# ----------------------------------------------------------------------------- relay-driven heater


class Contacts:
    def __init__(self) -> None:
        self.changes: list[tuple[bool, ...]] = []

    def __call__(self, relays: tuple[bool, ...]) -> None:
        self.changes.append(relays)


@pytest.fixture
async def relay_sim() -> AsyncIterator[tuple[RelayModuleSimulator, Contacts]]:
    contacts = Contacts()
    simulator = RelayModuleSimulator(contacts, lambda: (False,) * 8)
    yield simulator, contacts
    await simulator.stop()


@pytest.fixture
async def relays(
    relay_sim: tuple[RelayModuleSimulator, Contacts],
) -> AsyncIterator[RelayModule]:
    port = await relay_sim[0].start_tcp(LOCALHOST, 0)
    module = RelayModule.tcp(LOCALHOST, port, timeout_s=TIMEOUT_S)
    yield module
    await module.close()


async def test_relay_heater_switches_on_the_duty_cycle(
    relays: RelayModule, relay_sim: tuple[RelayModuleSimulator, Contacts]
) -> None:
    sim, contacts = relay_sim
    heater = RelayDutyHeater(relays, 2, timing=TimeProportioning(period_s=10.0))
    assert isinstance(heater, PowerLevel)
    await heater.set_level_pct(30.0)
    outputs = [await heater.apply(t) for t in (0.0, 0.5, 2.5, 3.0, 6.0, 10.0)]
    assert outputs == [True, True, True, False, False, True]
    on, off = (False, True, False, False), (False, False, False, False)
    assert contacts.changes == [on, off, on]
    assert sim.request_count(5) == 3  # only real changes are written
    assert heater.relay_on is True


async def test_relay_heater_rewrites_after_a_failed_switch(
    relays: RelayModule, relay_sim: tuple[RelayModuleSimulator, Contacts]
) -> None:
    sim, _ = relay_sim
    heater = RelayDutyHeater(relays, 1)
    await heater.set_level_pct(100.0)
    sim.faults.silent = True
    with pytest.raises(DeviceTimeout):
        await heater.apply(0.0)
    assert heater.relay_on is None  # unknown: the write may or may not have happened
    sim.faults.silent = False
    assert await heater.apply(0.5) is True
    assert sim.relays == (True, False, False, False)


async def test_relay_heater_refuses_bad_channel_and_nan(relays: RelayModule) -> None:
    with pytest.raises(ValueError, match="relay channel"):
        RelayDutyHeater(relays, 5)
    heater = RelayDutyHeater(relays, 4)
    with pytest.raises(ValueError, match="NaN"):
        await heater.set_level_pct(math.nan)
    assert heater.level_pct == 0.0
