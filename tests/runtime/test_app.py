"""The appliance as a person runs it: `appliance run --simulate` in a subprocess.

Real processes, real sockets on 127.0.0.1: the simulated site serves SDM630 meters over
Modbus TCP, the core polls them, the faces process serves Prometheus metrics.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

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
        wait_for_metric(sim_ports[9464], 'appliance_grid_active_power_watts{site="simulated"}', 30)
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
    finally:
        client.close()
        process.send_signal(signal.SIGINT)
        _, err = await asyncio.to_thread(process.communicate, timeout=30)
    assert process.returncode == 0, err
