"""Faults as a plant SCADA sees them: an asyncua client against `appliance run` (subprocess).

The test process owns the simulated site (fixture `owned_site`), so it can stop the grid
meter simulator answering; the appliance runs as a person runs it, without --simulate, and
serves OPC UA on a free loopback port.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.uaerrors import UaStatusCodeError

from appliance.northbound.opcua.uatypes import ObjectIds, StatusCodes, node_id
from appliance.simulation.devices.sdm630_sim import Sdm630Simulator
from tests.reliability.conftest import OwnedSite, finish, start, wait_until, write_config

pytestmark = pytest.mark.slow

NAMESPACE = "urn:appliance:simulated"
MAXSELF, STOP = 2, 0


@asynccontextmanager
async def operator(owned: OwnedSite) -> AsyncIterator[tuple[Client, int]]:
    """An operator session, once the appliance's OPC UA face is up (it starts after the core)."""
    url = f"opc.tcp://127.0.0.1:{owned.ports[4840]}/"
    deadline = time.monotonic() + 40
    while True:
        client = Client(url, timeout=4)
        client.set_user("operator")
        client.set_password("operator-demo")
        try:
            await client.connect()
            break
        except (OSError, TimeoutError, UaStatusCodeError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
    try:
        yield client, await client.get_namespace_index(NAMESPACE)
    finally:
        await client.disconnect()


class Changes:
    """Status codes of one monitored item, in the order they arrive."""

    def __init__(self) -> None:
        self.codes: list[int] = []

    def datachange_notification(self, node: object, val: object, data: Any) -> None:
        code = data.monitored_item.Value.StatusCode.value
        if not self.codes or self.codes[-1] != code:
            self.codes.append(code)


class Events:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []

    def event_notification(self, event: Any) -> None:
        fields = event.get_event_props_as_fields_dict()
        self.received.append({name: variant.Value for name, variant in fields.items()})


def grid_meter(owned: OwnedSite) -> Sdm630Simulator:
    return next(s for s in owned.site.simulators if s.name == "sim.grid_meter")


async def test_a_stopped_grid_meter_reads_uncertain_then_bad_and_good_again(
    owned_site: OwnedSite, tmp_path: Path
) -> None:
    process = start(write_config(tmp_path, owned_site.ports, "stop", "site.yaml"), tmp_path)
    try:
        async with operator(owned_site) as (client, ns):
            power = client.get_node(f"ns={ns};s=Site.GridMeter.AcActivePowerTotal")
            changes = Changes()
            subscription = await client.create_subscription(100, changes)
            await subscription.subscribe_data_change(power)
            good = StatusCodes.Good
            await wait_until(lambda: changes.codes[-1:] == [good], 30)
            grid_meter(owned_site).faults.silent = True
            await wait_until(lambda: StatusCodes.BadCommunicationError in changes.codes, 15)
            grid_meter(owned_site).faults.silent = False
            await wait_until(lambda: changes.codes[-1] == good, 15)
            await subscription.delete()
    finally:
        code, err = await finish(process, signal.SIGTERM)
    assert code == 0, err
    # Good while the last reading is within its 2 s staleness limit, then Uncertain
    # (last usable value), then Bad once the poller declares the meter down; Good again.
    assert changes.codes[-4:] == [
        StatusCodes.Good,
        StatusCodes.UncertainLastUsableValue,
        StatusCodes.BadCommunicationError,
        StatusCodes.Good,
    ]


@pytest.fixture
def short_heartbeat(owned_site: OwnedSite, tmp_path: Path) -> Path:
    path = write_config(tmp_path, owned_site.ports, "stop", "site.yaml")
    text = path.read_text().replace(
        "  initial_mode: stop", "  initial_mode: stop\n  heartbeat_timeout_s: 3"
    )
    path.write_text(text)
    return path


async def test_the_heartbeat_method_keeps_maxself_and_its_loss_stops_the_site_with_an_alarm(
    owned_site: OwnedSite, short_heartbeat: Path, tmp_path: Path
) -> None:
    process = start(short_heartbeat, tmp_path)
    try:
        async with operator(owned_site) as (client, ns):
            commands = client.get_node(f"ns={ns};s=Site.Commands")
            state = client.get_node(f"ns={ns};s=Site.Controller.State")
            lost = client.get_node(f"ns={ns};s=Site.Alarms.HeartbeatLost")
            events = Events()
            subscription = await client.create_subscription(100, events)
            await subscription.subscribe_events(
                client.get_node(node_id(ObjectIds.Server)),
                client.get_node(node_id(ObjectIds.OffNormalAlarmType)),
            )
            counter = 0

            async def beat() -> list[Any]:
                nonlocal counter
                counter += 1
                result: list[Any] = await commands.call_method(
                    f"{ns}:Heartbeat", ua.Variant(counter, ua.VariantType.UInt16)
                )
                return result

            for _ in range(100):  # maxself is refused until the first BMS frames are in
                await beat()
                try:
                    await commands.call_method(
                        f"{ns}:SetMode", ua.Variant(MAXSELF, ua.VariantType.UInt32)
                    )
                    break
                except UaStatusCodeError:
                    await asyncio.sleep(0.2)
            alive, timeout_s = await beat()
            assert timeout_s == 3.0
            assert isinstance(alive, int)
            for _ in range(10):  # 5 s of heartbeats, longer than the 3 s timeout
                await beat()
                await asyncio.sleep(0.5)
            assert await state.read_value() == MAXSELF
            assert await lost.read_value() is False
            # The heartbeats stop: within the timeout plus a cycle and the feed, stop.
            try:
                stopped_after = await wait_until(
                    lambda: any(e.get("ConditionName") == "HeartbeatLost" for e in events.received),
                    8,
                )
            except AssertionError:
                raise AssertionError(
                    f"no HeartbeatLost event; state {await state.read_value()}, "
                    f"lost {await lost.read_value()}, events {events.received}"
                ) from None
            for _ in range(20):  # the state and the alarm come from the same cycle
                if await state.read_value() == STOP:
                    break
                await asyncio.sleep(0.1)
            assert await state.read_value() == STOP
            assert await lost.read_value() is True
            await subscription.delete()
    finally:
        code, err = await finish(process, signal.SIGTERM)
    assert code == 0, err
    assert stopped_after < 3 + 2.5
    raised = next(e for e in events.received if e.get("ConditionName") == "HeartbeatLost")
    assert raised["ActiveState/Id"] is True
    assert raised["Retain"] is True
