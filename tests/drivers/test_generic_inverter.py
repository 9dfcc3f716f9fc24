"""Generic inverter driver against a pymodbus server laid out from the same YAML map."""

from __future__ import annotations

import math
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimData, SimDevice

from appliance.config.loader import device_map_path
from appliance.drivers.generic_inverter import (
    GenericInverter,
    GenericInverterMap,
    encode_value,
    load_generic_inverter_map,
    parse_generic_inverter_map,
)
from appliance.drivers.inverter_types import Inverter, InverterState, PowerControl
from appliance.drivers.modbus_link import ModbusExceptionResponse
from appliance.errors import ConfigError, DeviceProtocolError, DeviceUnavailable
from appliance.simulation.devices.modbus_server import ModbusDeviceServer

LOCALHOST = "127.0.0.1"
TIMEOUT_S = 0.3
EXAMPLE = (
    Path(__file__).resolve().parents[2] / "models" / "devices" / "generic-inverter-example.yaml"
)

VALUES: dict[str, float] = {
    "active_power_w": -1500.0,  # charging
    "soc_pct": 55.5,
    "max_charge_power_w": 3000.0,
    "max_discharge_power_w": 4500.0,
    "state": 2.0,  # "running"
}


def example_doc() -> dict[str, Any]:
    doc = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def map_from(doc: dict[str, Any], source: str = "acme.yaml") -> GenericInverterMap:
    return parse_generic_inverter_map(yaml.safe_dump(doc), source)


class MapServer(ModbusDeviceServer):
    """A Modbus server (unit 1) whose registers are the map's; measurements come from ``values``."""

    def __init__(self, register_map: GenericInverterMap, values: dict[str, float]) -> None:
        super().__init__(unit_id=1, name="map-server")
        self.map = register_map
        self.values = dict(values)
        self.writes: list[tuple[int, list[int]]] = []
        self.fail = False

    def _device(self, *, parity: str | None, baudrate: int | None) -> SimDevice:
        def blocks(table: str) -> list[SimData]:
            regs = [r for r in self.map.registers if r.table == table]
            made = [
                SimData(r.address, count=r.count, values=0, datatype=DataType.REGISTERS)
                for r in regs
            ]
            return made or [SimData(0, values=0, datatype=DataType.REGISTERS)]

        no_bits = [SimData(0, values=False, datatype=DataType.BITS)]
        simdata = (no_bits, list(no_bits), blocks("holding"), blocks("input"))
        return SimDevice(id=1, simdata=simdata, action=self._action)

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if self.fail:
            return ExcCodes.DEVICE_FAILURE
        if set_values is not None:
            self.writes.append((address, [int(v) for v in set_values]))
            return None
        table = "input" if function_code == 4 else "holding"
        for key, spec in self.map.measurements.items():
            if spec.table == table and key in self.values:
                words = self.encode(key)
                offset = spec.address - start_address
                current_registers[offset : offset + spec.count] = words
        return None

    def encode(self, key: str) -> list[int]:
        spec = self.map.measurements[key]
        value = self.values[key]
        if spec.states is not None:  # a raw state code, not scaled
            return [int(value)]
        return encode_value(spec, value, self.map.word_order)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[GenericInverterMap], Any]]:
    """serve(map) -> (server, driver), both stopped / closed after the test."""
    made: list[tuple[MapServer, GenericInverter]] = []

    async def start(register_map: GenericInverterMap) -> tuple[MapServer, GenericInverter]:
        server = MapServer(register_map, VALUES)
        port = await server.start_tcp(LOCALHOST, 0)
        driver = GenericInverter.tcp(
            LOCALHOST,
            port,
            register_map=register_map,
            timeout_s=TIMEOUT_S,
            name="acme",
            revert_timeout_s=10,
        )
        made.append((server, driver))
        return server, driver

    yield start
    for server, driver in made:
        await driver.close()
        await server.stop()


@pytest.fixture
async def example(
    serve: Callable[[GenericInverterMap], Any],
) -> tuple[MapServer, GenericInverter]:
    result: tuple[MapServer, GenericInverter] = await serve(load_generic_inverter_map(EXAMPLE))
    return result


# ----------------------------------------------------------------------------- the map


def test_example_map_loads_and_is_shipped() -> None:
    register_map = load_generic_inverter_map(EXAMPLE)
    assert register_map.device == "acme-bi-5k"
    assert register_map.read_blocks() == (("holding", 0x0200, 3), ("input", 0x0100, 6))
    assert register_map.setpoint.sign == -1
    assert register_map.measurements["soc_pct"].scale == 0.1
    shipped = device_map_path("generic-inverter-example.yaml")
    assert shipped is not None
    assert parse_generic_inverter_map(shipped.read_text(encoding="utf-8"), "x") == (
        parse_generic_inverter_map(EXAMPLE.read_text(encoding="utf-8"), "x")
    )


def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[key]
        node[last] = value

    return mutate


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[key]
        del node[last]

    return mutate


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_set("colour", "red"), "acme.yaml: colour: unknown key; allowed: device, "),
        (
            _set("measurements.soc_pct.unit", "%"),
            "acme.yaml: measurements.soc_pct.unit: unknown key; allowed: table, address, type,",
        ),
        (
            _set("control.watchdog", {}),
            "control.watchdog: unknown key; allowed: setpoint, enable, revert_timeout",
        ),
        (
            _set("measurements.soc_pct.address", 0x0101),
            "measurements.soc_pct.address: input register 257 overlaps measurements.active_power_w",
        ),
        (
            _set("control.enable.address", 0x0201),
            "control.enable.address: holding register 513 overlaps control.setpoint",
        ),
        (
            _set("measurements.soc_pct.type", "int8"),
            "measurements.soc_pct.type: 'int8'; allowed: int16, uint16, int32, uint32, float32",
        ),
        (
            _set("measurements.soc_pct.table", "coil"),
            "measurements.soc_pct.table: 'coil'; allowed: holding, input",
        ),
        (
            _set("measurements.state.states", {0: "sleeping"}),
            "measurements.state.states.0: 'sleeping'; allowed: off, standby, charging, discharging, fault, running",
        ),
        (
            _set("measurements.state.states", {0: False}),
            "quote 'off': YAML reads a bare off as false",
        ),
        (
            _drop("measurements.active_power_w"),
            "measurements.active_power_w: missing required key",
        ),
        (_drop("measurements.soc_pct.range"), "measurements.soc_pct.range: missing required key"),
        (_set("word_order", "middle"), "word_order: 'middle'; allowed: big, little"),
        (_set("measurements.soc_pct.scale", 0), "soc_pct.scale: 0; allowed: a non-zero"),
        (_set("control.setpoint.sign", 2), "control.setpoint.sign: 2; allowed: 1, -1"),
        (_set("control.setpoint.address", 70000), "control.setpoint.address: 70000; allowed:"),
        (_set("control.setpoint.range", [100, 5000]), "must include 0 W"),
        (_set("measurements.soc_pct.range", [100, 0]), "soc_pct.range: [100, 0]; allowed:"),
        (_set("max_registers_per_request", 200), "allowed: an integer 1..125"),
        (_set("limits.max_charge_w", -1), "limits.max_charge_w: -1; allowed: a finite number"),
        (_drop("control.enable.off_value"), "on_value and off_value are required"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_map_errors_name_file_field_and_allowed_values(
    mutate: Callable[[dict[str, Any]], None], message: str
) -> None:
    doc = example_doc()
    mutate(doc)
    with pytest.raises(ConfigError) as info:
        map_from(doc)
    assert message in str(info.value)
    assert str(info.value).startswith("acme.yaml: ")


def test_map_that_is_not_yaml_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        parse_generic_inverter_map("device: [unclosed", "bad.yaml")


# ----------------------------------------------------------------------------- reading


async def test_reads_equal_the_server_values(example: tuple[MapServer, GenericInverter]) -> None:
    server, driver = example
    assert isinstance(driver, Inverter)
    assert isinstance(driver, PowerControl)
    # The device counts charging as positive (sign: -1): raw +1500 is 1500 W of charging.
    assert server.encode("active_power_w") == [0, 1500]
    reading = await driver.read()
    assert reading.active_power_w == -1500.0
    assert reading.soc_pct == pytest.approx(55.5)
    assert reading.max_charge_power_w == 3000.0  # live limit below the 5000 W nameplate
    assert reading.max_discharge_power_w == 4500.0
    assert reading.state is InverterState.CHARGING  # "running" + negative power
    assert reading.setpoint_w is None  # enable register still 0


@pytest.mark.parametrize(
    ("raw_state", "power", "state"),
    [(0, 0.0, InverterState.OFF), (1, 0.0, InverterState.STANDBY), (3, 0.0, InverterState.FAULT),
     (2, 800.0, InverterState.DISCHARGING), (2, 0.0, InverterState.STANDBY)],
)  # fmt: skip
async def test_state_codes_map_to_states(
    example: tuple[MapServer, GenericInverter],
    raw_state: int,
    power: float,
    state: InverterState,
) -> None:
    server, driver = example
    server.values.update(state=float(raw_state), active_power_w=power)
    assert (await driver.read()).state is state


async def test_live_limits_above_the_nameplate_are_capped(
    example: tuple[MapServer, GenericInverter],
) -> None:
    server, driver = example
    server.values.update(max_discharge_power_w=6000.0)
    assert (await driver.read()).max_discharge_power_w == 5000.0


async def test_little_word_order(serve: Callable[[GenericInverterMap], Any]) -> None:
    doc = example_doc()
    doc["word_order"] = "little"
    server, driver = await serve(map_from(doc))
    assert server.encode("active_power_w") == [1500, 0]  # low word first
    assert (await driver.read()).active_power_w == -1500.0
    await driver.set_active_power_w(-2500.0)  # charging: raw +2500, low word first
    assert server.writes[-1] == (0x0200, [2500, 0, 1, 10])


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"soc_pct": 150.0}, r"measurements\.soc_pct \(input 258\) = 150\.0 outside"),
        ({"active_power_w": -7000.0}, r"active_power_w .* outside plausible range"),
        ({"state": 9.0}, r"measurements\.state = 9; the map knows \[0, 1, 2, 3\]"),
    ],
)
async def test_implausible_readings_are_protocol_errors_and_counted(
    example: tuple[MapServer, GenericInverter], changes: dict[str, float], match: str
) -> None:
    server, driver = example
    server.values.update(changes)
    with pytest.raises(DeviceProtocolError, match=match):
        await driver.read()
    assert driver.malformed_frames == 1
    server.values.update(VALUES)
    assert (await driver.read()).soc_pct == pytest.approx(55.5)


async def test_nan_float_register_is_a_protocol_error(
    serve: Callable[[GenericInverterMap], Any],
) -> None:
    doc = example_doc()
    doc["measurements"]["active_power_w"]["type"] = "float32"
    server, driver = await serve(map_from(doc))
    server.values["active_power_w"] = math.nan
    with pytest.raises(DeviceProtocolError, match="nan"):
        await driver.read()


async def test_exception_response_is_counted(example: tuple[MapServer, GenericInverter]) -> None:
    server, driver = example
    server.fail = True
    with pytest.raises(ModbusExceptionResponse, match="exception 0x04"):
        await driver.read()
    assert (driver.exception_responses, driver.malformed_frames) == (1, 0)
    server.fail = False
    assert (await driver.read()).active_power_w == -1500.0


async def test_server_gone_is_unavailable(example: tuple[MapServer, GenericInverter]) -> None:
    server, driver = example
    await driver.read()
    await server.stop()
    with pytest.raises(DeviceUnavailable):
        await driver.read()
    with pytest.raises(DeviceUnavailable):
        await driver.set_active_power_w(100.0)


# ----------------------------------------------------------------------------- control


def _int32(value: int) -> list[int]:
    return list(struct.unpack(">2H", struct.pack(">i", value)))


async def test_setpoint_enable_and_timeout_go_in_one_write(
    example: tuple[MapServer, GenericInverter],
) -> None:
    server, driver = example
    assert await driver.set_active_power_w(2000.0) == 2000.0
    # setpoint (sign -1: discharge is negative on the device), enable = 1, revert = 10 s.
    assert server.writes == [(0x0200, [*_int32(-2000), 1, 10])]
    assert (await driver.read()).setpoint_w == 2000.0


async def test_setpoint_is_rounded_to_the_register_scale(
    serve: Callable[[GenericInverterMap], Any],
) -> None:
    doc = example_doc()
    doc["control"]["setpoint"]["scale"] = 10
    server, driver = await serve(map_from(doc))
    assert await driver.set_active_power_w(1234.0) == 1230.0
    assert server.writes[0][1][:2] == _int32(-123)


async def test_setpoints_are_clamped(example: tuple[MapServer, GenericInverter]) -> None:
    server, driver = example
    await driver.read()
    assert await driver.set_active_power_w(9000.0) == 4500.0  # live discharge limit
    assert await driver.set_active_power_w(-9000.0) == -3000.0  # live charge limit
    assert [words[:2] for _, words in server.writes] == [_int32(-4500), _int32(3000)]


@pytest.mark.parametrize("bad", [math.nan, math.inf])
async def test_non_finite_setpoint_is_refused(
    example: tuple[MapServer, GenericInverter], bad: float
) -> None:
    server, driver = example
    with pytest.raises(ValueError, match="finite"):
        await driver.set_active_power_w(bad)
    assert server.writes == []


async def test_release_switches_remote_control_off(
    example: tuple[MapServer, GenericInverter],
) -> None:
    server, driver = example
    await driver.set_active_power_w(1000.0)
    await driver.release()
    assert server.writes[-1] == (0x0202, [0])
    assert (await driver.read()).setpoint_w is None


async def test_map_without_enable_releases_with_zero_watts(
    serve: Callable[[GenericInverterMap], Any],
) -> None:
    doc = example_doc()
    del doc["control"]["enable"], doc["control"]["revert_timeout"]
    server, driver = await serve(map_from(doc))
    await driver.set_active_power_w(-1200.0)
    await driver.release()
    assert server.writes == [(0x0200, _int32(1200)), (0x0200, _int32(0))]
    assert (await driver.read()).setpoint_w == 0.0


async def test_scattered_control_registers_are_written_setpoint_first(
    serve: Callable[[GenericInverterMap], Any],
) -> None:
    doc = example_doc()
    doc["control"]["enable"]["address"] = 0x0210
    server, driver = await serve(map_from(doc))
    await driver.set_active_power_w(100.0)
    assert server.writes == [(0x0200, _int32(-100)), (0x0203, [10]), (0x0210, [1])]


async def test_revert_timeout_outside_the_map_range_is_refused() -> None:
    register_map = load_generic_inverter_map(EXAMPLE)
    with pytest.raises(ValueError, match=r"outside the map's 1\.0\.\.600\.0"):
        GenericInverter.tcp(LOCALHOST, 502, register_map=register_map, revert_timeout_s=900)
