"""Render the point table as documentation: docs/points.md and docs/points.csv.

Both files are committed and a test fails when they differ from what the table generates,
so the published register list can never drift from the code.
"""

from __future__ import annotations

import csv
import io

from appliance.points.model import Point
from appliance.points.table import PointTable

CSV_COLUMNS = [
    "id", "label", "kind", "type", "unit", "range", "access", "command", "stale_after_s",
    "modbus_address", "modbus_register", "modbus_type", "modbus_gain", "opcua_node_id", "archive",
]  # fmt: skip


def documented_points(table: PointTable) -> list[Point]:
    """Every non-templated point, and node 1 of each templated block (the others follow by stride)."""
    return [p for p in table if p.node in (None, 1)]


def _row(point: Point) -> dict[str, str]:
    generic_id = point.id.replace(".1.", ".{n}.", 1) if point.node == 1 else point.id
    generic_path = point.opcua_node_id
    if point.node == 1:
        block_path = point.opcua_path.rsplit("/", 1)[0]
        generic_path = point.opcua_node_id.replace(
            block_path.replace("/", "."), block_path.replace("/", ".")[:-1] + "{n}", 1
        )
    modbus = point.modbus
    return {
        "id": generic_id,
        "label": point.label,
        "kind": point.kind.value,
        "type": point.type.value,
        "unit": point.unit,
        "range": f"{point.range[0]:g} .. {point.range[1]:g}" if point.range else "",
        "access": point.access.value,
        "command": point.command or "",
        "stale_after_s": f"{point.stale_after_s:g}" if point.stale_after_s else "",
        "modbus_address": str(modbus.address) if modbus else "",
        "modbus_register": str(modbus.address + 1) if modbus else "",
        "modbus_type": modbus.type.value if modbus else "",
        "modbus_gain": f"{modbus.gain:g}" if modbus else "",
        "opcua_node_id": generic_path,
        "archive": f"{point.archive.measurement}.{point.archive.field} every {point.archive.every_s:g} s"
        if point.archive
        else "",
    }


def render_csv(table: PointTable) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for point in documented_points(table):
        writer.writerow(_row(point))
    return out.getvalue()


def render_markdown(table: PointTable) -> str:
    lines = [
        "# Point list",
        "",
        "Generated from `models/points.yaml` by `appliance points --markdown`; do not edit by hand.",
        "",
        "Conventions: grid power > 0 is import; battery and inverter power > 0 is discharge. Modbus",
        "addresses are 0-based PDU addresses (the 1-based register number is beside them); 32-bit",
        "values are sent high word first; holding (FC03) and input (FC04) registers show the same map.",
        "A missing, stale or bad value reads as SunSpec's not-implemented marker (NaN, 0x8000,",
        "0xFFFF, 0x80000000, 0xFFFFFFFF). OPC UA NodeIds are strings in the appliance's namespace.",
        "",
    ]
    for name, info in table.blocks.items():
        points = [p for p in documented_points(table) if p.block == name]
        lines += [f"## {info.label} (`{name}`)", ""]
        if info.max_count:
            first = points[0].modbus.address if points and points[0].modbus else None
            second = table.in_block(name, 2)
            stride = (
                second[0].modbus.address - first
                if second and second[0].modbus and first is not None
                else 0
            )
            lines += [
                f"Repeated for each instance n = 1 .. {info.max_count}; the addresses below are "
                f"those of n = 1, instance n adds {stride} x (n - 1).",
                "",
            ]
        lines += [
            "| id | label | unit | type | range | access | Modbus (reg.) | OPC UA NodeId |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for point in points:
            row = _row(point)
            address = (
                f"{row['modbus_address']} ({row['modbus_register']}) {row['modbus_type']}"
                if point.modbus
                else ""
            )
            access = row["access"] + (f" → `{row['command']}`" if row["command"] else "")
            lines.append(
                f"| `{row['id']}` | {row['label']} | {row['unit']} | {row['type']} | {row['range']} "
                f"| {access} | {address} | `{row['opcua_node_id']}` |"
            )
        lines.append("")
        for point in points:
            if point.states:
                states = ", ".join(f"{k} = {v}" for k, v in sorted(point.states.items()))
                lines.append(f"- `{_row(point)['id']}` states: {states}")
        lines.append("")
    lines += ["## Commands", "", "| command | meaning |", "|---|---|"]
    lines += [f"| `{c.name}` | {c.description} |" for c in table.commands.values()]
    return "\n".join(lines).rstrip() + "\n"
