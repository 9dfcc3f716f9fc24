"""The roles' variable specs agree with the appliance's configuration schema and their defaults.

The appliance role restates the site configuration's keys in meta/argument_specs.yml (so
Ansible refuses an unknown key or a wrong type before it touches a host) and the battery
limits' ranges in vars/main.yml (checked before anything changes). These tests fail when
appliance/config/schema.py and the role drift apart. Fast: they only read files.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.config import schema
from appliance.config.validate import Rule
from tests.ansible.unit_file import unit_problems

ROLES = Path(__file__).resolve().parents[2] / "ansible" / "roles"


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


SPECS = _load(ROLES / "appliance" / "meta" / "argument_specs.yml")["argument_specs"]
MAIN = SPECS["main"]["options"]
NODE = MAIN["appliance_battery_nodes"]["options"]


def _fields(*classes: type) -> set[str]:
    return {
        f.name
        for cls in classes
        for f in dataclasses.fields(cls)
        if not f.metadata.get("internal", False)
    }


def _literals(annotation: object) -> set[object]:
    """The values a Literal (or a union of Literals and None) allows; empty when not one."""
    if typing.get_origin(annotation) is typing.Literal:
        return set(typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return set().union(*(_literals(a) for a in typing.get_args(annotation)))
    return set()


CONNECTIONS = (
    schema.TcpConnection,
    schema.SerialConnection,
    schema.CanConnection,
    schema.ZigbeeConnection,
)

# spec options -> the schema dataclasses they stand for, and keys the role fills in itself.
MAPPINGS: list[tuple[str, dict[str, Any], tuple[type, ...], set[str]]] = [
    (
        "appliance_meters.grid_meter",
        MAIN["appliance_meters"]["options"]["grid_meter"]["options"],
        (schema.MeterConfig,),
        set(),
    ),
    (
        "meter connection",
        MAIN["appliance_meters"]["options"]["grid_meter"]["options"]["connection"]["options"],
        CONNECTIONS,
        set(),
    ),
    ("appliance_battery_nodes[]", NODE, (schema.BatteryNodeConfig,), set()),
    ("appliance_battery_nodes[].bms", NODE["bms"]["options"], (schema.BmsConfig,), set()),
    (
        "appliance_battery_nodes[].inverter",
        NODE["inverter"]["options"],
        (schema.InverterConfig,),
        set(),
    ),
    ("appliance_battery_nodes[].limits", NODE["limits"]["options"], (schema.BatteryLimits,), set()),
    (
        "appliance_node_limits",
        MAIN["appliance_node_limits"]["options"],
        (schema.BatteryLimits,),
        set(),
    ),
    (
        "appliance_surplus_loads[]",
        MAIN["appliance_surplus_loads"]["options"],
        (schema.SurplusLoadConfig,),
        set(),
    ),
    ("appliance_control", MAIN["appliance_control"]["options"], (schema.ControlConfig,), set()),
    ("appliance_opcua", MAIN["appliance_opcua"]["options"], (schema.OpcUaFace,), set()),
    ("appliance_modbus", MAIN["appliance_modbus"]["options"], (schema.ModbusFace,), set()),
    (
        "appliance_modbus.rtu",
        MAIN["appliance_modbus"]["options"]["rtu"]["options"],
        (schema.ModbusRtuFace,),
        set(),
    ),
    ("appliance_users[]", MAIN["appliance_users"]["options"], (schema.UserConfig,), set()),
    # The token is the role's business: from the vault into token_file.
    (
        "appliance_influxdb",
        MAIN["appliance_influxdb"]["options"],
        (schema.InfluxConfig,),
        {"token_file", "token_env"},
    ),
    (
        "appliance_archive_spool",
        MAIN["appliance_archive_spool"]["options"],
        (schema.SpoolConfig,),
        set(),
    ),
    (
        "appliance_archive_local",
        MAIN["appliance_archive_local"]["options"],
        (schema.LocalArchiveConfig,),
        set(),
    ),
    (
        "appliance_simulation",
        MAIN["appliance_simulation"]["options"],
        (schema.SimulationConfig,),
        set(),
    ),
]


@pytest.mark.parametrize(
    ("where", "options", "classes", "role_keys"), MAPPINGS, ids=[m[0] for m in MAPPINGS]
)
def test_spec_keys_are_the_schema_keys(
    where: str, options: dict[str, Any], classes: tuple[type, ...], role_keys: set[str]
) -> None:
    assert set(options) == _fields(*classes) - role_keys, where


@pytest.mark.parametrize(
    ("where", "options", "classes", "role_keys"), MAPPINGS, ids=[m[0] for m in MAPPINGS]
)
def test_spec_choices_are_the_schema_literals(
    where: str, options: dict[str, Any], classes: tuple[type, ...], role_keys: set[str]
) -> None:
    for key, spec in options.items():
        if "choices" not in spec:
            continue
        allowed = set().union(
            *(_literals(typing.get_type_hints(c)[key]) for c in classes if key in _fields(c))
        )
        assert set(spec["choices"]) == allowed, f"{where}.{key}"


def test_meter_roles_are_the_schema_meter_roles() -> None:
    meters = {
        f.name
        for f in dataclasses.fields(schema.DevicesConfig)
        if f.name.endswith(("_meter", "_clamp"))
    }
    assert set(MAIN["appliance_meters"]["options"]) == meters


def test_limit_ranges_defaults_and_required_keys_match_battery_limits() -> None:
    role_vars = _load(ROLES / "appliance" / "vars" / "main.yml")
    limits = dataclasses.fields(schema.BatteryLimits)
    ranges = {}
    for f in limits:
        rule: Rule = f.metadata["rule"]
        ranges[f.name] = [rule.min, rule.max]
    assert role_vars["__appliance_limit_ranges"] == ranges
    defaults = {f.name: f.default for f in limits if f.default is not dataclasses.MISSING}
    assert role_vars["__appliance_limit_defaults"] == defaults
    required = [f.name for f in limits if f.default is dataclasses.MISSING]
    assert role_vars["__appliance_required_limits"] == required


@pytest.mark.parametrize("role", ["appliance", "monitoring"])
def test_every_default_is_specified_with_the_same_value(role: str) -> None:
    defaults = _load(ROLES / role / "defaults" / "main.yml")
    options = _load(ROLES / role / "meta" / "argument_specs.yml")["argument_specs"]["main"][
        "options"
    ]
    assert set(defaults) == {k for k, v in options.items() if not v.get("required")}
    for key, value in defaults.items():
        assert options[key].get("default") == value, key
        assert options[key].get("description"), key


def test_the_other_entry_points_restate_main_exactly() -> None:
    for entry in ("validate", "health", "report"):
        for key, spec in SPECS[entry]["options"].items():
            assert spec == MAIN[key], f"{entry}: {key}"
    assert SPECS["validate"]["options"] == MAIN


# --------------------------------------------------------------------------- unit check


GOOD_UNIT = """\
# comment
[Unit]
Description=x

[Service]
Type=simple
ExecStartPre=-/opt/a/bin/appliance check-config /etc/a.yaml
ExecStart=/opt/a/bin/appliance run
ReadWritePaths=/var/lib/a -/var/log/a
WorkingDirectory=/var/lib/a
Restart=on-failure
DeviceAllow=char-ttyUSB rw
DeviceAllow=char-ttyACM rw

[Install]
WantedBy=multi-user.target
"""


def test_unit_check_accepts_a_good_unit() -> None:
    assert unit_problems(GOOD_UNIT) == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            ("ExecStart=/opt/a/bin/appliance run", "ExecStart=appliance run"),
            "must be an absolute path",
        ),
        (
            ("ReadWritePaths=/var/lib/a", "ReadWritePaths=var/lib/a"),
            "'var/lib/a' is not an absolute path",
        ),
        (("Restart=on-failure", "Restart=sometimes"), "Restart=sometimes: not one of"),
        (("Type=simple", "Type=notfy"), "Type=notfy: not one of"),
        (("[Install]\nWantedBy=multi-user.target\n", ""), "[Install] is missing"),
        (("Description=x", "Descr x"), "not a section, comment or Key=value"),
        (("ExecStart=/opt/a/bin/appliance run\n", ""), "ExecStart= is missing"),
    ],
)
def test_unit_check_finds_what_systemd_would_refuse(change: tuple[str, str], problem: str) -> None:
    broken = GOOD_UNIT.replace(*change)
    assert broken != GOOD_UNIT
    assert any(problem in p for p in unit_problems(broken)), unit_problems(broken)
