"""The register map as documents: models/modbus/register-map.csv and a section of docs/modbus.md.

Both are generated from the shipped point table (every node and load the table allows) and
committed; `python -m appliance.northbound.modbus check` and a test fail when they differ
from what the table generates. The CSV is also the previous release's map: `compatibility`
compares a new map with it, and no address may change what it holds (addresses are
append-only; the end model and reserved vendor registers may be taken by new values).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass

from appliance.northbound.modbus.layout import (
    SUNSPEC_BASE_ADDRESS,
    Field,
    Fixed,
    UnitMap,
    node_map,
    site_map,
)
from appliance.northbound.modbus.vendor import (
    MIRRORS,
    QUALITY,
    QUALITY_SLOTS,
    VENDOR_LENGTH,
    VENDOR_MODEL_ID,
)
from appliance.points.table import PointTable, shipped_point_table

CSV_PATH = "models/modbus/register-map.csv"
DOCS_PATH = "docs/modbus.md"
BEGIN = "<!-- BEGIN GENERATED: register map (python -m appliance.northbound.modbus generate) -->"
END = "<!-- END GENERATED: register map -->"

COLUMNS = [
    "unit", "table", "address", "address_1based", "count", "model", "name", "point_id",
    "type", "units", "scale", "access", "range", "description",
]  # fmt: skip
# Fields whose address may be reused by a later release.
_MOVABLE_MODELS = frozenset({"end"})


@dataclass(frozen=True, slots=True)
class Row:
    unit: str
    table: str
    field: Field

    def cells(self) -> dict[str, str]:
        f = self.field
        generic = self.unit == "node"
        return {
            "unit": self.unit,
            "table": self.table,
            "address": str(f.address),
            "address_1based": str(f.address + 1),
            "count": str(f.count),
            "model": f.model,
            "name": _generic(f.name) if generic else f.name,
            "point_id": _generic(f.point_id or "") if generic else (f.point_id or ""),
            "type": f.type,
            "units": f.units,
            "scale": f.scale,
            "access": "RW" if f.writable else "R",
            "range": f.value_range,
            "description": f.description,
        }


def _generic(text: str) -> str:
    """A node-1 id written for every node: battery.1.soc -> battery.{n}.soc."""
    for block in ("battery", "inverter"):
        text = text.replace(f"{block}.1.", f"{block}.{{n}}.")
    return text


def rows(table: PointTable | None = None) -> list[Row]:
    """Every register and bit: the site unit, then node unit n (shown for n = 1)."""
    table = table or shipped_point_table()
    site, node = site_map(table), node_map(table, 1)
    return [
        *(Row("site", "registers", f) for f in site.registers),
        *(Row("site", "bits", f) for f in site.bits),
        *(Row("node", "registers", f) for f in node.registers),
    ]


def render_csv(table: PointTable | None = None) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows(table):
        writer.writerow(row.cells())
    return out.getvalue()


def compatibility(previous_csv: str, table: PointTable | None = None) -> list[str]:
    """Addresses of the previous map that now hold something else (empty: compatible)."""
    current = {_key(r.cells()): r.cells() for r in rows(table)}
    problems: list[str] = []
    for old in csv.DictReader(io.StringIO(previous_csv)):
        if old["model"] in _MOVABLE_MODELS or old["type"] == "pad":
            continue
        new = current.get(_key(old))
        where = f"{old['unit']} {old['table']} {old['address']} ({old['model']} {old['name']})"
        if new is None:
            problems.append(f"{where}: gone")
            continue
        changed = [c for c in ("count", "model", "name", "type", "scale") if new[c] != old[c]]
        if changed:
            was = ", ".join(f"{c} {old[c]!r} -> {new[c]!r}" for c in changed)
            problems.append(f"{where}: {was}")
    return problems


def _key(cells: dict[str, str]) -> tuple[str, str, str]:
    return cells["unit"], cells["table"], cells["address"]


# --------------------------------------------------------------------------- markdown


def markdown_section(table: PointTable | None = None) -> str:
    table = table or shipped_point_table()
    site, node = site_map(table), node_map(table, 1)
    return "\n".join([BEGIN, *_markdown(site, node), END]) + "\n"


def replace_section(document: str, section: str) -> str:
    start, end = document.find(BEGIN), document.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{DOCS_PATH} lacks the generated-section markers")
    return document[:start] + section.rstrip("\n") + document[end + len(END) :]


def current_section(document: str) -> str:
    start, end = document.find(BEGIN), document.find(END)
    if start < 0 or end < start:
        return ""
    return document[start : end + len(END)] + "\n"


def _markdown(site: UnitMap, node: UnitMap) -> Iterator[str]:
    yield ""
    yield (
        "Generated from `models/points.yaml`; every register, including the SunSpec points "
        f'that read "not implemented", is in `{CSV_PATH}`. Addresses are 0-based PDU '
        "addresses, the 1-based register number in brackets."
    )
    yield ""
    yield "### Site unit (faces.modbus.unit_id): the SunSpec chain"
    yield from _table(f for f in site.registers if _shown(f) and f.model != str(VENDOR_MODEL_ID))
    yield ""
    yield f"### Site unit: vendor model {VENDOR_MODEL_ID} (L = {VENDOR_LENGTH})"
    yield ""
    start = next(f.address for f in site.registers if f.model == str(VENDOR_MODEL_ID))
    yield "| Offset | Address | Section |"
    yield "|---|---|---|"
    sections = [
        (m.offset, f"block `{m.block}`: native {m.native_base} .. {m.native_base + m.length - 1}")
        for m in MIRRORS
    ]
    sections.append((QUALITY.offset, "quality bit field per device"))
    for offset, what in sorted(sections):
        yield f"| {offset} | {start + offset} | {what} |"
    yield ""
    slots = ", ".join(
        f"`{block}` {first}" if count == 1 else f"`{block}` n: {first} + n - 1 (n <= {count})"
        for block, (first, count) in QUALITY_SLOTS.items()
    )
    yield f"Quality slots (offset within the quality section): {slots}."
    yield from _table(
        f
        for f in site.registers
        if f.model == str(VENDOR_MODEL_ID)
        and f.type != "pad"
        and not f.name.startswith("quality_")
        and _first_instance(f)
    )
    yield ""
    yield "Surplus loads n = 1 .. 8: the rows of `surplus.1` plus 16 x (n - 1)."
    yield ""
    yield "### Node unit (faces.modbus.unit_id + n): battery node n, shown for n = 1"
    yield from _table(f for f in node.registers if _shown(f))
    yield ""
    yield "### Site unit: bits (FC 01 / 02 read, FC 05 / 15 write)"
    yield from _table(f for f in site.bits if _first_instance(f))
    yield ""
    yield "Templated bool points repeat with their block's stride (docs/points.md), as bits too."


def _first_instance(field: Field) -> bool:
    """Not a templated point, or the point of instance 1 (the others follow by stride)."""
    parts = (field.point_id or "").split(".")
    return len(parts) < 3 or not parts[1].isdigit() or parts[1] == "1"


def _shown(field: Field) -> bool:
    """SunSpec fields worth a row in the Markdown (the CSV has all): not the idle markers."""
    if field.address < SUNSPEC_BASE_ADDRESS:
        return False
    return not (isinstance(field.source, Fixed) and field.description == "not implemented")


def _table(fields: Iterator[Field] | list[Field]) -> Iterator[str]:
    yield ""
    yield "| Address (reg.) | Model | Name | Point | Type | Units | Scale | Access | Range |"
    yield "|---|---|---|---|---|---|---|---|---|"
    for f in fields:
        cells = Row("node", "", f).cells()
        point = f"`{cells['point_id']}`" if cells["point_id"] else f.description
        yield (
            f"| {f.address} ({f.address + 1}) | {f.model} | {cells['name']} | {point} | {f.type} "
            f"| {f.units} | {f.scale} | {cells['access']} | {f.value_range} |"
        )
