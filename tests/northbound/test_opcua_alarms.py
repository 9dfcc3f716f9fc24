"""Alarm events over the wire: an event subscription on the Server object (asyncua client on
127.0.0.1) sees OffNormalAlarmType events when mirror samples flip, and ConditionRefresh
replays the active ones. The transition logic is also tested on its own (pure)."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.subscription import Subscription

from appliance.config import SiteConfig, simulated_site_config
from appliance.control.command_types import CommandRequest, CommandResult, RejectCode
from appliance.northbound.face import FaceContext
from appliance.northbound.opcua import OpcUaFace
from appliance.northbound.opcua.alarms import (
    SEVERITY_COMM,
    SEVERITY_HIGH,
    SEVERITY_SAFETY,
    AlarmTracker,
    alarm_specs,
)
from appliance.northbound.opcua.uatypes import ObjectIds, node_id
from appliance.points.table import PointTable
from appliance.runtime.site_table import site_point_table
from appliance.store import Quality, Sample, Value

ON_SERVER_LOOP = pytest.mark.asyncio(loop_scope="module")

T0 = 1_795_000_000.0
PASSWORD = "operator-demo"  # noqa: S105 - the simulated site's demo operator


@pytest_asyncio.fixture(loop_scope="module")
async def fail_on_leaked_tasks() -> AsyncIterator[None]:
    """tests/conftest.py's guard, on this module's event loop (the server's)."""
    before = asyncio.all_tasks()
    yield
    current = asyncio.current_task()
    leaked = [t for t in asyncio.all_tasks() - before if t is not current and not t.done()]
    for _ in range(50):  # asyncua ends a connection's tasks shortly after its socket
        if not leaked:
            break
        await asyncio.sleep(0.01)
        leaked = [t for t in leaked if not t.done()]
    for task in leaked:
        task.cancel()
    assert leaked == [], f"leaked tasks: {[t.get_name() for t in leaked]}"


def sample(value: Value | None, at: float = T0, quality: Quality = Quality.GOOD) -> Sample:
    return Sample(value, at, quality, 0.0)


# --------------------------------------------------------------------------- pure


@pytest.fixture(scope="module")
def table() -> PointTable:
    return site_point_table(simulated_site_config())


def test_specs_cover_the_alarms_and_every_device_link(table: PointTable) -> None:
    specs = {s.point_id: s for s in alarm_specs(table)}
    comm = {p.id for p in table if p.id.endswith(".comm_ok")}
    flags = {p.id for p in table if p.id.endswith(".alarm_flags")}
    site_alarms = {
        "alarms.meter_lost",
        "alarms.battery_floor",
        "alarms.heartbeat_lost",
        "alarms.off_grid",
    }
    assert set(specs) == site_alarms | comm | flags
    assert {"grid.comm_ok", "pv.comm_ok", "battery.2.comm_ok", "inverter.1.comm_ok"} <= comm
    assert specs["alarms.meter_lost"].source == "Site.GridMeter"
    assert specs["alarms.battery_floor"].severity == SEVERITY_SAFETY
    assert specs["battery.2.alarm_flags"].source == "Site.Battery2"
    assert specs["inverter.1.comm_ok"].severity == SEVERITY_COMM


def test_tracker_raises_clears_and_ignores_missing_values(table: PointTable) -> None:
    tracker = AlarmTracker(alarm_specs(table))
    assert tracker.update({"grid.comm_ok": sample(True)}) == []  # first seen, normal
    (lost,) = tracker.update({"grid.comm_ok": sample(False, T0 + 1)})
    assert (lost.active, lost.timestamp) == (True, T0 + 1)
    assert tracker.update({"grid.comm_ok": sample(False, T0 + 2)}) == []  # no change
    assert tracker.update({"grid.comm_ok": sample(None, T0 + 3, Quality.BAD)}) == []
    (back,) = tracker.update({"grid.comm_ok": sample(True, T0 + 4)})
    assert back.active is False
    assert tracker.update({"battery.1.soc": sample(50.0)}) == []  # not an alarm


def test_tracker_raises_an_alarm_already_active_and_updates_changed_flags(
    table: PointTable,
) -> None:
    tracker = AlarmTracker(alarm_specs(table))
    (first,) = tracker.update({"battery.1.alarm_flags": sample(0x4)})
    assert first.active is True
    (more,) = tracker.update({"battery.1.alarm_flags": sample(0x6)})
    assert (more.active, more.value) == (True, 0x6)
    assert more.spec.message(True, 0x6) == "BMS protection flags: 0x00000006"
    (cleared,) = tracker.update({"battery.1.alarm_flags": sample(0)})
    assert cleared.active is False
    assert list(tracker.active()) == []


# --------------------------------------------------------------------------- over the wire


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def site_config(data_dir: Path) -> SiteConfig:
    config = simulated_site_config()
    opcua = dataclasses.replace(
        config.faces.opcua, bind="127.0.0.1", port=free_port(), security_policies=("NoSecurity",)
    )
    faces = dataclasses.replace(config.faces, opcua=opcua)
    return dataclasses.replace(config, data_dir=data_dir, faces=faces)


async def refuse(
    source: str, command: str, point_id: str | None, value: Value | None, user: str | None = None
) -> CommandResult:
    request = CommandRequest(1, source, command, point_id, value, user)
    return CommandResult.reject(request, RejectCode.UNAVAILABLE, "no core in this test")


@dataclass
class Site:
    face: OpcUaFace
    config: SiteConfig
    mirror: dict[str, Sample]

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.config.faces.opcua.port}/"

    def nid(self, path: str) -> ua.NodeId:
        return node_id(path, self.face.namespace_index)

    async def publish(self, samples: dict[str, Sample]) -> None:
        self.mirror.update(samples)
        self.face.apply(samples)
        await self.face.drain()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    data_dir = tmp_path_factory.mktemp("opcua-alarms")
    config = site_config(data_dir)
    table = site_point_table(config)
    # Active before the face starts: must be retained for ConditionRefresh from the start.
    mirror = {"alarms.heartbeat_lost": sample(True, T0 - 100)}
    face = OpcUaFace(FaceContext(config, table, mirror, refuse))
    await face.start()
    yield Site(face, config, mirror)
    await face.stop()


class Events:
    """Collects the event notifications of one subscription."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def event_notification(self, event: Any) -> None:
        self.queue.put_nowait(event)

    async def next(self) -> Any:
        return await asyncio.wait_for(self.queue.get(), 5.0)

    def fields(self, event: Any) -> dict[str, Any]:
        values: dict[str, Any] = event.get_event_props_as_fields_dict()
        return {k: v.Value for k, v in values.items()}


@asynccontextmanager
async def alarm_subscription(site: Site) -> AsyncIterator[tuple[Client, Subscription, Events]]:
    client = Client(site.url, timeout=4)
    client.set_user("operator")
    client.set_password(PASSWORD)
    await client.connect()
    try:
        events = Events()
        subscription = await client.create_subscription(100, events)
        await subscription.subscribe_events(
            client.get_node(node_id(ObjectIds.Server)),
            client.get_node(node_id(ObjectIds.OffNormalAlarmType)),
        )
        try:
            yield client, subscription, events
        finally:
            await subscription.delete()
    finally:
        await client.disconnect()


@ON_SERVER_LOOP
@pytest.mark.usefixtures("fail_on_leaked_tasks")
async def test_meter_lost_raises_and_clears_an_event_from_the_server(site: Site) -> None:
    async with alarm_subscription(site) as (_client, _sub, events):
        await site.publish({"alarms.meter_lost": sample(False, T0)})
        await site.publish({"alarms.meter_lost": sample(True, T0 + 1)})
        raised = events.fields(await events.next())
        await site.publish({"alarms.meter_lost": sample(False, T0 + 2)})
        cleared = events.fields(await events.next())
    assert raised["SourceNode"] == site.nid("Site.GridMeter")
    assert raised["SourceName"] == "GridMeter"
    assert raised["Severity"] == SEVERITY_COMM
    assert raised["ConditionName"] == "GridMeterLost"
    assert raised["Retain"] is True
    assert raised["ActiveState/Id"] is True
    assert raised["Message"].Text == "Grid meter lost"
    assert raised["Time"].timestamp() == T0 + 1
    assert cleared["SourceNode"] == site.nid("Site.GridMeter")
    assert cleared["Retain"] is False
    assert cleared["ActiveState/Id"] is False
    assert cleared["Severity"] == SEVERITY_COMM


@ON_SERVER_LOOP
@pytest.mark.usefixtures("fail_on_leaked_tasks")
async def test_device_link_and_bms_flags_name_their_component(site: Site) -> None:
    async with alarm_subscription(site) as (_client, _sub, events):
        await site.publish({"battery.2.comm_ok": sample(True), "battery.2.alarm_flags": sample(0)})
        await site.publish({"battery.2.comm_ok": sample(False, T0 + 5)})
        lost = events.fields(await events.next())
        await site.publish({"battery.2.alarm_flags": sample(0x10, T0 + 6)})
        flags = events.fields(await events.next())
        await site.publish(
            {"battery.2.comm_ok": sample(True, T0 + 7), "battery.2.alarm_flags": sample(0, T0 + 7)}
        )
        restored = [events.fields(await events.next()) for _ in range(2)]
    assert lost["SourceNode"] == site.nid("Site.Battery2")
    assert lost["ConditionName"] == "CommunicationLost"
    assert lost["Message"].Text == "BMS communication lost"
    assert flags["SourceNode"] == site.nid("Site.Battery2")
    assert flags["Severity"] == SEVERITY_HIGH
    assert flags["Message"].Text == "BMS protection flags: 0x00000010"
    assert {e["ConditionName"] for e in restored} == {"CommunicationLost", "ProtectionAlarm"}
    assert all(e["Retain"] is False for e in restored)


@ON_SERVER_LOOP
@pytest.mark.usefixtures("fail_on_leaked_tasks")
async def test_condition_refresh_replays_the_active_alarms(site: Site) -> None:
    await site.publish({"alarms.off_grid": sample(True, T0 + 10)})
    async with alarm_subscription(site) as (client, subscription, events):
        await client.get_node(node_id(ObjectIds.ConditionType)).call_method(
            node_id(ObjectIds.ConditionType_ConditionRefresh),
            ua.Variant(subscription.subscription_id, ua.VariantType.UInt32),
        )
        # RefreshStart / RefreshEnd do not pass the OffNormalAlarmType filter; a third
        # retained condition would show up below in place of the clear event.
        replayed = [events.fields(await events.next()) for _ in range(2)]
        await site.publish({"alarms.off_grid": sample(False, T0 + 11)})
        cleared = events.fields(await events.next())
    names = {e["ConditionName"]: e for e in replayed}
    # heartbeat_lost was active before the face started; off_grid was raised before connecting.
    assert set(names) == {"HeartbeatLost", "OffGrid"}
    assert names["HeartbeatLost"]["SourceNode"] == site.nid("Site.Heartbeat")
    assert names["OffGrid"]["Severity"] == SEVERITY_HIGH
    assert all(e["Retain"] is True for e in replayed)
    assert cleared["ConditionName"] == "OffGrid"
    assert cleared["Retain"] is False
    assert site.face.alarms is not None
    assert set(site.face.alarms.tracker.active()) == {"alarms.heartbeat_lost"}
