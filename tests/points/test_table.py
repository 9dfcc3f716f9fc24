"""Point table loading: the shipped table is valid, and each validation rule fires with a located message."""

from __future__ import annotations

import textwrap

import pytest

from appliance.points.model import DataType, RegisterType
from appliance.points.table import PointTableError, load_point_table_text, shipped_point_table

HEADER = """
schema: 1
commands:
  - {name: set_x, description: "Set x."}
blocks:
"""


def table_text(blocks: str) -> str:
    return HEADER + textwrap.indent(textwrap.dedent(blocks), "  ")


def problems_of(blocks: str) -> list[str]:
    with pytest.raises(PointTableError) as caught:
        load_point_table_text(table_text(blocks), "test.yaml")
    return [str(p) for p in caught.value.problems]


GOOD_BLOCK = """
- block: meter
  opcua: Site/Meter
  modbus_base: 100
  points:
    - {id: power, kind: gauge, type: float32, unit: W, range: [-1000, 1000], opcua: Power,
       modbus: {offset: 0, type: float32}, description: "Power."}
"""


def test_shipped_table_loads_and_covers_required_points() -> None:
    table = shipped_point_table()
    required = [
        "grid.voltage_l1", "grid.current_l3", "grid.active_power_l2", "grid.reactive_power_l1",
        "grid.power_factor_l3", "grid.frequency", "grid.import_energy", "grid.export_energy",
        "pv.active_power", "house.active_power",
        "battery.1.soc", "battery.1.soh", "battery.1.voltage", "battery.1.current", "battery.1.power",
        "battery.1.cell_voltage_min", "battery.1.cell_voltage_max", "battery.1.temperature_min",
        "battery.1.temperature_max", "battery.1.charge_current_limit", "battery.1.discharge_current_limit",
        "battery.1.alarm_flags", "battery.1.warning_flags",
        "inverter.1.active_power", "inverter.1.setpoint", "inverter.1.state",
        "inverter.1.max_charge_power", "inverter.1.max_discharge_power",
        "cluster.active_power", "cluster.soc", "controller.mode", "controller.grid_target",
        "controller.p_term", "controller.i_term", "controller.d_term", "controller.output",
        "heartbeat.last_time", "heartbeat.timeout", "heartbeat.ok", "appliance.alive_counter",
        "appliance.status", "alarms.active", "surplus.1.mode", "surplus.1.active",
    ]  # fmt: skip
    missing = [pid for pid in required if pid not in table]
    assert missing == []
    assert table["grid.active_power"].stale_after_s == 2.0


def test_templated_block_has_fixed_stride_and_site_subset_keeps_addresses() -> None:
    table = shipped_point_table()
    first, second = table["battery.1.soc"].modbus, table["battery.2.soc"].modbus
    assert first is not None
    assert second is not None
    assert second.address - first.address == 64
    site = table.for_site({"battery": 2, "inverter": 2, "surplus": 1})
    assert "battery.2.soc" in site
    assert "battery.3.soc" not in site
    assert site["battery.2.soc"].modbus == second
    assert site["battery.2.soc"].opcua_path == "Site/Battery2/StateOfCharge"
    assert site["battery.2.soc"].opcua_node_id == "Site.Battery2.StateOfCharge"


def test_for_site_rejects_more_nodes_than_the_template_allows() -> None:
    with pytest.raises(Exception, match=r"allowed 0 \.\. 64"):
        shipped_point_table().for_site({"battery": 65})


def test_minimal_valid_table_loads() -> None:
    table = load_point_table_text(table_text(GOOD_BLOCK), "test.yaml")
    point = table["meter.power"]
    assert point.type is DataType.FLOAT32
    assert point.modbus is not None
    assert point.modbus.address == 100
    assert point.modbus.type is RegisterType.FLOAT32


def test_duplicate_id_is_reported_with_file_and_point() -> None:
    block = (
        GOOD_BLOCK
        + """    - {id: power, kind: gauge, type: float32, unit: W, opcua: Power2,
       modbus: {offset: 4, type: float32}, description: "Again."}
"""
    )
    problems = problems_of(block)
    assert any("test.yaml: point 'meter.power', field 'id': duplicate id" in p for p in problems)


def test_overlapping_modbus_ranges_are_reported() -> None:
    block = (
        GOOD_BLOCK
        + """    - {id: other, kind: gauge, type: float32, unit: W, opcua: Other,
       modbus: {offset: 1, type: float32}, description: "Overlaps power."}
"""
    )
    problems = problems_of(block)
    assert any(
        "point 'meter.other', field 'modbus.offset': registers 101..102 overlap 'meter.power'" in p
        for p in problems
    )


def test_overlap_between_blocks_is_reported() -> None:
    other_block = """
- block: second
  opcua: Site/Second
  modbus_base: 101
  points:
    - {id: value, kind: gauge, type: uint16, unit: "", opcua: Value, modbus: {offset: 0, type: uint16},
       description: "V."}
"""
    problems = problems_of(GOOD_BLOCK + other_block)
    assert any("'second.value'" in p and "overlap 'meter.power'" in p for p in problems)


def test_template_offset_past_stride_is_reported() -> None:
    block = """
- block: node
  opcua: Site/Node{n}
  modbus_base: 200
  repeat: {max: 4, stride: 4}
  points:
    - {id: a, kind: gauge, type: float32, unit: W, opcua: A, modbus: {offset: 3, type: float32},
       description: "A."}
"""
    problems = problems_of(block)
    assert any(
        "point 'node.{n}.a', field 'modbus.offset'" in p and "stride of 4" in p for p in problems
    )


def test_register_count_not_matching_type_is_reported() -> None:
    block = GOOD_BLOCK.replace(
        "modbus: {offset: 0, type: float32}", "modbus: {offset: 0, type: float32, count: 1}"
    )
    problems = problems_of(block)
    assert any(
        "field 'modbus.count': 1 registers do not match type float32 (2)" in p for p in problems
    )


def test_register_type_that_cannot_carry_the_value_type_is_reported() -> None:
    block = GOOD_BLOCK.replace("type: float32, unit: W", "type: uint32, unit: W").replace(
        "range: [-1000, 1000]", "range: [0, 1000]"
    )
    block = block.replace("modbus: {offset: 0, type: float32}", "modbus: {offset: 0, type: int16}")
    problems = problems_of(block)
    assert any("field 'modbus.type': int16 cannot carry uint32" in p for p in problems)


@pytest.mark.parametrize(
    ("replacement", "expected"),
    [
        ("range: [-40000, 1000]", "[-40000, 1000] does not fit type int16 (-32768 .. 32767)"),
        ("range: [0, 4000]", "x gain 10 does not fit register type int16 (-32767 .. 32767)"),
        ("range: [10, 1]", "min 10 is above max 1"),
    ],
)
def test_range_that_does_not_fit_the_type_is_reported(replacement: str, expected: str) -> None:
    block = """
- block: meter
  opcua: Site/Meter
  points:
    - {id: temp, kind: gauge, type: int16, unit: °C, RANGE, opcua: Temp,
       modbus: {offset: 0, type: int16, gain: 10}, description: "T."}
""".replace("RANGE", replacement)
    problems = problems_of(block)
    assert any("point 'meter.temp', field 'range'" in p and expected in p for p in problems), (
        problems
    )


def test_writable_point_without_command_is_reported() -> None:
    block = GOOD_BLOCK.replace("kind: gauge", "kind: setpoint, access: read_write")
    problems = problems_of(block)
    assert any(
        "point 'meter.power', field 'command': a writable point needs a command" in p
        for p in problems
    )


def test_undeclared_command_is_reported() -> None:
    block = GOOD_BLOCK.replace("kind: gauge", "kind: setpoint, access: read_write, command: launch")
    problems = problems_of(block)
    assert any(
        "field 'command': 'launch' is not a declared command; declared: set_x" in p
        for p in problems
    )


def test_bad_enum_value_lists_allowed_values() -> None:
    problems = problems_of(GOOD_BLOCK.replace("kind: gauge", "kind: thermometer"))
    assert any(
        "field 'kind': 'thermometer' is not allowed; allowed: gauge, counter, state, setpoint, command"
        in p
        for p in problems
    )


def test_unknown_key_and_missing_description_are_reported_together() -> None:
    block = GOOD_BLOCK.replace('description: "Power."', "colour: red")
    problems = problems_of(block)
    assert any("field 'colour': unknown key" in p for p in problems)
    assert any("field 'description': required" in p for p in problems)


def test_enum_without_states_and_duplicate_browse_path_are_reported() -> None:
    block = (
        GOOD_BLOCK
        + """    - {id: mode, kind: state, type: enum, unit: "", opcua: Power, modbus: {offset: 2, type: uint16},
       description: "M."}
"""
    )
    problems = problems_of(block)
    assert any("point 'meter.mode', field 'states'" in p for p in problems)
    assert any("browse path Site/Meter/Power is also used by 'meter.power'" in p for p in problems)


def test_yaml_syntax_error_names_line() -> None:
    with pytest.raises(
        PointTableError, match=r"test.yaml: field '<yaml>': not valid YAML \(line \d+"
    ):
        load_point_table_text("blocks: [\n  - {id: x\n", "test.yaml")
