"""Typed doors into asyncua's `ua` module for `mypy --strict`.

asyncua annotates its structures with its own wire types (`ua.Int32`, `ua.String`,
`ua.UInt32`, `ua.DateTime` ...), so plain ints, strs and datetimes do not type-check, and
`ua` re-exports ObjectIds / StatusCodes / AttributeIds implicitly. These helpers take the
Python types and are the only place that casts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from asyncua import ua
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes

__all__ = [
    "AttributeIds",
    "ObjectIds",
    "StatusCodes",
    "data_value",
    "node_id",
    "status",
]


def node_id(identifier: int | str, namespace: int = 0) -> ua.NodeId:
    return ua.NodeId(cast(Any, identifier), cast(Any, namespace))


def status(code: int) -> ua.StatusCode:
    return ua.StatusCode(cast(Any, code))


def data_value(
    variant: ua.Variant,
    code: int = StatusCodes.Good,
    *,
    source: datetime | None = None,
    server: datetime | None = None,
) -> ua.DataValue:
    return ua.DataValue(
        variant,
        StatusCode=status(code),
        SourceTimestamp=cast(Any, source),
        ServerTimestamp=cast(Any, server),
    )
