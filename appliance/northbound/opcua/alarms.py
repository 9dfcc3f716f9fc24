"""Alarm events: OffNormalAlarmType conditions emitted from the Server object.

asyncua has no condition instances and no Acknowledge / Confirm / Shelve (FreeOpcUa/
opcua-asyncio #712), and it delivers an event only to monitored items on the node that
emits it (no HasNotifier propagation). What it has, and what this module uses:

* condition-type *events* from the Server object (i=2253), with SourceNode / SourceName the
  component's object (Site.GridMeter, Site.Battery2, ...), Severity per alarm, ConditionName,
  ActiveState (+ /Id), Retain true while active, and ConditionId (the event's `NodeId`
  field) the NodeId of the point variable the alarm follows;
* ConditionRefresh / ConditionRefresh2 (`iserver.bind_condition_methods`, set before
  `init()`): asyncua keeps the last event of every condition whose Retain is true and replays
  them between RefreshStart and RefreshEnd, so a client that (re)connects sees the active
  alarms. A clear event (Retain false) drops the condition from that set.

The alarms cannot be acknowledged: AckedState / ConfirmedState are sent as true. The
TwoStateDiscrete variables of Site/Alarms and CommunicationOk / AlarmFlags remain the
authoritative state for clients without A&C support.

`AlarmTracker` is pure (samples in, transitions out); `AlarmEmitter` turns transitions into
events on a task of its own, so `Face.apply` never waits for a subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from asyncua import ua
from asyncua.server.event_generator import EventGenerator
from asyncua.server.internal_server import InternalServer

from appliance.northbound.opcua.model import object_path
from appliance.northbound.opcua.uatypes import ObjectIds, node_id
from appliance.points.model import Point
from appliance.points.table import PointTable
from appliance.store import Sample, Value

log = logging.getLogger(__name__)

#: Severities (OPC 10000-9 §5.5.2: 1 .. 1000, 801-1000 "high", 601-800 "medium high").
SEVERITY_SAFETY = 900
SEVERITY_HIGH = 800
SEVERITY_COMM = 700

#: Alarms block points: component block whose object is the SourceNode, and severity.
_SITE_ALARMS: dict[str, tuple[str, int]] = {
    "alarms.meter_lost": ("grid", SEVERITY_COMM),
    "alarms.battery_floor": ("cluster", SEVERITY_SAFETY),
    "alarms.heartbeat_lost": ("heartbeat", SEVERITY_HIGH),
    "alarms.off_grid": ("grid", SEVERITY_HIGH),
}


class Trigger:
    """When an alarm point counts as active."""

    TRUE = "true"  # a flag that is true in alarm
    FALSE = "false"  # a flag that is false in alarm (communication ok)
    NONZERO = "nonzero"  # a bit field with any bit set


@dataclass(frozen=True, slots=True)
class AlarmSpec:
    point_id: str
    condition_name: str
    source: str  # object node (string id in the appliance namespace)
    source_name: str
    condition: str  # ConditionId: the point variable the alarm follows
    severity: int
    trigger: str
    label: str

    def active(self, value: Value) -> bool:
        if self.trigger == Trigger.TRUE:
            return bool(value)
        if self.trigger == Trigger.FALSE:
            return not bool(value)
        return int(value) != 0

    def message(self, active: bool, value: Value) -> str:
        if self.trigger == Trigger.NONZERO:
            if active:
                return f"{self.label}: 0x{int(value):08X}"
            return f"{self.label}: cleared"
        if self.trigger == Trigger.FALSE:
            return f"{self.label} lost" if active else f"{self.label} restored"
        return self.label if active else f"{self.label}: cleared"


def alarm_specs(table: PointTable) -> list[AlarmSpec]:
    """The alarms of a site: the Alarms block flags, every `*.comm_ok`, every BMS
    `*.alarm_flags`."""
    specs = []
    for point in table:
        leaf = point.id.rsplit(".", 1)[-1]
        if point.id in _SITE_ALARMS:
            block, severity = _SITE_ALARMS[point.id]
            source = _block_object(table, block) or _object(point)
            specs.append(
                _spec(point, leaf_name(point), source, severity, Trigger.TRUE, point.label)
            )
        elif leaf == "comm_ok":
            specs.append(
                _spec(
                    point,
                    "CommunicationLost",
                    _object(point),
                    SEVERITY_COMM,
                    Trigger.FALSE,
                    point.label,
                )
            )
        elif leaf == "alarm_flags":
            specs.append(
                _spec(
                    point,
                    "ProtectionAlarm",
                    _object(point),
                    SEVERITY_HIGH,
                    Trigger.NONZERO,
                    "BMS protection flags",
                )
            )
    return specs


def leaf_name(point: Point) -> str:
    return point.opcua_path.rsplit("/", 1)[1]


def _object(point: Point) -> str:
    return object_path(point).replace("/", ".")


def _block_object(table: PointTable, block: str) -> str | None:
    points = table.in_block(block) if block in table.blocks else []
    return _object(points[0]) if points else None


def _spec(
    point: Point, name: str, source: str, severity: int, trigger: str, label: str
) -> AlarmSpec:
    return AlarmSpec(
        point.id,
        name,
        source,
        source.rsplit(".", 1)[-1],
        point.opcua_node_id,
        severity,
        trigger,
        label,
    )


@dataclass(frozen=True, slots=True)
class Transition:
    spec: AlarmSpec
    active: bool
    value: Value
    timestamp: float  # UTC seconds of the sample (0: unknown)


class AlarmTracker:
    """Turns samples into raise / clear transitions (and updates of an active bit field)."""

    def __init__(self, specs: Iterable[AlarmSpec]) -> None:
        self._specs = {spec.point_id: spec for spec in specs}
        self._last: dict[str, tuple[bool, Value]] = {}

    @property
    def specs(self) -> Mapping[str, AlarmSpec]:
        return self._specs

    def update(self, changes: Mapping[str, Sample]) -> list[Transition]:
        transitions = []
        for point_id, sample in changes.items():
            spec = self._specs.get(point_id)
            if spec is None or sample.value is None:
                continue  # no value (waiting, device lost): the alarm keeps its state
            active = spec.active(sample.value)
            previous = self._last.get(point_id)
            self._last[point_id] = (active, sample.value)
            if previous is None:
                if active:  # already active when first seen: raise it
                    transitions.append(Transition(spec, True, sample.value, sample.timestamp))
                continue
            changed = previous[0] != active
            updated = active and spec.trigger == Trigger.NONZERO and previous[1] != sample.value
            if changed or updated:
                transitions.append(Transition(spec, active, sample.value, sample.timestamp))
        return transitions

    def active(self) -> Iterator[str]:
        return (pid for pid, (active, _) in self._last.items() if active)


class AlarmEmitter:
    """Emits the tracker's transitions as events from the Server object."""

    def __init__(
        self,
        iserver: InternalServer,
        specs: Iterable[AlarmSpec],
        namespace: int,
        clock: Callable[[], datetime],
    ) -> None:
        self._iserver = iserver
        self.tracker = AlarmTracker(specs)
        self._namespace = namespace
        self._clock = clock
        self._generators: dict[str, EventGenerator] = {}
        self._pending: list[Transition] = []
        self._task: asyncio.Task[None] | None = None
        self.emitted = 0
        self.errors = 0

    async def init(self) -> None:
        """One event generator per alarm (each keeps its own retained condition event)."""
        first = True
        for spec in self.tracker.specs.values():
            generator = EventGenerator(self._iserver.isession)
            # GeneratesEvent Server -> OffNormalAlarmType once is enough.
            await generator.init(ObjectIds.OffNormalAlarmType, add_generates_event=first)
            first = False
            event = generator.event
            event.SourceNode = node_id(spec.source, self._namespace)
            event.SourceName = spec.source_name
            event.NodeId = node_id(spec.condition, self._namespace)
            event.InputNode = event.NodeId
            event.ConditionName = spec.condition_name
            event.Severity = spec.severity
            # asyncua keeps the DataType NodeId of UtcTime fields (a DateTime subtype) in
            # place of a VariantType and fails to encode them: give the one we set its own.
            event.data_types["ActiveState/TransitionTime"] = ua.VariantType.DateTime
            event.LastSeverity = spec.severity
            event.EnabledState = ua.LocalizedText("Enabled", "en")
            setattr(event, "EnabledState/Id", True)
            # Not acknowledgeable (asyncua has no Acknowledge): reported as acked/confirmed.
            event.AckedState = ua.LocalizedText("Acknowledged", "en")
            setattr(event, "AckedState/Id", True)
            event.ConfirmedState = ua.LocalizedText("Confirmed", "en")
            setattr(event, "ConfirmedState/Id", True)
            self._generators[spec.point_id] = generator

    def submit(self, changes: Mapping[str, Sample]) -> None:
        """Detect transitions now, emit them on the emitter's task; never blocks."""
        transitions = self.tracker.update(changes)
        if not transitions:
            return
        self._pending.extend(transitions)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="opcua-alarms")

    async def drain(self) -> None:
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._pending.clear()

    async def _run(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            for transition in batch:
                try:
                    await self._emit(transition)
                except Exception:
                    self.errors += 1
                    log.exception("opcua: alarm event for %s failed", transition.spec.point_id)

    async def _emit(self, transition: Transition) -> None:
        spec = transition.spec
        generator = self._generators[spec.point_id]
        event = generator.event
        when = (
            datetime.fromtimestamp(transition.timestamp, UTC)
            if transition.timestamp > 0
            else self._clock()
        )
        state = "Active" if transition.active else "Inactive"
        event.ActiveState = ua.LocalizedText(state, "en")
        setattr(event, "ActiveState/Id", transition.active)
        setattr(event, "ActiveState/TransitionTime", when)
        event.Retain = transition.active
        message = spec.message(transition.active, transition.value)
        await generator.trigger(time_attr=when, message=message)
        self.emitted += 1
        log.info(
            "opcua: alarm %s %s (%s, severity %d)",
            spec.point_id,
            "raised" if transition.active else "cleared",
            message,
            spec.severity,
        )
