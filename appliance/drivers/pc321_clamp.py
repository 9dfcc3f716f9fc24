"""Owon PC321 three-phase ZigBee power clamp: attribute map and driver (zigpy 2.x).

The device (protocols.md section 3) has one application endpoint (1, HA profile, device type
0x000D) with Basic, Identify and Metering 0x0702 as input clusters. It has no
ElectricalMeasurement cluster: everything arrives as Report_Attributes frames on Metering,
pushed by the device on its own schedule (3 to 5 times a minute according to zigbee2mqtt#14645;
the device does not accept Configure_Reporting, so the appliance cannot change that):

* standard attributes: 0x0400 instantaneous_demand (int24, total active power) and 0x0000
  current_summ_delivered (uint48, total energy), scaled by 0x0301 multiplier / 0x0302 divisor
  in kW / kWh (the device uses 1 / 1000, so the raw values are W and Wh);
* manufacturer-specific attributes (code 0x113C): per-phase active power, voltage and current.
  Whether the device sets the manufacturer-specific bit in its frames is not known; both
  kinds of frame are accepted.

zigpy 2.x delivers reports only through the event API (``cluster.on_event("attribute_report",
...)``); the legacy ``add_listener`` / ``attribute_updated`` callback is not called for
reports. The driver keeps the latest value of each attribute and `read` assembles a
`ClampReading` from the values that are fresh: the poller calls `read` like any polled meter.

Sign: active power is as the device reports it; with the CTs fitted in their arrow direction
that is > 0 = import from the grid, the appliance's convention. The two reference projects
disagree on the power type (zigbee2mqtt int24, ZHA uint24); the driver accepts both and reads a
uint24 >= 2^23 as two's complement, since no clamp measures 8 MW.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import zigpy.device
import zigpy.exceptions
import zigpy.types as t
from zigpy.zcl import AttributeReportedEvent, Cluster

from appliance.clock import Clock, SystemClock
from appliance.drivers.zigbee_app import ControllerApplication
from appliance.errors import ConfigError, DeviceProtocolError, DeviceUnavailable, NotSupported

_LOG = logging.getLogger(__name__)

MODEL = "PC321"
OWON_MANUFACTURER_CODE = 0x113C
METERING_CLUSTER_ID = 0x0702
ENDPOINT_ID = 1
#: The device's own report period is 12-20 s; 30 s tolerates a late report (not a lost one).
DEFAULT_STALE_AFTER_S = 30.0
DEFAULT_CONNECT_TIMEOUT_S = 5.0

# Metering formatting attributes and the values the PC321 uses (ZHA quirk, and z2m's reading
# of real devices: 0x0400 = 127 with per-phase powers 6 + 32 + 89 W).
MULTIPLIER_ID = 0x0301
DIVISOR_ID = 0x0302
DEFAULT_MULTIPLIER = 1
DEFAULT_DIVISOR = 1000
_MAX_UINT24 = 0xFFFFFF


@dataclass(frozen=True, slots=True)
class ClampAttribute:
    """One Metering attribute the driver decodes."""

    attr_id: int
    field: str  # ClampReading attribute
    wire_types: tuple[type, ...]  # accepted zigpy types; the simulator sends the first
    #: SI value = raw / divisor; None: metering formatting (raw * multiplier / divisor, kW/kWh).
    divisor: int | None
    unit: str
    valid_range: tuple[float, float]
    manufacturer_specific: bool
    signed24: bool = False  # a uint24 on the wire is a two's complement int24

    @property
    def label(self) -> str:
        return f"{self.field} (0x{self.attr_id:04X})"


def _phases(
    base: int,
    field: str,
    wire_types: tuple[type, ...],
    divisor: int,
    unit: str,
    valid_range: tuple[float, float],
) -> tuple[ClampAttribute, ...]:
    """L1, L2, L3 at ``base``, ``base + 1``, ``base + 2`` (manufacturer-specific)."""
    return tuple(
        ClampAttribute(
            base + i,
            field.format(n=i + 1),
            wire_types,
            divisor,
            unit,
            valid_range,
            manufacturer_specific=True,
            signed24=t.int24s in wire_types,  # power: int24 (z2m) or uint24 (ZHA)
        )
        for i in range(3)
    )


#: What the driver decodes (protocols.md 3.2); other reported attributes (reactive power,
#: per-phase energy, frequency, ...) are ignored. Ranges are plausibility limits: CTs go up to
#: 300 A, so 100 kW per phase is far above anything real.
ATTRIBUTES: tuple[ClampAttribute, ...] = (
    ClampAttribute(
        0x0400,
        "active_power_w",
        (t.int24s, t.uint24_t),
        None,
        "W",
        (-300_000.0, 300_000.0),
        manufacturer_specific=False,
        signed24=True,
    ),
    ClampAttribute(
        0x0000,
        "energy_kwh",
        (t.uint48_t,),
        None,
        "kWh",
        (0.0, 1e9),
        manufacturer_specific=False,
    ),
    *_phases(
        0x2000, "active_power_l{n}_w", (t.int24s, t.uint24_t), 1, "W", (-100_000.0, 100_000.0)
    ),
    *_phases(0x3000, "voltage_l{n}_v", (t.uint24_t,), 10, "V", (0.0, 300.0)),
    *_phases(0x3100, "current_l{n}_a", (t.uint24_t,), 1000, "A", (0.0, 500.0)),
)
ATTRIBUTES_BY_ID: Mapping[int, ClampAttribute] = {a.attr_id: a for a in ATTRIBUTES}


@dataclass(frozen=True, slots=True)
class ClampReading:
    """The latest values of a PC321; a field is None when no fresh report carried it.

    ``active_power_w`` is the device's total (0x0400); when only the three phase powers are
    fresh it is their sum. Sign as the device reports (> 0 = import with the CTs fitted in
    their arrow direction). ``energy_kwh`` is the delivered-energy counter (0x0000).
    ``received_monotonic`` is the clock's monotonic time of the newest report used.
    """

    active_power_w: float | None
    active_power_l1_w: float | None
    active_power_l2_w: float | None
    active_power_l3_w: float | None
    voltage_l1_v: float | None
    voltage_l2_v: float | None
    voltage_l3_v: float | None
    current_l1_a: float | None
    current_l2_a: float | None
    current_l3_a: float | None
    energy_kwh: float | None
    received_monotonic: float


class ClampMeter(Protocol):
    """A push-reporting meter read like a polled one."""

    async def read(self) -> ClampReading:
        """The latest fresh values; raises a DriverError subclass when there are none."""
        ...

    async def close(self) -> None:
        """Stop listening; safe to call more than once."""
        ...


@dataclass(frozen=True, slots=True)
class _Latest:
    value: float | None  # None when the last report of this attribute was rejected
    error: str | None
    at: float  # clock.monotonic() when received


class _Malformed(Exception):
    """An attribute value the driver refuses (wrong ZCL type or implausible)."""


class Pc321Clamp:
    """Listens to one PC321 (by IEEE address) on a running zigpy application.

    The device must be paired (known to the application). `connect` attaches and reads the
    metering multiplier/divisor; `read` attaches on demand too, and re-attaches when zigpy
    replaces the device object (re-pairing, re-interview). Rejected values are counted in
    `malformed_reports`; while the latest report of an attribute was rejected, `read` raises
    DeviceProtocolError rather than return the older value.
    """

    def __init__(
        self,
        app: ControllerApplication,
        ieee: str,
        *,
        name: str = "pc321",
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
        clock: Clock | None = None,
    ) -> None:
        try:
            self._ieee = t.EUI64.convert(ieee)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{name}: ieee: {ieee!r} is not an IEEE address") from exc
        if not stale_after_s > 0:
            raise ValueError(f"stale_after_s must be > 0, got {stale_after_s!r}")
        self._app = app
        self._name = name
        self._stale_after_s = stale_after_s
        self._clock: Clock = clock or SystemClock()
        self._device: zigpy.device.Device | None = None
        self._cluster: Cluster | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._closed = False
        self._latest: dict[str, _Latest] = {}
        self._last_report_at: float | None = None
        self._multiplier = DEFAULT_MULTIPLIER
        self._divisor = DEFAULT_DIVISOR
        self.reports_received = 0  # attribute reports of decoded attributes, good or not
        self.malformed_reports = 0  # of those, rejected (wrong type, implausible value)

    @property
    def name(self) -> str:
        return self._name

    @property
    def ieee(self) -> str:
        return str(self._ieee)

    @property
    def attached(self) -> bool:
        return self._unsubscribe is not None

    @property
    def metering_formatting(self) -> tuple[int, int]:
        """(multiplier, divisor) applied to 0x0400 and 0x0000."""
        return (self._multiplier, self._divisor)

    async def connect(self, timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S) -> None:
        """Attach and read the metering multiplier/divisor (optional: `read` attaches too).

        Raises DeviceUnavailable / NotSupported like `read`. A device that does not answer
        the read in ``timeout_s`` keeps the PC321 defaults (1 / 1000), with a warning.
        """
        self._check_open()
        cluster = self._attach()
        try:
            async with asyncio.timeout(timeout_s):
                good, failed = await cluster.read_attributes(
                    ["multiplier", "divisor"], allow_cache=True
                )
        except (TimeoutError, zigpy.exceptions.ZigbeeException) as exc:
            _LOG.warning(
                "%s: metering multiplier/divisor not read (%r); using %d / %d",
                self._name,
                exc,
                self._multiplier,
                self._divisor,
            )
            return
        for attr_id, key in ((MULTIPLIER_ID, "multiplier"), (DIVISOR_ID, "divisor")):
            if key in good:
                self._set_formatting(attr_id, good[key])
            else:
                _LOG.warning("%s: %s not readable: %r", self._name, key, failed.get(key))

    async def read(self) -> ClampReading:
        """The latest fresh values.

        Raises DeviceUnavailable (device not paired, or no report for ``stale_after_s``),
        DeviceProtocolError (the latest report of a fresh attribute was rejected) or
        NotSupported (the device at that address has no Metering cluster).
        """
        self._check_open()
        self._attach()
        now = self._clock.monotonic()
        if self._last_report_at is None:
            raise DeviceUnavailable(f"{self._name}: no report received from {self._ieee} yet")
        age = now - self._last_report_at
        if age > self._stale_after_s:
            raise DeviceUnavailable(
                f"{self._name}: no report from {self._ieee} for {age:.1f} s "
                f"(stale after {self._stale_after_s:g} s)"
            )
        fresh = {f: v for f, v in self._latest.items() if now - v.at <= self._stale_after_s}
        errors = [v.error for v in fresh.values() if v.error is not None]
        if errors:
            more = f"; and {len(errors) - 3} more" if len(errors) > 3 else ""
            raise DeviceProtocolError(
                f"{self._name}: rejected report: {'; '.join(errors[:3])}{more}"
            )
        return self._reading(fresh)

    async def close(self) -> None:
        """Unsubscribe from the device's reports; `read` then raises DeviceUnavailable."""
        self._closed = True
        self._detach()

    # ------------------------------------------------------------------ attach

    def _check_open(self) -> None:
        if self._closed:
            raise DeviceUnavailable(f"{self._name}: driver closed")

    def _attach(self) -> Cluster:
        device = self._app.devices.get(self._ieee)
        if device is self._device and self._cluster is not None:
            return self._cluster
        self._detach()
        if device is None:
            raise DeviceUnavailable(
                f"{self._name}: {self._ieee} is not in the ZigBee network (not paired?)"
            )
        if not isinstance(device, zigpy.device.Device) or not device.is_initialized:
            raise DeviceUnavailable(f"{self._name}: {self._ieee} is not interviewed yet")
        cluster = self._metering_cluster(device)
        self._unsubscribe = cluster.on_event(AttributeReportedEvent.event_type, self._on_report)
        self._device, self._cluster = device, cluster
        if device.model not in (None, MODEL):
            _LOG.warning(
                "%s: %s reports model %r, not %s; decoding it as a PC321",
                self._name,
                self._ieee,
                device.model,
                MODEL,
            )
        # Values zigpy already knows (its database keeps them across restarts).
        for attr_id, key in ((MULTIPLIER_ID, "multiplier"), (DIVISOR_ID, "divisor")):
            cached = cluster.get(key)
            if cached is not None:
                self._set_formatting(attr_id, cached)
        _LOG.info(
            "%s: listening to %s endpoint %d", self._name, self._ieee, cluster.endpoint.endpoint_id
        )
        return cluster

    def _metering_cluster(self, device: zigpy.device.Device) -> Cluster:
        endpoints = sorted(
            (ep_id, ep)
            for ep_id, ep in device.endpoints.items()
            if ep_id != 0 and METERING_CLUSTER_ID in getattr(ep, "in_clusters", {})
        )
        if not endpoints:
            raise NotSupported(
                f"{self._name}: {self._ieee} has no Metering (0x0702) input cluster; "
                f"is it a {MODEL}?"
            )
        # Endpoint 1 on a PC321; another endpoint only for look-alikes.
        chosen = dict(endpoints).get(ENDPOINT_ID, endpoints[0][1])
        cluster: Cluster = chosen.in_clusters[METERING_CLUSTER_ID]
        return cluster

    def _detach(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            _LOG.debug("%s: stopped listening to %s", self._name, self._ieee)
        self._unsubscribe = None
        self._device = None
        self._cluster = None

    # ------------------------------------------------------------------ reports

    def _on_report(self, event: AttributeReportedEvent) -> None:
        """zigpy event callback (runs in the event loop, inside zigpy's frame handling)."""
        if event.cluster_id != METERING_CLUSTER_ID:
            return
        now = self._clock.monotonic()
        self._last_report_at = now
        if event.manufacturer_code not in (None, OWON_MANUFACTURER_CODE):
            _LOG.debug(
                "%s: ignoring 0x%04X with manufacturer code 0x%04X",
                self._name,
                event.attribute_id,
                event.manufacturer_code,
            )
            return
        if event.attribute_id in (MULTIPLIER_ID, DIVISOR_ID):
            self._set_formatting(event.attribute_id, event.raw_value)
            return
        spec = ATTRIBUTES_BY_ID.get(event.attribute_id)
        if spec is None:
            return  # reported but not used (reactive power, per-phase energy, frequency, ...)
        self.reports_received += 1
        try:
            value = self._decode(spec, event.raw_value)
        except _Malformed as exc:
            self.malformed_reports += 1
            previous = self._latest.get(spec.field)
            log = _LOG.debug if previous is not None and previous.error else _LOG.warning
            log("%s: %s", self._name, exc)
            self._latest[spec.field] = _Latest(None, str(exc), now)
            return
        self._latest[spec.field] = _Latest(value, None, now)

    def _decode(self, spec: ClampAttribute, raw: Any) -> float:
        if type(raw) not in spec.wire_types:
            expected = " or ".join(tp.__name__ for tp in spec.wire_types)
            raise _Malformed(
                f"{spec.label} has type {type(raw).__name__} ({raw!r}), expected {expected}"
            )
        number = int(raw)
        if spec.signed24 and isinstance(raw, t.uint24_t) and number >= 0x800000:
            number -= 0x1000000
        if spec.divisor is not None:
            value = number / spec.divisor
        elif spec.unit == "W":
            value = number * self._multiplier * 1000 / self._divisor  # kW -> W
        else:
            value = number * self._multiplier / self._divisor
        low, high = spec.valid_range
        if not math.isfinite(value) or not low <= value <= high:
            raise _Malformed(
                f"{spec.label} = {value:g} {spec.unit} outside plausible range [{low:g}, {high:g}]"
            )
        return value

    def _set_formatting(self, attr_id: int, raw: Any) -> None:
        key = "multiplier" if attr_id == MULTIPLIER_ID else "divisor"
        if isinstance(raw, bool) or not isinstance(raw, int) or not 0 < int(raw) <= _MAX_UINT24:
            self.malformed_reports += 1
            _LOG.warning("%s: ignoring metering %s %r", self._name, key, raw)
            return
        if attr_id == MULTIPLIER_ID:
            self._multiplier = int(raw)
        else:
            self._divisor = int(raw)

    def _reading(self, fresh: Mapping[str, _Latest]) -> ClampReading:
        values = {f: v.value for f, v in fresh.items()}
        phases = [values.get(f"active_power_l{n}_w") for n in (1, 2, 3)]
        total = values.get("active_power_w")
        if total is None and all(p is not None for p in phases):
            total = sum(p for p in phases if p is not None)
        newest = max((v.at for v in fresh.values()), default=self._last_report_at or 0.0)
        return ClampReading(
            active_power_w=total,
            active_power_l1_w=phases[0],
            active_power_l2_w=phases[1],
            active_power_l3_w=phases[2],
            voltage_l1_v=values.get("voltage_l1_v"),
            voltage_l2_v=values.get("voltage_l2_v"),
            voltage_l3_v=values.get("voltage_l3_v"),
            current_l1_a=values.get("current_l1_a"),
            current_l2_a=values.get("current_l2_a"),
            current_l3_a=values.get("current_l3_a"),
            energy_kwh=values.get("energy_kwh"),
            received_monotonic=newest,
        )
