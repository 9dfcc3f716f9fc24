"""Commands from OPC UA clients: the methods under Site/Commands and writes to command points.

Both paths end in `FaceContext.submit`; the core validates and answers Accepted or Rejected,
and the rejection's code becomes the OPC UA status of that one item or call:

| RejectCode     | StatusCode            |
|----------------|-----------------------|
| OUT_OF_RANGE   | Bad_OutOfRange        |
| INVALID_VALUE  | Bad_InvalidArgument   |
| INVALID_STATE  | Bad_InvalidState      |
| NOT_WRITABLE   | Bad_NotWritable       |
| ACCESS_DENIED  | Bad_UserAccessDenied  |
| UNAVAILABLE    | Bad_Timeout           |

Checked here, before the core is asked: the caller's role (viewer and anonymous sessions get
Bad_UserAccessDenied), the value's data type (Bad_TypeMismatch; an integer is accepted for an
integer or Double variable, a Double only for a Double, a Boolean only for a Boolean), the
attribute (only Value, only of command points: anything else is Bad_NotWritable).

asyncua would turn an exception in a method into Bad_UnexpectedError and one in a write
setter into a ServiceFault for the whole request (shared/reference/opcua.md §7), so nothing
here raises: the Write service is replaced by `GuardedAttributeService`, which answers per
item, and the methods return status codes. Accepted commands are a write of the value into
the core, not into the address space: the variable shows the new value once the core has
applied it and published it back.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from asyncua import ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.address_space import AddressSpace, AttributeService

from appliance.control.command_types import CommandResult, RejectCode
from appliance.northbound.face import CommandSubmitter
from appliance.northbound.opcua.model import CommandMethod, InformationModel, variable_kind
from appliance.northbound.opcua.security import CURRENT_USER, may_command, user_label
from appliance.northbound.opcua.uatypes import AttributeIds, ObjectIds, StatusCodes, node_id, status
from appliance.points.model import Point
from appliance.points.table import PointTable
from appliance.store import Sample, Value

log = logging.getLogger(__name__)

SOURCE = "opcua"

REJECT_STATUS: dict[RejectCode, int] = {
    RejectCode.OUT_OF_RANGE: StatusCodes.BadOutOfRange,
    RejectCode.INVALID_VALUE: StatusCodes.BadInvalidArgument,
    RejectCode.INVALID_STATE: StatusCodes.BadInvalidState,
    RejectCode.NOT_WRITABLE: StatusCodes.BadNotWritable,
    RejectCode.ACCESS_DENIED: StatusCodes.BadUserAccessDenied,
    RejectCode.UNAVAILABLE: StatusCodes.BadTimeout,
}

_INTEGER_VARIANTS = frozenset(
    {
        ua.VariantType.SByte,
        ua.VariantType.Byte,
        ua.VariantType.Int16,
        ua.VariantType.UInt16,
        ua.VariantType.Int32,
        ua.VariantType.UInt32,
        ua.VariantType.Int64,
        ua.VariantType.UInt64,
    }
)
_VARIANT_OF_DATA_TYPE: dict[int, ua.VariantType] = {
    ObjectIds.Boolean: ua.VariantType.Boolean,
    ObjectIds.Int16: ua.VariantType.Int16,
    ObjectIds.UInt16: ua.VariantType.UInt16,
    ObjectIds.Int32: ua.VariantType.Int32,
    ObjectIds.UInt32: ua.VariantType.UInt32,
    ObjectIds.Double: ua.VariantType.Double,
}

MethodResult = list[ua.Variant] | ua.StatusCode | ua.CallMethodResult


def status_of(result: CommandResult) -> ua.StatusCode:
    if result.accepted:
        return status(StatusCodes.Good)
    if result.code is None:
        return status(StatusCodes.BadRequestNotAllowed)
    return status(REJECT_STATUS[result.code])


def accept_variant(variant: ua.Variant | None, target: ua.VariantType) -> Value | None:
    """The written value as a plain number, or None when its type does not fit `target`."""
    if variant is None or variant.is_array or variant.Value is None:
        return None
    kind = variant.VariantType
    if target is ua.VariantType.Boolean:
        return bool(variant.Value) if kind is ua.VariantType.Boolean else None
    if kind in _INTEGER_VARIANTS:
        if target is ua.VariantType.Double:
            return float(variant.Value)
        return int(variant.Value) if target in _INTEGER_VARIANTS else None
    if kind in (ua.VariantType.Double, ua.VariantType.Float) and target is ua.VariantType.Double:
        return float(variant.Value)
    return None


class CommandService:
    """Routes writes and method calls to the core and maps its answers to status codes."""

    def __init__(
        self,
        table: PointTable,
        model: InformationModel,
        namespace: int,
        submit: CommandSubmitter,
        mirror: Mapping[str, Sample],
        heartbeat_timeout_s: float,
    ) -> None:
        self._table = table
        self._submit = submit
        self._mirror = mirror
        self._heartbeat_timeout_s = heartbeat_timeout_s
        self._writable: dict[ua.NodeId, tuple[Point, ua.VariantType]] = {
            node_id(p.opcua_node_id, namespace): (p, variable_kind(p).variant_type)
            for p in table
            if p.writable and p.command is not None
        }
        self.methods = model.methods
        self.accepted = 0
        self.rejected = 0

    async def write_value(self, item: ua.WriteValue, user: User) -> ua.StatusCode:
        """One WriteValue of a client's Write request; never raises."""
        try:
            return await self._write_value(item, user)
        except Exception:
            log.exception("opcua: write to %s failed", item.NodeId)
            return status(StatusCodes.BadInternalError)

    async def _write_value(self, item: ua.WriteValue, user: User) -> ua.StatusCode:
        target = self._writable.get(item.NodeId)
        if target is None or item.AttributeId != AttributeIds.Value:
            return status(StatusCodes.BadNotWritable)
        if item.IndexRange:
            return status(StatusCodes.BadIndexRangeInvalid)
        if not may_command(user):
            log.info(
                "opcua: write to %s by %s refused: role may not command",
                item.NodeId.Identifier,
                user,
            )
            return status(StatusCodes.BadUserAccessDenied)
        point, variant_type = target
        value = accept_variant(item.Value.Value if item.Value else None, variant_type)
        if value is None:
            return status(StatusCodes.BadTypeMismatch)
        return await self._send(point.command or "", point.id, value, user)

    def method_callback(self, method: CommandMethod) -> Callable[..., Awaitable[MethodResult]]:
        """The asyncua callback of one command method (called with the object's NodeId)."""

        async def call(parent: ua.NodeId, *args: ua.Variant) -> MethodResult:
            user = CURRENT_USER.get()
            try:
                return await self._call(method, user, args)
            except Exception:
                log.exception("opcua: %s failed", method.browse_name)
                return status(StatusCodes.BadInternalError)

        return call

    async def _call(
        self, method: CommandMethod, user: User | None, args: tuple[ua.Variant, ...]
    ) -> MethodResult:
        if len(args) != len(method.inputs):
            return status(
                StatusCodes.BadArgumentsMissing
                if len(args) < len(method.inputs)
                else StatusCodes.BadTooManyArguments
            )
        if not may_command(user):
            log.info("opcua: %s by %s refused: role may not command", method.browse_name, user)
            return status(StatusCodes.BadUserAccessDenied)
        target = _target(method, args)
        if isinstance(target, ua.CallMethodResult):
            return target
        point_id, value = target
        answer = await self._send(method.command, point_id, value, user)
        if not answer.is_good():
            return answer
        return self._outputs(method)

    def _outputs(self, method: CommandMethod) -> list[ua.Variant]:
        outputs: list[ua.Variant] = []
        for arg in method.outputs:
            if arg.name == "AliveCounter":
                sample = self._mirror.get("appliance.alive_counter")
                alive = int(sample.value) if sample is not None and sample.value is not None else 0
                outputs.append(ua.Variant(alive, ua.VariantType.UInt32))
            elif arg.name == "HeartbeatTimeout":
                sample = self._mirror.get("heartbeat.timeout")
                timeout = (
                    float(sample.value)
                    if sample is not None and sample.value is not None
                    else self._heartbeat_timeout_s
                )
                outputs.append(ua.Variant(timeout, ua.VariantType.Double))
        return outputs

    async def _send(
        self, command: str, point_id: str | None, value: Value | None, user: User | None
    ) -> ua.StatusCode:
        name = user_label(user)
        result = await self._submit(SOURCE, command, point_id, value, name)
        answer = status_of(result)
        if result.accepted:
            self.accepted += 1
            log.info(
                "opcua: command %s %s=%r by user %s (source %s) accepted",
                command,
                point_id,
                value,
                name,
                SOURCE,
            )
        else:
            self.rejected += 1
            log.info(
                "opcua: command %s %s=%r by user %s (source %s) rejected with %s: %s",
                command,
                point_id,
                value,
                name,
                SOURCE,
                answer.name,
                result.reason,
            )
        return answer


def _target(
    method: CommandMethod, args: tuple[ua.Variant, ...]
) -> tuple[str, Value | None] | ua.CallMethodResult:
    """The point and value a call addresses, or the per-argument failure."""
    values = [
        accept_variant(variant, _VARIANT_OF_DATA_TYPE[arg.data_type])
        for arg, variant in zip(method.inputs, args, strict=True)
    ]
    if any(v is None for v in values):
        return _argument_failure(
            [StatusCodes.BadTypeMismatch if v is None else StatusCodes.Good for v in values]
        )
    if not method.templated:
        return method.point_ids[0], values[0] if values else method.trigger_value
    point_id = _node_point(method, values[0])
    if point_id is None:
        return _argument_failure(
            [StatusCodes.BadOutOfRange] + [StatusCodes.Good] * (len(values) - 1)
        )
    return point_id, values[1] if len(values) > 1 else method.trigger_value


def _node_point(method: CommandMethod, node: Value | None) -> str | None:
    """The point of node `node` (1-based) of a templated command, if the site has it."""
    if not isinstance(node, int) or isinstance(node, bool):
        return None
    for point_id in method.point_ids:
        if point_id.split(".")[1] == str(node):
            return point_id
    return None


def _argument_failure(codes: list[int]) -> ua.CallMethodResult:
    result = ua.CallMethodResult()
    result.StatusCode = status(StatusCodes.BadInvalidArgument)
    result.InputArgumentResults = [status(c) for c in codes]
    return result


class GuardedAttributeService(AttributeService):
    """asyncua's attribute service with the Write service answered per item by the face.

    Writes from the server itself (the internal session, asyncua's Admin) keep asyncua's
    behaviour; every client write goes through `CommandService.write_value`.
    """

    def __init__(self, aspace: AddressSpace, commands: CommandService) -> None:
        super().__init__(aspace)
        self._commands = commands

    async def write(
        self,
        params: ua.WriteParameters,
        user: User = User(role=UserRole.Admin),  # noqa: B008 - asyncua's signature
    ) -> list[ua.StatusCode]:
        if user.role is UserRole.Admin:
            return await super().write(params, user)
        return [await self._commands.write_value(item, user) for item in params.NodesToWrite]
