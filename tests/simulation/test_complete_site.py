"""The complete simulated site: every device, the SML meter and the PC321 clamp included.

The SML meter's telegrams reach the core's pyserial reader through a pty the simulated site
publishes at data_dir/sim/sml-meter; the PC321's values cross from the plant on a loopback
line feed into a radio-less zigpy application in the core, whose simulated device sends the
real ZCL reports the driver decodes (appliance/simulation/zigbee_feed.py). In-process tests
run the site and the core as tests/runtime/test_simulated_site.py does; the last test runs
`appliance run --simulate` as a person does and asks `appliance health`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from appliance.aio import cancel_and_wait
from appliance.config.schema import SerialConnection, SiteConfig, serial_port_path
from appliance.drivers.pc321_clamp import ATTRIBUTES, ClampReading, Pc321Clamp
from appliance.drivers.sml_meter import SmlMeter
from appliance.errors import DeviceUnavailable, DriverError
from appliance.runtime.core import Core
from appliance.runtime.devices import clamp_house_values, sml_values
from appliance.simulation.devices.pc321_sim import ClampValues, clamp_values_from_grid
from appliance.simulation.site import SimulatedSite
from appliance.simulation.site_config import free_ports, simulated_site_on_free_ports
from appliance.simulation.sml_line import PtyLine
from appliance.simulation.zigbee_feed import (
    REPORT_PERIOD_S,
    ClampFeedServer,
    FeedLineError,
    SimulatedZigbeeRadio,
    decode_line,
    encode_line,
)
from appliance.store import Quality

pytestmark = pytest.mark.slow

log = logging.getLogger(__name__)

#: Every block a device fills; sml_meter. and consumption_clamp. count once the point table
#: has them (today the clamp fills house.active_power and the SML meter has no block).
MEASURED_BLOCKS = (
    "grid.",
    "pv.",
    "house.",
    "battery.",
    "inverter.",
    "surplus.",
    "sml_meter.",
    "consumption_clamp.",
)
ACCEPTANCE_S = 5.0
IEEE = "a4:c1:38:00:00:03:21:01"  # the simulated site's clamp
N_DECODED = len(ATTRIBUTES)  # attribute reports per PC321 report that the driver decodes


@dataclass
class Running:
    config: SiteConfig
    site: SimulatedSite
    core: Core
    stepping: asyncio.Task[None] | None
    tasks: list[asyncio.Task[None]]
    started_s: float  # time.monotonic() before the site started

    @property
    def sml_link(self) -> Path:
        meter = self.config.devices.sml_meter
        assert meter is not None
        assert isinstance(meter.connection, SerialConnection)
        return Path(serial_port_path(self.config.data_dir, meter.connection.port))

    def poller_up(self, name: str) -> bool:
        return any(p.up for p in self.core.pollers if p.name == name)

    def sml(self) -> SmlMeter:
        meter = self.core.devices.meters["sml_meter"]
        assert isinstance(meter, SmlMeter)
        return meter

    def clamp(self) -> Pc321Clamp:
        clamp = self.core.devices.meters["consumption_clamp"]
        assert isinstance(clamp, Pc321Clamp)
        return clamp

    async def freeze_plant(self) -> None:
        """Stop stepping the plant: from now on every device reports the same state."""
        if self.stepping is not None:
            await cancel_and_wait([self.stepping])
            self.stepping = None


def expected_points(core: Core) -> list[str]:
    # setpoints and surplus modes are written by the controller and commands, not read
    return [
        p.id
        for p in core.table
        if p.id.startswith(MEASURED_BLOCKS) and not p.id.endswith((".setpoint", ".mode"))
    ]


def not_good(core: Core, point_ids: list[str]) -> list[str]:
    snapshot = core.store.snapshot(point_ids)
    return [pid for pid, sample in snapshot.items() if sample.quality is not Quality.GOOD]


async def wait_until(condition: Callable[[], bool], timeout_s: float) -> float:
    """Seconds until `condition()` held; AssertionError after `timeout_s`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


@contextlib.asynccontextmanager
async def running_site(config: SiteConfig) -> AsyncIterator[Running]:
    """The simulated site, then the core's pollers, as `appliance run --simulate` orders them."""
    started = time.monotonic()
    site = SimulatedSite(config)
    core = Core(config)
    try:
        await site.start()
        await core.open_devices()
        tasks = [asyncio.create_task(p.run(), name=f"poll[{p.name}]") for p in core.pollers]
        stepping = asyncio.create_task(site.run(), name="plant")
        running = Running(config, site, core, stepping, tasks, started)
        try:
            yield running
        finally:
            assert not await cancel_and_wait(
                [*running.tasks, *([running.stepping] if running.stepping else [])]
            )
    finally:
        await core.close()
        await site.stop()


@pytest.fixture
def config(tmp_path: Path) -> SiteConfig:
    site, _ = simulated_site_on_free_ports(tmp_path)
    return site


# ----------------------------------------------------------------------------- in process


async def test_every_device_point_is_good_within_five_seconds_of_start(config: SiteConfig) -> None:
    roles = config.devices.meters()
    assert roles["sml_meter"].kind == "sml"
    assert roles["consumption_clamp"].kind == "pc321"
    async with running_site(config) as running:
        core = running.core
        expected = expected_points(core)
        assert "house.active_power" in expected  # measured by the clamp, not derived
        link = running.sml_link
        assert link.is_symlink()
        assert os.readlink(link).startswith("/dev/pts/")
        names = [p.name for p in core.pollers]
        assert {"sml_meter", "consumption_clamp"} <= set(names)
        elapsed = await wait_until(
            lambda: not not_good(core, expected) and all(p.up for p in core.pollers),
            ACCEPTANCE_S + 5.0,  # fail below with the figure, not here
        )
        since_start = time.monotonic() - running.started_s
        log.info(
            "complete site Good %.2f s after start (%.2f s after the core)", since_start, elapsed
        )
        assert since_start < ACCEPTANCE_S, (since_start, not_good(core, expected))
        assert running.sml().crc_errors == 0
        assert running.clamp().malformed_reports == 0
    # The pty link goes with the site.
    assert not link.is_symlink()
    assert not link.exists()


async def test_sml_meter_and_clamp_show_the_plant_within_device_resolution(
    config: SiteConfig,
) -> None:
    async with running_site(config) as running:
        core, site = running.core, running.site
        await wait_until(
            lambda: running.poller_up("sml_meter") and running.poller_up("consumption_clamp"),
            ACCEPTANCE_S,
        )
        await running.freeze_plant()
        sml, clamp = running.sml(), running.clamp()
        telegrams, reports = sml.telegrams, clamp.reports_received
        # Two telegrams and two reports sent after the freeze, then a poll to store them.
        await wait_until(
            lambda: (
                sml.telegrams >= telegrams + 2 and clamp.reports_received >= reports + 2 * N_DECODED
            ),
            4 * REPORT_PERIOD_S + 2.0,
        )
        await asyncio.sleep(0.6)
        state = site.plant.state
        grid = state.grid
        house = clamp_values_from_grid(site.meter_values("consumption_clamp"))

        # SML: powers in whole watts, energies in 0.1 Wh.
        reading = await sml.read()
        assert reading.active_power_w == pytest.approx(grid.total_active_power_w, abs=0.5)
        phases = (reading.active_power_l1_w, reading.active_power_l2_w, reading.active_power_l3_w)
        assert phases == pytest.approx(grid.active_power_w, abs=0.5)
        assert reading.import_kwh == pytest.approx(grid.import_kwh, abs=5e-5)
        assert reading.export_kwh == pytest.approx(grid.export_kwh, abs=5e-5)
        assert reading.import_kwh + reading.export_kwh > 0  # the register ran

        # PC321: W, 0.1 V, mA, Wh on the wire.
        values = await clamp.read()
        assert values.active_power_w == pytest.approx(state.load_w, abs=0.51)
        assert (
            values.active_power_l1_w,
            values.active_power_l2_w,
            values.active_power_l3_w,
        ) == pytest.approx(house.active_power_w, abs=0.5)
        volts = (values.voltage_l1_v, values.voltage_l2_v, values.voltage_l3_v)
        assert volts == pytest.approx(house.voltage_v, abs=0.05)
        amps = (values.current_l1_a, values.current_l2_a, values.current_l3_a)
        assert amps == pytest.approx(house.current_a, abs=0.0005)
        assert values.energy_kwh == pytest.approx(house.energy_kwh, abs=0.0005)
        assert house.energy_kwh > 0  # the house register integrates the load

        # The store holds what the drivers read; the house consumption is measured.
        house_sample = core.store.get("house.active_power")
        assert house_sample.quality is Quality.GOOD
        assert house_sample.value == pytest.approx(state.load_w, abs=0.51)
        # The role blocks hold the same readings wherever the point table has them.
        blocks = [p.id for p in core.table if p.id.startswith(("sml_meter.", "consumption_clamp."))]
        assert not_good(core, blocks) == []
        published = {**sml_values(reading, "sml_meter"), **clamp_house_values(values)}
        for point_id in blocks:
            stored = core.store.get(point_id).value
            if point_id.endswith(".comm_ok"):
                assert stored is True
            else:
                assert stored == pytest.approx(published[point_id]), point_id
        # And the grid meter next to them still reads the same grid (SDM630: float32).
        assert core.store.get("grid.active_power").value == pytest.approx(
            grid.total_active_power_w, abs=0.5
        )


async def test_the_core_waits_for_a_pty_published_after_it_started(config: SiteConfig) -> None:
    """The SML link does not exist yet when the core starts polling; it is read once it does."""
    without_clamp = dataclasses.replace(
        config, devices=dataclasses.replace(config.devices, consumption_clamp=None)
    )
    core = Core(without_clamp)
    site = SimulatedSite(without_clamp)
    await core.open_devices()
    tasks = [asyncio.create_task(p.run(), name=f"poll[{p.name}]") for p in core.pollers]
    stepping: asyncio.Task[None] | None = None
    try:
        meter = without_clamp.devices.sml_meter
        assert meter is not None
        assert isinstance(meter.connection, SerialConnection)
        link = Path(serial_port_path(without_clamp.data_dir, meter.connection.port))
        await asyncio.sleep(0.5)
        assert not await asyncio.to_thread(os.path.lexists, link)
        assert not any(p.up for p in core.pollers if p.name == "sml_meter")
        await site.start()
        stepping = asyncio.create_task(site.run(), name="plant")
        # The reader retries its port every 2 s; the meter sends a telegram every second.
        elapsed = await wait_until(lambda: all(p.up for p in core.pollers), 6.0)
        log.info("SML meter read %.2f s after its link appeared", elapsed)
    finally:
        assert not await cancel_and_wait([*tasks, *([stepping] if stepping else [])])
        await core.close()
        await site.stop()


# ----------------------------------------------------------------------------- the links


VALUES = ClampValues(
    active_power_w=(1234.0, -456.0, 78.0),
    voltage_v=(231.2, 229.8, 230.5),
    current_a=(5.372, 2.004, 0.351),
    energy_kwh=12345.678,
    frequency_hz=50.0,
)


def test_feed_lines_round_trip_and_bad_lines_are_refused() -> None:
    line = encode_line(IEEE.upper(), VALUES)
    assert line.endswith(b"\n")
    assert decode_line(line) == (IEEE, VALUES)
    record = json.loads(line)
    bad = [
        b"not json\n",
        b"[1, 2]\n",
        json.dumps({**record, "ieee": "nope"}).encode(),
        json.dumps({**record, "voltage_v": [230.0, 230.0]}).encode(),
        json.dumps({**record, "current_a": [1.0, True, 1.0]}).encode(),
        json.dumps({**record, "energy_kwh": "12"}).encode(),
        b'{"ieee": "' + IEEE.encode() + b'", "active_power_w": [NaN, 0, 0]}',
    ]
    for data in bad:
        with pytest.raises(FeedLineError):
            decode_line(data)


async def test_the_radio_follows_its_feed_as_it_comes_goes_and_returns() -> None:
    """Real loopback feed, real zigpy frames: values decode; a lost feed silences the clamp."""
    port = free_ports(1)[0]
    feed = ClampFeedServer({IEEE: lambda: VALUES}, period_s=0.1)
    radio = await SimulatedZigbeeRadio.start("127.0.0.1", port)
    clamp: Pc321Clamp | None = None
    try:
        pairing = asyncio.create_task(radio.add_pc321(IEEE, name="clamp"), name="pair")
        await asyncio.sleep(0.3)
        assert not radio.connected  # nobody serves the feed yet; the radio retries
        await feed.start("127.0.0.1", port)
        simulator = await pairing
        assert not simulator.faults.silent
        clamp = Pc321Clamp(radio.app, IEEE, name="clamp", stale_after_s=1.5)
        await clamp.connect(timeout_s=1.0)
        assert clamp.metering_formatting == (1, 1000)  # read through zigpy from the device
        reading = await read_ok(clamp, 3.0)
        phases = (reading.active_power_l1_w, reading.active_power_l2_w, reading.active_power_l3_w)
        assert phases == pytest.approx(VALUES.active_power_w, abs=0.5)
        assert reading.active_power_w == pytest.approx(sum(VALUES.active_power_w), abs=0.5)
        assert reading.voltage_l2_v == pytest.approx(VALUES.voltage_v[1], abs=0.05)
        assert reading.current_l3_a == pytest.approx(VALUES.current_a[2], abs=0.0005)
        assert reading.energy_kwh == pytest.approx(VALUES.energy_kwh, abs=0.0005)
        assert radio.rejected_lines == 0
        assert feed.lines_sent >= 1

        await feed.stop()  # the simulated site stops: the clamp falls silent, then stale
        await wait_until(lambda: simulator.faults.silent, 2.0)
        with pytest.raises(DeviceUnavailable):
            await read_until_unavailable(clamp, 4.0)

        await feed.start("127.0.0.1", port)  # and comes back
        await read_ok(clamp, 6.0)
        assert not simulator.faults.silent
    finally:
        if clamp is not None:
            await clamp.close()
        await feed.stop()
        await radio.stop()


async def read_ok(clamp: Pc321Clamp, timeout_s: float) -> ClampReading:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await clamp.read()
        except DriverError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)


async def read_until_unavailable(clamp: Pc321Clamp, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        await clamp.read()  # raises DeviceUnavailable once stale
        await asyncio.sleep(0.05)


async def test_pty_link_replaces_a_stale_link_and_never_a_file(tmp_path: Path) -> None:
    link = tmp_path / "sim" / "sml-meter"
    link.parent.mkdir()
    link.symlink_to("/dev/pts/does-not-exist")  # left by a killed run
    line = PtyLine(link)
    await line.open()
    try:
        assert os.readlink(link) == line.appliance_end
        meter = os.open(line.meter_end, os.O_RDWR | os.O_NOCTTY)
        ours = os.open(link, os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(meter, b"\x1b\x1b\x1b\x1b")
            await wait_until(lambda: line.copied_bytes >= 4, 2.0)
            assert os.read(ours, 4) == b"\x1b\x1b\x1b\x1b"
        finally:
            os.close(meter)
            os.close(ours)
    finally:
        await line.close()
    assert not link.is_symlink()
    link.write_text("a real file")
    with pytest.raises(RuntimeError, match="is not a symlink"):
        await PtyLine(link).open()
    assert link.read_text() == "a real file"


# ----------------------------------------------------------------------------- end to end

LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+\s+(\S+) (\S+): (.*)$")


def health(metrics_port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable, "-m", "appliance", "health",
            "--url", f"http://127.0.0.1:{metrics_port}/metrics",
            "--site", "simulated", "--interval", "0.6",
        ],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def first_readings(err: str) -> tuple[datetime | None, dict[str, datetime]]:
    """When the simulated-site process logged first, and each poller's first reading."""
    started: datetime | None = None
    first: dict[str, datetime] = {}
    for line in err.splitlines():
        match = LOG_TIME.match(line)
        if match is None:
            continue
        at = datetime.fromisoformat(match[1].replace(",", "."))
        if started is None and match[2] == "simulated-site":
            started = at
        if match[4].endswith(": first reading received"):
            first.setdefault(match[4].split(":")[0], at)
    return started, first


def test_appliance_run_simulate_reports_every_device_healthy(tmp_path: Path) -> None:
    config, ports = simulated_site_on_free_ports(tmp_path)
    metrics_port = ports[9464]
    link = tmp_path / "var" / "sim" / "sml-meter"
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance", "run", "--simulate", "--config",
         str(tmp_path / "simulated.yaml")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        verdict = health(metrics_port)
        while verdict.returncode != 0:
            assert time.monotonic() - started < 45, verdict.stderr
            time.sleep(0.3)
            verdict = health(metrics_port)
        healthy_s = time.monotonic() - started
        # "running", not "degraded": every poller, the SML meter and the clamp included, is up.
        assert "simulated' running" in verdict.stdout, verdict.stdout
        assert link.is_symlink()
        log.info("`appliance health` ok %.1f s after `appliance run` was started", healthy_s)
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "appliance: stopped" in err
    assert not link.is_symlink()  # removed at stop
    sim_started, first = first_readings(err)
    assert sim_started is not None
    pollers = {"grid_meter", "pv_meter", "sml_meter", "consumption_clamp", "relays[boiler]"}
    for node in config.devices.battery_nodes:
        pollers |= {f"{node.name}.bms", f"{node.name}.inverter"}
    assert set(first) == pollers, err[-3000:]
    latest = max(first.values())
    since_start = (latest - sim_started).total_seconds()
    log.info("every device's first reading %.2f s after the simulated site started", since_start)
    assert since_start < ACCEPTANCE_S
    assert "sml_meter (SML, serial 9600 8N1)" in err
    assert "PC321 clamp values (radio simulated" in err
    assert "Traceback" not in err
    assert "ERROR" not in err, err[-3000:]
    assert "simulated site:" in out
