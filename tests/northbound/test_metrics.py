"""The metrics face without a Prometheus: names, units, state sets, staleness, device health,
commands, heartbeat age and the archive's numbers, as the exposition text shows them."""

from __future__ import annotations

import asyncio
import dataclasses
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from appliance.archive import ArchiveFace
from appliance.clock import ManualClock
from appliance.config import simulated_site_config
from appliance.control.command_types import CommandResult, RejectCode
from appliance.northbound.face import FaceContext
from appliance.northbound.metrics import FacesTelemetry, MetricsFace, metric_factor, metric_name
from appliance.points.table import shipped_point_table
from appliance.runtime.site_table import site_point_table
from appliance.store import Quality, Sample, Value

T = 1_795_000_000.0


async def core(
    source: str, command: str, point_id: str | None, value: Value | None, user: str | None = None
) -> CommandResult:
    if value == -1:
        return CommandResult(7, False, "out of range", RejectCode.OUT_OF_RANGE)
    return CommandResult(7, True, "accepted")


def make_context(tmp_path: Path | None = None) -> FaceContext:
    config = simulated_site_config()
    metrics = dataclasses.replace(config.faces.metrics, port=0)
    config = dataclasses.replace(config, faces=dataclasses.replace(config.faces, metrics=metrics))
    if tmp_path is not None:
        archive = dataclasses.replace(
            config.archive,
            local=dataclasses.replace(config.archive.local, path=tmp_path / "archive"),
        )
        config = dataclasses.replace(config, archive=archive)
    return FaceContext(config, site_point_table(config), {}, core)


def good(value: Value, t: float = T) -> Sample:
    return Sample(value, t, Quality.GOOD, 0.0)


def samples(face: MetricsFace) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(face.registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def site(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"site": "simulated", **labels}.items()))


def put(ctx: FaceContext, changes: Mapping[str, Sample], face: MetricsFace | None = None) -> None:
    mirror = ctx.mirror
    assert isinstance(mirror, dict)
    mirror.update(changes)
    if face is not None:
        face.apply(changes)


@pytest.mark.parametrize(
    ("point_id", "name", "factor"),
    [
        ("grid.active_power", "appliance_grid_active_power_watts", 1.0),
        ("pv.active_power", "appliance_pv_active_power_watts", 1.0),
        ("battery.3.soc", "appliance_battery_soc_ratio", 0.01),
        ("battery.1.cell_voltage_min", "appliance_battery_cell_voltage_min_volts", 1.0),
        ("battery.1.temperature_max", "appliance_battery_temperature_max_celsius", 1.0),
        ("grid.import_energy", "appliance_grid_import_energy_joules", 3.6e6),
        ("appliance.loop_lateness", "appliance_appliance_loop_lateness_seconds", 0.001),
        ("appliance.loop_overruns", "appliance_appliance_loop_overruns", 1.0),
        ("appliance.alive_counter", "appliance_appliance_cycles", 1.0),
        ("heartbeat.last_time", "appliance_heartbeat_last_time_timestamp_seconds", 1.0),
        ("alarms.count", "appliance_alarms_active", 1.0),
        ("controller.d_term", "appliance_controller_derivative_term_watts", 1.0),
        ("cluster.nodes_online", "appliance_cluster_nodes_online", 1.0),
    ],
)
def test_metric_names_and_base_units_follow_the_point_table(
    point_id: str, name: str, factor: float
) -> None:
    point = shipped_point_table()[point_id]
    assert metric_name(point) == name
    assert metric_factor(point) == factor


def test_good_values_are_exported_converted_and_unusable_ones_disappear() -> None:
    ctx = make_context()
    face = MetricsFace(ctx)
    put(
        ctx,
        {
            "grid.active_power": good(1234.5),
            "pv.active_power": Sample(800.0, T, Quality.STALE, 0.0),
            "house.active_power": Sample(400.0, T, Quality.BAD, 0.0),
            "battery.1.soc": good(55.0),
            "grid.import_energy": good(2.0),
            "appliance.alive_counter": good(42),
            "appliance.loop_lateness": good(12.0),
        },
    )
    out = samples(face)
    assert out[("appliance_grid_active_power_watts", site())] == 1234.5
    assert out[("appliance_battery_soc_ratio", site(node="1"))] == pytest.approx(0.55)
    assert out[("appliance_grid_import_energy_joules_total", site())] == 7.2e6
    assert out[("appliance_appliance_cycles_total", site())] == 42
    assert out[("appliance_appliance_loop_lateness_seconds", site())] == pytest.approx(0.012)
    assert ("appliance_pv_active_power_watts", site()) not in out  # stale
    assert ("appliance_house_active_power_watts", site()) not in out  # bad
    assert ("appliance_battery_soc_ratio", site(node="2")) not in out  # never received
    assert not any(name.startswith("appliance_alarms_reset") for name, _ in out)  # write-only


def test_every_cycle_lateness_the_faces_receive_lands_in_a_histogram() -> None:
    ctx = make_context()
    face = MetricsFace(ctx)
    for ms in (0.5, 3.0, 3.5, 40.0):
        put(ctx, {"appliance.loop_lateness": good(ms)}, face)
    put(ctx, {"appliance.loop_lateness": Sample(900.0, T, Quality.STALE, 0.0)}, face)
    out = samples(face)
    name = "appliance_control_loop_lateness_seconds"
    assert out[(f"{name}_count", site())] == 4  # the stale one is not a measurement
    assert out[(f"{name}_sum", site())] == pytest.approx(0.047)
    assert out[(f"{name}_bucket", site(le="0.001"))] == 1
    assert out[(f"{name}_bucket", site(le="0.005"))] == 3
    assert out[(f"{name}_bucket", site(le="0.02"))] == 3
    assert out[(f"{name}_bucket", site(le="0.05"))] == 4


def test_enum_points_are_state_sets() -> None:
    ctx = make_context()
    face = MetricsFace(ctx)
    put(ctx, {"controller.mode": good(2), "inverter.2.state": good(3)})
    out = samples(face)
    modes = {dict(k)["state"]: v for (n, k), v in out.items() if n == "appliance_controller_mode"}
    assert modes == {"stop": 0, "activate": 0, "maxself": 1, "chargeonly": 0, "setpoint": 0}
    inverter = {
        dict(k)["state"]: v
        for (n, k), v in out.items()
        if n == "appliance_inverter_state" and dict(k)["node"] == "2"
    }
    assert inverter["discharging"] == 1
    assert sum(inverter.values()) == 1


def test_device_health_counts_failed_polls_and_keeps_the_last_success() -> None:
    ctx = make_context()
    face = MetricsFace(ctx)
    labels = (("block", "grid"), ("device", "grid"), ("node", ""), ("site", "simulated"))
    put(ctx, {"grid.comm_ok": good(True, T)}, face)
    put(ctx, {"grid.comm_ok": good(False, T + 1)}, face)
    put(ctx, {"grid.comm_ok": good(False, T + 1)}, face)  # the same sample again: not counted
    put(ctx, {"grid.comm_ok": good(False, T + 3)}, face)
    out = samples(face)
    assert out[("appliance_device_up", labels)] == 0
    assert out[("appliance_device_errors_total", labels)] == 2
    assert out[("appliance_device_last_success_timestamp_seconds", labels)] == T
    put(ctx, {"grid.comm_ok": good(True, T + 5)}, face)
    out = samples(face)
    assert out[("appliance_device_up", labels)] == 1
    assert out[("appliance_device_last_success_timestamp_seconds", labels)] == T + 5
    # A comm_ok that went stale (the poller backs off while down) is not "up".
    put(ctx, {"grid.comm_ok": Sample(True, T + 5, Quality.STALE, 0.0)}, face)
    assert samples(face)[("appliance_device_up", labels)] == 0
    battery = (("block", "battery"), ("device", "battery.2"), ("node", "2"), ("site", "simulated"))
    assert samples(face)[("appliance_device_up", battery)] == 0  # nothing heard yet


def test_heartbeat_age_is_measured_at_scrape_time() -> None:
    clock = ManualClock(wall=T + 30)
    ctx = make_context()
    face = MetricsFace(ctx, clock=clock)
    assert ("appliance_heartbeat_age_seconds", site()) not in samples(face)  # none received
    put(ctx, {"heartbeat.last_time": good(int(T))})
    assert samples(face)[("appliance_heartbeat_age_seconds", site())] == pytest.approx(30)
    clock.advance(12)
    assert samples(face)[("appliance_heartbeat_age_seconds", site())] == pytest.approx(42)


async def test_commands_are_counted_by_source_command_and_result() -> None:
    telemetry = FacesTelemetry()
    ctx = make_context()
    submit = telemetry.counting(ctx.submit)
    face = MetricsFace(dataclasses.replace(ctx, submit=submit), telemetry=telemetry)
    assert (await submit("opcua", "set_grid_target", "controller.grid_target", 100.0)).accepted
    await submit("opcua", "set_grid_target", "controller.grid_target", 100.0)
    refused = await submit("modbus:10.0.0.7", "set_grid_target", "controller.grid_target", -1)
    assert refused.code is RejectCode.OUT_OF_RANGE
    out = samples(face)
    key = "appliance_commands_total"
    assert out[(key, site(source="opcua", command="set_grid_target", result="accepted"))] == 2
    assert out[(key, site(source="modbus", command="set_grid_target", result="out_of_range"))] == 1


async def test_the_archive_reports_through_the_faces_telemetry(tmp_path: Path) -> None:
    telemetry = FacesTelemetry()
    ctx = make_context(tmp_path)
    archive = ArchiveFace(ctx)
    telemetry.watch_archive(archive.stats)
    face = MetricsFace(ctx, telemetry=telemetry)
    await archive.start()
    try:
        changes = {"grid.active_power": good(1.0, T), "grid.frequency": good(50.0, T)}
        put(ctx, changes)
        archive.apply(changes)
        await archive.sync()
        out = samples(face)
    finally:
        await archive.stop()
    assert out[("appliance_archive_backend_info", site(backend="local"))] == 1
    assert out[("appliance_archive_points_written_total", site())] == 2
    assert out[("appliance_archive_spool_points", site())] == 0
    assert out[("appliance_archive_points_dropped_total", site(reason="max_age"))] == 0


async def test_the_face_serves_http_on_its_port_and_releases_it() -> None:
    ctx = make_context()
    put(ctx, {"grid.active_power": good(-250.0)})
    telemetry = FacesTelemetry()
    face = MetricsFace(ctx, telemetry=telemetry)
    await face.start()
    try:
        assert face.port is not None
        url = f"http://127.0.0.1:{face.port}/metrics"
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        assert b'appliance_grid_active_power_watts{site="simulated"} -250.0' in text
        assert b'appliance_face_up{face="metrics",site="simulated"} 1.0' in text
    finally:
        await face.stop()
    assert telemetry.faces() == {"metrics": False}
    with pytest.raises(urllib.error.URLError, match="refused"):
        await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=2))
