"""HistoryRead (raw) over the wire: the asyncua client against the face on 127.0.0.1,
served from a real LocalArchive in a temporary directory."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_asyncio
from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node

from appliance.archive.local import HistorySample, HistoryUnavailable, LocalArchive
from appliance.config import SiteConfig, simulated_site_config
from appliance.control.command_types import CommandRequest, CommandResult, RejectCode
from appliance.northbound.face import FaceContext, HistoryReader
from appliance.northbound.opcua import OpcUaFace
from appliance.northbound.opcua.history import MAX_VALUES_PER_READ
from appliance.northbound.opcua.uatypes import AttributeIds, ObjectIds, StatusCodes, node_id
from appliance.points.table import PointTable
from appliance.runtime.site_table import site_point_table
from appliance.store import Sample, Value

pytestmark = pytest.mark.asyncio(loop_scope="module")

T0 = 1_795_000_000.0
ARCHIVED = "battery.1.soc"
NOT_ARCHIVED = "heartbeat.counter"
SAMPLES = 20  # ARCHIVED holds 50.0, 51.0, ... at T0, T0 + 1 s, ...


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def site_config(data_dir: Path) -> SiteConfig:
    config = simulated_site_config()
    opcua = dataclasses.replace(
        config.faces.opcua,
        bind="127.0.0.1",
        port=free_port(),
        allow_anonymous=True,
        security_policies=("NoSecurity",),
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
    table: PointTable
    archive: LocalArchive | None
    withdrawn: set[str] = dataclasses.field(default_factory=set)

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.config.faces.opcua.port}/"

    def node_of(self, point_id: str) -> ua.NodeId:
        return node_id(self.table[point_id].opcua_node_id, self.face.namespace_index)


def archive_reader(archive: LocalArchive, withdrawn: set[str]) -> HistoryReader:
    """The archive as FaceContext.history; points in `withdrawn` are refused as an
    archive without them would refuse them."""

    async def read(
        point_id: str, start_s: float, end_s: float, limit: int = 0
    ) -> Sequence[HistorySample]:
        if point_id in withdrawn:
            raise HistoryUnavailable(f"{point_id}: not archived locally")
        return archive.read_raw(point_id, start_s, end_s, limit)

    return read


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    data_dir = tmp_path_factory.mktemp("opcua-history")
    config = site_config(data_dir)
    table = site_point_table(config)
    types = {p.id: p.type for p in table if p.archive is not None}
    archive = LocalArchive(data_dir / "archive.sqlite", retention_days=7, point_types=types)
    rows = [(ARCHIVED, round((T0 + i) * 1000), 50.0 + i) for i in range(SAMPLES)]
    assert archive.write(rows) == SAMPLES
    mirror: dict[str, Sample] = {}
    withdrawn: set[str] = set()
    face = OpcUaFace(FaceContext(config, table, mirror, refuse, archive_reader(archive, withdrawn)))
    await face.start()
    yield Site(face, config, table, archive, withdrawn)
    await face.stop()
    archive.close()


@asynccontextmanager
async def connect(site: Site) -> AsyncIterator[Client]:
    client = Client(site.url, timeout=4)
    await client.connect()
    try:
        yield client
    finally:
        await client.disconnect()


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def raw(start: datetime | None, end: datetime | None, count: int = 0) -> ua.ReadRawModifiedDetails:
    details = ua.ReadRawModifiedDetails()
    details.IsReadModified = False
    details.StartTime = start if start is not None else ua.get_win_epoch()
    details.EndTime = end if end is not None else ua.get_win_epoch()
    details.NumValuesPerNode = count
    details.ReturnBounds = False
    return details


async def history_read(
    client: Client,
    details: object,
    nodes: list[ua.NodeId],
    continuation: bytes | None = None,
) -> list[ua.HistoryReadResult]:
    params = ua.HistoryReadParameters()
    params.HistoryReadDetails = details
    params.TimestampsToReturn = ua.TimestampsToReturn.Both
    params.ReleaseContinuationPoints = False
    for nid in nodes:
        item = ua.HistoryReadValueId()
        item.NodeId = nid
        item.ContinuationPoint = continuation
        params.NodesToRead.append(item)
    results: list[ua.HistoryReadResult] = await client.uaclient.history_read(params)
    return results


def payload(dv: ua.DataValue) -> Any:
    assert dv.Value is not None
    return dv.Value.Value


async def attribute(node: Node, attribute_id: int) -> Any:
    return payload(await node.read_attribute(cast(Any, attribute_id)))


def values(result: ua.HistoryReadResult) -> list[float]:
    assert result.HistoryData is not None
    return [payload(dv) for dv in result.HistoryData.DataValues]


# --------------------------------------------------------------------------- tests


async def test_archived_variables_are_historizing_with_the_history_read_bit(site: Site) -> None:
    async with connect(site) as client:
        archived = client.get_node(site.node_of(ARCHIVED))
        plain = client.get_node(site.node_of(NOT_ARCHIVED))
        assert await attribute(archived, AttributeIds.Historizing) is True
        assert await attribute(plain, AttributeIds.Historizing) is False
        access = await attribute(archived, AttributeIds.AccessLevel)
        user_access = await attribute(archived, AttributeIds.UserAccessLevel)
        plain_access = await attribute(plain, AttributeIds.AccessLevel)
    history_bit = ua.AccessLevel.HistoryRead.mask
    assert access & history_bit
    assert user_access & history_bit
    assert access & ua.AccessLevel.CurrentRead.mask  # the current value is still readable
    assert not plain_access & history_bit


async def test_history_read_returns_the_archived_samples(site: Site) -> None:
    async with connect(site) as client:
        node = client.get_node(site.node_of(ARCHIVED))
        history = await node.read_raw_history(at(T0 - 60), at(T0 + 3600))
    assert [payload(dv) for dv in history] == [50.0 + i for i in range(SAMPLES)]
    assert all(dv.Value and dv.Value.VariantType is ua.VariantType.Double for dv in history)
    assert all(dv.StatusCode and dv.StatusCode.is_good() for dv in history)
    assert [dv.SourceTimestamp for dv in history] == [at(T0 + i) for i in range(SAMPLES)]


async def test_time_range_is_start_inclusive_end_exclusive(site: Site) -> None:
    async with connect(site) as client:
        (result,) = await history_read(
            client, raw(at(T0 + 3), at(T0 + 7)), [site.node_of(ARCHIVED)]
        )
        (backwards,) = await history_read(
            client, raw(at(T0 + 7), at(T0 + 3)), [site.node_of(ARCHIVED)]
        )
    assert result.StatusCode.is_good()
    assert values(result) == [53.0, 54.0, 55.0, 56.0]
    assert result.ContinuationPoint is None
    assert values(backwards) == [57.0, 56.0, 55.0, 54.0]  # newest first


async def test_num_values_per_node_pages_with_continuation_points(site: Site) -> None:
    node = site.node_of(ARCHIVED)
    details = raw(at(T0), at(T0 + 3600), count=8)
    pages: list[list[float]] = []
    async with connect(site) as client:
        (result,) = await history_read(client, details, [node])
        pages.append(values(result))
        while result.ContinuationPoint:
            (result,) = await history_read(client, details, [node], result.ContinuationPoint)
            assert result.StatusCode.is_good()
            pages.append(values(result))
    assert [len(page) for page in pages] == [8, 8, 4]
    assert [v for page in pages for v in page] == [50.0 + i for i in range(SAMPLES)]


async def test_open_start_reads_backwards_from_the_end_and_needs_a_count(site: Site) -> None:
    async with connect(site) as client:
        (last,) = await history_read(client, raw(None, at(T0 + 10), 3), [site.node_of(ARCHIVED)])
        (no_count,) = await history_read(client, raw(None, at(T0 + 10)), [site.node_of(ARCHIVED)])
        (first,) = await history_read(client, raw(at(T0), None, 2), [site.node_of(ARCHIVED)])
    assert values(last) == [59.0, 58.0, 57.0]  # EndTime (60.0) stays exclusive
    assert values(first) == [50.0, 51.0]
    assert no_count.StatusCode.value == StatusCodes.BadHistoryOperationInvalid


async def test_not_archived_and_unknown_nodes_fail_per_node(site: Site) -> None:
    nodes = [
        site.node_of(NOT_ARCHIVED),
        site.node_of(ARCHIVED),
        node_id("Site.NoSuchThing", site.face.namespace_index),
    ]
    async with connect(site) as client:
        results = await history_read(client, raw(at(T0), at(T0 + 2)), nodes)
    codes = [r.StatusCode.value for r in results]
    assert codes == [
        StatusCodes.BadHistoryOperationUnsupported,
        StatusCodes.Good,
        StatusCodes.BadNodeIdUnknown,
    ]
    assert values(results[1]) == [50.0, 51.0]


async def test_history_unavailable_from_the_archive_is_unsupported(site: Site) -> None:
    site.withdrawn.add(ARCHIVED)
    try:
        async with connect(site) as client:
            (result,) = await history_read(
                client, raw(at(T0), at(T0 + 2)), [site.node_of(ARCHIVED)]
            )
    finally:
        site.withdrawn.clear()
    assert result.StatusCode.value == StatusCodes.BadHistoryOperationUnsupported


async def test_processed_and_modified_reads_are_unsupported(site: Site) -> None:
    processed = ua.ReadProcessedDetails()
    processed.StartTime, processed.EndTime = at(T0), at(T0 + 10)
    processed.ProcessingInterval = 1000.0
    processed.AggregateType = [node_id(ObjectIds.AggregateFunction_Average)]
    modified = raw(at(T0), at(T0 + 10))
    modified.IsReadModified = True
    async with connect(site) as client:
        (first,) = await history_read(client, processed, [site.node_of(ARCHIVED)])
        (second,) = await history_read(client, modified, [site.node_of(ARCHIVED)])
    assert first.StatusCode.value == StatusCodes.BadHistoryOperationUnsupported
    assert second.StatusCode.value == StatusCodes.BadHistoryOperationUnsupported


async def test_bad_continuation_point_is_refused(site: Site) -> None:
    async with connect(site) as client:
        (result,) = await history_read(
            client, raw(at(T0), at(T0 + 10), 2), [site.node_of(ARCHIVED)], b"junk"
        )
    assert result.StatusCode.value == StatusCodes.BadContinuationPointInvalid
    assert MAX_VALUES_PER_READ >= SAMPLES


async def test_without_history_nothing_historizes(tmp_path: Path) -> None:
    config = site_config(tmp_path)
    table = site_point_table(config)
    face = OpcUaFace(FaceContext(config, table, {}, refuse))
    await face.start()
    try:
        site_ = Site(face, config, table, archive=None)
        async with connect(site_) as client:
            node = client.get_node(site_.node_of(ARCHIVED))
            historizing = await attribute(node, AttributeIds.Historizing)
            access = await attribute(node, AttributeIds.AccessLevel)
            (result,) = await history_read(
                client, raw(at(T0), at(T0 + 10)), [site_.node_of(ARCHIVED)]
            )
    finally:
        await face.stop()
    assert historizing is False
    assert not access & ua.AccessLevel.HistoryRead.mask
    assert face.history is not None
    assert face.history.archived == 0
    assert result.StatusCode.value == StatusCodes.BadHistoryOperationUnsupported
