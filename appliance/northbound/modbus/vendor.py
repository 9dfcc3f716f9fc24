"""The vendor model (64200 `pvbess_site`): what SunSpec has no model for, at fixed offsets.

Its sections mirror blocks of the native map (docs/points.md) in their native encoding
(float32 and 32-bit values high word first): a point at native address A of a mirrored block
sits at ``model start + section offset + (A - native base)``. Native addresses are append-only,
so vendor offsets are too; each section is larger than its block, and the unused registers
(and the space at the end of the model) are reserved: they read 0 and refuse writes.

| Offset | Length | Contents |
|---|---|---|
| 0, 1 | 2 | ID 64200, L 688 |
| 2 | 32 | block `appliance` (native 1000 ..): alive counter, status, uptime, loop lateness |
| 34 | 64 | block `controller` (1500 ..): mode, state, grid target, reserve, PID terms, output |
| 98 | 16 | block `heartbeat` (1600 ..): counter (write = heartbeat), last time, timeout, ok |
| 114 | 32 | block `alarms` (1700 ..): active bit field, count, reset, alarm flags |
| 146 | 160 | quality bit field per device (`QUALITY_SLOTS`) |
| 306 | 256 | block `surplus` (9100 .., 16 per load): mode, active, power, duty |
| 562 | 128 | reserved for later sections |
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from appliance.northbound.modbus.layout import (
    DeviceQuality,
    Field,
    Fixed,
    LayoutError,
    header,
    native_field,
)
from appliance.points.table import PointTable

VENDOR_MODEL_ID = 64200
VENDOR_MODEL_NAME = "pvbess_site"
VENDOR_LENGTH = 688  # L: registers after ID and L


@dataclass(frozen=True, slots=True)
class Mirror:
    block: str
    native_base: int
    offset: int  # from the model's first register (ID)
    length: int


@dataclass(frozen=True, slots=True)
class QualitySection:
    offset: int
    length: int


MIRRORS = (
    Mirror("appliance", 1000, 2, 32),
    Mirror("controller", 1500, 34, 64),
    Mirror("heartbeat", 1600, 98, 16),
    Mirror("alarms", 1700, 114, 32),
    Mirror("surplus", 9100, 306, 256),
)
QUALITY = QualitySection(146, 160)

#: First slot and number of slots of each block in the quality section; slots 8 .. 15 are
#: kept for later site-level blocks, templated blocks have one slot per instance.
QUALITY_SLOTS: dict[str, tuple[int, int]] = {
    "appliance": (0, 1),
    "grid": (1, 1),
    "pv": (2, 1),
    "house": (3, 1),
    "cluster": (4, 1),
    "controller": (5, 1),
    "heartbeat": (6, 1),
    "alarms": (7, 1),
    "sml_meter": (8, 1),
    "consumption_clamp": (9, 1),
    "battery": (16, 64),
    "inverter": (80, 64),
    "surplus": (144, 16),
}


def vendor_model(table: PointTable, start: int) -> list[Field]:
    """The vendor model's fields from `start` (every register: reserved ones read 0)."""
    fields = header(VENDOR_MODEL_ID, VENDOR_LENGTH, start, VENDOR_MODEL_NAME)
    for mirror in MIRRORS:
        fields += _mirror(table, mirror, start)
    fields += _quality(table, start)
    used = {a for f in fields for a in range(f.address, f.end)}
    fields += _reserved(start, used)
    return sorted(fields, key=lambda f: f.address)


def vendor_name(point_id: str) -> str:
    """The vendor model's name of a point: its id with '_' for '.' (an identifier)."""
    return point_id.replace(".", "_")


def _mirror(table: PointTable, mirror: Mirror, start: int) -> list[Field]:
    fields: list[Field] = []
    for point in table.in_block(mirror.block):
        if point.modbus is None:
            continue
        relative = point.modbus.address - mirror.native_base
        if not 0 <= relative <= mirror.length - point.modbus.count:
            raise LayoutError(
                f"{point.id}: native address {point.modbus.address} is outside the vendor "
                f"section of block {mirror.block} ({mirror.native_base} .. "
                f"{mirror.native_base + mirror.length - 1})"
            )
        address = start + mirror.offset + relative
        fields.append(native_field(point, address, str(VENDOR_MODEL_ID), vendor_name(point.id)))
    return fields


def quality_slot(block: str, node: int | None) -> int:
    """Offset of a device's quality register within the quality section."""
    first, count = QUALITY_SLOTS[block]
    index = 0 if node is None else node - 1
    if index >= count:
        raise LayoutError(f"block {block} has {count} quality slots; node {node} has none")
    return first + index


def _quality(table: PointTable, start: int) -> list[Field]:
    fields: list[Field] = []
    for name, info in table.blocks.items():
        if name not in QUALITY_SLOTS:
            raise LayoutError(f"block {name} has no slot in the vendor model's quality section")
        nodes: list[int | None] = (
            list(range(1, info.max_count + 1)) if info.max_count is not None else [None]
        )
        for node in nodes:
            slot = quality_slot(name, node)
            label = name if node is None else f"{name}_{node}"
            fields.append(
                Field(
                    start + QUALITY.offset + slot, 1, str(VENDOR_MODEL_ID), f"quality_{label}",
                    "bitfield16", DeviceQuality(name, node), value_range="bits 0 .. 3",
                    description=f"quality of {info.label}{'' if node is None else f' {node}'}: "
                    "bit 0 all good, 1 stale, 2 bad (device down), 3 waiting; 0xFFFF not on this site",
                )
            )  # fmt: skip
    return fields


def _reserved(start: int, used: set[int]) -> list[Field]:
    """One field per run of unused registers of the model."""
    fields: list[Field] = []
    run: int | None = None
    for address in range(start + 2, start + 2 + VENDOR_LENGTH + 1):
        free = address in range(start + 2, start + 2 + VENDOR_LENGTH) and address not in used
        if free and run is None:
            run = address
        elif not free and run is not None:
            count = address - run
            fields.append(
                Field(
                    run, count, str(VENDOR_MODEL_ID), f"reserved_{run - start}", "pad",
                    Fixed((0,) * count), description="reserved: reads 0",
                )
            )  # fmt: skip
            run = None
    return fields


def model_definition(fields: list[Field]) -> dict[str, Any]:
    """The vendor model as a SunSpec JSON model definition (pysunspec2 can read it)."""
    start = fields[0].address
    points: list[dict[str, Any]] = [
        {"name": "ID", "type": "uint16", "size": 1, "value": VENDOR_MODEL_ID, "mandatory": "M",
         "static": "S", "label": "Model ID", "desc": "Model identifier"},
        {"name": "L", "type": "uint16", "size": 1, "mandatory": "M", "static": "S",
         "label": "Model Length", "desc": "Model length"},
    ]  # fmt: skip
    for field in fields[2:]:
        if field.model != str(VENDOR_MODEL_ID):
            continue
        if field.type == "pad":
            points += [
                {"name": f"reserved_{a - start}", "type": "pad", "size": 1}
                for a in range(field.address, field.end)
            ]
            continue
        point: dict[str, Any] = {
            "name": field.name,
            "type": _JSON_TYPES.get(field.type, field.type),
            "size": field.count,
            "label": field.name,
            "desc": field.description,
        }
        if field.units:
            point["units"] = field.units
        if field.writable:
            point["access"] = "RW"
        points.append(point)
    return {
        "id": VENDOR_MODEL_ID,
        "group": {
            "name": VENDOR_MODEL_NAME,
            "type": "group",
            "label": "PV + battery site appliance",
            "desc": "Vendor model of the appliance's Modbus slave face (docs/modbus.md).",
            "points": points,
        },
    }


_JSON_TYPES = {"float32": "float32", "uint16": "uint16", "int16": "int16", "uint32": "uint32"}


def model_definition_json(fields: list[Field]) -> str:
    return json.dumps(model_definition(fields), indent=2) + "\n"
