"""SunSpec inverter driver against the SunSpec inverter simulator: real pymodbus on both sides.

TCP on 127.0.0.1 with ephemeral ports; RTU through two raw pty pairs joined back to back.
The simulator runs its reversion clock 10x fast (``revert_time_scale=0.1``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import AsyncIterator, Callable

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from appliance.drivers.inverter_types import (
    Inverter,
    InverterReading,
    InverterState,
    PowerControl,
    clamp_setpoint_w,
)
from appliance.drivers.modbus_link import ModbusExceptionResponse
from appliance.drivers.sunspec_inverter import (
    SunSpecInverter,
    SunSpecModel,
    SunSpecPoint,
    decode_raw,
    encode_raw,
    load_sunspec_models,
)
from appliance.errors import DeviceProtocolError, DeviceTimeout, DeviceUnavailable, NotSupported
from appliance.simulation.devices.sunspec_inverter_sim import (
    InverterValues,
    SunSpecInverterSimulator,
    inverter_values_from_node,
)
from appliance.simulation.plant import BmsFlag, NodeState

LOCALHOST = "127.0.0.1"
TIMEOUT_S = 0.3
SCALE = 0.1  # simulator reversion seconds per WSetRvrtTms second

VALUES = InverterValues(
    ac_power_w=1234.0,
    soc_pct=55.5,
    soh_pct=98.0,
    battery_voltage_v=52.3,
    battery_current_a=24.1,
    max_charge_w=4000.0,
    max_discharge_w=4500.0,
    charge_current_limit_a=80.0,
    discharge_current_limit_a=90.0,
)


class Plant:
    """Settable node_source() and recording on_setpoint()."""

    def __init__(self, values: InverterValues = VALUES) -> None:
        self.values = values
        self.setpoints: list[float] = []
        self.error: Exception | None = None

    def source(self) -> InverterValues:
        if self.error is not None:
            raise self.error
        return self.values

    def on_setpoint(self, watts: float) -> None:
        self.setpoints.append(watts)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def plant() -> Plant:
    return Plant()


@pytest.fixture
async def sim(plant: Plant) -> AsyncIterator[SunSpecInverterSimulator]:
    simulator = SunSpecInverterSimulator(
        plant.source, plant.on_setpoint, revert_time_scale=SCALE, serial_number="SN-42"
    )
    yield simulator
    await simulator.stop()


@pytest.fixture
async def tcp_port(sim: SunSpecInverterSimulator) -> int:
    return await sim.start_tcp(LOCALHOST, 0)


@pytest.fixture
async def inverter(
    tcp_port: int, closing: Callable[[SunSpecInverter], SunSpecInverter]
) -> SunSpecInverter:
    return closing(
        SunSpecInverter.tcp(
            LOCALHOST, tcp_port, timeout_s=TIMEOUT_S, name="inv1", revert_timeout_s=2
        )
    )


def point_address(sim: SunSpecInverterSimulator, model_id: int, point: str) -> int:
    return sim.model_address(model_id) + load_sunspec_models()[model_id].point(point).offset


async def read_point(
    client: AsyncModbusTcpClient, sim: SunSpecInverterSimulator, model_id: int, point: str
) -> int | None:
    spec = load_sunspec_models()[model_id].point(point)
    response = await client.read_holding_registers(
        point_address(sim, model_id, point), count=spec.size, device_id=1
    )
    assert not response.isError()
    return decode_raw(spec, response.registers)


def expected_reading(values: InverterValues, state: InverterState) -> InverterReading:
    return InverterReading(
        active_power_w=values.ac_power_w,
        setpoint_w=None,
        state=state,
        max_charge_power_w=values.max_charge_w,
        max_discharge_power_w=values.max_discharge_w,
        soc_pct=values.soc_pct,
    )


# ----------------------------------------------------------------------------- tables


def test_model_tables_match_the_reference_lengths_and_offsets() -> None:
    models = load_sunspec_models()
    assert {mid: m.length for mid, m in models.items()} == {
        1: 66, 701: 153, 702: 50, 704: 65, 713: 7, 802: 62
    }  # fmt: skip
    m704 = models[704]
    assert [(p, m704.point(p).offset) for p in ("WSetEna", "WSet", "WSetRvrtTms", "WSet_SF")] == [
        ("WSetEna", 22), ("WSet", 24), ("WSetRvrtTms", 31), ("WSet_SF", 55)
    ]  # fmt: skip
    assert models[701].point("W").sf == "W_SF"
    assert models[802].point("SoC").mandatory


@pytest.mark.parametrize(
    ("ptype", "raw", "words"),
    [
        ("int16", -2, [0xFFFE]),
        ("int16", None, [0x8000]),
        ("uint16", 65534, [0xFFFE]),
        ("int32", -5000, [0xFFFF, 0xEC78]),
        ("uint32", None, [0xFFFF, 0xFFFF]),
        ("sunssf", -2, [0xFFFE]),
        ("uint64", 1, [0, 0, 0, 1]),
    ],
)
def test_codec_round_trip_and_not_implemented_markers(
    ptype: str, raw: int | None, words: list[int]
) -> None:
    size = {"int32": 2, "uint32": 2, "uint64": 4}.get(ptype, 1)
    point = SunSpecPoint("X", 2, ptype, size)
    assert encode_raw(point, raw) == words
    assert decode_raw(point, words) == raw


def test_codec_refuses_values_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        encode_raw(SunSpecPoint("W", 2, "int16", 1), 40000)
    with pytest.raises(ValueError, match="does not fit"):
        encode_raw(SunSpecPoint("WMax", 2, "uint16", 1), 0xFFFF)  # the "not implemented" marker


@pytest.mark.parametrize(
    ("watts", "expected"),
    [(1000.0, 1000.0), (9000.0, 4500.0), (-9000.0, -4000.0), (-0.0, 0.0)],
    ids=["inside", "discharge-limit", "charge-limit", "zero"],
)
def test_clamp_setpoint(watts: float, expected: float) -> None:
    assert clamp_setpoint_w(watts, max_charge_w=4000.0, max_discharge_w=4500.0) == expected


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_clamp_setpoint_refuses_non_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        clamp_setpoint_w(bad, max_charge_w=1.0, max_discharge_w=1.0)


def test_inverter_values_from_node() -> None:
    node = NodeState(
        node=1, soc_pct=42.0, soh_pct=97.0, voltage_v=51.0, current_a=-20.0, dc_power_w=-1020.0,
        ac_power_w=-1070.0, setpoint_w=-1100.0, cell_voltage_min_v=3.18, cell_voltage_max_v=3.2,
        temperature_min_c=20.0, temperature_max_c=24.0, charge_current_limit_a=50.0,
        discharge_current_limit_a=60.0, charge_voltage_limit_v=56.8,
        discharge_voltage_limit_v=44.8, max_charge_w=2700.0, max_discharge_w=2900.0,
        alarm_flags=BmsFlag(0), warning_flags=BmsFlag.OVERTEMPERATURE,
    )  # fmt: skip
    values = inverter_values_from_node(node)
    assert (values.ac_power_w, values.soc_pct, values.battery_current_a) == (-1070.0, 42.0, -20.0)
    assert (values.max_charge_w, values.max_discharge_w, values.fault) == (2700.0, 2900.0, False)
    alarmed = dataclasses.replace(node, alarm_flags=BmsFlag.CELL_UNDERVOLTAGE)
    assert inverter_values_from_node(alarmed).fault


# ----------------------------------------------------------------------------- discovery


async def test_discovery_finds_every_model(
    inverter: SunSpecInverter, sim: SunSpecInverterSimulator
) -> None:
    assert isinstance(inverter, Inverter)
    assert isinstance(inverter, PowerControl)
    await inverter.connect()
    assert inverter.model_addresses == {
        mid: sim.model_address(mid) for mid in (1, 701, 702, 704, 713, 802)
    }
    assert sim.model_address(1) == 40002  # right after "SunS"
    info = inverter.device_info
    assert info is not None
    assert (info.manufacturer, info.serial_number) == ("Appliance", "SN-42")


@pytest.mark.parametrize("missing", [704, 701])
async def test_discovery_without_704_or_701_is_not_supported(
    plant: Plant, closing: Callable[[SunSpecInverter], SunSpecInverter], missing: int
) -> None:
    served = [m for m in (1, 701, 702, 704, 713, 802) if m != missing]
    sim = SunSpecInverterSimulator(plant.source, plant.on_setpoint, served_models=served)
    try:
        port = await sim.start_tcp(LOCALHOST, 0)
        inverter = closing(SunSpecInverter.tcp(LOCALHOST, port, timeout_s=TIMEOUT_S))
        with pytest.raises(NotSupported, match=f"model\\(s\\) {missing} missing"):
            await inverter.read()
    finally:
        await sim.stop()


async def test_discovery_refuses_a_704_of_another_length(
    plant: Plant, closing: Callable[[SunSpecInverter], SunSpecInverter]
) -> None:
    models = dict(load_sunspec_models())
    m704 = models[704]
    extra = SunSpecPoint("Extra", m704.length + 2, "uint16", 1)
    models[704] = SunSpecModel(704, m704.name, m704.length + 1, (*m704.points, extra))
    sim = SunSpecInverterSimulator(plant.source, plant.on_setpoint, models=models)
    try:
        port = await sim.start_tcp(LOCALHOST, 0)
        inverter = closing(SunSpecInverter.tcp(LOCALHOST, port, timeout_s=TIMEOUT_S))
        with pytest.raises(NotSupported, match="model 704 has L=66"):
            await inverter.set_active_power_w(100.0)
    finally:
        await sim.stop()
    assert plant.setpoints == []


@pytest.mark.parametrize("marker", [[0x5375, 0x0000], None], ids=["wrong-marker", "no-registers"])
async def test_device_without_sunspec_map_is_not_supported(
    closing: Callable[[SunSpecInverter], SunSpecInverter], marker: list[int] | None
) -> None:
    start = 40000 if marker is not None else 0
    data = SimData(start, count=4, values=marker[0] if marker else 0, datatype=DataType.REGISTERS)
    server = ModbusTcpServer(SimDevice(id=1, simdata=[data]), address=(LOCALHOST, 0))
    await server.serve_forever(background=True)
    try:
        listener = server.transport
        assert isinstance(listener, asyncio.Server)
        port = int(listener.sockets[0].getsockname()[1])
        inverter = closing(SunSpecInverter.tcp(LOCALHOST, port, timeout_s=TIMEOUT_S))
        with pytest.raises(NotSupported, match="40000"):
            await inverter.read()
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]


# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize("power_sf", [0, 1])
async def test_reads_equal_the_simulator_values_within_resolution(
    plant: Plant, closing: Callable[[SunSpecInverter], SunSpecInverter], power_sf: int
) -> None:
    plant.values = dataclasses.replace(VALUES, ac_power_w=-1234.0)
    sim = SunSpecInverterSimulator(plant.source, plant.on_setpoint, power_sf=power_sf)
    try:
        port = await sim.start_tcp(LOCALHOST, 0)
        reading = await closing(SunSpecInverter.tcp(LOCALHOST, port, timeout_s=TIMEOUT_S)).read()
    finally:
        await sim.stop()
    resolution = 10.0**power_sf / 2
    assert reading.active_power_w == pytest.approx(-1234.0, abs=resolution)
    assert reading.active_power_w < 0  # SunSpec absorption = charging = negative here too
    assert reading.state is InverterState.CHARGING
    assert reading.max_charge_power_w == pytest.approx(4000.0, abs=resolution)
    assert reading.max_discharge_power_w == pytest.approx(4500.0, abs=resolution)
    assert reading.soc_pct == pytest.approx(55.5, abs=0.05)
    assert reading.setpoint_w is None  # WSetEna = 0 at power-up


async def test_large_inverter_gets_a_coarser_power_scale_factor(
    plant: Plant, closing: Callable[[SunSpecInverter], SunSpecInverter]
) -> None:
    plant.values = dataclasses.replace(
        VALUES, ac_power_w=45678.0, max_charge_w=60000.0, max_discharge_w=55555.0
    )
    sim = SunSpecInverterSimulator(
        plant.source, plant.on_setpoint, rated_power_w=60000.0, capacity_wh=1_000_000.0
    )
    try:
        port = await sim.start_tcp(LOCALHOST, 0)
        inverter = closing(SunSpecInverter.tcp(LOCALHOST, port, timeout_s=TIMEOUT_S))
        reading = await inverter.read()
        assert await inverter.set_active_power_w(33333.0) == 33330.0
    finally:
        await sim.stop()
    assert reading.active_power_w == pytest.approx(45678.0, abs=5.0)  # W_SF = 1: 10 W steps
    assert reading.max_charge_power_w == 60000.0
    assert reading.max_discharge_power_w == pytest.approx(55555.0, abs=5.0)
    assert plant.setpoints == [33330.0]  # WSet in 10 W steps too


async def test_read_is_three_requests(
    inverter: SunSpecInverter, sim: SunSpecInverterSimulator
) -> None:
    assert await inverter.read() == expected_reading(VALUES, InverterState.DISCHARGING)
    before = sim.request_count(3)
    await inverter.read()
    assert sim.request_count(3) - before == 3  # 701 | 702 + 704 | 713 + 802


@pytest.mark.parametrize(
    ("changes", "state"),
    [
        ({"ac_power_w": 0.0}, InverterState.STANDBY),
        ({"ac_power_w": 5.0}, InverterState.STANDBY),
        ({"ac_power_w": -800.0}, InverterState.CHARGING),
        ({"ac_power_w": 800.0}, InverterState.DISCHARGING),
        ({"fault": True}, InverterState.FAULT),
        ({"running": False, "ac_power_w": 0.0}, InverterState.OFF),
    ],
    ids=["idle", "below-idle-band", "charging", "discharging", "fault", "off"],
)
async def test_state_follows_the_inverter(
    inverter: SunSpecInverter, plant: Plant, changes: dict[str, object], state: InverterState
) -> None:
    plant.values = dataclasses.replace(VALUES, **changes)  # type: ignore[arg-type]
    assert (await inverter.read()).state is state


async def test_soc_missing_without_713_and_802_is_none(
    plant: Plant, closing: Callable[[SunSpecInverter], SunSpecInverter]
) -> None:
    sim = SunSpecInverterSimulator(
        plant.source, plant.on_setpoint, served_models=(1, 701, 702, 704)
    )
    try:
        port = await sim.start_tcp(LOCALHOST, 0)
        reading = await closing(SunSpecInverter.tcp(LOCALHOST, port, timeout_s=TIMEOUT_S)).read()
    finally:
        await sim.stop()
    assert reading.soc_pct is None
    assert reading.max_discharge_power_w == 4500.0  # 702 alone carries the limits


# ----------------------------------------------------------------------------- control


async def test_setpoint_reaches_the_plant_and_reads_back(
    inverter: SunSpecInverter, plant: Plant, sim: SunSpecInverterSimulator
) -> None:
    assert await inverter.set_active_power_w(2500.0) == 2500.0
    assert await inverter.set_active_power_w(-1800.0) == -1800.0
    assert plant.setpoints == [2500.0, -1800.0]
    assert sim.setpoint_w == -1800.0
    assert (await inverter.read()).setpoint_w == -1800.0


async def test_percent_mode_writes_wsetpct(
    tcp_port: int, plant: Plant, closing: Callable[[SunSpecInverter], SunSpecInverter]
) -> None:
    inverter = closing(
        SunSpecInverter.tcp(LOCALHOST, tcp_port, timeout_s=TIMEOUT_S, setpoint_mode="percent")
    )
    written = await inverter.set_active_power_w(-1234.0)
    # WSetPct_SF = -2: 0.01 % of WMax 5000 W = 0.5 W resolution.
    assert written == pytest.approx(-1234.0, abs=0.5)
    assert plant.setpoints == [pytest.approx(-1234.0, abs=0.5)]
    assert (await inverter.read()).setpoint_w == pytest.approx(-1234.0, abs=0.5)


async def test_setpoint_write_arms_the_reversion_timer(
    inverter: SunSpecInverter, sim: SunSpecInverterSimulator, raw_client: AsyncModbusTcpClient
) -> None:
    await inverter.set_active_power_w(1000.0)
    assert await read_point(raw_client, sim, 704, "WSetRvrtTms") == 2
    assert await read_point(raw_client, sim, 704, "WSetEnaRvrt") == 1
    assert await read_point(raw_client, sim, 704, "WSetRvrt") == 0
    assert await read_point(raw_client, sim, 704, "WSetRvrtRem") in (1, 2)


async def test_revert_timeout_returns_to_zero_when_writes_stop(
    inverter: SunSpecInverter, plant: Plant, sim: SunSpecInverterSimulator
) -> None:
    await inverter.set_active_power_w(3000.0)
    await asyncio.sleep(2 * SCALE + 0.15)
    assert plant.setpoints == [3000.0, 0.0]
    assert sim.reversions == 1
    assert sim.setpoint_w == 0.0
    assert (await inverter.read()).setpoint_w == 0.0  # the inverter reports the fallback


async def test_regular_writes_prevent_reversion(
    inverter: SunSpecInverter, plant: Plant, sim: SunSpecInverterSimulator
) -> None:
    for _ in range(6):  # 0.36 s of writes, each within the 0.2 s reversion time
        await inverter.set_active_power_w(1500.0)
        await asyncio.sleep(0.06)
    assert sim.reversions == 0
    assert plant.setpoints == [1500.0] * 6


async def test_setpoints_are_clamped_to_the_limits(inverter: SunSpecInverter, plant: Plant) -> None:
    plant.values = dataclasses.replace(VALUES, max_discharge_w=3000.0, max_charge_w=2000.0)
    await inverter.read()
    assert await inverter.set_active_power_w(5000.0) == 3000.0
    assert await inverter.set_active_power_w(-9999.0) == -2000.0
    assert plant.setpoints == [3000.0, -2000.0]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
async def test_non_finite_setpoints_are_refused(
    inverter: SunSpecInverter, plant: Plant, sim: SunSpecInverterSimulator, bad: float
) -> None:
    with pytest.raises(ValueError, match="finite"):
        await inverter.set_active_power_w(bad)
    assert plant.setpoints == []
    assert sim.request_count(16) == 0


async def test_out_of_range_write_answers_exception_3_as_protocol_error(
    inverter: SunSpecInverter,
    plant: Plant,
    sim: SunSpecInverterSimulator,
    raw_client: AsyncModbusTcpClient,
) -> None:
    await inverter.read()  # the driver learns WMax = 5000 W
    # Another master lowers 702 WMax; the driver still clamps to what it read.
    wmax = load_sunspec_models()[702].point("WMax")
    written = await raw_client.write_registers(
        point_address(sim, 702, "WMax"), encode_raw(wmax, 2000), device_id=1
    )
    assert not written.isError()
    with pytest.raises(ModbusExceptionResponse) as info:
        await inverter.set_active_power_w(4000.0)
    assert isinstance(info.value, DeviceProtocolError)
    assert info.value.exception_code == 3
    assert inverter.exception_responses == 1
    assert plant.setpoints == []
    await inverter.read()  # recovery: the next read brings the new limit
    assert await inverter.set_active_power_w(4000.0) == 2000.0
    assert plant.setpoints == [2000.0]


async def test_release_disables_remote_control(
    inverter: SunSpecInverter, plant: Plant, sim: SunSpecInverterSimulator
) -> None:
    await inverter.set_active_power_w(1000.0)
    await inverter.release()
    assert plant.setpoints == [1000.0, 0.0]
    assert (await inverter.read()).setpoint_w is None
    await asyncio.sleep(2 * SCALE + 0.1)
    assert sim.reversions == 0  # released: no timer left running


@pytest.mark.parametrize(
    ("model_id", "point", "words", "code"),
    [
        (701, "W", [100], 2),  # read-only
        (702, "WChaRteMax", [100], 2),  # published BMS limit, read-only in the simulator
        (704, "WSet", [0], 2),  # half of an int32
        (704, "WSetEna", [7], 3),  # not an enum value
        (704, "WSetMod", [5], 3),
        (704, "WSet", [0, 6000], 3),  # above the 5000 W rating
        (704, "WSetPct", [0x8000 - 1], 3),  # 327.67 %
        (702, "WMax", [6000], 3),  # above WMaxRtg
    ],
)
async def test_simulator_refuses_bad_writes(
    raw_client: AsyncModbusTcpClient,
    sim: SunSpecInverterSimulator,
    plant: Plant,
    model_id: int,
    point: str,
    words: list[int],
    code: int,
) -> None:
    address = point_address(sim, model_id, point)
    response = await raw_client.write_registers(address, words, device_id=1)
    assert response.isError()
    assert response.exception_code == code
    assert plant.setpoints == []


async def test_simulator_refuses_input_register_reads(raw_client: AsyncModbusTcpClient) -> None:
    response = await raw_client.read_input_registers(40000, count=2, device_id=1)
    assert response.exception_code == 1


# ----------------------------------------------------------------------------- faults


async def test_silent_inverter_times_out_then_recovers(
    inverter: SunSpecInverter, sim: SunSpecInverterSimulator
) -> None:
    await inverter.read()
    sim.faults.silent = True
    with pytest.raises(DeviceTimeout):
        await inverter.read()
    sim.faults.silent = False
    assert (await inverter.read()).active_power_w == 1234.0


async def test_lost_link_lets_the_inverter_revert_by_itself(
    inverter: SunSpecInverter, plant: Plant, sim: SunSpecInverterSimulator
) -> None:
    await inverter.set_active_power_w(2000.0)
    sim.faults.silent = True  # the appliance's writes no longer arrive
    with pytest.raises(DeviceTimeout):
        await inverter.set_active_power_w(2100.0)
    await asyncio.sleep(2 * SCALE + 0.1)
    assert plant.setpoints == [2000.0, 0.0]
    sim.faults.silent = False
    assert await inverter.set_active_power_w(2100.0) == 2100.0
    assert plant.setpoints[-1] == 2100.0


async def test_slow_inverter_times_out_then_recovers(
    inverter: SunSpecInverter, sim: SunSpecInverterSimulator
) -> None:
    await inverter.read()
    sim.faults.delay_s = TIMEOUT_S + 0.2
    with pytest.raises(DeviceTimeout):
        await inverter.read()
    sim.faults.delay_s = 0.0
    assert (await inverter.read()).soc_pct == 55.5


async def test_slightly_slow_inverter_still_answers(
    inverter: SunSpecInverter, sim: SunSpecInverterSimulator
) -> None:
    sim.faults.delay_s = 0.02
    assert (await inverter.read()).state is InverterState.DISCHARGING


async def test_garbage_over_tcp_is_rejected_and_counted(
    inverter: SunSpecInverter, sim: SunSpecInverterSimulator, plant: Plant
) -> None:
    await inverter.read()
    sim.faults.garbage = True
    with pytest.raises(DeviceProtocolError, match="got 116 registers, expected 117"):
        await inverter.read()
    with pytest.raises(DeviceProtocolError, match="answer echoes"):
        await inverter.set_active_power_w(500.0)
    assert inverter.malformed_frames == 2
    sim.faults.garbage = False
    assert (await inverter.read()).active_power_w == 1234.0
    assert inverter.malformed_frames == 2


async def test_out_of_range_values_are_protocol_errors(
    inverter: SunSpecInverter, sim: SunSpecInverterSimulator
) -> None:
    await inverter.read()
    sim.faults.out_of_range = True
    with pytest.raises(DeviceProtocolError, match="inv1: model 701: W = 32767"):
        await inverter.read()
    assert inverter.malformed_frames == 1
    sim.faults.out_of_range = False
    assert (await inverter.read()).active_power_w == 1234.0


async def test_soc_out_of_range_is_a_protocol_error(
    inverter: SunSpecInverter, plant: Plant
) -> None:
    plant.values = dataclasses.replace(VALUES, soc_pct=101.0)
    with pytest.raises(DeviceProtocolError, match=r"SoC = 101\.0 % outside"):
        await inverter.read()


async def test_dropped_connection_is_reopened(
    inverter: SunSpecInverter, sim: SunSpecInverterSimulator
) -> None:
    await inverter.read()
    assert await sim.drop_connections() == 1
    await asyncio.sleep(0.05)  # let the FIN arrive
    try:
        reading = await inverter.read()
    except DeviceUnavailable:  # a request already on its way when the FIN came
        reading = await inverter.read()
    assert reading.active_power_w == 1234.0


async def test_plant_failure_answers_exception_4_then_recovers(
    inverter: SunSpecInverter, plant: Plant
) -> None:
    await inverter.read()
    plant.error = RuntimeError("plant model crashed")
    with pytest.raises(ModbusExceptionResponse, match="exception 0x04"):
        await inverter.read()
    plant.error = None
    assert (await inverter.read()).soc_pct == 55.5


async def test_simulator_down_is_unavailable_then_rediscovered(
    inverter: SunSpecInverter, sim: SunSpecInverterSimulator, tcp_port: int
) -> None:
    await inverter.read()
    await sim.stop()
    with pytest.raises(DeviceUnavailable):
        await inverter.read()
    assert inverter.model_addresses == {}  # discovery is redone after the link was lost
    assert await sim.start_tcp(LOCALHOST, tcp_port) == tcp_port
    assert (await inverter.read()).state is InverterState.DISCHARGING
    assert inverter.model_addresses[704] == sim.model_address(704)


# ----------------------------------------------------------------------------- RTU


async def test_rtu_read_write_and_bad_crc(
    plant: Plant,
    serial_pair: tuple[str, str],
    closing: Callable[[SunSpecInverter], SunSpecInverter],
) -> None:
    sim_end, driver_end = serial_pair
    sim = SunSpecInverterSimulator(plant.source, plant.on_setpoint, unit_id=3)
    try:
        await sim.start_rtu(sim_end, baudrate=19200)
        inverter = closing(
            SunSpecInverter.rtu(driver_end, baudrate=19200, unit_id=3, timeout_s=0.5)
        )
        assert await inverter.read() == expected_reading(VALUES, InverterState.DISCHARGING)
        assert await inverter.set_active_power_w(-700.0) == -700.0
        assert plant.setpoints == [-700.0]
        sim.faults.garbage = True  # broken CRC: pymodbus drops the frame
        with pytest.raises(DeviceTimeout):
            await inverter.read()
        sim.faults.garbage = False
        assert (await inverter.read()).setpoint_w == -700.0
    finally:
        await sim.stop()
