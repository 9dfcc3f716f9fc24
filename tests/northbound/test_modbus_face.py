"""The Modbus slave face over Modbus/TCP on 127.0.0.1: reads, writes and their exceptions.

Clients: pymodbus' own client where it can send the request, raw frames where it refuses to
(more than 125 registers, unknown functions). The core behind the face is a stand-in that
runs the real `validate_command` and records what it accepted (`test_modbus_support.py`).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import pytest
from pymodbus.client import AsyncModbusTcpClient

from appliance.control.command_types import RejectCode
from appliance.store import Quality
from tests.northbound.test_modbus_support import (
    LOCALHOST,
    SITE_UNIT,
    Site,
    raw_client,
    read_pdu,
    running_site,
    words_of,
    write_registers_pdu,
)

GRID_POWER = 1132  # grid.active_power, float32 (docs/points.md)
GRID_TARGET = 1503  # controller.grid_target, float32, set_grid_target
RESERVE_SOC = 1505  # controller.reserve_soc, float32, set_reserve_soc
MODE = 1500  # controller.mode, uint16, set_mode
HEARTBEAT = 1600  # heartbeat.counter, uint16, heartbeat
LAST_HEARTBEAT = 1601  # heartbeat.last_time, uint32, read-only
ALARMS = 1700  # alarms.active, uint32
RESET = 1703  # alarms.reset, the writable bit


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    async with running_site() as started:
        yield started


@pytest.fixture
async def client(site: Site) -> AsyncIterator[AsyncModbusTcpClient]:
    modbus = AsyncModbusTcpClient(LOCALHOST, port=site.port, timeout=2, retries=0)
    assert await modbus.connect()
    yield modbus
    modbus.close()


def address_of(site: Site, model: int, name: str, unit: int = SITE_UNIT) -> int:
    fields = site.face.units[unit].map.registers
    return next(f.address for f in fields if f.model == str(model) and f.name == name)


def float_words(value: float) -> list[int]:
    return list(struct.unpack(">HH", struct.pack(">f", value)))


def as_float(words: list[int]) -> float:
    value: float = struct.unpack(">f", struct.pack(">HH", *words))[0]
    return value


# --------------------------------------------------------------------------- reads


async def test_sunspec_marker_and_common_model_at_40000(
    site: Site, client: AsyncModbusTcpClient
) -> None:
    answer = await client.read_holding_registers(40000, count=4, device_id=SITE_UNIT)
    assert answer.registers == [0x5375, 0x6E53, 1, 66]
    serial = await client.read_holding_registers(40052, count=16, device_id=SITE_UNIT)
    text = b"".join(w.to_bytes(2, "big") for w in serial.registers).rstrip(b"\0").decode()
    assert text == site.config.site.id
    device_address = await client.read_holding_registers(40068, count=1, device_id=3)
    assert device_address.registers == [3]  # DA of node 2's unit is its unit id


async def test_holding_and_input_registers_read_the_same_map(
    site: Site, client: AsyncModbusTcpClient
) -> None:
    for unit, address, count in [(1, 1000, 11), (1, 40000, 125), (1, 40400, 100), (2, 40000, 120)]:
        holding = await client.read_holding_registers(address, count=count, device_id=unit)
        inputs = await client.read_input_registers(address, count=count, device_id=unit)
        assert not holding.isError()
        assert holding.registers == inputs.registers
        assert len(holding.registers) == count


async def test_native_values_are_high_word_first_and_sunspec_values_scaled(
    site: Site, client: AsyncModbusTcpClient
) -> None:
    site.set("grid.active_power", -2345.5)
    site.set("grid.voltage_l1", 231.27)
    native = await client.read_holding_registers(GRID_POWER, count=2, device_id=SITE_UNIT)
    assert as_float(list(native.registers)) == -2345.5
    w, w_sf = address_of(site, 203, "W"), address_of(site, 203, "W_SF")
    meter = await client.read_holding_registers(w, count=w_sf - w + 1, device_id=SITE_UNIT)
    raw, sf = meter.registers[0], meter.registers[-1]
    signed = raw - 0x10000 if raw >= 0x8000 else raw
    assert sf == 2
    assert signed * 10**sf == -2300
    v = address_of(site, 203, "PhVphA")
    voltage = await client.read_holding_registers(v, count=1, device_id=SITE_UNIT)
    assert voltage.registers == [23127]  # V_SF = -2


async def test_stale_bad_and_missing_values_read_not_implemented_with_quality_bits(
    site: Site, client: AsyncModbusTcpClient
) -> None:
    quality_grid = address_of(site, 64200, "quality_grid")
    w = address_of(site, 203, "W")

    async def read_state() -> tuple[list[int], int, int]:
        native = await client.read_holding_registers(GRID_POWER, count=2, device_id=SITE_UNIT)
        meter = await client.read_holding_registers(w, count=1, device_id=SITE_UNIT)
        quality = await client.read_holding_registers(quality_grid, count=1, device_id=SITE_UNIT)
        return list(native.registers), meter.registers[0], quality.registers[0]

    assert (await read_state())[2] == 0b0001
    for quality, bit in [(Quality.STALE, 0b0010), (Quality.BAD, 0b0100)]:
        site.set("grid.active_power", 500.0, quality)
        assert await read_state() == ([0x7FC0, 0x0000], 0x8000, bit)
    del site.mirror["grid.active_power"]
    site.face.apply({})
    assert await read_state() == ([0x7FC0, 0x0000], 0x8000, 0b1000)
    # The simulated site has two battery nodes: node 3's slot reads "not on this site".
    battery_3 = address_of(site, 64200, "quality_battery_3")
    absent = await client.read_holding_registers(battery_3, count=1, device_id=SITE_UNIT)
    assert absent.registers == [0xFFFF]


async def test_alarm_bits_read_with_fc01_and_fc02(site: Site, client: AsyncModbusTcpClient) -> None:
    site.set("alarms.active", 0b1010_0101)
    site.set("alarms.off_grid", True)
    coils = await client.read_coils(0, count=8, device_id=SITE_UNIT)
    inputs = await client.read_discrete_inputs(0, count=8, device_id=SITE_UNIT)
    expected = [True, False, True, False, False, True, False, True]
    assert coils.bits[:8] == inputs.bits[:8] == expected
    off_grid = await client.read_discrete_inputs(1706, count=1, device_id=SITE_UNIT)
    assert off_grid.bits[0] is True
    site.set("alarms.active", 0b1, Quality.STALE)
    stale = await client.read_coils(0, count=1, device_id=SITE_UNIT)
    assert stale.bits[0] is False
    bit_5 = site.face.units[SITE_UNIT].map.bit(5)
    assert bit_5 is not None
    assert bit_5.description == "bit 5 of alarms.active: heartbeat lost"
    unmapped = await client.read_coils(40, count=1, device_id=SITE_UNIT)
    assert unmapped.isError()
    assert unmapped.exception_code == 2


async def test_unmapped_addresses_answer_02_and_every_unit_is_routed(site: Site) -> None:
    async with raw_client(site.port) as raw:
        assert await raw.request(1, read_pdu(3, 1011, 1)) == bytes([0x83, 0x02])  # a gap
        assert await raw.request(1, read_pdu(3, 1000, 12)) == bytes([0x83, 0x02])  # runs into it
        end = address_of(site, 64200, "ID") + 690
        assert words_of(await raw.request(1, read_pdu(3, end, 2))) == [0xFFFF, 0]
        assert await raw.request(1, read_pdu(3, end + 2, 1)) == bytes([0x83, 0x02])
        for alias in (0, 255):  # Modbus/TCP: the server itself
            assert words_of(await raw.request(alias, read_pdu(4, 40000, 2))) == [0x5375, 0x6E53]
        assert await raw.request(99, read_pdu(3, 40000, 2)) == bytes([0x83, 0x0B])
        assert words_of(await raw.request(3, read_pdu(3, 40000, 2))) == [0x5375, 0x6E53]
        assert await raw.request(4, read_pdu(3, 40000, 2)) == bytes([0x83, 0x0B])  # 2 nodes only


async def test_request_shapes_answer_the_specified_exception(site: Site) -> None:
    async with raw_client(site.port) as raw:
        assert await raw.request(1, read_pdu(3, 40000, 126)) == bytes([0x83, 0x03])
        assert await raw.request(1, read_pdu(4, 40000, 0)) == bytes([0x84, 0x03])
        assert await raw.request(1, read_pdu(1, 0, 2001)) == bytes([0x81, 0x03])
        assert await raw.request(1, read_pdu(3, 65535, 2)) == bytes([0x83, 0x02])
        assert await raw.request(1, bytes([3, 0x9C, 0x40])) == bytes([0x83, 0x03])  # short
        assert await raw.request(1, bytes([0x2B, 0x0E, 1, 0])) == bytes([0xAB, 0x01])
        assert await raw.request(1, bytes([0x83, 0x02])) == bytes([0x83, 0x01])
        assert await raw.request(1, bytes([8, 0, 0, 0x12, 0x34])) == bytes([0x88, 0x01])
        too_many = write_registers_pdu(HEARTBEAT, [1] * 124)
        assert await raw.request(1, too_many) == bytes([0x90, 0x03])
        bad_count = struct.pack(">BHHB", 16, HEARTBEAT, 1, 4) + b"\0\1\0\2"
        assert await raw.request(1, bad_count) == bytes([0x90, 0x03])
        assert await raw.request(1, struct.pack(">BHH", 5, RESET, 0x1234)) == bytes([0x85, 0x03])
        coils_short = struct.pack(">BHHB", 15, RESET, 9, 1) + b"\1"
        assert await raw.request(1, coils_short) == bytes([0x8F, 0x03])
    assert site.core.requests == []


async def test_one_request_is_one_snapshot(site: Site) -> None:
    """Two points updated together (as one core cycle) never read half old, half new."""
    stop = asyncio.Event()

    async def core_cycles() -> None:
        value = 0.0
        while not stop.is_set():
            value += 1.0
            site.set("controller.p_term", value)
            site.set("controller.i_term", value)
            await asyncio.sleep(0)

    updater = asyncio.create_task(core_cycles())
    try:
        async with raw_client(site.port) as raw:
            seen = set()
            for _ in range(200):
                words = words_of(await raw.request(1, read_pdu(3, 1509, 4)))
                p_term, i_term = as_float(words[:2]), as_float(words[2:])
                assert p_term == i_term
                seen.add(p_term)
    finally:
        stop.set()
        await updater
    assert len(seen) > 20  # the values did change under the reads


async def test_pipelined_requests_are_answered_in_order(site: Site) -> None:
    async with raw_client(site.port) as raw:
        frames = [raw.frame(1, read_pdu(3, 40000 + i, 1), tid=100 + i) for i in range(10)]
        raw.writer.write(b"".join(frames))  # one segment, ten requests
        await raw.writer.drain()
        answers = [await raw.receive() for _ in range(10)]
    assert [tid for tid, _, _ in answers] == list(range(100, 110))
    assert words_of(answers[0][2]) == [0x5375]
    assert words_of(answers[3][2]) == [66]


# --------------------------------------------------------------------------- writes


async def test_accepted_writes_become_commands(site: Site, client: AsyncModbusTcpClient) -> None:
    assert not (await client.write_register(HEARTBEAT, 7, device_id=SITE_UNIT)).isError()
    assert not (
        await client.write_registers(GRID_TARGET, float_words(-1500.0), device_id=SITE_UNIT)
    ).isError()
    assert not (await client.write_coil(RESET, True, device_id=SITE_UNIT)).isError()
    assert not (await client.write_coils(RESET, [True], device_id=SITE_UNIT)).isError()
    assert site.core.applied() == [
        ("heartbeat", "heartbeat.counter", 7),
        ("set_grid_target", "controller.grid_target", -1500.0),
        ("reset_alarms", "alarms.reset", True),
        ("reset_alarms", "alarms.reset", True),
    ]
    assert site.core.requests[0].source == "modbus"
    assert site.core.requests[0].user is not None
    assert site.core.requests[0].user.startswith("tcp:127.0.0.1:")
    assert site.face.counters.commands_accepted == 4


async def test_sunspec_command_points_write_scaled_values(
    site: Site, client: AsyncModbusTcpClient
) -> None:
    wset = address_of(site, 704, "WSet")
    wset_ena = address_of(site, 704, "WSetEna")
    reserve = address_of(site, 802, "SoCRsvMin")
    ctrl_hb = address_of(site, 802, "CtrlHb")
    minus_3000 = (-3000) & 0xFFFFFFFF
    await client.write_registers(wset, [minus_3000 >> 16, minus_3000 & 0xFFFF], device_id=SITE_UNIT)
    await client.write_register(wset_ena, 1, device_id=SITE_UNIT)
    await client.write_register(reserve, 2550, device_id=SITE_UNIT)  # SoC_SF -2: 25.5 %
    await client.write_register(ctrl_hb, 42, device_id=SITE_UNIT)
    assert site.core.applied() == [
        ("set_active_power", "controller.active_power_setpoint", -3000),
        ("set_mode", "controller.mode", 4),
        ("set_reserve_soc", "controller.reserve_soc", 25.5),
        ("heartbeat", "heartbeat.counter", 42),
    ]
    ambiguous = await client.write_register(wset_ena, 0, device_id=SITE_UNIT)
    assert ambiguous.isError()
    assert ambiguous.exception_code == 3
    assert len(site.core.requests) == 4


@pytest.mark.parametrize(
    ("address", "words", "code"),
    [
        (GRID_POWER, float_words(1.0), 2),  # a measurement
        (LAST_HEARTBEAT, [0, 1], 2),  # read-only state beside the heartbeat
        (1011, [0], 2),  # not mapped
        (GRID_TARGET, float_words(2e6), 3),  # out of range (+-1 MW)
        (GRID_TARGET, [0x7FC0, 0], 3),  # NaN, the not-implemented marker
        (RESERVE_SOC, float_words(101.0), 3),
        (MODE, [7], 3),  # not a state
        (GRID_TARGET + 1, [0], 3),  # the low half of a float32 alone
        (GRID_TARGET + 1, [0, 0, 0], 3),  # halves of two values
        (HEARTBEAT, [5, 0, 1], 2),  # the heartbeat and the read-only time after it
        (GRID_TARGET, [*float_words(100.0), *float_words(150.0)], 3),  # valid, then out of range
        (MODE, [2, 0], 2),  # a valid mode, then the read-only state
    ],
)
async def test_refused_writes_answer_their_code_and_apply_nothing(
    site: Site, address: int, words: list[int], code: int
) -> None:
    async with raw_client(site.port) as raw:
        request = (
            struct.pack(">BHH", 6, address, words[0])
            if len(words) == 1
            else write_registers_pdu(address, words)
        )
        answer = await raw.request(1, request)
    assert answer == bytes([request[0] | 0x80, code])
    assert site.core.requests == []


async def test_sunspec_read_only_points_and_markers_are_refused(
    site: Site, client: AsyncModbusTcpClient
) -> None:
    for model, name in [(203, "W"), (1, "DA"), (704, "WSetMod"), (802, "SoC")]:
        answer = await client.write_register(address_of(site, model, name), 1, device_id=SITE_UNIT)
        assert answer.exception_code == 2, (model, name)
    marker = await client.write_register(
        address_of(site, 802, "SoCRsvMin"), 0xFFFF, device_id=SITE_UNIT
    )
    assert marker.exception_code == 3
    node = await client.write_register(40000, 1, device_id=2)
    assert node.exception_code == 2
    assert site.core.requests == []


@pytest.mark.parametrize(
    ("refusal", "code"),
    [
        (RejectCode.INVALID_STATE, 3),
        (RejectCode.OUT_OF_RANGE, 3),
        (RejectCode.NOT_WRITABLE, 2),
        (RejectCode.UNAVAILABLE, 4),
        (RejectCode.ACCESS_DENIED, 1),
    ],
)
async def test_core_refusals_map_to_exception_codes(
    site: Site, client: AsyncModbusTcpClient, refusal: RejectCode, code: int
) -> None:
    site.core.refuse_with = refusal
    answer = await client.write_register(MODE, 2, device_id=SITE_UNIT)
    assert answer.isError()
    assert answer.exception_code == code
    assert site.face.counters.commands_rejected == 1


async def test_heartbeat_register_counts_only_with_a_new_value(site: Site) -> None:
    """The stand-in core refuses a repeated counter as the controller does (INVALID_VALUE)."""
    async with raw_client(site.port) as raw:
        assert await raw.request(1, struct.pack(">BHH", 6, HEARTBEAT, 1)) == struct.pack(
            ">BHH", 6, HEARTBEAT, 1
        )
        site.core.refuse_with = RejectCode.INVALID_VALUE
        assert await raw.request(1, struct.pack(">BHH", 6, HEARTBEAT, 1)) == bytes([0x86, 3])
        site.core.refuse_with = None
        assert await raw.request(1, struct.pack(">BHH", 6, HEARTBEAT, 65535)) == bytes([0x86, 3])
    assert site.core.applied() == [("heartbeat", "heartbeat.counter", 1)]


async def test_vendor_registers_of_a_load_the_site_lacks_are_laid_out_but_not_writable(
    site: Site,
) -> None:
    assert "surplus.1.mode" in site.table
    assert "surplus.2.mode" not in site.table
    start = address_of(site, 64200, "ID")
    async with raw_client(site.port) as raw:
        first = words_of(await raw.request(1, read_pdu(3, start + 306, 1)))
        address = address_of(site, 64200, "surplus_2_mode")
        answer = await raw.request(1, struct.pack(">BHH", 6, address, 1))
        second = words_of(await raw.request(1, read_pdu(3, address, 1)))
        accepted = await raw.request(1, struct.pack(">BHH", 6, start + 306, 2))
    assert address == start + 306 + 16  # every site's vendor model has the same fields
    assert first == [0]
    assert second == [0xFFFF]
    assert answer == bytes([0x86, 0x02])
    assert accepted == struct.pack(">BHH", 6, start + 306, 2)
    assert site.core.applied() == [("set_surplus_load", "surplus.1.mode", 2)]
