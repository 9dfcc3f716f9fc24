"""The site configuration: shipped files load, defaults apply, and every fault is reported
with the file, the field path, the offending value and what is allowed."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.config import (
    ConfigValidationError,
    SerialConnection,
    SiteConfig,
    TcpConnection,
    ZigbeeConnection,
    builtin_site,
    hash_password,
    load_config,
    load_config_text,
    simulated_site_config,
    verify_password,
)
from appliance.config.schema import serial_port_path
from appliance.config.users import DEFAULT_ITERATIONS, MIN_ITERATIONS
from appliance.errors import ConfigError

SOURCE = "site.yaml"
FAST = MIN_ITERATIONS  # keeps the hashing tests quick


# --------------------------------------------------------------------------- helpers


def node(name: str, channel: str, host: str) -> dict[str, Any]:
    return {
        "name": name,
        "bms": {"kind": "pylontech_can", "connection": {"type": "can", "channel": channel}},
        "inverter": {"kind": "sunspec", "connection": {"type": "tcp", "host": host}},
        "limits": {"max_charge_w": 5000, "max_discharge_w": 4000},
    }


def minimal() -> dict[str, Any]:
    """The smallest valid site: everything else takes its default."""
    return {
        "site": {"id": "test-site", "name": "Test site"},
        "devices": {
            "grid_meter": {
                "kind": "sdm630",
                "connection": {"type": "tcp", "host": "192.168.1.10"},
            },
            "battery_nodes": [
                node("node1", "can0", "192.168.1.31"),
                node("node2", "can1", "192.168.1.32"),
            ],
        },
        "faces": {"opcua": {"allow_anonymous": True}},
    }


def load(data: dict[str, Any]) -> SiteConfig:
    return load_config_text(yaml.safe_dump(data, sort_keys=False), SOURCE)


def errors(data: dict[str, Any]) -> ConfigValidationError:
    with pytest.raises(ConfigError) as info:
        load(data)
    assert isinstance(info.value, ConfigValidationError)
    return info.value


def put(data: dict[str, Any], dotted: str, value: object) -> dict[str, Any]:
    """A copy of `data` with `value` at ``a.b[1].c`` (creating mappings on the way)."""
    out = copy.deepcopy(data)
    parts: list[str | int] = [
        int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", dotted)
    ]
    target: Any = out
    for part in parts[:-1]:
        if isinstance(part, str) and part not in target:
            target[part] = {}
        target = target[part]
    target[parts[-1]] = value
    return out


def drop(data: dict[str, Any], dotted: str) -> dict[str, Any]:
    out = copy.deepcopy(data)
    parts: list[str | int] = [
        int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", dotted)
    ]
    target: Any = out
    for part in parts[:-1]:
        target = target[part]
    del target[parts[-1]]
    return out


# --------------------------------------------------------------------------- shipped files


def test_simulated_site_loads_with_everything_on_loopback() -> None:
    cfg = simulated_site_config()
    assert cfg.site.id == "simulated"
    assert cfg.source.endswith("simulated.yaml")
    assert cfg.simulation is not None
    assert cfg.simulation.battery_nodes == len(cfg.devices.battery_nodes) == 2
    assert cfg.data_dir == Path("var")
    assert not cfg.data_dir.is_absolute()
    assert cfg.archive.local.path == Path("var/archive")
    for face in (cfg.faces.opcua, cfg.faces.modbus, cfg.faces.metrics):
        assert face.enabled
        assert face.bind == "127.0.0.1"
        assert face.port >= 1024, "the simulated site must run without root"
    assert (cfg.faces.opcua.port, cfg.faces.modbus.port, cfg.faces.metrics.port) == (
        4840,
        5020,
        9464,
    )
    for role, meter in cfg.devices.meters().items():
        connection = meter.connection
        if role == "sml_meter":
            # A pty the simulated site publishes under data_dir, not a device of this machine.
            assert isinstance(connection, SerialConnection)
            assert serial_port_path(cfg.data_dir, connection.port) == "var/sim/sml-meter"
            continue
        if role == "consumption_clamp":
            # The radio-less ZigBee: the clamp's values come from the plant over loopback.
            assert isinstance(connection, ZigbeeConnection)
            assert (connection.radio, connection.device) == ("simulated", None)
        else:
            assert isinstance(connection, TcpConnection)
        assert connection.host == "127.0.0.1"
        assert connection.port is not None
        assert connection.port >= 15020
    assert set(cfg.devices.meters()) == {"grid_meter", "pv_meter", "sml_meter", "consumption_clamp"}
    for n in cfg.devices.battery_nodes:
        # The BMS frames reach the core from the simulated-site process through a bridge.
        assert n.bms.connection.interface == "socketcand"
        assert n.bms.connection.host == "127.0.0.1"
        assert isinstance(n.inverter.connection, TcpConnection)
        assert n.inverter.connection.host == "127.0.0.1"


def test_simulated_site_demo_passwords_in_comment_match_the_hashes() -> None:
    text = builtin_site("simulated.yaml").read_text(encoding="utf-8")
    documented = {
        m[1]: (m[2], m[3])
        for m in re.finditer(r"^#\s+(viewer|operator|admin)\s+(\w+)\s+(\S+-demo)\s*$", text, re.M)
    }
    cfg = simulated_site_config()
    assert {u.name for u in cfg.users} == set(documented) == {"viewer", "operator", "admin"}
    for user in cfg.users:
        role, password = documented[user.name]
        assert user.role == role
        assert verify_password(password, user.password_hash)
        assert not verify_password(password + "x", user.password_hash)
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "-demo" not in body, "demo passwords may appear in comments only"


def test_example_site_loads_as_described() -> None:
    cfg = load_config(Path(str(builtin_site("example-site.yaml"))))
    grid = cfg.devices.grid_meter
    assert grid.kind == "sdm630"
    assert grid.connection == SerialConnection(
        port="/dev/ttyUSB0", baudrate=9600, parity="N", stopbits=1, bytesize=8, timeout_s=0.5
    )
    pv = cfg.devices.pv_meter
    assert pv is not None
    assert isinstance(pv.connection, TcpConnection)
    assert pv.kind == "sdm630"
    assert cfg.devices.consumption_clamp is not None
    assert cfg.devices.consumption_clamp.kind == "pc321"
    assert cfg.devices.sml_meter is not None
    assert cfg.devices.sml_meter.connection == SerialConnection(port="/dev/ttyUSB1")
    assert [n.bms.connection.channel for n in cfg.devices.battery_nodes] == ["can0", "can1"]
    for n in cfg.devices.battery_nodes:
        assert n.inverter.kind == "sunspec"
        assert isinstance(n.inverter.connection, TcpConnection)
        assert n.inverter.connection.host.startswith("192.168.")
    assert {s.kind for s in cfg.devices.surplus_loads} == {"relay", "pwm_heater"}
    assert {cfg.faces.opcua.bind, cfg.faces.modbus.bind, cfg.faces.metrics.bind} == {"0.0.0.0"}
    influx = cfg.archive.influxdb
    assert influx is not None
    assert influx.token_file == Path("/etc/appliance/influxdb.token")
    assert cfg.archive.spool.path == Path("/var/lib/appliance/spool")
    assert cfg.site.timezone == "Europe/Berlin"
    assert {u.role for u in cfg.users} == {"viewer", "operator", "admin"}
    assert cfg.simulation is None


# --------------------------------------------------------------------------- defaults


def test_defaults_are_applied() -> None:
    cfg = load(minimal())
    assert cfg.version == 1
    assert cfg.site.timezone == "UTC"
    assert cfg.data_dir == Path("/var/lib/appliance")
    grid = cfg.devices.grid_meter
    assert (grid.poll_interval_s, grid.stale_after_s, grid.staleness_s) == (0.5, None, 2.0)
    assert grid.connection == TcpConnection(host="192.168.1.10", port=502, unit_id=1, timeout_s=1.0)
    assert cfg.devices.pv_meter is None
    assert cfg.devices.surplus_loads == ()
    n = cfg.devices.battery_nodes[0]
    assert n.bms.connection.interface == "socketcan"
    assert n.bms.connection.bitrate == 500_000
    assert n.inverter.revert_timeout_s == 10.0
    assert n.limits.min_soc_pct < n.limits.max_soc_pct
    assert n.limits.min_cell_voltage_v < n.limits.safe_cell_voltage_v < n.limits.max_cell_voltage_v
    c = cfg.control
    assert (c.profile, c.initial_mode) == ("balancing", "stop")
    assert (c.loop_interval_s, c.grid_target_w, c.kp) == (0.5, 0.0, 0.1)
    assert (c.integral_decay, c.anti_windup, c.grid_code_ramp_per_cycle) == (0.995, 0.02, 0.00167)
    assert (c.sensor_loss_factor, c.heartbeat_timeout_s, c.reserve_soc_pct) == (0.75, 20.0, 10.0)
    assert (c.soc_balance_start_pct, c.soc_balance_stop_pct) == (5.0, 2.0)
    assert c.off_grid_voltage_fraction == 0.6
    assert c.site_max_charge_w is None
    assert cfg.site_max_charge_w() == 10_000
    assert cfg.site_max_discharge_w() == 8_000
    f = cfg.faces
    assert (f.opcua.bind, f.opcua.port, f.opcua.enabled) == ("127.0.0.1", 4840, True)
    assert f.opcua.security_policies == ("Basic256Sha256_SignAndEncrypt",)
    assert (f.modbus.port, f.modbus.unit_id, f.modbus.rtu) == (502, 1, None)
    assert f.metrics.port == 9464
    assert cfg.archive.influxdb is None
    assert cfg.archive.spool.path == Path("/var/lib/appliance/spool")
    assert cfg.archive.local.path == Path("/var/lib/appliance/archive")
    assert cfg.logging.level == "INFO"
    assert cfg.simulation is None
    assert cfg.source == SOURCE


def test_serial_defaults_and_int_accepted_for_float() -> None:
    data = put(minimal(), "devices.grid_meter.connection", {"type": "serial", "port": "/dev/ttyS0"})
    data = put(data, "devices.grid_meter.poll_interval_s", 1)
    cfg = load(data)
    conn = cfg.devices.grid_meter.connection
    assert conn == SerialConnection(port="/dev/ttyS0")
    assert isinstance(conn, SerialConnection)
    assert (conn.baudrate, conn.parity, conn.stopbits, conn.bytesize, conn.unit_id) == (
        9600,
        "N",
        1,
        8,
        1,
    )
    assert isinstance(cfg.devices.grid_meter.poll_interval_s, float)


# --------------------------------------------------------------------------- one fault each

CASES: list[tuple[str, dict[str, Any], str, list[str]]] = [
    (
        "unknown key",
        put(minimal(), "faces.modbus.bind_port", 5020),
        "faces.modbus.bind_port",
        ["unknown key 'bind_port'; allowed keys: bind, port, unit_id, rtu, enabled"],
    ),
    (
        "missing field",
        drop(minimal(), "devices.grid_meter.connection.host"),
        "devices.grid_meter.connection.host",
        ["missing required key", "host name or IP address"],
    ),
    (
        "string for a number",
        put(minimal(), "control.kp", "abc"),
        "control.kp",
        ["'abc' is a string", "0.001 .. 10"],
    ),
    (
        "bool is not an int",
        put(minimal(), "devices.grid_meter.connection.unit_id", True),
        "devices.grid_meter.connection.unit_id",
        ["true is a boolean", "whole number in 0 .. 247"],
    ),
    (
        "float for an int",
        put(minimal(), "devices.grid_meter.connection.port", 502.5),
        "devices.grid_meter.connection.port",
        ["502.5 is not a whole number", "1 .. 65535"],
    ),
    (
        "out of range",
        put(minimal(), "devices.battery_nodes[1].limits.max_charge_w", -5),
        "devices.battery_nodes[1].limits.max_charge_w",
        ["-5 is out of range; allowed 0 .. 1000000"],
    ),
    (
        "bad enum",
        put(minimal(), "devices.grid_meter.kind", "sdm631"),
        "devices.grid_meter.kind",
        ["'sdm631' is not allowed; allowed: sdm630, pc321, sml"],
    ),
    (
        "bad numeric enum",
        put(
            minimal(),
            "devices.grid_meter.connection",
            {"type": "serial", "port": "/dev/ttyUSB0", "baudrate": 9601},
        ),
        "devices.grid_meter.connection.baudrate",
        ["9601 is not allowed", "1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200"],
    ),
    (
        "bad connection type",
        put(minimal(), "devices.battery_nodes[0].inverter.connection.type", "can"),
        "devices.battery_nodes[0].inverter.connection.type",
        ["'can' is not allowed; allowed: tcp, serial"],
    ),
    (
        "wrong connection for the meter kind",
        put(minimal(), "devices.grid_meter.kind", "pc321"),
        "devices.grid_meter.connection.type",
        ["'tcp' is not allowed for a pc321 meter; allowed: zigbee"],
    ),
    (
        "duplicate node names",
        put(minimal(), "devices.battery_nodes[1].name", "node1"),
        "devices.battery_nodes[1].name",
        ["'node1' is already used at devices.battery_nodes[0].name"],
    ),
    (
        "balance start below stop",
        put(put(minimal(), "control.soc_balance_start_pct", 2), "control.soc_balance_stop_pct", 5),
        "control.soc_balance_start_pct",
        ["2 is not above soc_balance_stop_pct (5)", "allowed: a value above 5"],
    ),
    (
        "balance start equal to stop",
        put(put(minimal(), "control.soc_balance_start_pct", 3), "control.soc_balance_stop_pct", 3),
        "control.soc_balance_start_pct",
        ["3 is not above soc_balance_stop_pct (3)"],
    ),
    (
        "min soc above max soc",
        put(
            put(minimal(), "devices.battery_nodes[0].limits.min_soc_pct", 90),
            "devices.battery_nodes[0].limits.max_soc_pct",
            80,
        ),
        "devices.battery_nodes[0].limits.min_soc_pct",
        ["90 is not below max_soc_pct (80)"],
    ),
    (
        "list too short",
        put(minimal(), "devices.battery_nodes", []),
        "devices.battery_nodes",
        ["has 0 entries; allowed 1 .. 64 entries"],
    ),
    (
        "unknown time zone",
        put(minimal(), "site.timezone", "Mars/Olympus"),
        "site.timezone",
        ["'Mars/Olympus' is not a known time zone", "Europe/Berlin"],
    ),
    (
        "bad slug",
        put(minimal(), "site.id", "My Site"),
        "site.id",
        ["'My Site' is not valid", "lower-case letters"],
    ),
    (
        "face port clash on the same address",
        put(minimal(), "faces.metrics.port", 4840),
        "faces.metrics.port",
        ["4840 is already used by faces.opcua on 127.0.0.1"],
    ),
    (
        "face port clash with a wildcard bind",
        put(put(minimal(), "faces.modbus.port", 4840), "faces.modbus.bind", "0.0.0.0"),
        "faces.modbus.port",
        ["4840 is already used by faces.opcua"],
    ),
    (
        "two BMS on one CAN channel",
        put(minimal(), "devices.battery_nodes[1].bms.connection.channel", "can0"),
        "devices.battery_nodes[1].bms.connection.channel",
        ["'can0' is already used by devices.battery_nodes[0].bms.connection"],
    ),
    (
        "two devices at one Modbus address",
        put(minimal(), "devices.battery_nodes[1].inverter.connection.host", "192.168.1.31"),
        "devices.battery_nodes[1].inverter.connection.unit_id",
        ["1 on 192.168.1.31:502 is already used by devices.battery_nodes[0].inverter"],
    ),
    (
        "generic inverter without a map",
        put(minimal(), "devices.battery_nodes[0].inverter.kind", "generic"),
        "devices.battery_nodes[0].inverter.map",
        ["missing required key for kind generic"],
    ),
    (
        "generic inverter map that does not exist",
        put(
            minimal(),
            "devices.battery_nodes[0].inverter",
            {
                "kind": "generic",
                "map": "no-such-map.yaml",
                "connection": {"type": "tcp", "host": "192.168.1.31"},
            },
        ),
        "devices.battery_nodes[0].inverter.map",
        ["'no-such-map.yaml' is not a file in models/devices; allowed:"],
    ),
    (
        "simulation node count",
        put(minimal(), "simulation", {"battery_nodes": 3}),
        "simulation.battery_nodes",
        ["3 does not match the 2 entries of devices.battery_nodes; allowed: 2"],
    ),
    (
        "nobody could log in",
        put(minimal(), "faces.opcua.allow_anonymous", False),
        "users",
        ["no users are configured", "allow_anonymous"],
    ),
    (
        "unquoted number where a string is needed",
        put(minimal(), "site.name", 1234),
        "site.name",
        ["1234 is a whole number; expected a string (put the value in quotes)"],
    ),
    (
        "sg_ready needs two channels",
        put(
            minimal(),
            "devices.surplus_loads",
            [
                {
                    "name": "heat-pump",
                    "kind": "sg_ready",
                    "connection": {"type": "tcp", "host": "192.168.1.40"},
                    "channels": [1],
                    "rated_power_w": 3000,
                }
            ],
        ),
        "devices.surplus_loads[0].channels",
        ["[1] has 1 entries; allowed 2 channel(s) for kind sg_ready"],
    ),
]


@pytest.mark.parametrize(
    ("data", "path", "fragments"),
    [pytest.param(d, p, f, id=name) for name, d, p, f in CASES],
)
def test_each_fault_names_file_path_value_and_what_is_allowed(
    data: dict[str, Any], path: str, fragments: list[str]
) -> None:
    err = errors(data)
    assert len(err.problems) == 1, str(err)
    line = str(err)
    assert line.startswith(f"{SOURCE}: {path}: "), line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    assert err.problems[0].path == path


def test_the_example_unknown_key_message_is_exact() -> None:
    err = errors(put(minimal(), "faces.modbus.bind_port", 5020))
    assert str(err).startswith(
        "site.yaml: faces.modbus.bind_port: unknown key 'bind_port'; "
        "allowed keys: bind, port, unit_id, rtu, enabled"
    )


def test_plain_password_is_refused_and_never_echoed() -> None:
    data = put(minimal(), "users", [{"name": "bob", "role": "admin", "password": "hunter2-secret"}])
    err = errors(data)
    text = str(err)
    assert f"{SOURCE}: users[0].password: plain-text passwords are not accepted" in text
    assert "password_hash" in text
    assert "pbkdf2_sha256$<iterations>$<salt>$<base64 hash>" in text
    assert "hunter2-secret" not in text


def test_malformed_password_hash_is_refused_without_echo() -> None:
    data = put(minimal(), "users", [{"name": "bob", "role": "admin", "password_hash": "letmein"}])
    text = str(errors(data))
    assert f"{SOURCE}: users[0].password_hash: " in text
    assert "is not a password hash; allowed: pbkdf2_sha256$" in text
    assert "letmein" not in text


def test_weak_password_hash_iterations_are_refused() -> None:
    weak = hash_password("pw", iterations=FAST).replace(f"${FAST}$", "$1000$")
    data = put(minimal(), "users", [{"name": "bob", "role": "admin", "password_hash": weak}])
    text = str(errors(data))
    assert "users[0].password_hash" in text
    assert f"uses 1000 iterations; allowed {MIN_ITERATIONS} .. " in text


def test_inline_influx_token_is_refused() -> None:
    influx = {"url": "http://db:8086", "org": "o", "bucket": "b", "token": "s3cr3t-token"}
    text = str(errors(put(minimal(), "archive.influxdb", influx)))
    assert f"{SOURCE}: archive.influxdb.token: the token must not be written" in text
    assert "token_file" in text
    assert "token_env" in text
    assert "s3cr3t-token" not in text


def test_faces_on_different_addresses_or_disabled_do_not_clash() -> None:
    data = put(minimal(), "faces.metrics", {"port": 4840, "bind": "192.168.1.2"})
    assert load(data).faces.metrics.port == 4840
    data = put(minimal(), "faces.metrics", {"port": 4840, "enabled": False})
    assert not load(data).faces.metrics.enabled


def test_shared_serial_bus_must_have_one_line_setting() -> None:
    data = put(
        minimal(),
        "devices.grid_meter.connection",
        {"type": "serial", "port": "/dev/ttyUSB0", "baudrate": 9600},
    )
    data = put(
        data,
        "devices.pv_meter",
        {
            "kind": "sdm630",
            "connection": {"type": "serial", "port": "/dev/ttyUSB0", "baudrate": 19200},
        },
    )
    text = str(errors(data))
    assert "site.yaml: devices.pv_meter.connection: /dev/ttyUSB0 is shared with" in text
    assert "allowed: baudrate 9600, parity N" in text
    # Same settings, another unit id: a proper RS485 bus.
    data = put(data, "devices.pv_meter.connection.baudrate", 9600)
    data = put(data, "devices.pv_meter.connection.unit_id", 2)
    assert load(data).devices.pv_meter is not None


# --------------------------------------------------------------------------- several at once


def test_several_problems_are_reported_at_once_in_file_order() -> None:
    data = minimal()
    data = put(data, "site.timezone", "Nowhere/Land")
    data = put(data, "devices.grid_meter.connection.port", 0)
    data = put(data, "devices.battery_nodes[1].limits.max_charge_w", "lots")
    data = put(data, "control.initial_mode", "turbo")
    data = put(data, "logging.colour", True)
    err = errors(data)
    lines = str(err).splitlines()
    assert len(err.problems) == len(lines) == 5
    assert all(line.startswith(f"{SOURCE}: ") for line in lines)
    paths = [p.path for p in err.problems]
    assert paths == [
        "site.timezone",
        "devices.grid_meter.connection.port",
        "devices.battery_nodes[1].limits.max_charge_w",
        "control.initial_mode",
        "logging.colour",
    ]
    assert "'turbo' is not allowed; allowed: stop, activate, maxself, chargeonly" in lines[3]
    assert "0 is out of range; allowed 1 .. 65535" in lines[1]


def test_problems_carry_the_line_of_the_field() -> None:
    text = """\
site:
  id: ok
  name: Line test
devices:
  grid_meter:
    kind: sdm630
    connection:
      type: tcp
      host: 10.0.0.1
      port: 99999
  battery_nodes: []
faces: {opcua: {allow_anonymous: true}}
"""
    with pytest.raises(ConfigValidationError) as info:
        load_config_text(text, SOURCE)
    port, nodes = info.value.problems
    assert (port.path, port.line) == ("devices.grid_meter.connection.port", 10)
    assert str(port).endswith("(line 10)")
    assert (nodes.path, nodes.line) == ("devices.battery_nodes", 11)


def test_duplicate_yaml_key_is_an_error_with_both_lines() -> None:
    text = "site: {id: a, name: b}\nlogging:\n  level: INFO\n  level: DEBUG\n"
    with pytest.raises(ConfigError) as info:
        load_config_text(text, SOURCE)
    assert (
        "site.yaml: logging.level: key 'level' is written twice (also on line 3); "
        "allowed: each key once (line 4)"
    ) in str(info.value)


# --------------------------------------------------------------------------- YAML and files


def test_yaml_syntax_error_names_file_line_and_column() -> None:
    text = "site:\n  id: x\n  name: [unclosed\ndevices: {}\n"
    with pytest.raises(ConfigError) as info:
        load_config_text(text, SOURCE)
    message = str(info.value)
    assert message.startswith("site.yaml: line 4, column 8: YAML syntax error: ")
    assert "expected ',' or ']'" in message


def test_tab_indentation_is_a_syntax_error() -> None:
    with pytest.raises(ConfigError, match=r"^site\.yaml: line 2, column 1: YAML syntax error"):
        load_config_text("site:\n\tid: x\n", SOURCE)


def test_empty_or_non_mapping_document() -> None:
    with pytest.raises(ConfigError, match=r"^site\.yaml: .*the file is empty; expected a mapping"):
        load_config_text("# nothing here\n", SOURCE)
    with pytest.raises(ConfigError, match=r"^site\.yaml: .*is a list; expected a mapping"):
        load_config_text("- a\n- b\n", SOURCE)


def test_load_config_names_the_path(tmp_path: Path) -> None:
    site = tmp_path / "etc" / "site.yaml"
    site.parent.mkdir()
    site.write_text(yaml.safe_dump(put(minimal(), "control.loop_interval_s", 9)), "utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(site)
    assert str(info.value).startswith(f"{site}: control.loop_interval_s: 9 is out of range")
    assert "allowed 0.1 .. 5" in str(info.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_generic_inverter_map_next_to_the_site_file(tmp_path: Path) -> None:
    (tmp_path / "acme-5k.yaml").write_text("registers: {}\n", "utf-8")
    inverter = {
        "kind": "generic",
        "map": "acme-5k.yaml",
        "connection": {"type": "serial", "port": "/dev/ttyUSB3"},
    }
    site = tmp_path / "site.yaml"
    site.write_text(
        yaml.safe_dump(put(minimal(), "devices.battery_nodes[0].inverter", inverter)), "utf-8"
    )
    cfg = load_config(site)
    assert cfg.devices.battery_nodes[0].inverter.map == "acme-5k.yaml"


# --------------------------------------------------------------------------- passwords


def test_password_hash_round_trip() -> None:
    stored = hash_password("correct horse battery staple", iterations=FAST)
    assert stored.startswith(f"pbkdf2_sha256${FAST}$")
    assert verify_password("correct horse battery staple", stored)
    assert not verify_password("correct horse battery stapler", stored)
    assert not verify_password("", stored)
    assert hash_password("same", iterations=FAST) != hash_password("same", iterations=FAST)


def test_password_hash_is_reproducible_with_a_salt_and_rejects_bad_input() -> None:
    a = hash_password("pw", iterations=FAST, salt="saltsalt")
    assert a == hash_password("pw", iterations=FAST, salt="saltsalt")
    assert not verify_password("pw", "pbkdf2_sha256$1$x$y")
    assert not verify_password("pw", "plain")
    with pytest.raises(ValueError, match="iterations"):
        hash_password("pw", iterations=10)
    assert DEFAULT_ITERATIONS >= MIN_ITERATIONS


def test_accepted_hash_is_usable_in_a_site_file() -> None:
    stored = hash_password("s3cret!", iterations=FAST)
    data = put(minimal(), "users", [{"name": "ops", "role": "operator", "password_hash": stored}])
    user = load(data).users[0]
    assert (user.name, user.role) == ("ops", "operator")
    assert verify_password("s3cret!", user.password_hash)


def test_socketcand_bridge_needs_host_and_port() -> None:
    bridged = {"type": "can", "interface": "socketcand", "channel": "sim-node1"}
    problems = str(errors(put(minimal(), "devices.battery_nodes[0].bms.connection", bridged)))
    assert (
        "devices.battery_nodes[0].bms.connection.host: is required with interface socketcand"
        in problems
    )
    assert (
        "devices.battery_nodes[0].bms.connection.port: is required with interface socketcand"
        in problems
    )
    ok = load(
        put(
            minimal(),
            "devices.battery_nodes[0].bms.connection",
            {**bridged, "host": "127.0.0.1", "port": 29536},
        )
    )
    connection = ok.devices.battery_nodes[0].bms.connection
    assert (connection.interface, connection.host, connection.port) == (
        "socketcand",
        "127.0.0.1",
        29536,
    )


def test_host_on_a_local_can_port_is_refused() -> None:
    local = {"type": "can", "interface": "socketcan", "channel": "can0", "host": "127.0.0.1"}
    problems = str(errors(put(minimal(), "devices.battery_nodes[0].bms.connection", local)))
    assert "bms.connection.host: is only used with interface socketcand, not socketcan" in problems


def test_pc321_meter_staleness_defaults_to_its_report_period_and_refuses_less() -> None:
    clamp = {
        "kind": "pc321",
        "connection": {
            "type": "zigbee",
            "radio": "znp",
            "device": "/dev/ttyACM0",
            "ieee": "a4:c1:38:00:12:34:56:78",
        },
    }
    site = load(put(minimal(), "devices.consumption_clamp", clamp))
    assert site.devices.consumption_clamp is not None
    assert site.devices.consumption_clamp.staleness_s == 30.0
    problems = str(
        errors(put(minimal(), "devices.consumption_clamp", {**clamp, "stale_after_s": 2}))
    )
    assert (
        "devices.consumption_clamp.stale_after_s: 2 is shorter than the clamp's report period"
        in problems
    )


SIMULATED_RADIO_CONNECTION: dict[str, Any] = {
    "type": "zigbee",
    "radio": "simulated",
    "host": "127.0.0.1",
    "port": 15060,
    "ieee": "a4:c1:38:00:12:34:56:78",
}
SIMULATED_CLAMP = {"kind": "pc321", "connection": SIMULATED_RADIO_CONNECTION}


def test_simulated_radio_and_relative_serial_ports_need_a_simulation_section() -> None:
    data = put(minimal(), "devices.consumption_clamp", SIMULATED_CLAMP)
    data = put(
        data,
        "devices.sml_meter",
        {"kind": "sml", "connection": {"type": "serial", "port": "ttyUSB0"}},
    )
    text = str(errors(data))
    assert (
        "site.yaml: devices.consumption_clamp.connection.radio: 'simulated' is the simulated "
        "site's radio" in text
    )
    assert "allowed on a real site: znp, ezsp, deconz, zigate, xbee" in text
    assert (
        "site.yaml: devices.sml_meter.connection.port: 'ttyUSB0' is a path relative to data_dir"
        in text
    )
    assert "allowed: a serial device path such as /dev/ttyUSB0" in text
    simulated = load(put(data, "simulation", {"battery_nodes": 2}))
    clamp = simulated.devices.consumption_clamp
    assert clamp is not None
    assert isinstance(clamp.connection, ZigbeeConnection)
    assert (clamp.connection.host, clamp.connection.port) == ("127.0.0.1", 15060)
    sml = simulated.devices.sml_meter
    assert sml is not None
    assert isinstance(sml.connection, SerialConnection)
    assert serial_port_path(simulated.data_dir, sml.connection.port) == "/var/lib/appliance/ttyUSB0"
    assert serial_port_path(simulated.data_dir, "/dev/ttyUSB0") == "/dev/ttyUSB0"
    assert serial_port_path(simulated.data_dir, "COM3") == "COM3"


def test_zigbee_connection_keys_follow_the_radio() -> None:
    simulated = put(minimal(), "simulation", {"battery_nodes": 2})
    feedless = {**SIMULATED_RADIO_CONNECTION, "device": "/dev/ttyACM0"}
    del feedless["port"]
    text = str(errors(put(simulated, "devices.consumption_clamp.connection", feedless)))
    assert "consumption_clamp.connection.device: is not used with radio simulated" in text
    assert "consumption_clamp.connection.port: is required with radio simulated" in text
    real = {
        "type": "zigbee",
        "radio": "znp",
        "host": "127.0.0.1",
        "ieee": "a4:c1:38:00:12:34:56:78",
    }
    clamp = {"kind": "pc321", "connection": real}
    text = str(errors(put(minimal(), "devices.consumption_clamp", clamp)))
    assert "consumption_clamp.connection.device: is required with radio znp" in text
    assert "consumption_clamp.connection.host: is only used with radio simulated, not znp" in text


def test_modbus_security_keys_default_to_local_writes_and_load() -> None:
    modbus = load(minimal()).faces.modbus
    assert modbus.allowed_networks == ("0.0.0.0/0", "::/0")
    assert modbus.write_networks == ("127.0.0.0/8", "::1/128")
    assert (modbus.read_only, modbus.max_connections, modbus.idle_timeout_s) == (False, 8, 60.0)
    keys = {
        "allowed_networks": ["10.0.0.0/8"],
        "write_networks": ["10.1.2.0/24", "fd00::/8"],
        "read_only": True,
        "max_connections": 2,
        "idle_timeout_s": 5,
    }
    site = load(put(minimal(), "faces.modbus", keys)).faces.modbus
    assert site.allowed_networks == ("10.0.0.0/8",)
    assert site.write_networks == ("10.1.2.0/24", "fd00::/8")
    assert (site.read_only, site.max_connections, site.idle_timeout_s) == (True, 2, 5.0)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            "faces.modbus.write_networks",
            ["10.1.2.3/24"],
            "faces.modbus.write_networks[0]: '10.1.2.3/24' has host bits set; allowed: the "
            "network address, here 10.1.2.0/24",
        ),
        (
            "faces.modbus.allowed_networks",
            ["scada.local"],
            "faces.modbus.allowed_networks[0]: 'scada.local' is not a network",
        ),
        ("faces.modbus.allowed_networks", [], "faces.modbus.allowed_networks: has 0 entries"),
        (
            "faces.modbus.write_networks",
            ["10.0.0.0/8", "10.0.0.0/8"],
            "faces.modbus.write_networks: lists a network twice; allowed: each network once",
        ),
        ("faces.modbus.max_connections", 0, "faces.modbus.max_connections: 0 is out of range"),
        ("faces.modbus.idle_timeout_s", 0.5, "faces.modbus.idle_timeout_s: 0.5 is out of range"),
        (
            "faces.modbus.unit_id",
            200,
            "faces.modbus.unit_id: 200 leaves no unit ids for the battery nodes "
            "(unit_id + 1 .. unit_id + 64, at most 247); allowed 1 .. 183",
        ),
        (
            "faces.modbus.read_only",
            "yes",
            "faces.modbus.read_only: 'yes' is a string; expected true or false",
        ),
    ],
)
def test_modbus_security_keys_are_validated(path: str, value: object, expected: str) -> None:
    assert expected in str(errors(put(minimal(), path, value)))


def test_surplus_loads_may_share_a_relay_module_but_not_a_channel() -> None:
    module = {"type": "tcp", "host": "192.168.1.40", "unit_id": 3}
    loads = [
        {
            "name": "boiler",
            "kind": "relay",
            "connection": module,
            "channels": [1],
            "rated_power_w": 2000,
        },
        {
            "name": "heater",
            "kind": "pwm_heater",
            "connection": module,
            "channels": [2],
            "rated_power_w": 3000,
        },
    ]
    shared = load(put(minimal(), "devices.surplus_loads", loads))
    assert [load_.channels for load_ in shared.devices.surplus_loads] == [(1,), (2,)]
    assert shared.devices.surplus_loads[1].duty_period_s == 10.0
    clash = [loads[0], {**loads[1], "channels": [1]}]
    problems = str(errors(put(minimal(), "devices.surplus_loads", clash)))
    assert (
        "devices.surplus_loads[1].channels[0]: 1 is already wired to boiler on the same relay module"
        in problems
    )
