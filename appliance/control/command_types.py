"""Commands as they cross from a face to the core: the request and its Accepted / Rejected answer."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from appliance.store.sample import Value


class RejectCode(enum.Enum):
    """Why a command was refused; each face maps it to its protocol's error."""

    OUT_OF_RANGE = "out_of_range"  # Modbus 0x03 ILLEGAL_DATA_VALUE, OPC UA BadOutOfRange
    INVALID_VALUE = "invalid_value"  # Modbus 0x03, OPC UA BadInvalidArgument / BadTypeMismatch
    INVALID_STATE = (
        "invalid_state"  # Modbus 0x03 (0x06 busy while starting), OPC UA BadInvalidState
    )
    NOT_WRITABLE = "not_writable"  # Modbus 0x02 ILLEGAL_DATA_ADDRESS, OPC UA BadNotWritable
    ACCESS_DENIED = "access_denied"  # OPC UA BadUserAccessDenied
    UNAVAILABLE = "unavailable"  # core did not answer in time: Modbus 0x04, OPC UA BadTimeout


@dataclass(frozen=True, slots=True)
class CommandRequest:
    request_id: int
    source: str  # which face and client asked, for the log and LastCommandSource
    command: str  # a command declared in the point table
    point_id: str | None  # the written point, when the command came as a write
    value: Value | None
    user: str | None = None


@dataclass(frozen=True, slots=True)
class CommandResult:
    request_id: int
    accepted: bool
    reason: str = ""
    code: RejectCode | None = None

    @classmethod
    def accept(cls, request: CommandRequest, reason: str = "accepted") -> CommandResult:
        return cls(request.request_id, True, reason)

    @classmethod
    def reject(cls, request: CommandRequest, code: RejectCode, reason: str) -> CommandResult:
        return cls(request.request_id, False, reason, code)
