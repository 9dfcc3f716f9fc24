"""The site configuration: one YAML file, described here as frozen dataclasses.

Each dataclass is a mapping in the file; the field names are the keys, the annotations the
accepted types, the defaults make keys optional, the `rule(...)` metadata adds ranges and
patterns (see `validate.py`). Units are part of the names (``_w``, ``_s``, ``_pct``, ``_v``).
Checks between fields of one mapping live in its ``cross_check``; checks across the whole
site (unique names, port clashes, shared buses, references) live in `site_problems`.
"""

from __future__ import annotations

import ipaddress
import re
import zoneinfo
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from appliance.config.users import HASH_SHAPE, password_hash_problem
from appliance.config.validate import (
    INTERNAL,
    FieldPath,
    fmt_number,
    fmt_value,
    render_path,
    rule,
)

# --------------------------------------------------------------------------- value checks

SLUG = r"[a-z0-9][a-z0-9_-]{0,62}"
SLUG_ALLOWED = (
    "lower-case letters, digits, '-' and '_' (at most 63, starting with a letter or digit)"
)
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
WILDCARD_BINDS = frozenset({"0.0.0.0", "::"})  # noqa: S104 - the names, not a bind
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def _check_host(value: str) -> str | None:
    if re.fullmatch(r"[0-9.]+", value) or ":" in value:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return "is not a valid IP address; allowed: an IPv4/IPv6 address or a host name"
        return None
    if _HOSTNAME.fullmatch(value) is None:
        return "is not a valid host name; allowed: an IPv4/IPv6 address or a host name"
    return None


def _check_bind(value: str) -> str | None:
    if value == "localhost":
        return None
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return (
            "is not an IP address; allowed: an address of this machine, 127.0.0.1 (local only) "
            "or 0.0.0.0 (all interfaces)"
        )
    return None


def _check_timezone(value: str) -> str | None:
    if value in _timezones():
        return None
    return "is not a known time zone; allowed: an IANA name such as UTC or Europe/Berlin"


_TZ_CACHE: list[frozenset[str]] = []


def _timezones() -> frozenset[str]:
    if not _TZ_CACHE:
        _TZ_CACHE.append(frozenset(zoneinfo.available_timezones() | {"UTC"}))
    return _TZ_CACHE[0]


def _check_password_hash(value: str) -> str | None:
    return password_hash_problem(value)


SERIAL_PORT = r"(/\S+|COM[0-9]+)"
SERIAL_PORT_ALLOWED = "a serial device path such as /dev/ttyUSB0 (or COM3)"
#: A device's serial line: a device path, or (simulated sites only, see `site_problems`) a
#: path relative to data_dir where the simulated site publishes a pty, e.g. sim/sml-meter.
DEVICE_SERIAL_PORT = r"(/\S+|COM[0-9]+|[A-Za-z0-9_.][A-Za-z0-9_./-]*)"
DEVICE_SERIAL_PORT_ALLOWED = (
    f"{SERIAL_PORT_ALLOWED}; in a simulated site also a path relative to data_dir"
)


def is_relative_serial_port(port: str) -> bool:
    """A serial port given relative to data_dir (a pty the simulated site publishes)."""
    return not port.startswith("/") and re.fullmatch(r"COM[0-9]+", port) is None


def serial_port_path(data_dir: Path, port: str) -> str:
    """The port a driver opens: a relative one under data_dir, as the archive paths are."""
    return str(data_dir / port) if is_relative_serial_port(port) else port


# --------------------------------------------------------------------------- connections


@dataclass(frozen=True, kw_only=True)
class TcpConnection:
    """Modbus TCP (directly or through a serial gateway)."""

    type: Literal["tcp"] = "tcp"
    host: str = field(metadata=rule(check=_check_host, allowed="a host name or IP address"))
    port: int = field(default=502, metadata=rule(min=1, max=65535))
    unit_id: int = field(default=1, metadata=rule(min=0, max=247))
    timeout_s: float = field(default=1.0, metadata=rule(min=0.05, max=60))


Baudrate = Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200]
Parity = Literal["N", "E", "O"]


@dataclass(frozen=True, kw_only=True)
class SerialConnection:
    """Modbus RTU, or a plain serial line (SML), on a local serial port."""

    type: Literal["serial"] = "serial"
    #: A path relative to data_dir is accepted only in a simulated site (its published ptys).
    port: str = field(metadata=rule(pattern=DEVICE_SERIAL_PORT, allowed=DEVICE_SERIAL_PORT_ALLOWED))
    baudrate: Baudrate = 9600
    parity: Parity = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit_id: int = field(default=1, metadata=rule(min=0, max=247))
    timeout_s: float = field(default=1.0, metadata=rule(min=0.05, max=60))


@dataclass(frozen=True, kw_only=True)
class CanConnection:
    """A CAN bus through python-can.

    `socketcan` is the appliance's own CAN port; `socketcand` reaches a CAN bus through a
    socketcand bridge over TCP (host, port), which is also how the simulated site serves its
    BMS frames to the appliance from another process; `virtual` is in-process only (tests).
    """

    type: Literal["can"] = "can"
    interface: Literal["socketcan", "socketcand", "virtual", "udp_multicast"] = "socketcan"
    channel: str = field(metadata=rule(pattern=r"\S+", allowed="a channel name such as can0"))
    bitrate: int = field(default=500_000, metadata=rule(min=10_000, max=1_000_000))
    host: str | None = field(
        default=None, metadata=rule(check=_check_host, allowed="a host name or IP address")
    )
    port: int | None = field(default=None, metadata=rule(min=1, max=65535))

    def cross_check(self) -> Iterator[tuple[FieldPath, str]]:
        bridged = self.interface == "socketcand"
        for name in ("host", "port"):
            given = getattr(self, name) is not None
            if bridged and not given:
                yield (
                    (name,),
                    "is required with interface socketcand; allowed: the bridge's " + name,
                )
            elif given and not bridged:
                yield (
                    (name,),
                    f"is only used with interface socketcand, not {self.interface}; allowed: remove it",
                )


#: The radio of the simulated site: no radio at all, see `ZigbeeConnection`.
SIMULATED_RADIO = "simulated"


@dataclass(frozen=True, kw_only=True)
class ZigbeeConnection:
    """A ZigBee device reached through a coordinator radio (zigpy).

    ``radio: simulated`` is the simulated site's: a radio-less zigpy application in the
    appliance whose devices report what the simulated-site process sends on a loopback line
    feed at host:port (docs/devices.md). Only a site with a ``simulation:`` section may use it.
    """

    type: Literal["zigbee"] = "zigbee"
    radio: Literal["znp", "ezsp", "deconz", "zigate", "xbee", "simulated"]
    #: The radio's serial port (every radio but simulated).
    device: str | None = field(
        default=None, metadata=rule(pattern=SERIAL_PORT, allowed=SERIAL_PORT_ALLOWED)
    )
    baudrate: Baudrate = 115200
    ieee: str = field(
        metadata=rule(
            pattern=r"([0-9A-Fa-f]{2}:){7}[0-9A-Fa-f]{2}",
            allowed="an IEEE address of 8 hex pairs such as 'a4:c1:38:00:12:34:56:78' (quoted)",
        )
    )
    #: The simulated site's report feed (radio simulated only).
    host: str | None = field(
        default=None, metadata=rule(check=_check_host, allowed="a host name or IP address")
    )
    port: int | None = field(default=None, metadata=rule(min=1, max=65535))

    def cross_check(self) -> Iterator[tuple[FieldPath, str]]:
        simulated = self.radio == SIMULATED_RADIO
        if not simulated and self.device is None:
            yield (
                ("device",),
                f"is required with radio {self.radio}; allowed: the radio's serial port "
                "such as /dev/ttyACM0",
            )
        if simulated and self.device is not None:
            yield (
                ("device",),
                "is not used with radio simulated (there is no radio); allowed: remove it",
            )
        for name in ("host", "port"):
            given = getattr(self, name) is not None
            if simulated and not given:
                yield (
                    (name,),
                    "is required with radio simulated; allowed: the " + name + " of the "
                    "simulated site's report feed",
                )
            elif given and not simulated:
                yield (
                    (name,),
                    f"is only used with radio simulated, not {self.radio}; allowed: remove it",
                )


Connection = TcpConnection | SerialConnection | CanConnection | ZigbeeConnection
ModbusConnection = TcpConnection | SerialConnection

# --------------------------------------------------------------------------- devices

MeterKind = Literal["sdm630", "pc321", "sml"]
#: A PC321 reports every 12 to 20 s and refuses a shorter reporting configuration.
PC321_MIN_STALE_S = 30.0
#: Which connection types each meter kind can use.
METER_CONNECTIONS: Mapping[str, tuple[str, ...]] = {
    "sdm630": ("tcp", "serial"),
    "pc321": ("zigbee",),
    "sml": ("serial", "tcp"),
}


@dataclass(frozen=True, kw_only=True)
class MeterConfig:
    """An energy meter: grid, PV, a consumption clamp or an SML smart meter."""

    kind: MeterKind
    connection: TcpConnection | SerialConnection | ZigbeeConnection
    poll_interval_s: float = field(default=0.5, metadata=rule(min=0.1, max=60))
    #: Age after which a reading is stale; default 2.0 s (the specification's limit), and
    #: 30 s for a pc321, which reports only every 12 to 20 s.
    stale_after_s: float | None = field(default=None, metadata=rule(min=0.2, max=600))

    @property
    def staleness_s(self) -> float:
        if self.stale_after_s is not None:
            return self.stale_after_s
        return PC321_MIN_STALE_S if self.kind == "pc321" else 2.0

    def cross_check(self) -> Iterator[tuple[FieldPath, str]]:
        allowed = METER_CONNECTIONS[self.kind]
        if self.connection.type not in allowed:
            yield (
                ("connection", "type"),
                f"{self.connection.type!r} is not allowed for a {self.kind} meter; "
                f"allowed: {', '.join(allowed)}",
            )
        if self.kind == "pc321" and self.staleness_s < PC321_MIN_STALE_S:
            yield (
                ("stale_after_s",),
                f"{fmt_number(self.staleness_s)} is shorter than the clamp's report period; "
                f"allowed {fmt_number(PC321_MIN_STALE_S)} .. 600 for a pc321 (it reports every 12 to 20 s)",
            )
        if self.staleness_s <= self.poll_interval_s:
            yield (
                ("stale_after_s",),
                f"{fmt_number(self.staleness_s)} is not above poll_interval_s "
                f"({fmt_number(self.poll_interval_s)}); allowed: a value above "
                f"{fmt_number(self.poll_interval_s)}",
            )


@dataclass(frozen=True, kw_only=True)
class BmsConfig:
    kind: Literal["pylontech_can"]
    connection: CanConnection
    stale_after_s: float = field(default=5.0, metadata=rule(min=0.5, max=600))


@dataclass(frozen=True, kw_only=True)
class InverterConfig:
    kind: Literal["sunspec", "generic"]
    connection: TcpConnection | SerialConnection
    #: Register map of a generic inverter: a file name in models/devices or next to the site file.
    map: str | None = field(
        default=None,
        metadata=rule(
            pattern=r"[A-Za-z0-9_.-]+\.(yaml|yml)",
            allowed="a map file name such as acme-5k.yaml",
        ),
    )
    revert_timeout_s: float = field(default=10.0, metadata=rule(min=1, max=3600))
    poll_interval_s: float = field(default=0.5, metadata=rule(min=0.1, max=60))

    def cross_check(self) -> Iterator[tuple[FieldPath, str]]:
        if self.kind == "generic" and self.map is None:
            yield (
                ("map",),
                "missing required key for kind generic; expected a register map file name "
                "(in models/devices or next to the site file)",
            )
        if self.kind == "sunspec" and self.map is not None:
            yield (
                ("map",),
                f"{self.map!r} is not used by a sunspec inverter (it describes itself); "
                "allowed: only with kind generic",
            )


def _below(lo_name: str, lo: float, hi_name: str, hi: float) -> tuple[FieldPath, str] | None:
    """The problem for a min/max pair that is not strictly ordered, reported on `lo_name`."""
    if lo < hi:
        return None
    return (
        (lo_name,),
        f"{fmt_number(lo)} is not below {hi_name} ({fmt_number(hi)}); "
        f"allowed: a value below {fmt_number(hi)}",
    )


@dataclass(frozen=True, kw_only=True)
class BatteryLimits:
    """Hard limits of one battery node; defaults suit a 16S LFP (Pylontech) stack."""

    max_charge_w: float = field(metadata=rule(min=0, max=1_000_000))
    max_discharge_w: float = field(metadata=rule(min=0, max=1_000_000))
    min_soc_pct: float = field(default=10.0, metadata=rule(min=0, max=100))
    max_soc_pct: float = field(default=95.0, metadata=rule(min=0, max=100))
    min_cell_voltage_v: float = field(default=3.0, metadata=rule(min=2.0, max=4.5))
    max_cell_voltage_v: float = field(default=3.55, metadata=rule(min=2.0, max=4.5))
    #: After a cell fell below min_cell_voltage_v, recharge until all cells are above this.
    safe_cell_voltage_v: float = field(default=3.2, metadata=rule(min=2.0, max=4.5))
    max_temperature_c: float = field(default=45.0, metadata=rule(min=0, max=80))

    def cross_check(self) -> Iterator[tuple[FieldPath, str]]:
        pairs = [
            _below("min_soc_pct", self.min_soc_pct, "max_soc_pct", self.max_soc_pct),
            _below(
                "min_cell_voltage_v",
                self.min_cell_voltage_v,
                "safe_cell_voltage_v",
                self.safe_cell_voltage_v,
            ),
            _below(
                "safe_cell_voltage_v",
                self.safe_cell_voltage_v,
                "max_cell_voltage_v",
                self.max_cell_voltage_v,
            ),
        ]
        yield from (p for p in pairs if p is not None)


@dataclass(frozen=True, kw_only=True)
class BatteryNodeConfig:
    """One battery node: a BMS, the inverter that charges/discharges it, and its limits."""

    name: str = field(metadata=rule(pattern=SLUG, allowed=SLUG_ALLOWED))
    bms: BmsConfig
    inverter: InverterConfig
    limits: BatteryLimits


#: How many relay channels each surplus-load kind switches.
LOAD_CHANNELS: Mapping[str, tuple[int, int]] = {
    "relay": (1, 8),
    "sg_ready": (2, 2),
    "pwm_heater": (1, 1),
}


@dataclass(frozen=True, kw_only=True)
class SurplusLoadConfig:
    """A load switched on when there is PV surplus (relay, SG-Ready heat pump, PWM heater)."""

    name: str = field(metadata=rule(pattern=SLUG, allowed=SLUG_ALLOWED))
    kind: Literal["relay", "sg_ready", "pwm_heater"]
    connection: TcpConnection | SerialConnection
    #: Relay (or PWM output) channels on the module: relay 1..8 channels, sg_ready 2, pwm_heater 1.
    channels: tuple[int, ...] = field(metadata=rule(min=1, max=32, min_items=1, max_items=8))
    rated_power_w: float = field(metadata=rule(min=1, max=1_000_000))
    min_on_s: float = field(default=60.0, metadata=rule(min=0, max=86_400))
    min_off_s: float = field(default=60.0, metadata=rule(min=0, max=86_400))
    #: 1 is switched on first.
    priority: int = field(default=10, metadata=rule(min=1, max=100))
    #: pwm_heater: its relay channel is switched on for duty x this period in every period
    #: (time-proportioning; the controller sets the duty, 0 to 100 %).
    duty_period_s: float = field(default=10.0, metadata=rule(min=1, max=600))

    def cross_check(self) -> Iterator[tuple[FieldPath, str]]:
        lo, hi = LOAD_CHANNELS[self.kind]
        if not lo <= len(self.channels) <= hi:
            count = str(lo) if lo == hi else f"{lo} .. {hi}"
            yield (
                ("channels",),
                f"{fmt_value(list(self.channels))} has {len(self.channels)} entries; "
                f"allowed {count} channel(s) for kind {self.kind}",
            )
        seen: set[int] = set()
        for i, ch in enumerate(self.channels):
            if ch in seen:
                yield (("channels", i), f"{ch} is listed twice; allowed: each channel once")
            seen.add(ch)


@dataclass(frozen=True, kw_only=True)
class DevicesConfig:
    grid_meter: MeterConfig
    pv_meter: MeterConfig | None = None
    consumption_clamp: MeterConfig | None = None
    sml_meter: MeterConfig | None = None
    battery_nodes: tuple[BatteryNodeConfig, ...] = field(metadata=rule(min_items=1, max_items=64))
    surplus_loads: tuple[SurplusLoadConfig, ...] = field(default=(), metadata=rule(max_items=32))

    def cross_check(self) -> Iterator[tuple[FieldPath, str]]:
        fixed_kinds = {"consumption_clamp": "pc321", "sml_meter": "sml"}
        for key, kind in fixed_kinds.items():
            meter: MeterConfig | None = getattr(self, key)
            if meter is not None and meter.kind != kind:
                yield ((key, "kind"), f"{meter.kind!r} is not allowed here; allowed: {kind}")

    def meters(self) -> dict[str, MeterConfig]:
        """The configured meters by role (grid_meter, pv_meter, consumption_clamp, sml_meter)."""
        roles = ("grid_meter", "pv_meter", "consumption_clamp", "sml_meter")
        return {r: m for r in roles if (m := getattr(self, r)) is not None}


# --------------------------------------------------------------------------- control


@dataclass(frozen=True, kw_only=True)
class ControlConfig:
    profile: Literal["balancing", "spec"] = "balancing"
    loop_interval_s: float = field(default=0.5, metadata=rule(min=0.1, max=5))
    #: Grid power the controller aims at (positive: import).
    grid_target_w: float = field(default=0.0, metadata=rule(min=-1_000_000, max=1_000_000))
    kp: float = field(default=0.1, metadata=rule(min=0.001, max=10))
    integral_decay: float = field(default=0.995, metadata=rule(min=0, max=1))
    anti_windup: float = field(default=0.02, metadata=rule(min=0, max=1))
    #: Largest change of the set point per cycle, as a fraction of the site maximum.
    grid_code_ramp_per_cycle: float = field(default=0.00167, metadata=rule(min=0.00001, max=1))
    #: Factor applied to the set point while a meter reading is stale.
    sensor_loss_factor: float = field(default=0.75, metadata=rule(min=0, max=1))
    #: Remote commands revert after this long without a heartbeat.
    heartbeat_timeout_s: float = field(default=20.0, metadata=rule(min=1, max=3600))
    reserve_soc_pct: float = field(default=10.0, metadata=rule(min=0, max=100))
    #: None: the sum of the nodes' limits.
    site_max_charge_w: float | None = field(default=None, metadata=rule(min=0, max=10_000_000))
    site_max_discharge_w: float | None = field(default=None, metadata=rule(min=0, max=10_000_000))
    soc_balance_start_pct: float = field(default=5.0, metadata=rule(min=0, max=50))
    soc_balance_stop_pct: float = field(default=2.0, metadata=rule(min=0, max=50))
    #: Below this fraction of 230 V the site is taken to be off grid (0.6: 230 V - 40 %).
    off_grid_voltage_fraction: float = field(default=0.6, metadata=rule(min=0, max=1))
    initial_mode: Literal["stop", "activate", "maxself", "chargeonly"] = "stop"
    #: The grid meter's averaging window; the inverters' power is averaged over the same span
    #: (balancing profile). 0.5 s for an SDM630 polled every 500 ms, 1.0 for a 1 s meter.
    meter_window_s: float = field(default=0.5, metadata=rule(min=0.1, max=10))
    #: Grid-code power ramps (grid_code_ramp_per_cycle); switched off on entering maxself.
    grid_code_ramps: bool = False
    #: spec profile: the integral is also multiplied by this on multi-device sites.
    sync_factor: float = field(default=1.0, metadata=rule(min=0.5, max=1.0))
    #: Derivative time of the global PID (0: no D term).
    kd_s: float = field(default=0.0, metadata=rule(min=0, max=10))
    #: Battery safety floor = the node's min_cell_voltage_v + this margin.
    safety_floor_margin_v: float = field(default=0.05, metadata=rule(min=0, max=0.5))
    #: Emergency recharge power as a fraction of the node's max_charge_w.
    emergency_recharge_fraction: float = field(default=0.2, metadata=rule(min=0.01, max=1))
    #: Period of the cluster status record (active power, SoC, mode) for telemetry.
    telemetry_interval_s: float = field(default=10.0, metadata=rule(min=1, max=3600))
    #: Who takes PV surplus first: the battery or the surplus loads.
    surplus_priority: Literal["battery", "loads"] = "battery"

    def cross_check(self) -> Iterator[tuple[FieldPath, str]]:
        start, stop = self.soc_balance_start_pct, self.soc_balance_stop_pct
        if start <= stop:
            yield (
                ("soc_balance_start_pct",),
                f"{fmt_number(start)} is not above soc_balance_stop_pct ({fmt_number(stop)}); "
                f"allowed: a value above {fmt_number(stop)}",
            )


# --------------------------------------------------------------------------- faces

SecurityPolicy = Literal[
    "NoSecurity",
    "Basic256Sha256_Sign",
    "Basic256Sha256_SignAndEncrypt",
    "Aes128Sha256RsaOaep_Sign",
    "Aes128Sha256RsaOaep_SignAndEncrypt",
    "Aes256Sha256RsaPss_Sign",
    "Aes256Sha256RsaPss_SignAndEncrypt",
]
_BIND = rule(check=_check_bind, allowed="an IP address")


@dataclass(frozen=True, kw_only=True)
class OpcUaFace:
    enabled: bool = True
    bind: str = field(default="127.0.0.1", metadata=_BIND)
    port: int = field(default=4840, metadata=rule(min=1, max=65535))
    security_policies: tuple[SecurityPolicy, ...] = field(
        default=("Basic256Sha256_SignAndEncrypt",), metadata=rule(min_items=1)
    )
    allow_anonymous: bool = False
    namespace_uri: str = field(
        default="urn:appliance:site",
        metadata=rule(pattern=r"\S+", allowed="a URI without spaces"),
    )
    #: Server certificate and key (PEM/DER); None: a self-signed pair made on first start under data_dir/opcua/own (trusted/, rejected/ beside it).
    certificate_file: Path | None = None
    private_key_file: Path | None = None
    #: Concurrent client sessions; one more is refused (BadTooManySessions).
    max_sessions: int = field(default=16, metadata=rule(min=1, max=256))
    #: Subscriptions over all sessions.
    max_subscriptions: int = field(default=64, metadata=rule(min=1, max=4096))

    def cross_check(self) -> Iterator[tuple[FieldPath, str]]:
        if (self.certificate_file is None) != (self.private_key_file is None):
            missing = "private_key_file" if self.private_key_file is None else "certificate_file"
            yield (
                (missing,),
                "missing; allowed: both certificate_file and private_key_file, or neither",
            )
        if len(set(self.security_policies)) != len(self.security_policies):
            yield (("security_policies",), "lists a policy twice; allowed: each policy once")


@dataclass(frozen=True, kw_only=True)
class ModbusRtuFace:
    """The Modbus slave also answering on a serial port."""

    port: str = field(metadata=rule(pattern=SERIAL_PORT, allowed=SERIAL_PORT_ALLOWED))
    baudrate: Baudrate = 9600
    parity: Parity = "N"


def _check_network(value: str) -> str | None:
    try:
        ipaddress.ip_network(value)
    except ValueError as exc:
        if "host bits set" in str(exc):
            network = ipaddress.ip_network(value, strict=False)
            return f"has host bits set; allowed: the network address, here {network}"
        return "is not a network; allowed: an address with a prefix length such as 10.0.0.0/24"
    return None


_NETWORK_ALLOWED = "a network such as 192.168.1.0/24 or ::1/128"
#: Battery node n answers on unit_id + n; the point table allows 64 nodes.
MODBUS_NODE_UNITS = 64


@dataclass(frozen=True, kw_only=True)
class ModbusFace:
    """The Modbus slave: the site on unit_id, battery node n on unit_id + n (docs/modbus.md)."""

    bind: str = field(default="127.0.0.1", metadata=_BIND)
    port: int = field(default=502, metadata=rule(min=1, max=65535))
    unit_id: int = field(default=1, metadata=rule(min=1, max=247))
    rtu: ModbusRtuFace | None = None
    enabled: bool = True
    #: TCP clients from other networks are disconnected as soon as they connect.
    allowed_networks: tuple[str, ...] = field(
        default=("0.0.0.0/0", "::/0"),
        metadata=rule(check=_check_network, allowed=_NETWORK_ALLOWED, min_items=1),
    )
    #: TCP clients whose writes are accepted; writes from others answer exception 0x01.
    #: The RTU line (physical access) may always write, unless read_only.
    write_networks: tuple[str, ...] = field(
        default=("127.0.0.0/8", "::1/128"),
        metadata=rule(check=_check_network, allowed=_NETWORK_ALLOWED),
    )
    #: Refuse every write (exception 0x01), on TCP and RTU.
    read_only: bool = False
    #: Open TCP connections; one more is closed as soon as it connects.
    max_connections: int = field(default=8, metadata=rule(min=1, max=256))
    #: A TCP connection without a request for this long is closed.
    idle_timeout_s: float = field(default=60.0, metadata=rule(min=1, max=86_400))

    def cross_check(self) -> Iterator[tuple[FieldPath, str]]:
        highest = 247 - MODBUS_NODE_UNITS
        if self.unit_id > highest:
            yield (
                ("unit_id",),
                f"{self.unit_id} leaves no unit ids for the battery nodes (unit_id + 1 .. "
                f"unit_id + {MODBUS_NODE_UNITS}, at most 247); allowed 1 .. {highest}",
            )
        for name in ("allowed_networks", "write_networks"):
            networks: tuple[str, ...] = getattr(self, name)
            if len(set(networks)) != len(networks):
                yield ((name,), "lists a network twice; allowed: each network once")


@dataclass(frozen=True, kw_only=True)
class MetricsFace:
    """Prometheus metrics over HTTP."""

    enabled: bool = True
    bind: str = field(default="127.0.0.1", metadata=_BIND)
    port: int = field(default=9464, metadata=rule(min=1, max=65535))


@dataclass(frozen=True, kw_only=True)
class FacesConfig:
    opcua: OpcUaFace = field(default_factory=OpcUaFace)
    modbus: ModbusFace = field(default_factory=ModbusFace)
    metrics: MetricsFace = field(default_factory=MetricsFace)


# --------------------------------------------------------------------------- users


@dataclass(frozen=True, kw_only=True)
class UserConfig:
    FORBIDDEN_KEYS: ClassVar[Mapping[str, str]] = {
        "password": (
            "plain-text passwords are not accepted (value not shown); allowed: password_hash: "
            f"'{HASH_SHAPE}', made with appliance.config.hash_password()"
        ),
    }

    name: str = field(
        metadata=rule(
            pattern=r"[a-z_][a-z0-9_.-]{0,31}",
            allowed="a user name of lower-case letters, digits, '.', '-', '_' (at most 32)",
        )
    )
    role: Literal["viewer", "operator", "admin"]
    password_hash: str = field(
        metadata=rule(check=_check_password_hash, allowed=HASH_SHAPE, secret=True)
    )


# --------------------------------------------------------------------------- archive


@dataclass(frozen=True, kw_only=True)
class InfluxConfig:
    FORBIDDEN_KEYS: ClassVar[Mapping[str, str]] = {
        "token": (
            "the token must not be written in the site file (value not shown); allowed: "
            "token_file (a file holding the token) or token_env (an environment variable name)"
        ),
    }

    url: str = field(metadata=rule(pattern=r"https?://\S+", allowed="an http:// or https:// URL"))
    org: str
    bucket: str
    token_file: Path | None = None
    token_env: str | None = field(
        default=None,
        metadata=rule(pattern=r"[A-Za-z_][A-Za-z0-9_]*", allowed="an environment variable name"),
    )
    batch_size: int = field(default=500, metadata=rule(min=1, max=100_000))
    flush_interval_s: float = field(default=10.0, metadata=rule(min=0.1, max=3600))

    def cross_check(self) -> Iterator[tuple[FieldPath, str]]:
        if self.token_file is None and self.token_env is None:
            yield (
                ("token_file",),
                "missing; allowed: token_file (a file holding the token) or token_env "
                "(an environment variable name)",
            )
        elif self.token_file is not None and self.token_env is not None:
            yield (
                ("token_env",),
                f"{self.token_env!r} is set together with token_file; allowed: only one of "
                "token_file and token_env",
            )


@dataclass(frozen=True, kw_only=True)
class SpoolConfig:
    """Where samples wait while the InfluxDB is unreachable; relative paths are under data_dir."""

    path: Path = Path("spool")
    max_bytes: int = field(default=100_000_000, metadata=rule(min=1_000_000, max=10**12))
    max_age_s: float = field(default=7 * 86_400.0, metadata=rule(min=60, max=366 * 86_400))


@dataclass(frozen=True, kw_only=True)
class LocalArchiveConfig:
    """The local archive on the appliance; relative paths are under data_dir."""

    path: Path = Path("archive")
    retention_days: int = field(default=30, metadata=rule(min=1, max=3650))


@dataclass(frozen=True, kw_only=True)
class ArchiveConfig:
    influxdb: InfluxConfig | None = None
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    local: LocalArchiveConfig = field(default_factory=LocalArchiveConfig)


# --------------------------------------------------------------------------- the rest


@dataclass(frozen=True, kw_only=True)
class SimulationConfig:
    """Present only in a simulated site: parameters of the simulated plant."""

    seed: int = field(default=1, metadata=rule(min=0, max=2**32 - 1))
    battery_nodes: int = field(default=2, metadata=rule(min=1, max=64))
    pv_peak_w: float = field(default=8000.0, metadata=rule(min=0, max=1_000_000))
    #: Simulated local time of day at start, in hours.
    start_hour: float = field(default=12.0, metadata=rule(min=0, max=23.99))


@dataclass(frozen=True, kw_only=True)
class LoggingConfig:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


@dataclass(frozen=True, kw_only=True)
class SiteInfo:
    id: str = field(metadata=rule(pattern=SLUG, allowed=SLUG_ALLOWED))
    name: str
    timezone: str = field(
        default="UTC",
        metadata=rule(check=_check_timezone, allowed="an IANA time zone name such as UTC"),
    )


@dataclass(frozen=True, kw_only=True)
class SiteConfig:
    """The whole site configuration (the top level of the YAML file)."""

    version: Literal[1] = 1
    site: SiteInfo
    #: Base of every relative path in `archive`; relative data_dir is relative to the working dir.
    data_dir: Path = Path("/var/lib/appliance")
    devices: DevicesConfig
    control: ControlConfig = field(default_factory=ControlConfig)
    faces: FacesConfig = field(default_factory=FacesConfig)
    users: tuple[UserConfig, ...] = ()
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    simulation: SimulationConfig | None = None
    #: Where this configuration was read from (not a YAML key).
    source: str = field(default="<in code>", compare=False, metadata=INTERNAL)

    def site_max_charge_w(self) -> float:
        """control.site_max_charge_w, or the sum of the nodes' max_charge_w when unset."""
        if self.control.site_max_charge_w is not None:
            return self.control.site_max_charge_w
        return sum(n.limits.max_charge_w for n in self.devices.battery_nodes)

    def site_max_discharge_w(self) -> float:
        """control.site_max_discharge_w, or the sum of the nodes' max_discharge_w when unset."""
        if self.control.site_max_discharge_w is not None:
            return self.control.site_max_discharge_w
        return sum(n.limits.max_discharge_w for n in self.devices.battery_nodes)


# --------------------------------------------------------------------------- site-wide checks


def device_connections(cfg: SiteConfig) -> list[tuple[FieldPath, Connection]]:
    """Every device connection in the site with the path of its ``connection`` mapping."""
    out: list[tuple[FieldPath, Connection]] = []
    for role, meter in cfg.devices.meters().items():
        out.append((("devices", role, "connection"), meter.connection))
    for i, node in enumerate(cfg.devices.battery_nodes):
        base: FieldPath = ("devices", "battery_nodes", i)
        out.append(((*base, "bms", "connection"), node.bms.connection))
        out.append(((*base, "inverter", "connection"), node.inverter.connection))
    for i, load in enumerate(cfg.devices.surplus_loads):
        out.append((("devices", "surplus_loads", i, "connection"), load.connection))
    return out


def _unique_names(cfg: SiteConfig) -> Iterator[tuple[FieldPath, str]]:
    seen: dict[str, FieldPath] = {}
    named: list[tuple[FieldPath, str]] = [
        (("devices", "battery_nodes", i, "name"), n.name)
        for i, n in enumerate(cfg.devices.battery_nodes)
    ]
    named += [
        (("devices", "surplus_loads", i, "name"), s.name)
        for i, s in enumerate(cfg.devices.surplus_loads)
    ]
    for path, name in named:
        if name in seen:
            yield path, _dup(name, seen[name], "a device name used nowhere else")
        else:
            seen[name] = path
    users: dict[str, FieldPath] = {}
    for i, user in enumerate(cfg.users):
        path = ("users", i, "name")
        if user.name in users:
            yield path, _dup(user.name, users[user.name], "a user name used nowhere else")
        else:
            users[user.name] = path


def _dup(value: object, first: FieldPath, allowed: str) -> str:
    return f"{fmt_value(value)} is already used at {render_path(first)}; allowed: {allowed}"


def _binds_overlap(a: str, b: str) -> bool:
    return a == b or a in WILDCARD_BINDS or b in WILDCARD_BINDS


def _face_ports(cfg: SiteConfig) -> Iterator[tuple[FieldPath, str]]:
    faces = cfg.faces
    listening: list[tuple[str, str, int]] = [
        (name, face.bind, face.port)
        for name, face in (
            ("opcua", faces.opcua),
            ("modbus", faces.modbus),
            ("metrics", faces.metrics),
        )
        if face.enabled
    ]
    for i, (name, bind, port) in enumerate(listening):
        for other, other_bind, other_port in listening[:i]:
            if port == other_port and _binds_overlap(bind, other_bind):
                yield (
                    ("faces", name, "port"),
                    f"{port} is already used by faces.{other} on {other_bind}; allowed: a port "
                    f"no other enabled face uses on {bind}",
                )
        for path, conn in device_connections(cfg):
            if (
                isinstance(conn, TcpConnection)
                and conn.port == port
                and conn.host in LOOPBACK_HOSTS
                and (bind in WILDCARD_BINDS or bind in LOOPBACK_HOSTS)
            ):
                yield (
                    ("faces", name, "port"),
                    f"{port} is the port of the device at {render_path(path)} ({conn.host}); "
                    "allowed: a port no local device uses",
                )


def _serial_settings(conn: SerialConnection) -> tuple[int, str, int, int]:
    return (conn.baudrate, conn.parity, conn.stopbits, conn.bytesize)


def _load_index(path: FieldPath) -> int | None:
    """The index of a surplus load's connection path, None for any other device."""
    if len(path) >= 3 and path[:2] == ("devices", "surplus_loads") and isinstance(path[2], int):
        return path[2]
    return None


def _same_relay_module(cfg: SiteConfig, path: FieldPath, first: FieldPath) -> bool:
    """Surplus loads may share one relay module (several channels of one bus address)."""
    return _load_index(path) is not None and _load_index(first) is not None


def _shared_module_channels(
    cfg: SiteConfig, path: FieldPath, first: FieldPath
) -> Iterator[tuple[FieldPath, str]]:
    loads = cfg.devices.surplus_loads
    index, first_index = _load_index(path), _load_index(first)
    assert index is not None and first_index is not None  # noqa: S101, PT018 - checked by the caller
    taken = set(loads[first_index].channels)
    for i, channel in enumerate(loads[index].channels):
        if channel in taken:
            yield (
                ("devices", "surplus_loads", index, "channels", i),
                f"{channel} is already wired to {loads[first_index].name} on the same relay module; "
                "allowed: a channel no other load of that module uses",
            )


def _address_clash(
    cfg: SiteConfig, path: FieldPath, first: FieldPath, address: str, where: str
) -> Iterator[tuple[FieldPath, str]]:
    """Two devices on one bus address: an error, unless loads share a relay module."""
    if _same_relay_module(cfg, path, first):
        yield from _shared_module_channels(cfg, path, first)
        return
    yield (
        (*path, "unit_id"),
        f"{address} is already used by {render_path(first)}; allowed: a unit_id not used on that {where}",
    )


def _buses(cfg: SiteConfig) -> Iterator[tuple[FieldPath, str]]:
    tcp: dict[tuple[str, int, int], FieldPath] = {}
    serial: dict[str, tuple[FieldPath, SerialConnection]] = {}
    serial_units: dict[tuple[str, int], FieldPath] = {}
    can: dict[tuple[str, str, int, str], FieldPath] = {}
    sml_ports = {
        m.connection.port
        for m in cfg.devices.meters().values()
        if m.kind == "sml" and isinstance(m.connection, SerialConnection)
    }
    for path, conn in device_connections(cfg):
        if isinstance(conn, TcpConnection):
            key = (conn.host, conn.port, conn.unit_id)
            if key in tcp:
                yield from _address_clash(
                    cfg,
                    path,
                    tcp[key],
                    f"{conn.unit_id} on {conn.host}:{conn.port}",
                    "host and port",
                )
            tcp.setdefault(key, path)
        elif isinstance(conn, SerialConnection):
            if conn.port in serial:
                first_path, first = serial[conn.port]
                if _serial_settings(conn) != _serial_settings(first):
                    yield (
                        path,
                        (
                            f"{conn.port} is shared with {render_path(first_path)} but with other line "
                            f"settings; allowed: baudrate {first.baudrate}, parity {first.parity}, "
                            f"stopbits {first.stopbits}, bytesize {first.bytesize} as there"
                        ),
                    )
                elif conn.port in sml_ports:
                    yield (
                        (*path, "port"),
                        (
                            f"{conn.port!r} is used by an SML meter, which needs the port alone; "
                            "allowed: a serial port no other device uses"
                        ),
                    )
                elif (conn.port, conn.unit_id) in serial_units:
                    yield from _address_clash(
                        cfg, path, serial_units[(conn.port, conn.unit_id)],
                        f"{conn.unit_id} on {conn.port}", "bus",
                    )  # fmt: skip
            serial.setdefault(conn.port, (path, conn))
            serial_units.setdefault((conn.port, conn.unit_id), path)
        elif isinstance(conn, CanConnection):
            # Two socketcand bridges may each serve a channel named can0.
            key2 = (conn.interface, conn.host or "", conn.port or 0, conn.channel)
            if key2 in can:
                yield (
                    (*path, "channel"),
                    (
                        f"{conn.channel!r} is already used by {render_path(can[key2])}; allowed: one "
                        "BMS per CAN channel"
                    ),
                )
            can.setdefault(key2, path)
    rtu = cfg.faces.modbus.rtu
    if cfg.faces.modbus.enabled and rtu is not None and rtu.port in serial:
        yield (
            ("faces", "modbus", "rtu", "port"),
            (
                f"{rtu.port!r} is used by the device at {render_path(serial[rtu.port][0])}; allowed: a "
                "serial port no device uses"
            ),
        )


def _zigbee_ports(cfg: SiteConfig) -> Iterator[tuple[FieldPath, str]]:
    serial_ports = {
        c.port: p for p, c in device_connections(cfg) if isinstance(c, SerialConnection)
    }
    for path, conn in device_connections(cfg):
        if (
            isinstance(conn, ZigbeeConnection)
            and conn.device is not None
            and conn.device in serial_ports
        ):
            yield (
                (*path, "device"),
                (
                    f"{conn.device!r} is the serial port of {render_path(serial_ports[conn.device])}; "
                    "allowed: the ZigBee radio's own port"
                ),
            )


def _simulation_only(cfg: SiteConfig) -> Iterator[tuple[FieldPath, str]]:
    """The simulated site's links (a radio-less ZigBee, ptys under data_dir) need `simulation:`."""
    if cfg.simulation is not None:
        return
    for path, conn in device_connections(cfg):
        if isinstance(conn, ZigbeeConnection) and conn.radio == SIMULATED_RADIO:
            yield (
                (*path, "radio"),
                "'simulated' is the simulated site's radio (the reports come from its plant) "
                "and needs a simulation: section; allowed on a real site: znp, ezsp, deconz, "
                "zigate, xbee",
            )
        elif isinstance(conn, SerialConnection) and is_relative_serial_port(conn.port):
            yield (
                (*path, "port"),
                f"{conn.port!r} is a path relative to data_dir, where only a simulated site "
                f"(with a simulation: section) publishes its serial lines; allowed: "
                f"{SERIAL_PORT_ALLOWED}",
            )


def site_problems(cfg: SiteConfig) -> list[tuple[FieldPath, str]]:
    """Checks across the whole site that a single mapping cannot make."""
    problems: list[tuple[FieldPath, str]] = []
    problems += _unique_names(cfg)
    problems += _face_ports(cfg)
    problems += _buses(cfg)
    problems += _zigbee_ports(cfg)
    problems += _simulation_only(cfg)
    sim = cfg.simulation
    nodes = len(cfg.devices.battery_nodes)
    if sim is not None and sim.battery_nodes != nodes:
        problems.append(
            (
                ("simulation", "battery_nodes"),
                f"{sim.battery_nodes} does not match the {nodes} entries of "
                f"devices.battery_nodes; allowed: {nodes}",
            )
        )
    opcua = cfg.faces.opcua
    if opcua.enabled and not opcua.allow_anonymous and not cfg.users:
        problems.append(
            (
                ("users",),
                "no users are configured while faces.opcua.allow_anonymous is false, so nobody "
                "could log in; allowed: at least one user, or faces.opcua.allow_anonymous: true",
            )
        )
    return problems
