"""pysunspec2, the SunSpec Alliance's own client, discovers and reads the face.

pysunspec2 is synchronous (blocking sockets): each scan runs in a worker thread while the
face serves on the test's event loop. The vendor model's JSON definition comes from
`vendor.model_definition`, put where pysunspec2 looks for model definitions for the test.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sunspec2.device
import sunspec2.modbus.client as sunspec_client

from appliance.northbound.modbus.layout import site_map
from appliance.northbound.modbus.vendor import VENDOR_MODEL_ID, model_definition
from appliance.points.table import shipped_point_table
from tests.northbound.test_modbus_support import LOCALHOST, running_site

SITE_MODELS = {1, 203, 701, 704, 713, 802, VENDOR_MODEL_ID}
NODE_MODELS = {1, 701, 713, 802}


@pytest.fixture
def vendor_definition(tmp_path: Path) -> Iterator[None]:
    fields = [
        f for f in site_map(shipped_point_table()).registers if f.model == str(VENDOR_MODEL_ID)
    ]
    (tmp_path / f"model_{VENDOR_MODEL_ID}.json").write_text(json.dumps(model_definition(fields)))
    previous = sunspec2.device.get_model_defs_path()
    sunspec2.device.set_model_defs_path([str(tmp_path), *previous])
    yield
    sunspec2.device.set_model_defs_path(previous)


def scan(port: int, unit: int) -> Any:
    device = sunspec_client.SunSpecModbusClientDeviceTCP(
        slave_id=unit, ipaddr=LOCALHOST, ipport=port, timeout=5
    )
    try:
        device.scan()
    finally:
        device.close()
    return device


def model_ids(device: Any) -> set[int]:
    return {key for key in device.models if isinstance(key, int)}


async def test_pysunspec2_scans_the_site_and_reads_the_mirror(vendor_definition: None) -> None:
    async with running_site() as site:
        site.set("grid.active_power", 2468.0)
        site.set("grid.voltage_l2", 229.87)
        site.set("grid.import_energy", 12345.678)
        site.set("cluster.soc", 63.27)
        site.set("controller.grid_target", -250.5)
        site.set("heartbeat.counter", 17)
        site.set("controller.state", 11)  # sensor_loss: 701 InvSt THROTTLED
        device = await asyncio.to_thread(scan, site.port, 1)
        assert device.base_addr == 40000
        assert model_ids(device) == SITE_MODELS
        common = device.common[0]
        assert (common.Mn.value, common.SN.value) == ("appliance", site.config.site.id)
        meter = device.ac_meter_abcn[0]
        assert meter.W.cvalue == pytest.approx(2468.0, abs=50)  # W_SF 2: 100 W steps
        assert meter.PhVphB.cvalue == pytest.approx(229.87)
        assert meter.TotWhImp.cvalue == pytest.approx(12_345_678, abs=500)  # Wh, TotWh_SF 3
        assert meter.AphA.cvalue is not None
        assert meter.PhV.value is None
        assert device.DERMeasureAC[0].InvSt.value == 4
        assert device.DERStorageCapacity[0].SoC.cvalue == pytest.approx(63.27)
        assert device.battery[0].CtrlHb.value == 17
        vendor = device.models[VENDOR_MODEL_ID][0]
        assert vendor.model_def is not None
        assert vendor.error_info == ""
        assert vendor.controller_grid_target.value == pytest.approx(-250.5)
        assert vendor.quality_grid.value == 1
        assert vendor.quality_battery_3.value is None  # 0xFFFF: no node 3 on this site


async def test_pysunspec2_scans_each_battery_node(vendor_definition: None) -> None:
    async with running_site() as site:
        for node, soc in ((1, 41.5), (2, 87.25)):
            site.set(f"battery.{node}.soc", soc)
            site.set(f"battery.{node}.voltage", 52.3)
            site.set(f"battery.{node}.current", -12.5)
            site.set(f"inverter.{node}.active_power", -650.0)
        devices = [await asyncio.to_thread(scan, site.port, unit) for unit in (2, 3)]
        for node, device in enumerate(devices, start=1):
            assert model_ids(device) == NODE_MODELS
            assert device.common[0].Opt.value == site.config.devices.battery_nodes[node - 1].name
            battery = device.battery[0]
            assert battery.SoC.cvalue == site.mirror[f"battery.{node}.soc"].value
            assert (battery.V.cvalue, battery.A.cvalue) == (52.3, -12.5)
            assert device.DERMeasureAC[0].W.cvalue == pytest.approx(-700, abs=50)


async def test_pysunspec2_writes_the_setpoint_through_the_command_path(
    vendor_definition: None,
) -> None:
    async with running_site() as site:
        device = await asyncio.to_thread(scan, site.port, 1)

        def write() -> None:
            device.connect()
            try:
                control = device.DERCtlAC[0]
                control.WSet.cvalue = -1800
                control.write()
            finally:
                device.close()

        await asyncio.to_thread(write)
        assert site.core.applied() == [
            ("set_active_power", "controller.active_power_setpoint", -1800)
        ]
