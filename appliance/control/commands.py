"""Command validation: a request is checked against its point before anything acts on it.

Pure: the point table and the request in, Accepted or Rejected (with the reason and a code
each face maps to its protocol) out. The core applies accepted commands.
"""

from __future__ import annotations

import math

from appliance.control.command_types import CommandRequest, CommandResult, RejectCode
from appliance.points.model import DataType, Point
from appliance.points.table import PointTable


def validate_command(table: PointTable, request: CommandRequest) -> CommandResult:
    """Check the command exists, the point routes to it, and the value fits the point."""
    if request.command not in table.commands:
        return CommandResult.reject(
            request, RejectCode.INVALID_VALUE, f"unknown command '{request.command}'"
        )
    if request.point_id is None:
        return CommandResult.accept(request)
    if request.point_id not in table:
        return CommandResult.reject(
            request, RejectCode.NOT_WRITABLE, f"point '{request.point_id}' does not exist"
        )
    point = table[request.point_id]
    if not point.writable or point.command != request.command:
        return CommandResult.reject(
            request, RejectCode.NOT_WRITABLE, f"point '{point.id}' is read-only"
        )
    problem = value_problem(point, request.value)
    if problem is not None:
        code, reason = problem
        return CommandResult.reject(request, code, reason)
    return CommandResult.accept(request)


def value_problem(point: Point, value: object) -> tuple[RejectCode, str] | None:
    """Why `value` cannot be written to `point`, or None if it can."""
    if not isinstance(value, bool | int | float) or not math.isfinite(value):
        return RejectCode.INVALID_VALUE, f"{point.id}: {value!r} is not a finite number"
    number = float(value)
    if point.type is DataType.ENUM:
        if number not in point.states:
            allowed = ", ".join(f"{k} ({v})" for k, v in sorted(point.states.items()))
            return (
                RejectCode.OUT_OF_RANGE,
                f"{point.id}: {value!r} is not a state; allowed: {allowed}",
            )
        return None
    if point.type is DataType.BOOL and number not in (0.0, 1.0):
        return RejectCode.OUT_OF_RANGE, f"{point.id}: {value!r} is not 0 or 1"
    if point.range is not None and not point.range[0] <= number <= point.range[1]:
        low, high = point.range
        return (
            RejectCode.OUT_OF_RANGE,
            f"{point.id}: {number:g} {point.unit} is out of range; allowed {low:g} .. {high:g}",
        )
    return None
