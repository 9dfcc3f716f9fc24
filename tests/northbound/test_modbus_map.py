"""The register map as generated from the point table: SunSpec structure, scale factors,
the vendor model, the `sunspec:` annotation's validation, the committed CSV and docs."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from sunspec2 import mdef

from appliance.northbound.modbus import sunspec
from appliance.northbound.modbus.__main__ import main as modbus_main
from appliance.northbound.modbus.docs import (
    CSV_PATH,
    DOCS_PATH,
    compatibility,
    current_section,
    markdown_section,
    render_csv,
)
from appliance.northbound.modbus.layout import (
    NODE_MODELS,
    SITE_MODELS,
    SUNSPEC_BASE_ADDRESS,
    Field,
    LayoutError,
    SunSpecValue,
    UnitMap,
    node_map,
    site_map,
)
from appliance.northbound.modbus.registers import ReadContext, encode_field, read_registers
from appliance.northbound.modbus.vendor import (
    MIRRORS,
    VENDOR_LENGTH,
    VENDOR_MODEL_ID,
    model_definition,
)
from appliance.points.model import SUNSPEC_UNIT_FACTORS, TYPE_RANGES
from appliance.points.table import (
    SUNSPEC_RAW_LIMITS,
    PointTable,
    PointTableError,
    load_point_table_text,
    shipped_point_table,
    sunspec_catalog,
)

ROOT = Path(__file__).resolve().parents[2]
EMPTY = ReadContext({}, {}, 1, {})


@pytest.fixture(scope="module")
def table() -> PointTable:
    return shipped_point_table()


@pytest.fixture(scope="module")
def site(table: PointTable) -> UnitMap:
    return site_map(table)


def chain(unit: UnitMap) -> list[tuple[int, int]]:
    """(model id, L) of every model from 40000 to the end model, walked like a client does."""
    assert read_registers(unit, SUNSPEC_BASE_ADDRESS, 2, EMPTY) == [0x5375, 0x6E53]
    models: list[tuple[int, int]] = []
    address = SUNSPEC_BASE_ADDRESS + 2
    while True:
        words = read_registers(unit, address, 2, EMPTY)
        assert isinstance(words, list)
        models.append((words[0], words[1]))
        if words[0] == 0xFFFF:
            return models
        address += words[1] + 2


def test_site_and_node_chains_follow_the_model_definitions(
    table: PointTable, site: UnitMap
) -> None:
    catalog = sunspec_catalog()
    expected = [(m, catalog[m].length) for m in SITE_MODELS]
    assert chain(site) == [*expected, (VENDOR_MODEL_ID, VENDOR_LENGTH), (0xFFFF, 0)]
    node = node_map(table, 64)
    assert chain(node) == [*((m, catalog[m].length) for m in NODE_MODELS), (0xFFFF, 0)]
    assert (catalog[203].length, catalog[701].length, catalog[704].length) == (105, 153, 65)


def test_every_annotation_lands_on_its_model_point(table: PointTable, site: UnitMap) -> None:
    node = node_map(table, 1)
    placed = {
        (f.point_id, int(f.model), f.name)
        for unit in (site, node)
        for f in unit.registers
        if isinstance(f.source, SunSpecValue)
    }
    wanted = {
        (p.id, ref.model, ref.point) for p in table if p.node in (None, 1) for ref in p.sunspec
    }
    assert placed == wanted
    assert len(wanted) >= 40


def _group(unit: UnitMap, model: str, sf_name: str) -> list[Field]:
    model_def = sunspec_catalog()[int(model)]
    users = {p.name for p in model_def.points if p.sf == sf_name}
    return [
        f for f in unit.registers
        if f.model == model and f.name in users and isinstance(f.source, SunSpecValue)
    ]  # fmt: skip


def test_scale_factors_are_the_finest_at_which_the_declared_ranges_fit(
    table: PointTable, site: UnitMap
) -> None:
    node = node_map(table, 1)
    checked = 0
    for unit in (site, node):
        for sf_field in (f for f in unit.registers if f.type == "sunssf" and f.scale):
            sf = int(sf_field.scale)
            assert encode_field(sf_field, EMPTY) == (sf & 0xFFFF,)
            members = _group(unit, sf_field.model, sf_field.name)
            assert members, sf_field.name

            def fits(scale: int, members: list[Field] = members) -> bool:
                for f in members:
                    point = table[f.point_id or ""]
                    factor = SUNSPEC_UNIT_FACTORS[(point.unit, f.units)]
                    low, high = point.range or TYPE_RANGES[point.type]
                    raw_low, raw_high = SUNSPEC_RAW_LIMITS[f.type]
                    if (
                        not raw_low
                        <= low * factor / 10**scale
                        <= high * factor / 10**scale
                        <= raw_high
                    ):
                        return False
                return True

            assert fits(sf)
            assert sf == sunspec.sf_floor(members[0].units) or not fits(sf - 1)
            checked += 1
    assert checked >= 15
    named = {
        (f.model, f.name): f.scale for f in (*site.registers, *node.registers) if f.type == "sunssf"
    }
    assert named[("203", "W_SF")] == "2"
    assert named[("203", "V_SF")] == "-2"
    assert named[("704", "WSet_SF")] == "0"
    assert named[("802", "CellV_SF")] == "-3"


def test_vendor_model_mirrors_native_addresses_at_fixed_offsets(
    table: PointTable, site: UnitMap
) -> None:
    vendor = [f for f in site.registers if f.model == str(VENDOR_MODEL_ID)]
    start = vendor[0].address
    by_point = {f.point_id: f for f in vendor if f.point_id}
    mirrored = 0
    for mirror in MIRRORS:
        for point in table.in_block(mirror.block):
            assert point.modbus is not None
            field = by_point[point.id]
            assert (
                field.address == start + mirror.offset + point.modbus.address - mirror.native_base
            )
            assert (field.type, field.count) == (point.modbus.type.value, point.modbus.count)
            mirrored += 1
    assert mirrored == len(by_point)
    covered = sum(f.count for f in vendor)
    assert covered == VENDOR_LENGTH + 2  # every register of the model is a field
    reserved = [f for f in vendor if f.type == "pad"]
    assert all(encode_field(f, EMPTY) == (0,) * f.count for f in reserved)
    definition = model_definition(vendor)
    assert mdef.validate_model_def(definition) == ""
    assert sum(p.get("size", 1) for p in definition["group"]["points"]) == VENDOR_LENGTH + 2


def test_committed_csv_and_docs_are_what_the_table_generates() -> None:
    committed = (ROOT / CSV_PATH).read_text(encoding="utf-8")
    assert committed == render_csv(), (
        f"run: python -m appliance.northbound.modbus generate ({CSV_PATH})"
    )
    document = (ROOT / DOCS_PATH).read_text(encoding="utf-8")
    assert current_section(document) == markdown_section(), f"regenerate {DOCS_PATH}"
    assert modbus_main(["check", "--root", str(ROOT)]) == 0


def test_no_address_of_the_committed_map_has_moved() -> None:
    """The committed CSV is the previous release: the generated map keeps all its addresses."""
    assert compatibility((ROOT / CSV_PATH).read_text(encoding="utf-8")) == []


def _shipped_text() -> str:
    return (ROOT / "models" / "points.yaml").read_text(encoding="utf-8")


def test_moved_points_and_lost_annotations_are_detected() -> None:
    previous = (ROOT / CSV_PATH).read_text(encoding="utf-8")
    text = _shipped_text()
    moved = text.replace(
        'modbus: {offset: 30, type: float32}, description: "Grid frequency."',
        'modbus: {offset: 44, type: float32}, description: "Grid frequency."',
    )
    assert moved != text
    problems = compatibility(previous, load_point_table_text(moved, "moved.yaml"))
    assert problems == ["site registers 1130 (native grid.frequency): gone"]
    unannotated = text.replace("         sunspec: {model: 203, point: Hz},\n", "")
    assert unannotated != text
    problems = compatibility(previous, load_point_table_text(unannotated, "moved.yaml"))
    hz = [p for p in problems if "(203 Hz)" in p or "(203 Hz_SF)" in p]
    assert len(hz) == 2
    assert all("scale '" in p for p in hz)


def test_generate_refuses_to_move_an_address_unless_allowed(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "models" / "modbus").mkdir(parents=True)
    (tmp_path / DOCS_PATH).write_text((ROOT / DOCS_PATH).read_text(encoding="utf-8"))
    previous = render_csv().replace(
        "site,registers,1130,1131,2,native,grid.frequency,",
        "site,registers,1130,1131,2,native,grid.frequency_old,",
    )
    (tmp_path / CSV_PATH).write_text(previous)
    assert modbus_main(["generate", "--root", str(tmp_path)]) == 1
    assert (tmp_path / CSV_PATH).read_text() == previous
    assert modbus_main(["check", "--root", str(tmp_path)]) == 1
    assert modbus_main(["generate", "--root", str(tmp_path), "--allow-breaking"]) == 0
    assert (tmp_path / CSV_PATH).read_text() == render_csv()


# --------------------------------------------------------------------------- annotations

HEADER = """
schema: 1
commands:
  - {name: set_x, description: "Set x."}
blocks:
  - block: meter
    opcua: Site/Meter
    modbus_base: 100
    points:
"""


def annotated(point: str) -> str:
    return HEADER + textwrap.indent(textwrap.dedent(point), "      ")


def problems_of(point: str) -> list[str]:
    with pytest.raises(PointTableError) as caught:
        load_point_table_text(annotated(point), "test.yaml")
    return [str(p) for p in caught.value.problems]


POWER = """- {id: power, kind: gauge, type: float32, unit: W, range: [-1000, 1000], opcua: Power,
   description: "Power.", sunspec: %s}"""
STATE = """- {id: state, kind: state, type: enum, unit: "", opcua: State, states: {0: "off", 1: "on"},
   description: "State.", sunspec: %s}"""


def test_a_valid_annotation_loads() -> None:
    table = load_point_table_text(annotated(POWER % "{model: 203, point: W}"), "test.yaml")
    (ref,) = table["meter.power"].sunspec
    assert (ref.model, ref.point, ref.values) == (203, "W", ())
    states = load_point_table_text(
        annotated(STATE % "{model: 701, point: St, values: {0: 0, 1: 1}}"), "test.yaml"
    )
    assert states["meter.state"].sunspec[0].values == ((0, 0), (1, 1))


@pytest.mark.parametrize(
    ("point", "expected"),
    [
        (POWER % "{model: 999, point: W}", "field 'sunspec.model': 999 is not a known SunSpec model; known: 1, 203, 701"),
        (POWER % "{model: 203, point: Watts}", "field 'sunspec.point': 'Watts' is not a point of model 203 (ac_meter_abcn)"),
        (POWER % "{model: 203, point: PhVphA}", "model 203 point PhVphA: unit 'W' cannot be shown in SunSpec unit 'V'"),
        (POWER % "{model: 203, point: W_SF}", "model 203 point W_SF: type sunssf carries no point value"),
        (POWER % "{model: 802, point: WChaRteMax}", "model 802 point WChaRteMax: values -1000 .. 1000 W do not fit uint16"),
        (POWER % "{model: 701, point: InvSt, values: {0: 0}}", "model 701 point InvSt: float32 cannot be shown as enum16"),
        (POWER % "{model: 203, point: W, scale: 1}", "field 'sunspec.scale': unknown key"),
        (POWER % "[{model: 203, point: W}, {model: 203, point: W}]", "model 203 point W already carries 'meter.power'"),
        (STATE % "{model: 701, point: St}", "field 'sunspec.values': required for the enum16 point St"),
        (STATE % "{model: 701, point: St, values: {0: 0, 5: 1}}", "field 'sunspec.values.5': 5 is not a state; allowed: 0, 1"),
        (STATE % "{model: 701, point: St, values: {0: 0, 1: 7}}", "field 'sunspec.values.1': 7 is not a symbol of St; allowed: 0 (OFF), 1 (ON)"),
        (STATE % "{model: 203, point: W}", "model 203 point W: an enum cannot be shown as the number int16"),
        (POWER % "{model: 203, point: W, values: {0: 1}}", "field 'sunspec.values': only for enum16/enum32 targets, not int16"),
    ],
)  # fmt: skip
def test_bad_annotations_are_reported_with_point_and_field(point: str, expected: str) -> None:
    problems = problems_of(point)
    assert any(expected in p for p in problems), problems
    assert all(p.startswith("test.yaml: point 'meter.") for p in problems)


def test_layout_refuses_what_it_has_no_place_for(table: PointTable) -> None:
    weather = HEADER.replace("block: meter", "block: weather") + textwrap.indent(
        '- {id: wind, kind: gauge, type: float32, unit: "", range: [0, 50], opcua: Wind, '
        'modbus: {offset: 0, type: float32}, description: "Wind."}\n',
        "      ",
    )
    with pytest.raises(LayoutError, match="block weather has no slot"):
        site_map(load_point_table_text(weather, "weather.yaml"))
    crowded = _shipped_text().replace(
        "ExternalActivePowerSetpoint, modbus: {offset: 18,",
        "ExternalActivePowerSetpoint, modbus: {offset: 70,",
    )
    assert crowded != _shipped_text()
    with pytest.raises(LayoutError, match="outside the vendor section of block controller"):
        site_map(load_point_table_text(crowded, "crowded.yaml"))
