"""The OPC UA face over the wire: the real asyncua client against the face on 127.0.0.1.

One face serves the whole module (a start costs about 1.3 s): the simulated site's
configuration with an ephemeral port, a temporary data directory and every SignAndEncrypt
policy besides NoSecurity. The "core" behind `submit` is a stand-in that runs the real
command validation (`validate_command`) on the site's table and records each request; a
test can make it refuse with a given code, for the refusals that depend on the core's state.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.crypto import cert_gen, security_policies
from asyncua.ua.uaerrors import UaStatusCodeError
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

import appliance
from appliance.config import SiteConfig, simulated_site_config
from appliance.control.command_types import CommandRequest, CommandResult, RejectCode
from appliance.control.commands import validate_command
from appliance.northbound.face import FaceContext
from appliance.northbound.opcua import OpcUaFace
from appliance.northbound.opcua.face import SERVER_PROFILES
from appliance.northbound.opcua.model import variable_kind
from appliance.northbound.opcua.uatypes import AttributeIds, ObjectIds, StatusCodes, node_id, status
from appliance.northbound.opcua.units import unit_for
from appliance.points.table import PointTable
from appliance.runtime.site_table import site_point_table
from appliance.store import Quality, Sample, Value

pytestmark = pytest.mark.asyncio(loop_scope="module")

PASSWORDS = {"viewer": "viewer-demo", "operator": "operator-demo", "admin": "admin-demo"}
SIGN_AND_ENCRYPT: dict[str, Any] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128Sha256RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256Sha256RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
T0 = 1_795_000_000.0


@pytest_asyncio.fixture(autouse=True, loop_scope="module")
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


# --------------------------------------------------------------------------- harness


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def site_config(data_dir: Path, *, anonymous: bool = False) -> SiteConfig:
    config = simulated_site_config()
    opcua = dataclasses.replace(
        config.faces.opcua,
        bind="127.0.0.1",
        port=free_port(),
        allow_anonymous=anonymous,
        security_policies=(
            "NoSecurity",
            "Basic256Sha256_SignAndEncrypt",
            "Aes128Sha256RsaOaep_SignAndEncrypt",
            "Aes256Sha256RsaPss_SignAndEncrypt",
        ),
    )
    faces = dataclasses.replace(config.faces, opcua=opcua)
    return dataclasses.replace(config, data_dir=data_dir, faces=faces)


@dataclass
class StandInCore:
    """Validates like the core (the real `validate_command`) and records every request."""

    table: PointTable
    requests: list[CommandRequest] = field(default_factory=list)
    refuse_with: RejectCode | None = None

    async def __call__(
        self,
        source: str,
        command: str,
        point_id: str | None,
        value: Value | None,
        user: str | None = None,
    ) -> CommandResult:
        request = CommandRequest(len(self.requests) + 1, source, command, point_id, value, user)
        self.requests.append(request)
        if self.refuse_with is not None:
            return CommandResult.reject(request, self.refuse_with, "refused by the test")
        return validate_command(self.table, request)


@dataclass
class Site:
    face: OpcUaFace
    config: SiteConfig
    table: PointTable
    mirror: dict[str, Sample]
    core: StandInCore

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.config.faces.opcua.port}/"

    @property
    def ns(self) -> int:
        return self.face.namespace_index

    def node(self, client: Client, path: str) -> Node:
        return client.get_node(node_id(path, self.ns))

    async def publish(self, samples: dict[str, Sample]) -> None:
        self.mirror.update(samples)
        self.face.apply(samples)
        await self.face.drain()


async def start_site(data_dir: Path, *, anonymous: bool = False) -> Site:
    config = site_config(data_dir, anonymous=anonymous)
    table = site_point_table(config)
    mirror: dict[str, Sample] = {}
    core = StandInCore(table)
    face = OpcUaFace(FaceContext(config, table, mirror, core))
    await face.start()
    return Site(face, config, table, mirror, core)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    started = await start_site(tmp_path_factory.mktemp("opcua-site"))
    yield started
    await started.face.stop()


@pytest.fixture(autouse=True)
def reset_core(site: Site) -> None:
    site.core.requests.clear()
    site.core.refuse_with = None


@asynccontextmanager
async def connect(
    site: Site,
    user: str | None = "operator",
    password: str | None = None,
    *,
    policy: str | None = None,
    cert: ClientCert | None = None,
) -> AsyncIterator[Client]:
    client = Client(site.url, timeout=4)
    if user is not None:
        client.set_user(user)
        client.set_password(password if password is not None else PASSWORDS[user])
    if policy is not None and cert is not None:
        client.application_uri = cert.uri
        await client.set_security(
            SIGN_AND_ENCRYPT[policy],
            str(cert.cert_path),
            str(cert.key_path),
            server_certificate=str(site.face.pki.certificate),
            mode=ua.MessageSecurityMode.SignAndEncrypt,
        )
    await client.connect()
    try:
        yield client
    finally:
        await client.disconnect()


def sample(value: Value | None, quality: Quality = Quality.GOOD, at: float = T0) -> Sample:
    return Sample(value, at, quality, 0.0)


async def write(client: Client, nodes: list[Node], values: list[ua.Variant]) -> list[int]:
    """One Write request with several items; the per-item status codes."""
    params = ua.WriteParameters()
    for node, variant in zip(nodes, values, strict=True):
        item = ua.WriteValue()
        item.NodeId = node.nodeid
        item.AttributeId = AttributeIds.Value
        item.Value = ua.DataValue(variant)
        params.NodesToWrite.append(item)
    results = await client.uaclient.write(params)
    return [r.value for r in results]


async def call(site: Site, client: Client, method: str, *args: ua.Variant) -> ua.CallMethodResult:
    request = ua.CallMethodRequest()
    request.ObjectId = node_id("Site.Commands", site.ns)
    request.MethodId = node_id(f"Site.Commands.{method}", site.ns)
    request.InputArguments = list(args)
    results: list[ua.CallMethodResult] = await client.uaclient.call([request])
    return results[0]


def code_of(error: BaseException) -> int:
    assert isinstance(error, UaStatusCodeError)
    code: int = error.code
    return code


# --------------------------------------------------------------------------- model


async def test_namespace_index_comes_from_the_namespace_array(site: Site) -> None:
    async with connect(site, "viewer") as client:
        index = await client.get_namespace_index(site.config.faces.opcua.namespace_uri)
    assert index == site.ns
    assert site.config.faces.opcua.namespace_uri == "urn:appliance:simulated"


async def test_browse_finds_every_point_with_type_units_and_range(site: Site) -> None:
    async with connect(site, "viewer") as client:
        found = await browse_variables(client, site.node(client, "Site"))
        assert set(found) == {node_id(p.opcua_node_id, site.ns) for p in site.table}
        points = list(site.table)
        nodes = [site.node(client, p.opcua_node_id) for p in points]
        types = [await n.read_type_definition() for n in nodes]
        data_types = await client.read_attributes(nodes, AttributeIds.DataType)
        descriptions = await client.read_attributes(nodes, AttributeIds.Description)
        for point, type_id, data_type, description in zip(
            points, types, data_types, descriptions, strict=True
        ):
            kind = variable_kind(point)
            assert type_id == node_id(kind.type_definition), point.id
            assert data_type.Value is not None
            assert description.Value is not None
            assert data_type.Value.Value == node_id(kind.data_type), point.id
            assert description.Value.Value.Text == point.description, point.id
        for point in points:
            if point.range is not None and not point.states:
                eu_range = await site.node(client, f"{point.opcua_node_id}.EURange").read_value()
                assert (eu_range.Low, eu_range.High) == point.range, point.id
            unit = unit_for(point.unit) if point.type.value != "timestamp" else None
            if unit is not None:
                eu = await site.node(client, f"{point.opcua_node_id}.EngineeringUnits").read_value()
                assert (eu.UnitId, eu.DisplayName.Text) == (unit.unit_id, unit.symbol), point.id


async def browse_variables(client: Client, root: Node) -> list[ua.NodeId]:
    """Every point variable below `root` (HasComponent), as a SCADA tag browser walks it."""
    found: list[ua.NodeId] = []
    pending = [root]
    while pending:
        node = pending.pop()
        for child in await node.get_children(refs=ObjectIds.HasComponent):
            node_class = await child.read_node_class()
            if node_class == ua.NodeClass.Object:
                pending.append(child)
            elif node_class == ua.NodeClass.Variable:
                found.append(child.nodeid)
    return found


async def test_block_objects_are_typed_and_types_declare_their_components(site: Site) -> None:
    async with connect(site, "viewer") as client:
        battery = site.node(client, "Site.Battery2")
        assert await battery.read_type_definition() == node_id("Types.BatteryType", site.ns)
        battery_type = site.node(client, "Types.BatteryType")
        components = await battery_type.get_children(refs=ObjectIds.HasComponent)
        names = [(await c.read_browse_name()).Name for c in components]
        assert names[:3] == ["StateOfCharge", "StateOfHealth", "DcVoltage"]
        rule = await components[0].get_referenced_nodes(ObjectIds.HasModellingRule)
        assert [r.nodeid for r in rule] == [node_id(ObjectIds.ModellingRule_Mandatory)]
        subtype_of = await battery_type.get_referenced_nodes(
            ObjectIds.HasSubtype, ua.BrowseDirection.Inverse
        )
        assert [n.nodeid for n in subtype_of] == [node_id(ObjectIds.BaseObjectType)]


async def test_enum_points_show_their_state_names(site: Site) -> None:
    await site.publish({"controller.state": sample(13)})
    async with connect(site, "viewer") as client:
        state = site.node(client, "Site.Controller.State")
        assert await state.read_value() == 13
        text = await site.node(client, "Site.Controller.State.ValueAsText").read_value()
        assert text.Text == "heartbeat_lost"


# --------------------------------------------------------------------------- values


async def test_quality_gives_the_status_code(site: Site) -> None:
    point = "Site.GridMeter.AcVoltageL1N"
    async with connect(site, "viewer") as client:
        node = site.node(client, point)
        initial = await node.read_data_value(raise_on_bad_status=False)
        assert initial.StatusCode == status(StatusCodes.BadWaitingForInitialData)

        await site.publish({"grid.voltage_l1": sample(231.0)})
        good = await node.read_data_value()
        assert good.Value is not None
        assert good.Value.Value == 231.0
        assert good.StatusCode is not None
        assert good.StatusCode.is_good()
        assert good.SourceTimestamp == datetime.fromtimestamp(T0, UTC)

        await site.publish({"grid.voltage_l1": sample(231.0, Quality.STALE)})
        stale = await node.read_data_value(raise_on_bad_status=False)
        assert stale.StatusCode == status(StatusCodes.UncertainLastUsableValue)
        assert stale.Value is not None
        assert stale.Value.Value == 231.0

        await site.publish({"grid.voltage_l1": sample(231.0, Quality.BAD, T0 + 5)})
        bad = await node.read_data_value(raise_on_bad_status=False)
        assert bad.StatusCode == status(StatusCodes.BadCommunicationError)
        assert bad.Value is not None
        assert bad.Value.Value is None

        await site.publish({"grid.voltage_l1": sample(None, Quality.WAITING, 0.0)})
        waiting = await node.read_data_value(raise_on_bad_status=False)
        assert waiting.StatusCode == status(StatusCodes.BadWaitingForInitialData)


async def test_subscription_receives_value_and_status_changes(site: Site) -> None:
    received: asyncio.Queue[ua.DataValue] = asyncio.Queue()

    class Handler:
        def datachange_notification(self, node: Node, value: Any, data: Any) -> None:
            received.put_nowait(data.monitored_item.Value)

    await site.publish({"grid.frequency": sample(50.0)})
    async with connect(site, "viewer") as client:
        subscription = await client.create_subscription(100, Handler())
        await subscription.subscribe_data_change(site.node(client, "Site.GridMeter.AcFrequency"))
        first = await asyncio.wait_for(received.get(), 3)
        assert first.Value is not None
        assert first.Value.Value == 50.0
        await site.publish({"grid.frequency": sample(50.1, at=T0 + 1)})
        second = await asyncio.wait_for(received.get(), 3)
        assert second.Value is not None
        assert second.Value.Value == 50.1
        await site.publish({"grid.frequency": sample(50.1, Quality.STALE, T0 + 1)})
        third = await asyncio.wait_for(received.get(), 3)
        assert third.StatusCode == status(StatusCodes.UncertainLastUsableValue)
        await subscription.delete()


async def test_an_unchanged_sample_is_not_published_again(site: Site) -> None:
    publisher = site.face._publisher
    assert publisher is not None
    await site.publish({"grid.current_l1": sample(12.0)})
    written = publisher.written
    await site.publish({"grid.current_l1": sample(12.0, at=T0 + 30)})
    assert publisher.written == written


async def test_many_changes_are_published_once_each(site: Site) -> None:
    publisher = site.face._publisher
    assert publisher is not None
    numeric = [p for p in site.table if p.type.value == "float32"]
    before = publisher.written
    for step in (1.0, 2.0):  # two cycles arrive before the writer runs: the newer wins
        site.face.apply({p.id: sample(step, at=T0 + step) for p in numeric})
    await site.face.drain()
    assert publisher.written - before == len(numeric)
    async with connect(site, "viewer") as client:
        assert await site.node(client, "Site.Cluster.StateOfCharge").read_value() == 2.0


async def test_service_level_follows_the_control_data(site: Site) -> None:
    keys = ["grid.active_power", "battery.1.soc", "battery.2.soc"]
    keys += ["inverter.1.active_power", "inverter.2.active_power"]
    async with connect(site, "viewer") as client:
        level = client.get_node(node_id(ObjectIds.Server_ServiceLevel))
        await site.publish({k: sample(10.0) for k in keys})
        assert await level.read_value() == 255
        await site.publish({"battery.2.soc": sample(10.0, Quality.STALE)})
        degraded = await level.read_value()
        assert 100 <= degraded < 200
        await site.publish({"grid.active_power": sample(10.0, Quality.BAD)})
        assert await level.read_value() == 50
        await site.publish({k: sample(11.0) for k in keys})
        assert await level.read_value() == 255


async def test_server_describes_itself_truthfully(site: Site) -> None:
    async with connect(site, "viewer") as client:
        build = await client.get_node(node_id(ObjectIds.Server_ServerStatus_BuildInfo)).read_value()
        assert build.SoftwareVersion == appliance.__version__
        assert build.ProductName == "PV + battery site appliance"
        assert build.BuildDate.year >= 2024
        profiles = client.get_node(node_id(ObjectIds.Server_ServerCapabilities_ServerProfileArray))
        assert await profiles.read_value() == list(SERVER_PROFILES)
        max_sessions = node_id(ObjectIds.Server_ServerCapabilities_MaxSessions)
        assert await client.get_node(max_sessions).read_value() == 16  # the config default
    assert site.face.server is not None
    assert site.face.server.iserver.max_subscriptions == 64  # the config default


async def test_publishing_interval_has_a_floor(site: Site) -> None:
    class Quiet:
        def datachange_notification(self, node: Node, value: Any, data: Any) -> None:
            pass

    async with connect(site, "viewer") as client:
        subscription = await client.create_subscription(5, Quiet())
        assert subscription.parameters.RequestedPublishingInterval >= 100
        await subscription.delete()


# --------------------------------------------------------------------------- commands


async def test_write_to_a_command_point_goes_to_the_core(site: Site) -> None:
    async with connect(site, "operator") as client:
        target = site.node(client, "Site.Controller.GridTargetPower")
        codes = await write(client, [target], [ua.Variant(-2500.0, ua.VariantType.Double)])
    assert codes == [StatusCodes.Good]
    [request] = site.core.requests
    assert (request.command, request.point_id, request.value) == (
        "set_grid_target",
        "controller.grid_target",
        -2500.0,
    )
    assert (request.source, request.user) == ("opcua", "operator")


async def test_write_rejections_come_back_per_item(site: Site) -> None:
    async with connect(site, "operator") as client:
        target = site.node(client, "Site.Controller.GridTargetPower")
        mode = site.node(client, "Site.Controller.Mode")
        measured = site.node(client, "Site.GridMeter.AcActivePowerTotal")
        eu_range = site.node(client, "Site.Controller.GridTargetPower.EURange")
        codes = await write(
            client,
            [target, mode, mode, measured, eu_range, mode],
            [
                ua.Variant(5e9, ua.VariantType.Double),  # outside EURange
                ua.Variant(7, ua.VariantType.UInt32),  # not a state
                ua.Variant(2.0, ua.VariantType.Double),  # wrong data type
                ua.Variant(1.0, ua.VariantType.Double),  # a measurement
                ua.Variant(ua.Range(Low=0, High=1)),  # a property
                ua.Variant(2, ua.VariantType.UInt32),  # fine: applied despite the others
            ],
        )
    assert codes == [
        StatusCodes.BadOutOfRange,
        StatusCodes.BadOutOfRange,
        StatusCodes.BadTypeMismatch,
        StatusCodes.BadNotWritable,
        StatusCodes.BadNotWritable,
        StatusCodes.Good,
    ]
    assert [(r.point_id, r.value) for r in site.core.requests] == [
        ("controller.grid_target", 5e9),
        ("controller.mode", 7),
        ("controller.mode", 2),
    ]


@pytest.mark.parametrize(
    ("refusal", "expected"),
    [
        (RejectCode.INVALID_STATE, StatusCodes.BadInvalidState),
        (RejectCode.UNAVAILABLE, StatusCodes.BadTimeout),
        (RejectCode.ACCESS_DENIED, StatusCodes.BadUserAccessDenied),
        (RejectCode.INVALID_VALUE, StatusCodes.BadInvalidArgument),
    ],
)
async def test_core_refusals_keep_their_specific_code(
    site: Site, refusal: RejectCode, expected: int
) -> None:
    site.core.refuse_with = refusal
    async with connect(site, "operator") as client:
        codes = await write(
            client,
            [site.node(client, "Site.Controller.Mode")],
            [ua.Variant(1, ua.VariantType.UInt32)],
        )
        result = await call(site, client, "SetMode", ua.Variant(1, ua.VariantType.UInt32))
    assert codes == [expected]
    assert result.StatusCode == status(expected)


async def test_methods_are_accepted_in_range_and_rejected_with_the_specific_code(
    site: Site,
) -> None:
    async with connect(site, "operator") as client:
        commands = site.node(client, "Site.Commands")
        await commands.call_method(f"{site.ns}:SetMode", ua.Variant(2, ua.VariantType.UInt32))
        await commands.call_method(f"{site.ns}:SetGridTarget", ua.Variant(1500.0))
        with pytest.raises(UaStatusCodeError) as out_of_range:
            await commands.call_method(f"{site.ns}:SetGridTarget", ua.Variant(5e9))
        with pytest.raises(UaStatusCodeError) as bad_mode:
            await commands.call_method(f"{site.ns}:SetMode", ua.Variant(9, ua.VariantType.UInt32))
        wrong_type = await call(site, client, "SetGridTarget", ua.Variant("fast"))
        missing = await call(site, client, "SetGridTarget")
    assert code_of(out_of_range.value) == StatusCodes.BadOutOfRange
    assert code_of(bad_mode.value) == StatusCodes.BadOutOfRange
    assert wrong_type.StatusCode == status(StatusCodes.BadInvalidArgument)
    assert wrong_type.InputArgumentResults == [status(StatusCodes.BadTypeMismatch)]
    assert missing.StatusCode == status(StatusCodes.BadArgumentsMissing)
    assert [(r.command, r.value) for r in site.core.requests] == [
        ("set_mode", 2),
        ("set_grid_target", 1500.0),
        ("set_grid_target", 5e9),
        ("set_mode", 9),
    ]


async def test_heartbeat_returns_the_alive_counter_and_the_timeout(site: Site) -> None:
    await site.publish({"appliance.alive_counter": sample(4711), "heartbeat.timeout": sample(30.0)})
    async with connect(site, "operator") as client:
        commands = site.node(client, "Site.Commands")
        outputs = await commands.call_method(
            f"{site.ns}:Heartbeat", ua.Variant(17, ua.VariantType.UInt16)
        )
    assert outputs == [4711, 30.0]
    [request] = site.core.requests
    assert (request.command, request.point_id, request.value) == (
        "heartbeat",
        "heartbeat.counter",
        17,
    )


async def test_reset_alarms_and_templated_commands(site: Site) -> None:
    async with connect(site, "admin") as client:
        reset = await call(site, client, "ResetAlarms")
        load = await call(
            site,
            client,
            "SetSurplusLoad",
            ua.Variant(1, ua.VariantType.UInt32),
            ua.Variant(2, ua.VariantType.UInt32),
        )
        no_such_load = await call(
            site,
            client,
            "SetSurplusLoad",
            ua.Variant(9, ua.VariantType.UInt32),
            ua.Variant(1, ua.VariantType.UInt32),
        )
    assert reset.StatusCode.is_good()
    assert load.StatusCode.is_good()
    assert no_such_load.StatusCode == status(StatusCodes.BadInvalidArgument)
    assert no_such_load.InputArgumentResults[0] == status(StatusCodes.BadOutOfRange)
    assert [(r.command, r.point_id, r.value, r.user) for r in site.core.requests] == [
        ("reset_alarms", "alarms.reset", True, "admin"),
        ("set_surplus_load", "surplus.1.mode", 2, "admin"),
    ]


async def test_viewer_can_read_but_not_write_or_call(site: Site) -> None:
    await site.publish({"controller.grid_target": sample(0.0)})
    async with connect(site, "viewer") as client:
        target = site.node(client, "Site.Controller.GridTargetPower")
        assert await target.read_value() == 0.0
        codes = await write(client, [target], [ua.Variant(100.0, ua.VariantType.Double)])
        result = await call(site, client, "SetMode", ua.Variant(1, ua.VariantType.UInt32))
    assert codes == [StatusCodes.BadUserAccessDenied]
    assert result.StatusCode == status(StatusCodes.BadUserAccessDenied)
    assert site.core.requests == []


# --------------------------------------------------------------------------- users


async def test_anonymous_is_refused_by_default(site: Site) -> None:
    with pytest.raises(UaStatusCodeError) as refused:
        async with connect(site, None):
            pass
    assert code_of(refused.value) in (
        StatusCodes.BadIdentityTokenRejected,
        StatusCodes.BadIdentityTokenInvalid,
    )


@pytest.mark.parametrize("user", ["operator", "admin"])
async def test_a_wrong_password_is_refused(site: Site, user: str) -> None:
    # "admin" matters: asyncua's default user manager lets it in with any password.
    with pytest.raises(UaStatusCodeError) as refused:
        async with connect(site, user, "not-the-password"):
            pass
    assert code_of(refused.value) == StatusCodes.BadUserAccessDenied


async def test_an_unknown_user_is_refused(site: Site) -> None:
    with pytest.raises(UaStatusCodeError) as refused:
        async with connect(site, "root", "admin-demo"):
            pass
    assert code_of(refused.value) == StatusCodes.BadUserAccessDenied


async def test_address_space_cannot_be_changed_by_any_user(site: Site) -> None:
    async with connect(site, "admin") as client:
        with pytest.raises(UaStatusCodeError) as refused:
            await site.node(client, "Site").add_object(site.ns, "Intruder")
        codes = await write_attribute(
            client, site.node(client, "Site.GridMeter"), AttributeIds.DisplayName
        )
    assert code_of(refused.value) == StatusCodes.BadUserAccessDenied
    assert codes == [StatusCodes.BadNotWritable]


async def write_attribute(client: Client, node: Node, attribute: int) -> list[int]:
    params = ua.WriteParameters()
    item = ua.WriteValue()
    item.NodeId = node.nodeid
    item.AttributeId = attribute
    item.Value = ua.DataValue(ua.Variant(ua.LocalizedText("Hacked")))
    params.NodesToWrite.append(item)
    return [r.value for r in await client.uaclient.write(params)]


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class ClientCert:
    uri: str
    cert_path: Path
    key_path: Path

    @property
    def der(self) -> bytes:
        return self.cert_path.read_bytes()


def make_client_cert(folder: Path, name: str) -> ClientCert:
    folder.mkdir(parents=True, exist_ok=True)
    uri = f"urn:test:{name}"
    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        name,
        {},
        [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost")],
        [ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    cert_path, key_path = folder / f"{name}.der", folder / f"{name}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    return ClientCert(uri, cert_path, key_path)


@pytest.fixture(scope="module")
def trusted_client(site: Site, tmp_path_factory: pytest.TempPathFactory) -> ClientCert:
    cert = make_client_cert(tmp_path_factory.mktemp("client"), "scada")
    shutil.copy(cert.cert_path, site.face.pki.trusted / "scada.der")
    return cert


@pytest.mark.parametrize("policy", list(SIGN_AND_ENCRYPT))
async def test_sign_and_encrypt_works_with_each_policy(
    site: Site, trusted_client: ClientCert, policy: str
) -> None:
    await site.publish({"cluster.soc": sample(55.5)})
    async with connect(site, "operator", policy=policy, cert=trusted_client) as client:
        assert client.security_policy.URI == SIGN_AND_ENCRYPT[policy].URI
        assert await site.node(client, "Site.Cluster.StateOfCharge").read_value() == 55.5
        codes = await write(
            client,
            [site.node(client, "Site.Controller.ReserveStateOfCharge")],
            [ua.Variant(20.0, ua.VariantType.Double)],
        )
    assert codes == [StatusCodes.Good]


async def test_untrusted_certificate_is_rejected_stored_and_then_trustable(
    site: Site, tmp_path_factory: pytest.TempPathFactory
) -> None:
    stranger = make_client_cert(tmp_path_factory.mktemp("stranger"), "stranger")
    with pytest.raises(UaStatusCodeError) as refused:
        async with connect(site, "operator", policy="Basic256Sha256", cert=stranger):
            pass
    assert code_of(refused.value) == StatusCodes.BadCertificateUntrusted
    rejected = [p for p in site.face.pki.rejected.iterdir() if p.name.startswith("stranger ")]
    assert [p.read_bytes() for p in rejected] == [stranger.der]

    # The administrator's part of the workflow: move it to trusted/, no restart.
    rejected[0].rename(site.face.pki.trusted / rejected[0].name)
    async with connect(site, "viewer", policy="Basic256Sha256", cert=stranger) as client:
        assert await client.get_namespace_index(site.config.faces.opcua.namespace_uri) == site.ns


async def test_server_certificate_names_the_application_uri(site: Site) -> None:
    cert = x509.load_der_x509_certificate(site.face.pki.certificate.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert site.face.application_uri in san.get_values_for_type(x509.UniformResourceIdentifier)
    assert "127.0.0.1" in [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    assert cert.not_valid_after_utc.year - datetime.now(UTC).year >= 9
    key_mode = site.face.pki.private_key.stat().st_mode & 0o777
    assert key_mode == 0o600


# --------------------------------------------------------------------------- restart


async def test_node_ids_and_certificate_survive_a_restart(tmp_path: Path) -> None:
    """A restart with the same configuration (anonymous enabled here: read-only)."""
    first = await start_site(tmp_path, anonymous=True)
    try:
        async with connect(first, None) as client:
            before = sorted(map(str, await browse_variables(client, first.node(client, "Site"))))
            codes = await write(
                client,
                [first.node(client, "Site.Controller.Mode")],
                [ua.Variant(1, ua.VariantType.UInt32)],
            )
        thumbprint = first.face.pki.certificate.read_bytes()
    finally:
        await first.face.stop()
    assert codes == [StatusCodes.BadUserAccessDenied]
    assert first.core.requests == []

    started = time.monotonic()
    second = await start_site(tmp_path, anonymous=True)
    try:
        async with connect(second, None) as client:
            after = sorted(map(str, await browse_variables(client, second.node(client, "Site"))))
    finally:
        await second.face.stop()
    assert after == before
    assert len(before) == len(second.table)
    assert second.face.pki.certificate.read_bytes() == thumbprint
    assert time.monotonic() - started < 10


async def test_start_fails_loudly_when_the_port_is_taken(site: Site, tmp_path: Path) -> None:
    config = dataclasses.replace(site.config, data_dir=tmp_path)
    face = OpcUaFace(FaceContext(config, site.table, {}, site.core))
    with pytest.raises(OSError, match="address already in use"):
        await face.start()
    assert face.server is None
    await face.stop()  # harmless after a failed start
