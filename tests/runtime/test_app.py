"""The appliance as a person runs it: `appliance run --simulate` in a subprocess.

Real processes, real sockets on 127.0.0.1: the simulated site serves SDM630 meters over
Modbus TCP, the core polls them, the faces process serves Prometheus metrics.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from appliance.points.model import ModbusMapping

pytestmark = pytest.mark.slow


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def wait_for_metric(port: int, name: str, timeout_s: float) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            values = scrape(port)
            if name in values:
                return values
        except OSError as exc:
            last_error = exc
        time.sleep(0.25)
    raise AssertionError(f"{name} not scraped within {timeout_s} s ({last_error})")


def start(config: Path, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "appliance", "run", "--simulate", "--config", str(config)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_run_simulated_site_serves_live_data_and_stops_cleanly_on_sigint(
    sim_config_file: Path, sim_ports: dict[int, int], tmp_path: Path
) -> None:
    metrics_port = sim_ports[9464]
    process = start(sim_config_file, tmp_path)
    try:
        site = '{site="simulated"}'
        first = wait_for_metric(metrics_port, f"appliance_grid_active_power_watts{site}", 30)
        assert f"appliance_pv_active_power_watts{site}" in first
        # Live: the alive counter advances and the house balance is derived from fresh data.
        time.sleep(1.5)
        second = scrape(metrics_port)
        alive = f"appliance_appliance_cycles_total{site}"
        assert second[alive] > first[alive]
        grid = second[f"appliance_grid_active_power_watts{site}"]
        pv = second[f"appliance_pv_active_power_watts{site}"]
        assert -20_000 < grid < 20_000
        assert 0 <= pv <= 8_000
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert f"metrics   http://127.0.0.1:{metrics_port}/metrics" in out
    assert "viewer-demo" in out  # the demo users are printed
    assert "appliance: stopped" in err


def test_run_stops_on_sigterm_with_exit_code_zero(
    sim_config_file: Path, sim_ports: dict[int, int], tmp_path: Path
) -> None:
    process = start(sim_config_file, tmp_path)
    try:
        wait_for_metric(sim_ports[9464], 'appliance_grid_active_power_watts{site="simulated"}', 60)
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err


def test_run_without_config_explains_what_to_do(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "run", "--config", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "missing.yaml" in result.stderr


async def test_opcua_commands_cross_the_process_boundary_with_per_item_codes(
    sim_config_file: Path, sim_ports: dict[int, int], tmp_path: Path
) -> None:
    """OPC UA write in the faces process -> the core validates and applies -> answer per item."""
    from asyncua import ua  # noqa: PLC0415 - only this test needs the client
    from asyncua.client.client import Client  # noqa: PLC0415
    from asyncua.ua.uaerrors import UaStatusCodeError  # noqa: PLC0415

    from appliance.northbound.opcua.uatypes import StatusCodes  # noqa: PLC0415

    process = start(sim_config_file, tmp_path)
    try:
        await asyncio.to_thread(
            wait_for_metric,
            sim_ports[9464],
            'appliance_grid_active_power_watts{site="simulated"}',
            30,
        )
        client = Client(f"opc.tcp://127.0.0.1:{sim_ports[4840]}/")
        client.set_user("operator")
        client.set_password("operator-demo")
        async with client:
            ns = await client.get_namespace_index("urn:appliance:simulated")
            target = client.get_node(f"ns={ns};s=Site.Controller.GridTargetPower")
            await target.write_value(ua.DataValue(ua.Variant(-300.0, ua.VariantType.Double)))
            with pytest.raises(UaStatusCodeError) as refused:
                await target.write_value(ua.DataValue(ua.Variant(5e6, ua.VariantType.Double)))
            assert refused.value.code == StatusCodes.BadOutOfRange
            # The accepted value comes back from the core through the faces' feed.
            for _ in range(40):
                if await target.read_value() == -300.0:
                    break
                await asyncio.sleep(0.1)
            assert await target.read_value() == -300.0
            sessions = await asyncio.to_thread(scrape, sim_ports[9464])
            assert sessions['appliance_opcua_sessions{site="simulated"}'] >= 1
    finally:
        process.send_signal(signal.SIGINT)
        _, err = await asyncio.to_thread(process.communicate, timeout=30)
    assert process.returncode == 0, err


async def test_modbus_commands_cross_the_process_boundary_with_exception_codes(
    sim_config_file: Path, sim_ports: dict[int, int], tmp_path: Path
) -> None:
    """Modbus write in the faces process -> the core validates and applies -> answer or exception."""
    from pymodbus.client import AsyncModbusTcpClient  # noqa: PLC0415

    from appliance.points.codec import decode, encode  # noqa: PLC0415
    from appliance.points.table import shipped_point_table  # noqa: PLC0415

    grid_target = shipped_point_table()["controller.grid_target"].modbus
    alive = shipped_point_table()["appliance.alive_counter"].modbus
    assert grid_target is not None
    assert alive is not None
    process = start(sim_config_file, tmp_path)
    client = AsyncModbusTcpClient("127.0.0.1", port=sim_ports[5020], retries=0, reconnect_delay=0)
    try:
        await asyncio.to_thread(
            wait_for_metric,
            sim_ports[9464],
            'appliance_grid_active_power_watts{site="simulated"}',
            30,
        )
        assert await client.connect()
        accepted = await client.write_registers(
            grid_target.address, list(encode(grid_target, 150.0)), device_id=1
        )
        assert not accepted.isError()
        refused = await client.write_registers(
            grid_target.address, list(encode(grid_target, 5e6)), device_id=1
        )
        assert refused.isError()
        assert refused.exception_code == 3  # ILLEGAL_DATA_VALUE: out of range
        read_only = await client.write_registers(alive.address, [0, 1], device_id=1)
        assert read_only.isError()
        assert read_only.exception_code == 2  # ILLEGAL_DATA_ADDRESS: not a command register
        for _ in range(40):  # the accepted value comes back from the core through the feed
            answer = await client.read_holding_registers(grid_target.address, count=2, device_id=1)
            if decode(grid_target, list(answer.registers)) == 150.0:
                break
            await asyncio.sleep(0.1)
        assert decode(grid_target, list(answer.registers)) == 150.0
        # The faces count what they answered, for Prometheus.
        counted = await asyncio.to_thread(
            wait_for_metric,
            sim_ports[9464],
            'appliance_modbus_exceptions_total{code="0x03",site="simulated"}',
            10,
        )
        assert counted['appliance_modbus_exceptions_total{code="0x03",site="simulated"}'] >= 1
        assert counted['appliance_modbus_requests_total{outcome="ok",site="simulated"}'] >= 2
    finally:
        client.close()
        process.send_signal(signal.SIGINT)
        _, err = await asyncio.to_thread(process.communicate, timeout=30)
    assert process.returncode == 0, err


@pytest.fixture
def short_heartbeat_config(sim_config_file: Path) -> Path:
    """The simulated site with a 3 s heartbeat timeout, so that its loss shows quickly."""
    text = sim_config_file.read_text().replace(
        "  initial_mode: stop", "  initial_mode: stop\n  heartbeat_timeout_s: 3"
    )
    sim_config_file.write_text(text)
    return sim_config_file


async def test_scada_heartbeat_over_modbus_keeps_maxself_and_its_loss_stops_the_site(
    short_heartbeat_config: Path, sim_ports: dict[int, int], tmp_path: Path
) -> None:
    """The heartbeat contract end to end: faces -> core -> state machine -> faces."""
    from pymodbus.client import AsyncModbusTcpClient  # noqa: PLC0415

    from appliance.points.codec import decode  # noqa: PLC0415
    from appliance.points.table import shipped_point_table  # noqa: PLC0415

    table = shipped_point_table()
    mode, state = table["controller.mode"].modbus, table["controller.state"].modbus
    heartbeat, lost = table["heartbeat.counter"].modbus, table["alarms.heartbeat_lost"].modbus
    assert mode is not None
    assert state is not None
    assert heartbeat is not None
    assert lost is not None
    process = start(short_heartbeat_config, tmp_path)
    client = AsyncModbusTcpClient("127.0.0.1", port=sim_ports[5020], retries=0, reconnect_delay=0)

    async def read(mapping: ModbusMapping) -> float | None:
        answer = await client.read_holding_registers(
            mapping.address, count=mapping.count, device_id=1
        )
        return decode(mapping, list(answer.registers))

    try:
        await asyncio.to_thread(
            wait_for_metric,
            sim_ports[9464],
            'appliance_grid_active_power_watts{site="simulated"}',
            30,
        )
        assert await client.connect()
        counter = 0
        for _ in range(100):  # maxself is refused until the first BMS frames are in
            counter += 1
            await client.write_register(heartbeat.address, counter, device_id=1)
            answer = await client.write_register(mode.address, 2, device_id=1)
            if not answer.isError():
                break
            await asyncio.sleep(0.1)
        assert not answer.isError()
        for _ in range(8):  # heartbeats for 4 s, longer than the 3 s timeout: still maxself
            counter += 1
            assert not (
                await client.write_register(heartbeat.address, counter, device_id=1)
            ).isError()
            await asyncio.sleep(0.5)
        assert await read(state) == 2.0
        assert await read(lost) == 0.0
        # Heartbeats stop: within the timeout (plus a cycle and the feed) the site stops.
        stopped_at = None
        for tenth in range(80):
            if await read(state) == 0.0:
                stopped_at = tenth / 10
                break
            await asyncio.sleep(0.1)
        assert stopped_at is not None
        assert stopped_at < 5.0
        assert await read(lost) == 1.0
    finally:
        client.close()
        process.send_signal(signal.SIGINT)
        _, err = await asyncio.to_thread(process.communicate, timeout=30)
    assert process.returncode == 0, err


async def test_pysunspec2_discovers_the_running_appliance_and_reads_the_site(
    sim_config_file: Path, sim_ports: dict[int, int], tmp_path: Path
) -> None:
    """The SunSpec Alliance's client against `appliance run --simulate`: models and live values."""
    import sunspec2.modbus.client as sunspec_client  # noqa: PLC0415
    from pymodbus.client import AsyncModbusTcpClient  # noqa: PLC0415

    from appliance.points.codec import decode  # noqa: PLC0415
    from appliance.points.table import shipped_point_table  # noqa: PLC0415

    def scan(unit: int) -> Any:
        device = sunspec_client.SunSpecModbusClientDeviceTCP(
            slave_id=unit, ipaddr="127.0.0.1", ipport=sim_ports[5020], timeout=5
        )
        try:
            device.scan()
        finally:
            device.close()
        return device

    soc = shipped_point_table()["battery.1.soc"].modbus
    assert soc is not None
    process = start(sim_config_file, tmp_path)
    client = AsyncModbusTcpClient("127.0.0.1", port=sim_ports[5020], retries=0, reconnect_delay=0)
    try:
        await asyncio.to_thread(
            wait_for_metric,
            sim_ports[9464],
            'appliance_battery_soc_ratio{node="1",site="simulated"}',
            30,
        )
        site = await asyncio.to_thread(scan, 1)
        node = await asyncio.to_thread(scan, 2)
        assert site.base_addr == 40000
        assert {1, 203, 701, 704, 713, 802} <= {k for k in site.models if isinstance(k, int)}
        assert {1, 701, 713, 802} <= {k for k in node.models if isinstance(k, int)}
        assert site.common[0].SN.value == "simulated"
        assert client.connected or await client.connect()
        answer = await client.read_holding_registers(soc.address, count=soc.count, device_id=1)
        native_soc = decode(soc, list(answer.registers))
        assert native_soc is not None
        # The node's SunSpec 802 SoC is the same BMS value as the native map's (within scaling).
        assert node.battery[0].SoC.cvalue == pytest.approx(native_soc, abs=1.0)
    finally:
        client.close()
        process.send_signal(signal.SIGINT)
        _, err = await asyncio.to_thread(process.communicate, timeout=30)
    assert process.returncode == 0, err


def test_a_face_that_cannot_bind_does_not_keep_the_others_down(
    sim_config_file: Path, sim_ports: dict[int, int], tmp_path: Path
) -> None:
    """OPC UA's port is taken: metrics and Modbus serve anyway; OPC UA starts once it is free."""
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", sim_ports[4840]))
    blocker.listen()
    process = start(sim_config_file, tmp_path)
    try:
        site = '{face="opcua",site="simulated"}'
        values = wait_for_metric(
            sim_ports[9464], 'appliance_grid_active_power_watts{site="simulated"}', 60
        )
        assert values[f"appliance_face_up{site}"] == 0.0
        assert values['appliance_face_up{face="modbus",site="simulated"}'] == 1.0
        blocker.close()
        deadline = time.monotonic() + 30
        while scrape(sim_ports[9464]).get(f"appliance_face_up{site}") != 1.0:
            assert time.monotonic() < deadline, "OPC UA did not start after its port was freed"
            time.sleep(0.5)
    finally:
        blocker.close()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "opcua could not start" in err
