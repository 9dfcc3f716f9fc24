"""PC321 driver against the PC321 simulator on a radio-less zigpy 2.4 application.

Every report is a serialized ZCL frame handed to zigpy's ``packet_received`` (the radio
library's call), so zigpy's own parsing, deduplication and cluster dispatch run; the
driver's staleness runs on a ManualClock except in the real-time tests of the report period
and of a slow device.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import zigpy.device
import zigpy.endpoint
import zigpy.types as t
from zigpy.zcl import AttributeReportedEvent, Cluster, foundation

from appliance.clock import ManualClock, SystemClock
from appliance.drivers.pc321_clamp import (
    ATTRIBUTES,
    DEFAULT_STALE_AFTER_S,
    METERING_CLUSTER_ID,
    OWON_MANUFACTURER_CODE,
    ClampReading,
    Pc321Clamp,
)
from appliance.drivers.zigbee_app import (
    RADIO_PACKAGES,
    RadiolessApplication,
    radio_application_class,
    start_radio_application,
    stop_application,
    zigpy_int,
)
from appliance.errors import ConfigError, DeviceProtocolError, DeviceUnavailable, NotSupported
from appliance.simulation.devices.pc321_sim import (
    ClampValues,
    Pc321Simulator,
    clamp_values_from_grid,
)
from appliance.simulation.plant_grid import GridValues

IEEE = "a4:c1:38:5e:12:34:56:78"
IDLE_PERIOD_S = 3600.0  # the simulator's own loop stays quiet; tests call send_report()
STALE_S = DEFAULT_STALE_AFTER_S
N_DECODED = len(ATTRIBUTES)  # attribute reports per report the driver decodes

VALUES = ClampValues(
    active_power_w=(1234.0, -456.0, 78.0),
    voltage_v=(231.2, 229.8, 230.5),
    current_a=(5.372, 2.004, 0.351),
    energy_kwh=12345.678,
    frequency_hz=50.0,
)


class Source:
    """A settable source()."""

    def __init__(self, values: ClampValues) -> None:
        self.values = values

    def __call__(self) -> ClampValues:
        return self.values


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.002)


def device(app: RadiolessApplication, ieee: str = IEEE) -> zigpy.device.Device:
    dev = app.devices[t.EUI64.convert(ieee)]
    assert isinstance(dev, zigpy.device.Device)
    return dev


def metering(app: RadiolessApplication) -> Cluster:
    cluster: Cluster = device(app).endpoints[1].in_clusters[METERING_CLUSTER_ID]
    return cluster


def assert_matches(reading: ClampReading, values: ClampValues) -> None:
    """Equal within the wire resolution: 1 W, 0.1 V, 1 mA, 1 Wh."""
    assert reading.active_power_w == pytest.approx(sum(values.active_power_w), abs=1.5)
    phases = (reading.active_power_l1_w, reading.active_power_l2_w, reading.active_power_l3_w)
    volts = (reading.voltage_l1_v, reading.voltage_l2_v, reading.voltage_l3_v)
    amps = (reading.current_l1_a, reading.current_l2_a, reading.current_l3_a)
    assert phases == pytest.approx(values.active_power_w, abs=0.5)
    assert volts == pytest.approx(values.voltage_v, abs=0.05)
    assert amps == pytest.approx(values.current_a, abs=0.0005)
    assert reading.energy_kwh == pytest.approx(values.energy_kwh, abs=0.0005)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
async def app() -> AsyncIterator[RadiolessApplication]:
    application = await RadiolessApplication.start()
    yield application
    await stop_application(application)


@pytest.fixture
def source() -> Source:
    return Source(VALUES)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def sims(
    app: RadiolessApplication, source: Source
) -> AsyncIterator[Callable[..., Pc321Simulator]]:
    """Make simulators on ``app`` that are stopped after the test."""
    made: list[Pc321Simulator] = []

    def make(**kwargs: Any) -> Pc321Simulator:
        kwargs.setdefault("period_s", IDLE_PERIOD_S)
        sim = Pc321Simulator(app, source, IEEE, **kwargs)
        made.append(sim)
        return sim

    yield make
    for sim in made:
        await sim.stop()


@pytest.fixture
async def sim(sims: Callable[..., Pc321Simulator]) -> Pc321Simulator:
    simulator = sims()
    await simulator.start()
    return simulator


@pytest.fixture
async def clamps(
    app: RadiolessApplication, clock: ManualClock
) -> AsyncIterator[Callable[..., Pc321Clamp]]:
    made: list[Pc321Clamp] = []

    def make(**kwargs: Any) -> Pc321Clamp:
        kwargs.setdefault("clock", clock)
        clamp = Pc321Clamp(app, IEEE, **kwargs)
        made.append(clamp)
        return clamp

    yield make
    for clamp in made:
        await clamp.close()


@pytest.fixture
async def clamp(sim: Pc321Simulator, clamps: Callable[..., Pc321Clamp]) -> Pc321Clamp:
    driver = clamps()
    await driver.connect(timeout_s=1.0)
    return driver


async def report(sim: Pc321Simulator, clamp: Pc321Clamp) -> int:
    """One report from the simulator; returns how many decoded attributes reached the driver."""
    before = clamp.reports_received
    sim.send_report()
    await asyncio.sleep(0)
    return clamp.reports_received - before


# ----------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("manufacturer_specific_frames", [True, False])
@pytest.mark.parametrize("power_wire_type", ["int24", "uint24"])
async def test_reports_decode_to_source_values(
    sims: Callable[..., Pc321Simulator],
    clamps: Callable[..., Pc321Clamp],
    app: RadiolessApplication,
    manufacturer_specific_frames: bool,
    power_wire_type: str,
) -> None:
    sim = sims(
        manufacturer_specific_frames=manufacturer_specific_frames,
        power_wire_type=power_wire_type,
    )
    await sim.start()
    clamp = clamps()
    await clamp.connect(timeout_s=1.0)
    seen: list[AttributeReportedEvent] = []
    cluster = metering(app)
    unsubscribe = cluster.on_event(AttributeReportedEvent.event_type, seen.append)
    try:
        assert await report(sim, clamp) == N_DECODED
    finally:
        unsubscribe()

    assert_matches(await clamp.read(), VALUES)
    assert clamp.malformed_reports == 0
    codes = {e.attribute_id: e.manufacturer_code for e in seen}
    expected_code = OWON_MANUFACTURER_CODE if manufacturer_specific_frames else None
    assert codes[0x0400] is None
    assert codes[0x2001] == expected_code
    assert codes[0x3000] == expected_code
    # zigpy has no definition of the Owon attributes: they arrive by id, with the raw value.
    named = {e.attribute_id: e.attribute_name for e in seen}
    assert named[0x0400] == "instantaneous_demand"
    assert named[0x2001] is None
    raw_l2 = next(e.raw_value for e in seen if e.attribute_id == 0x2001)
    assert raw_l2 == (-456 if power_wire_type == "int24" else 0x1000000 - 456)


async def test_export_is_negative(sim: Pc321Simulator, clamp: Pc321Clamp, source: Source) -> None:
    source.values = dataclasses.replace(VALUES, active_power_w=(-2500.0, -2400.0, -2600.0))
    await report(sim, clamp)
    reading = await clamp.read()
    assert reading.active_power_w == -7500.0
    assert reading.active_power_l3_w == -2600.0


async def test_values_follow_the_source(
    sim: Pc321Simulator, clamp: Pc321Clamp, source: Source, clock: ManualClock
) -> None:
    await report(sim, clamp)
    first = await clamp.read()
    clock.advance(15.0)
    source.values = dataclasses.replace(VALUES, voltage_v=(240.0, 241.0, 242.0), energy_kwh=12346.0)
    await report(sim, clamp)
    second = await clamp.read()
    assert (second.voltage_l1_v, second.voltage_l3_v) == (240.0, 242.0)
    assert second.energy_kwh == pytest.approx(12346.0)
    assert second.received_monotonic == pytest.approx(first.received_monotonic + 15.0)


async def test_divisor_is_read_through_a_zigpy_request(
    sims: Callable[..., Pc321Simulator],
    clamps: Callable[..., Pc321Clamp],
    app: RadiolessApplication,
) -> None:
    sim = sims(divisor=10_000)  # raw 0.1 W / 0.1 Wh instead of the default W / Wh
    await sim.start()
    clamp = clamps()
    await clamp.connect(timeout_s=1.0)
    assert clamp.metering_formatting == (1, 10_000)
    requests = [
        p for p in app.sent_packets if p.cluster_id == METERING_CLUSTER_ID and p.dst is not None
    ]
    assert requests
    assert requests[0].dst is not None
    assert requests[0].dst.address == sim.nwk
    await report(sim, clamp)
    assert_matches(await clamp.read(), VALUES)


async def test_unanswered_divisor_read_keeps_the_defaults(
    sim: Pc321Simulator, clamps: Callable[..., Pc321Clamp], caplog: pytest.LogCaptureFixture
) -> None:
    sim.faults.delay_s = 5.0  # slow: the answer comes long after the driver gave up
    clamp = clamps()
    with caplog.at_level(logging.WARNING, logger="appliance.drivers.pc321_clamp"):
        await clamp.connect(timeout_s=0.05)
    assert clamp.metering_formatting == (1, 1000)
    assert "not read" in caplog.text
    assert clamp.attached


async def test_reports_injected_at_the_cluster_and_total_from_phases(
    app: RadiolessApplication, sim: Pc321Simulator, clamp: Pc321Clamp
) -> None:
    """The install-notes path (handle_cluster_general_request), and a report without 0x0400."""
    cluster = metering(app)
    hdr = foundation.ZCLHeader.general(
        tsn=99,
        command_id=foundation.GeneralCommand.Report_Attributes,
        manufacturer=OWON_MANUFACTURER_CODE,
        direction=foundation.Direction.Server_to_Client,
    )
    schema = foundation.GENERAL_COMMANDS[foundation.GeneralCommand.Report_Attributes].schema
    attrs = [
        foundation.Attribute(
            zigpy_int(t.uint16_t, 0x2000 + i),
            foundation.TypeValue(type=foundation.DataTypeId.int24, value=zigpy_int(t.int24s, w)),
        )
        for i, w in enumerate((100, 200, -50))
    ]
    command: Any = schema(attribute_reports=attrs)  # typed list[Any] in zigpy, wrongly
    cluster.handle_cluster_general_request(hdr, command)
    reading = await clamp.read()
    assert reading.active_power_w == 250.0
    assert reading.voltage_l1_v is None
    assert reading.energy_kwh is None


def report_formatting(app: RadiolessApplication, divisor: int, tsn: int) -> None:
    """A Report_Attributes of the metering divisor, at the cluster (no manufacturer code)."""
    hdr = foundation.ZCLHeader.general(
        tsn=tsn,
        command_id=foundation.GeneralCommand.Report_Attributes,
        direction=foundation.Direction.Server_to_Client,
    )
    schema = foundation.GENERAL_COMMANDS[foundation.GeneralCommand.Report_Attributes].schema
    value = foundation.TypeValue(
        type=foundation.DataTypeId.uint24, value=zigpy_int(t.uint24_t, divisor)
    )
    command: Any = schema(attribute_reports=[foundation.Attribute(0x0302, value)])
    metering(app).handle_cluster_general_request(hdr, command)


async def test_reported_divisor_applies_and_zero_is_refused(
    app: RadiolessApplication, clamp: Pc321Clamp
) -> None:
    report_formatting(app, 10_000, tsn=50)
    assert clamp.metering_formatting == (1, 10_000)
    report_formatting(app, 0, tsn=51)  # would divide by zero
    assert clamp.metering_formatting == (1, 10_000)
    assert clamp.malformed_reports == 1


async def test_legacy_listener_is_not_called_for_reports(
    app: RadiolessApplication, sim: Pc321Simulator, clamp: Pc321Clamp
) -> None:
    """zigpy 2.x: reports reach only on_event listeners (why the driver uses the event API)."""

    class Legacy:
        calls = 0

        def attribute_updated(self, *args: object) -> None:
            Legacy.calls += 1

    cluster = metering(app)
    cluster.add_listener(Legacy())
    assert await report(sim, clamp) == N_DECODED
    assert Legacy.calls == 0


async def test_periodic_reports_at_the_period(
    sims: Callable[..., Pc321Simulator], clamps: Callable[..., Pc321Clamp]
) -> None:
    clamp = clamps()
    sim = sims(period_s=0.05)
    await sim.start()
    await clamp.connect(timeout_s=1.0)
    await asyncio.sleep(0.3)
    reports = sim.frames_sent // 3
    assert 3 <= reports <= 8
    assert_matches(await clamp.read(), VALUES)


# ----------------------------------------------------------------------------- staleness


async def test_no_report_yet_is_unavailable(
    sims: Callable[..., Pc321Simulator], clamps: Callable[..., Pc321Clamp]
) -> None:
    sim = sims()
    sim.faults.silent = True
    await sim.start()
    with pytest.raises(DeviceUnavailable, match="no report received"):
        await clamps().read()


async def test_unpaired_device_is_unavailable(clamps: Callable[..., Pc321Clamp]) -> None:
    with pytest.raises(DeviceUnavailable, match="not paired"):
        await clamps().read()


async def test_stale_after_the_limit_and_fresh_again(
    sim: Pc321Simulator, clamp: Pc321Clamp, clock: ManualClock
) -> None:
    await report(sim, clamp)
    clock.advance(STALE_S - 0.1)
    await clamp.read()
    clock.advance(0.2)
    with pytest.raises(DeviceUnavailable, match="no report"):
        await clamp.read()
    await report(sim, clamp)
    assert_matches(await clamp.read(), VALUES)


async def test_configured_stale_limit(
    sim: Pc321Simulator, clamps: Callable[..., Pc321Clamp], clock: ManualClock
) -> None:
    clamp = clamps(stale_after_s=5.0)
    await clamp.connect(timeout_s=1.0)
    await report(sim, clamp)
    clock.advance(5.5)
    with pytest.raises(DeviceUnavailable):
        await clamp.read()


# ----------------------------------------------------------------------------- faults


async def test_silent_device_goes_unavailable_and_recovers(
    sim: Pc321Simulator, clamp: Pc321Clamp, clock: ManualClock
) -> None:
    await report(sim, clamp)
    sim.faults.silent = True
    assert await report(sim, clamp) == 0
    clock.advance(STALE_S + 1)
    with pytest.raises(DeviceUnavailable):
        await clamp.read()
    sim.faults.silent = False
    assert await report(sim, clamp) == N_DECODED
    assert_matches(await clamp.read(), VALUES)


async def test_out_of_range_values_are_rejected_and_counted(
    sim: Pc321Simulator, clamp: Pc321Clamp
) -> None:
    await report(sim, clamp)
    sim.faults.out_of_range = True
    await report(sim, clamp)
    assert clamp.malformed_reports == 3  # total power, voltage L1, current L2
    with pytest.raises(DeviceProtocolError, match="outside plausible range") as info:
        await clamp.read()
    assert "voltage_l1_v" in str(info.value)
    sim.faults.out_of_range = False
    await report(sim, clamp)
    assert_matches(await clamp.read(), VALUES)
    assert clamp.malformed_reports == 3


async def test_wrong_attribute_types_are_rejected_and_counted(
    sim: Pc321Simulator, clamp: Pc321Clamp
) -> None:
    sim.faults.malformed = True
    assert await report(sim, clamp) == N_DECODED
    assert clamp.malformed_reports == N_DECODED
    with pytest.raises(DeviceProtocolError, match="CharacterString"):
        await clamp.read()
    sim.faults.malformed = False
    await report(sim, clamp)
    assert_matches(await clamp.read(), VALUES)


async def test_garbage_frames_are_dropped_by_zigpy(
    sim: Pc321Simulator, clamp: Pc321Clamp, clock: ManualClock
) -> None:
    await report(sim, clamp)
    sim.faults.garbage = True
    sent = sim.frames_sent
    assert await report(sim, clamp) == 0
    assert sim.frames_sent == sent + 3
    assert clamp.malformed_reports == 0
    clock.advance(STALE_S + 1)
    with pytest.raises(DeviceUnavailable):
        await clamp.read()
    sim.faults.garbage = False
    await report(sim, clamp)
    assert_matches(await clamp.read(), VALUES)


async def test_slow_device_goes_stale_and_recovers(
    sims: Callable[..., Pc321Simulator], clamps: Callable[..., Pc321Clamp]
) -> None:
    """Real time: reports every 20 ms, then 1 s late; the driver's limit is 0.25 s."""
    clamp = clamps(clock=SystemClock(), stale_after_s=0.25)
    sim = sims(period_s=0.02)
    await sim.start()
    await clamp.connect(timeout_s=1.0)
    await wait_until(lambda: clamp.reports_received >= N_DECODED)
    await clamp.read()
    sim.faults.delay_s = 1.0
    await asyncio.sleep(0.4)
    with pytest.raises(DeviceUnavailable):
        await clamp.read()
    sim.faults.delay_s = 0.0
    seen = clamp.reports_received
    await wait_until(lambda: clamp.reports_received > seen)
    assert_matches(await clamp.read(), VALUES)


async def test_leave_then_repair_reattaches(
    app: RadiolessApplication,
    sim: Pc321Simulator,
    clamp: Pc321Clamp,
    source: Source,
    clock: ManualClock,
) -> None:
    await report(sim, clamp)
    old_device = device(app)
    await sim.leave()
    clock.advance(STALE_S + 1)
    with pytest.raises(DeviceUnavailable):
        await clamp.read()

    await sim.repair()  # paired again: zigpy now holds a new device object
    assert device(app) is not old_device
    source.values = dataclasses.replace(VALUES, active_power_w=(10.0, 20.0, 30.0))
    with pytest.raises(DeviceUnavailable):
        await clamp.read()  # re-attached, but nothing from the new object yet
    await report(sim, clamp)
    assert_matches(await clamp.read(), source.values)


async def test_close_unsubscribes(sim: Pc321Simulator, clamp: Pc321Clamp) -> None:
    await report(sim, clamp)
    await clamp.close()
    assert not clamp.attached
    assert await report(sim, clamp) == 0
    with pytest.raises(DeviceUnavailable, match="closed"):
        await clamp.read()
    await clamp.close()  # twice is fine


async def test_device_without_metering_is_not_supported(
    app: RadiolessApplication, clamps: Callable[..., Pc321Clamp]
) -> None:
    dev = app.add_device(ieee=t.EUI64.convert(IEEE), nwk=zigpy_int(t.NWK, 0x2222))
    dev.node_desc = device(app, str(app.state.node_info.ieee)).node_desc
    ep = dev.add_endpoint(1)
    ep.status = zigpy.endpoint.Status.ZDO_INIT
    ep.profile_id = 260
    ep.add_input_cluster(0x0006)  # an on/off plug, say
    with pytest.raises(NotSupported, match="no Metering"):
        await clamps().read()


def test_bad_ieee_is_a_config_error(app: RadiolessApplication) -> None:
    with pytest.raises(ConfigError, match="ieee"):
        Pc321Clamp(app, "not-an-address")


# ----------------------------------------------------------------------------- application


@pytest.mark.parametrize("radio", sorted(RADIO_PACKAGES))
async def test_missing_radio_package_is_a_clear_error(radio: str) -> None:
    package = RADIO_PACKAGES[radio]
    if importlib.util.find_spec(package.module) is not None:
        pytest.skip(f"{package.distribution} is installed here")
    with pytest.raises(NotSupported, match=f"pip install {package.distribution}"):
        radio_application_class(radio)
    with pytest.raises(NotSupported, match=package.distribution):
        await start_radio_application(radio, "/dev/ttyACM0")


def test_unknown_radio_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="allowed: deconz, ezsp, xbee, zigate, znp"):
        radio_application_class("cc2531")


async def test_application_starts_and_stops_without_leftover_tasks(source: Source) -> None:
    before = asyncio.all_tasks()
    app = await RadiolessApplication.start()
    sim = Pc321Simulator(app, source, IEEE, 0.01)
    clamp = Pc321Clamp(app, IEEE)
    await sim.start()
    await clamp.connect(timeout_s=1.0)
    await wait_until(lambda: clamp.reports_received >= N_DECODED)
    await clamp.close()
    await sim.stop()
    await stop_application(app)
    assert [task for task in asyncio.all_tasks() - before if not task.done()] == []


def test_clamp_values_from_grid() -> None:
    grid = GridValues(
        voltage_v=(230.0, 231.0, 232.0),
        current_a=(4.0, 5.0, 6.0),
        active_power_w=(900.0, -1100.0, 1300.0),
        reactive_power_var=(10.0, 20.0, 30.0),
        power_factor=(0.99, -0.98, 0.97),
        frequency_hz=49.98,
        import_kwh=321.5,
        export_kwh=12.0,
        total_active_power_w=1100.0,
        total_reactive_power_var=60.0,
        total_power_factor=0.98,
    )
    values = clamp_values_from_grid(grid)
    assert values.active_power_w == (900.0, -1100.0, 1300.0)
    assert values.voltage_v == (230.0, 231.0, 232.0)
    assert values.current_a == (4.0, 5.0, 6.0)
    assert values.energy_kwh == 321.5
    assert values.frequency_hz == 49.98
