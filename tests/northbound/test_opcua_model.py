"""The OPC UA face's pure parts: model, units, quality mapping, commands mapping, users.

No server here except one bare asyncua server that imports the committed NodeSet, to prove
that the file is loadable by an OPC UA stack and not only well-formed XML.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import pytest
from asyncua import ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.monitored_item_service import MonitoredItemValues
from asyncua.server.server import Server

import appliance
from appliance.config import simulated_site_config
from appliance.config.schema import UserConfig
from appliance.config.users import hash_password
from appliance.control.command_types import CommandResult, RejectCode
from appliance.northbound.opcua.__main__ import main as generate_main
from appliance.northbound.opcua.commands import accept_variant, status_of
from appliance.northbound.opcua.docs import current_section, model_section
from appliance.northbound.opcua.model import (
    COMMANDS,
    MANDATORY,
    NodeClass,
    NodeSpec,
    build_model,
    variable_kind,
)
from appliance.northbound.opcua.nodeset import NODESET_PATH, shipped_nodeset_xml
from appliance.northbound.opcua.publisher import share_scalar_values
from appliance.northbound.opcua.quality import (
    Binding,
    ConversionError,
    data_value,
    key_point_ids,
    service_level,
    text_value,
)
from appliance.northbound.opcua.security import (
    MAX_FAILURES,
    ApplianceUser,
    RoleRuleset,
    UserDirectory,
    may_command,
)
from appliance.northbound.opcua.uatypes import ObjectIds, StatusCodes, node_id, status
from appliance.northbound.opcua.units import UNITS, unece_unit_id, unit_for
from appliance.points.table import PointTable, shipped_point_table
from appliance.runtime.site_table import site_point_table
from appliance.store import Quality, Sample

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
T_SAMPLE = 1_795_000_000.0


@pytest.fixture(scope="module")
def table() -> PointTable:
    return site_point_table(simulated_site_config())


def _by_id(nodes: tuple[NodeSpec, ...]) -> dict[str, NodeSpec]:
    return {n.node_id: n for n in nodes}


# --------------------------------------------------------------------------- model


def test_every_point_is_a_variable_with_its_dotted_path_as_node_id(table: PointTable) -> None:
    model = build_model(table, "urn:test")
    variables = {n.point_id: n for n in model.point_variables()}
    assert set(variables) == set(table.ids())
    for point in table:
        node = variables[point.id]
        assert node.node_id == point.opcua_node_id
        assert node.description == point.description
        assert node.description != node.browse_name


def test_variable_types_follow_the_point(table: PointTable) -> None:
    expected = {
        "grid.active_power": (ObjectIds.AnalogUnitRangeType, ObjectIds.Double),
        "grid.power_factor": (ObjectIds.AnalogItemType, ObjectIds.Double),  # range, no unit
        "appliance.uptime": (ObjectIds.AnalogUnitType, ObjectIds.UInt32),  # unit, no range
        "appliance.alive_counter": (ObjectIds.BaseDataVariableType, ObjectIds.UInt32),
        "battery.1.alarm_flags": (ObjectIds.BaseDataVariableType, ObjectIds.UInt32),
        "grid.comm_ok": (ObjectIds.TwoStateDiscreteType, ObjectIds.Boolean),
        "controller.mode": (ObjectIds.MultiStateValueDiscreteType, ObjectIds.UInt32),
        "heartbeat.last_time": (ObjectIds.BaseDataVariableType, ObjectIds.DateTime),
        "grid.import_energy": (ObjectIds.AnalogUnitRangeType, ObjectIds.Double),
    }
    for point_id, (type_definition, data_type) in expected.items():
        kind = variable_kind(table[point_id])
        assert (kind.type_definition, kind.data_type) == (type_definition, data_type), point_id


def test_mandatory_properties_are_present_with_the_table_values(table: PointTable) -> None:
    nodes = _by_id(build_model(table, "urn:test").nodes)
    eu_range = nodes["Site.GridMeter.AcVoltageL1N.EURange"]
    assert eu_range.value == ua.Range(Low=0.0, High=300.0)
    assert eu_range.standard_name
    assert eu_range.reference == ObjectIds.HasProperty
    units = nodes["Site.GridMeter.AcVoltageL1N.EngineeringUnits"].value
    assert (units.UnitId, units.DisplayName.Text) == (unece_unit_id("VLT"), "V")
    assert units.NamespaceUri == "http://www.opcfoundation.org/UA/units/un/cefact"
    states = nodes["Site.Controller.Mode.EnumValues"].value
    assert [(s.Value, s.DisplayName.Text) for s in states] == [
        (0, "stop"),
        (1, "activate"),
        (2, "maxself"),
        (3, "chargeonly"),
        (4, "setpoint"),
    ]
    assert "Site.Controller.Mode.ValueAsText" in nodes
    assert nodes["Site.GridMeter.CommunicationOk.TrueState"].value.Text == "True"
    assert "Site.GridMeter.AcPowerFactorTotal.EngineeringUnits" not in nodes  # no unit
    assert "Site.GridMeter.AcPowerFactorTotal.EURange" in nodes


def test_each_block_has_an_object_type_with_mandatory_declarations(table: PointTable) -> None:
    model = build_model(table, "urn:test")
    nodes = _by_id(model.nodes)
    for info in table.blocks.values():
        if not table.in_block(info.name):
            continue
        type_node = nodes[f"Types.{info.opcua_type}"]
        assert type_node.node_class is NodeClass.OBJECT_TYPE
        assert type_node.parent == ObjectIds.BaseObjectType
        children = [n for n in model.nodes if n.parent == type_node.node_id]
        first = table.in_block(info.name)[0].node
        templates = [p for p in table.in_block(info.name) if p.node == first]
        assert [c.browse_name for c in children] == [
            p.opcua_path.rsplit("/", 1)[1] for p in templates
        ]
        assert all(c.modelling_rule == MANDATORY for c in children)
    assert nodes["Site.Battery2"].type_definition == "Types.BatteryType"
    assert nodes["Site.Battery2"].parent == "Site"
    assert nodes["Site"].parent == ObjectIds.ObjectsFolder


def test_writable_points_carry_current_write(table: PointTable) -> None:
    nodes = _by_id(build_model(table, "urn:test").nodes)
    assert nodes["Site.Controller.GridTargetPower"].access_level == 3
    assert nodes["Site.Alarms.Reset"].access_level == 2  # write-only command
    assert nodes["Site.GridMeter.AcActivePowerTotal"].access_level == 1


def test_methods_cover_the_commands_of_the_table(table: PointTable) -> None:
    methods = {m.browse_name: m for m in build_model(table, "urn:test").methods}
    assert set(methods) == {
        "SetMode",
        "SetGridTarget",
        "SetReserveSoc",
        "Heartbeat",
        "ResetAlarms",
        "SetSurplusLoad",
        "SetActivePower",
    }
    assert [a.name for a in methods["SetMode"].inputs] == ["Mode"]
    assert methods["SetMode"].inputs[0].data_type == ObjectIds.UInt32
    assert methods["SetGridTarget"].inputs[0].data_type == ObjectIds.Double
    assert methods["ResetAlarms"].inputs == ()
    assert methods["ResetAlarms"].trigger_value is True
    assert [a.name for a in methods["Heartbeat"].outputs] == ["AliveCounter", "HeartbeatTimeout"]
    assert methods["SetSurplusLoad"].templated
    assert [a.name for a in methods["SetSurplusLoad"].inputs] == ["Node", "Mode"]
    assert methods["SetMode"].node_id == f"{COMMANDS}.SetMode"


def test_a_site_without_surplus_loads_has_no_surplus_method() -> None:
    table = shipped_point_table().for_site({"battery": 1, "inverter": 1, "surplus": 0})
    model = build_model(table, "urn:test")
    assert "SetSurplusLoad" not in {m.browse_name for m in model.methods}
    assert "Types.SurplusLoadType" not in _by_id(model.nodes)


def test_node_ids_do_not_depend_on_the_build() -> None:
    table = shipped_point_table()
    first = [n.node_id for n in build_model(table, "urn:a").nodes]
    second = [n.node_id for n in build_model(table, "urn:b").nodes]
    assert first == second
    assert len(set(first)) == len(first)


def test_every_table_unit_has_a_unece_code() -> None:
    units = {p.unit for p in shipped_point_table() if p.unit}
    assert units <= set(UNITS)
    assert unece_unit_id("WTT") == 5723220  # OPC 10000-8 example
    assert unece_unit_id("P1") == 20529
    assert unit_for("") is None
    with pytest.raises(KeyError, match="no UNECE code"):
        unit_for("furlong")


# --------------------------------------------------------------------------- generated files


def test_committed_nodeset_is_what_the_table_generates() -> None:
    committed = (ROOT / NODESET_PATH).read_text(encoding="utf-8")
    assert committed == shipped_nodeset_xml(), (
        f"{NODESET_PATH} is out of date: run `python -m appliance.northbound.opcua generate`"
    )
    assert f'Version="{appliance.__version__}"' in committed


def test_docs_model_section_is_current() -> None:
    document = (ROOT / "docs" / "opcua.md").read_text(encoding="utf-8")
    assert current_section(document) == model_section(), (
        "docs/opcua.md is out of date: run `python -m appliance.northbound.opcua generate`"
    )


def test_the_check_command_reports_stale_files(tmp_path: Path) -> None:
    assert generate_main(["check", "--root", str(ROOT)]) == 0
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "opcua.md").write_text("# OPC UA\n\n" + model_section()[:-5])
    assert generate_main(["check", "--root", str(tmp_path)]) == 1


async def test_the_nodeset_loads_into_an_opc_ua_server() -> None:
    server = Server()
    server.disable_clock()  # its stop() would wait for the clock's one-second tick
    await server.init()
    try:
        added = await server.import_xml(xmlstring=shipped_nodeset_xml())
        assert len(added) == len(build_model(_nodeset_table(), "urn:x").nodes)
        index = await server.get_namespace_index("urn:appliance:site")
        power = server.get_node(node_id("Site.GridMeter.AcActivePowerTotal", index))
        assert (await power.read_type_definition()) == node_id(ObjectIds.AnalogUnitRangeType)
        assert (await power.read_data_type()) == node_id(ObjectIds.Double)
        units = await (await power.get_child("0:EngineeringUnits")).read_value()
        assert units.UnitId == unece_unit_id("WTT")
        arguments = server.get_node(node_id("Site.Commands.SetMode.InputArguments", index))
        assert [a.Name for a in await arguments.read_value()] == ["Mode"]
    finally:
        await server.stop()


def _nodeset_table() -> PointTable:
    return shipped_point_table().for_site({"battery": 1, "inverter": 1, "surplus": 1})


# --------------------------------------------------------------------------- quality


def _binding(table: PointTable, point_id: str) -> Binding:
    kind = variable_kind(table[point_id])
    return Binding(table[point_id], node_id(point_id, 2), kind.variant_type)


@pytest.mark.parametrize(
    ("quality", "code", "keeps_value"),
    [
        (Quality.GOOD, StatusCodes.Good, True),
        (Quality.STALE, StatusCodes.UncertainLastUsableValue, True),
        (Quality.BAD, StatusCodes.BadCommunicationError, False),
    ],
)
def test_quality_becomes_the_status_code(
    table: PointTable, quality: Quality, code: int, keeps_value: bool
) -> None:
    sample = Sample(231.5, T_SAMPLE, quality, 0.0)
    value = data_value(_binding(table, "grid.voltage_l1"), sample, NOW)
    assert value.StatusCode == status(code)
    assert value.Value is not None
    assert value.Value.Value == (231.5 if keeps_value else None)
    assert value.SourceTimestamp == datetime.fromtimestamp(T_SAMPLE, UTC)
    assert value.ServerTimestamp == NOW


def test_waiting_is_bad_waiting_for_initial_data_without_time(table: PointTable) -> None:
    value = data_value(
        _binding(table, "grid.voltage_l1"), Sample(None, 0.0, Quality.WAITING, 0.0), NOW
    )
    assert value.StatusCode == status(StatusCodes.BadWaitingForInitialData)
    assert value.SourceTimestamp is None


def test_good_value_outside_its_range_is_uncertain(table: PointTable) -> None:
    sample = Sample(400.0, T_SAMPLE, Quality.GOOD, 0.0)
    value = data_value(_binding(table, "grid.voltage_l1"), sample, NOW)
    assert value.StatusCode == status(StatusCodes.UncertainEngineeringUnitsExceeded)


def test_values_take_the_variable_data_type(table: PointTable) -> None:
    cases = {
        "grid.comm_ok": (1, ua.VariantType.Boolean, True),
        "controller.mode": (2.0, ua.VariantType.UInt32, 2),
        "appliance.alive_counter": (7, ua.VariantType.UInt32, 7),
        "grid.active_power": (5, ua.VariantType.Double, 5.0),
        "heartbeat.last_time": (
            T_SAMPLE,
            ua.VariantType.DateTime,
            datetime.fromtimestamp(T_SAMPLE, UTC),
        ),
    }
    for point_id, (raw, variant_type, expected) in cases.items():
        value = data_value(_binding(table, point_id), Sample(raw, T_SAMPLE, Quality.GOOD, 0.0), NOW)
        assert value.Value is not None
        assert (value.Value.VariantType, value.Value.Value) == (variant_type, expected), point_id


@pytest.mark.parametrize(
    ("point_id", "raw"),
    [("appliance.alive_counter", -1), ("controller.mode", 2.5), ("grid.active_power", math.nan)],
)
def test_unrepresentable_values_are_refused(table: PointTable, point_id: str, raw: float) -> None:
    with pytest.raises(ConversionError):
        data_value(_binding(table, point_id), Sample(raw, T_SAMPLE, Quality.GOOD, 0.0), NOW)


def test_enum_value_as_text_names_the_state(table: PointTable) -> None:
    binding = _binding(table, "controller.mode")
    text = text_value(binding, Sample(3, T_SAMPLE, Quality.GOOD, 0.0), NOW)
    assert text.Value is not None
    assert text.Value.Value == ua.LocalizedText("chargeonly", "en")
    waiting = text_value(binding, Sample(None, 0.0, Quality.WAITING, 0.0), NOW)
    assert waiting.StatusCode == status(StatusCodes.BadWaitingForInitialData)


def test_key_points_are_grid_bms_and_inverters(table: PointTable) -> None:
    assert key_point_ids(table.ids()) == (
        "grid.active_power",
        "battery.1.soc",
        "battery.2.soc",
        "inverter.1.active_power",
        "inverter.2.active_power",
    )


def test_service_level_falls_with_stale_control_data() -> None:
    keys = ("grid.active_power", "battery.1.soc", "battery.2.soc", "inverter.1.active_power")
    good = dict.fromkeys(keys, Quality.GOOD)
    assert service_level(good) == 255
    assert service_level(dict.fromkeys(keys, Quality.WAITING)) == 1
    assert service_level({**good, "grid.active_power": Quality.STALE}) == 50
    one_node = service_level({**good, "battery.2.soc": Quality.BAD})
    all_nodes = service_level({**good, **dict.fromkeys(keys[1:], Quality.STALE)})
    assert 100 <= all_nodes < one_node < 200


# --------------------------------------------------------------------------- commands


def test_reject_codes_map_to_specific_status_codes() -> None:
    expected = {
        RejectCode.OUT_OF_RANGE: StatusCodes.BadOutOfRange,
        RejectCode.INVALID_VALUE: StatusCodes.BadInvalidArgument,
        RejectCode.INVALID_STATE: StatusCodes.BadInvalidState,
        RejectCode.NOT_WRITABLE: StatusCodes.BadNotWritable,
        RejectCode.ACCESS_DENIED: StatusCodes.BadUserAccessDenied,
        RejectCode.UNAVAILABLE: StatusCodes.BadTimeout,
    }
    for code, expected_status in expected.items():
        assert status_of(CommandResult(1, False, "no", code)) == status(expected_status)
    assert status_of(CommandResult(1, True)).is_good()
    assert status_of(CommandResult(1, False, "no")) != status(StatusCodes.BadUnexpectedError)


def test_written_values_are_accepted_by_numeric_class() -> None:
    double, uint32, boolean = ua.VariantType.Double, ua.VariantType.UInt32, ua.VariantType.Boolean
    assert accept_variant(ua.Variant(5, ua.VariantType.Int64), double) == 5.0
    assert accept_variant(ua.Variant(2.5, double), double) == 2.5
    assert accept_variant(ua.Variant(2, ua.VariantType.Int32), uint32) == 2
    assert accept_variant(ua.Variant(2.0, double), uint32) is None
    assert accept_variant(ua.Variant(True, boolean), uint32) is None
    assert accept_variant(ua.Variant(True, boolean), boolean) is True
    assert accept_variant(ua.Variant(1, ua.VariantType.Int32), boolean) is None
    assert accept_variant(ua.Variant("2", ua.VariantType.String), double) is None
    assert accept_variant(ua.Variant([1.0, 2.0], double), double) is None


# --------------------------------------------------------------------------- users


def _users() -> list[UserConfig]:
    return [
        UserConfig(name="viewer", role="viewer", password_hash=_hash("v-secret")),
        UserConfig(name="operator", role="operator", password_hash=_hash("o-secret")),
        UserConfig(name="admin", role="admin", password_hash=_hash("a-secret")),
    ]


def _hash(password: str) -> str:
    return hash_password(password, 100_000, salt="fixedsaltfortests")


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def users() -> list[UserConfig]:
    return _users()


def test_users_get_their_role_and_never_asyncua_admin(users: list[UserConfig]) -> None:
    directory = UserDirectory(users, allow_anonymous=False)
    iserver = None
    operator = directory.get_user(iserver, "operator", "o-secret")  # type: ignore[arg-type]
    assert isinstance(operator, ApplianceUser)
    assert (operator.access, operator.role, operator.name) == (
        "operator",
        UserRole.User,
        "operator",
    )
    admin = directory.get_user(iserver, "admin", "a-secret")  # type: ignore[arg-type]
    assert isinstance(admin, ApplianceUser)
    assert admin.role is not UserRole.Admin
    assert may_command(operator)
    assert may_command(admin)
    viewer = directory.get_user(iserver, "viewer", "v-secret")  # type: ignore[arg-type]
    assert not may_command(viewer)


def test_wrong_passwords_unknown_users_and_anonymous_are_refused(users: list[UserConfig]) -> None:
    directory = UserDirectory(users, allow_anonymous=False)
    assert directory.get_user(None, "admin", "wrong") is None  # type: ignore[arg-type]
    assert directory.get_user(None, "admin", "") is None  # type: ignore[arg-type]
    assert directory.get_user(None, "root", "a-secret") is None  # type: ignore[arg-type]
    assert directory.get_user(None, None, None) is None  # type: ignore[arg-type]
    assert directory.refused == 4


def test_anonymous_is_read_only_when_enabled(users: list[UserConfig]) -> None:
    directory = UserDirectory(users, allow_anonymous=True)
    anonymous = directory.get_user(None)  # type: ignore[arg-type]
    assert isinstance(anonymous, ApplianceUser)
    assert anonymous.access == "anonymous"
    assert not may_command(anonymous)


def test_repeated_wrong_passwords_lock_the_name_for_a_while(users: list[UserConfig]) -> None:
    clock = _Clock()
    directory = UserDirectory(users, allow_anonymous=False, clock=clock)
    for _ in range(MAX_FAILURES):
        assert directory.get_user(None, "operator", "guess") is None  # type: ignore[arg-type]
    assert directory.get_user(None, "operator", "o-secret") is None  # type: ignore[arg-type]
    assert directory.get_user(None, "viewer", "v-secret") is not None  # type: ignore[arg-type]
    clock.now += 61.0
    assert directory.get_user(None, "operator", "o-secret") is not None  # type: ignore[arg-type]


def test_ruleset_refuses_node_management_and_foreign_users() -> None:
    ruleset = RoleRuleset()
    viewer = ApplianceUser(role=UserRole.User, name="v", access="viewer")
    read = node_id(ObjectIds.ReadRequest_Encoding_DefaultBinary)
    write = node_id(ObjectIds.WriteRequest_Encoding_DefaultBinary)
    add_nodes = node_id(ObjectIds.AddNodesRequest_Encoding_DefaultBinary)
    assert ruleset.check_validity(viewer, read, None)
    assert ruleset.check_validity(viewer, write, None)  # refused per item by the face
    assert not ruleset.check_validity(viewer, add_nodes, None)
    assert not ruleset.check_validity(User(role=UserRole.Admin), read, None)


# --------------------------------------------------------------------------- asyncua patch


def test_monitored_items_share_scalar_values_and_still_copy_structures() -> None:
    before = MonitoredItemValues.set_current_datavalue
    share_scalar_values()
    try:
        values = MonitoredItemValues()
        scalar = ua.DataValue(ua.Variant(1.5, ua.VariantType.Double))
        values.set_current_datavalue(scalar)
        assert values.get_current_datavalue() is scalar
        array = ua.DataValue(ua.Variant([1.0, 2.0], ua.VariantType.Double))
        values.set_current_datavalue(array)
        copied = values.get_current_datavalue()
        assert copied == array
        assert copied is not array
        assert values.get_old_datavalue() is scalar
        share_scalar_values(False)
        values.set_current_datavalue(scalar)
        assert values.get_current_datavalue() is not scalar  # asyncua's own deep copy again
    finally:
        MonitoredItemValues.set_current_datavalue = before  # type: ignore[method-assign]
