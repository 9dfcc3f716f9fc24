"""The register map of the Modbus slave face, generated from the point table.

Every unit id the face answers has a `UnitMap`: its registers (FC 03 and FC 04 read the same
map) and its bits (FC 01 and FC 02 read the same bits). Each `Field` is one value: where it
lives, what it is called in the docs, and its `Source` (a constant, a point of the table, a
device quality). Nothing here reads a sample; `registers.py` turns fields into words.

Unit ids: the site is ``unit_id`` (faces.modbus.unit_id, default 1); battery node n (its BMS
and its inverter) is ``unit_id + n``.

Site unit:
* the native map of docs/points.md (every point with a ``modbus:`` address, 1000 .. 9xxx);
* at 40000 the SunSpec chain: "SunS", Common (1), grid meter (203), cluster AC measurement
  (701), active power control (704), cluster storage capacity (713) and battery (802), the
  vendor model (`vendor.py`), then the end model 0xFFFF / 0;
* bits: bit i (0 .. 31) is bit i of ``alarms.active``; a bool point at register address A is
  also bit A (``alarms.reset`` at 1703 is the one writable bit).
Node unit: the SunSpec chain Common (1), 701 (the node's inverter), 713 and 802 (its BMS), end.

Which point goes where in a standard model comes from the points' ``sunspec:`` annotations;
scale factors are fixed, the finest at which every annotated point's declared range fits
(never finer than 10^0 for power and energy, 10^-3 otherwise).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from appliance.northbound.modbus import sunspec
from appliance.points.model import (
    SUNSPEC_UNIT_FACTORS,
    TYPE_RANGES,
    DataType,
    ModbusMapping,
    Point,
    SunSpecModelDef,
    SunSpecPointDef,
    SunSpecRef,
)
from appliance.points.table import PointTable, sunspec_catalog, sunspec_scale

SUNSPEC_BASE_ADDRESS = 40000
SUNS_MARKER = (0x5375, 0x6E53)  # "SunS"
END_MODEL_ID = 0xFFFF
SITE_MODELS = (1, 203, 701, 704, 713, 802)  # then the vendor model
NODE_MODELS = (1, 701, 713, 802)
NODE_BLOCKS = frozenset({"battery", "inverter"})
ALARM_POINT = "alarms.active"
ALARM_BITS = 32

#: SunSpec points no table point fills that read a fixed value.
FIXED_VALUES: dict[tuple[int, str], int] = {
    (701, "ACType"): 2,  # THREE_PHASE
    (704, "WSetMod"): 1,  # WATTS: WSet is the only setpoint the face takes
}
#: Model 1's strings, filled from the site configuration by the face.
IDENTITY_POINTS = ("Mn", "Md", "Opt", "Vr", "SN")


class LayoutError(ValueError):
    """The point table cannot be laid out (a missing vendor slot, an address outside its window)."""


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True, slots=True)
class Fixed:
    words: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Identity:
    key: str  # Mn, Md, Opt, Vr or SN of model 1


@dataclass(frozen=True, slots=True)
class DeviceAddress:
    """Model 1 DA: the unit id the request addressed."""


@dataclass(frozen=True, slots=True)
class SunSpecValue:
    """A point in a standard model: raw = value x factor / 10^sf, or its state's symbol."""

    point_id: str
    stype: str
    sf: int
    factor: float
    values: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class NativeValue:
    """A point in its native encoding (docs/points.md): the native map and the vendor model."""

    point_id: str
    mapping: ModbusMapping


@dataclass(frozen=True, slots=True)
class DeviceQuality:
    """Bit field of the qualities of one device's points (see QUALITY_BITS in registers.py)."""

    block: str
    node: int | None


@dataclass(frozen=True, slots=True)
class AlarmBit:
    """Bit `bit` of a bit-field point, or (bit None) a bool point itself."""

    point_id: str
    bit: int | None


Source = Fixed | Identity | DeviceAddress | SunSpecValue | NativeValue | DeviceQuality | AlarmBit


@dataclass(frozen=True, slots=True)
class Field:
    """One value of a unit's map; `count` registers (or bits) from `address` (0-based)."""

    address: int
    count: int
    model: str  # "SunS", a model id, "end", "native" or "bits"
    name: str
    type: str
    source: Source
    point_id: str | None = None
    writable: bool = False
    units: str = ""
    scale: str = ""
    value_range: str = ""
    description: str = ""

    @property
    def end(self) -> int:
        return self.address + self.count


class UnitMap:
    """The registers and bits of one unit id, with an index from address to field."""

    def __init__(
        self, kind: str, node: int | None, registers: Iterable[Field], bits: Iterable[Field]
    ) -> None:
        self.kind = kind  # "site" or "node"
        self.node = node
        self.registers = tuple(sorted(registers, key=lambda f: f.address))
        self.bits = tuple(sorted(bits, key=lambda f: f.address))
        self._registers = _index(self.registers)
        self._bits = _index(self.bits)

    def register(self, address: int) -> Field | None:
        return self._registers.get(address)

    def bit(self, address: int) -> Field | None:
        return self._bits.get(address)

    def point_ids(self) -> set[str]:
        return {f.point_id for f in (*self.registers, *self.bits) if f.point_id is not None}


def _index(fields: tuple[Field, ...]) -> dict[int, Field]:
    index: dict[int, Field] = {}
    for field in fields:
        for address in range(field.address, field.end):
            if address in index:
                other = index[address]
                raise LayoutError(
                    f"{field.model} {field.name} at {field.address} overlaps "
                    f"{other.model} {other.name} at {other.address}"
                )
            index[address] = field
    return index


# --------------------------------------------------------------------------- builders


def site_map(
    table: PointTable,
    catalog: Mapping[int, SunSpecModelDef] | None = None,
    *,
    layout_table: PointTable | None = None,
) -> UnitMap:
    """The site unit: native map, SunSpec chain with the vendor model, alarm bits.

    `layout_table` (default `table`) lays out the vendor model's templated sections; the
    face passes the shipped table, so that every site's vendor model has the same fields.
    """
    from appliance.northbound.modbus.vendor import vendor_model  # noqa: PLC0415 - cycle

    catalog = catalog or sunspec_catalog()
    site_points = [p for p in table if p.node is None]
    chain = _chain(site_points, SITE_MODELS, catalog)
    address = chain[-1].end
    vendor = vendor_model(layout_table or table, address)
    address = vendor[-1].end
    registers = [*_native(table), *chain, *vendor, *_end(address)]
    return UnitMap("site", None, registers, _bits(table))


def node_map(
    table: PointTable, node: int, catalog: Mapping[int, SunSpecModelDef] | None = None
) -> UnitMap:
    """Battery node `node`'s unit: Common, 701 (its inverter), 713 and 802 (its BMS)."""
    catalog = catalog or sunspec_catalog()
    points = [p for p in table if p.node == node]
    stray = sorted({p.block for p in points if p.sunspec and p.block not in NODE_BLOCKS})
    if stray:
        raise LayoutError(f"blocks {', '.join(stray)} have SunSpec annotations but no node unit")
    chain = _chain(points, NODE_MODELS, catalog)
    return UnitMap("node", node, [*chain, *_end(chain[-1].end)], [])


def node_numbers(table: PointTable) -> list[int]:
    """The battery nodes of a table (each has a unit id)."""
    return sorted({p.node for p in table if p.node is not None and p.block in NODE_BLOCKS})


def _end(address: int) -> list[Field]:
    return [
        Field(address, 1, "end", "ID", "uint16", Fixed((END_MODEL_ID,)), description="end model"),
        Field(address + 1, 1, "end", "L", "uint16", Fixed((0,)), description="end model length"),
    ]


def _chain(
    points: list[Point], model_ids: tuple[int, ...], catalog: Mapping[int, SunSpecModelDef]
) -> list[Field]:
    refs: dict[tuple[int, str], tuple[Point, SunSpecRef]] = {}
    for point in points:
        for ref in point.sunspec:
            if ref.model not in model_ids:
                raise LayoutError(f"{point.id}: model {ref.model} is not served on this unit")
            refs[(ref.model, ref.point)] = (point, ref)
    fields = [
        Field(
            SUNSPEC_BASE_ADDRESS, 2, "SunS", "SunS", "uint32", Fixed(SUNS_MARKER),
            description='SunSpec marker "SunS" (0x53756E53)',
        )
    ]  # fmt: skip
    address = SUNSPEC_BASE_ADDRESS + 2
    for model_id in model_ids:
        model = catalog[model_id]
        fields += _standard_model(model, address, refs)
        address += model.length + 2
    return fields


def header(model_id: int, length: int, address: int, name: str) -> list[Field]:
    label = str(model_id)
    return [
        Field(address, 1, label, "ID", "uint16", Fixed((model_id,)), description=f"model {name}"),
        Field(address + 1, 1, label, "L", "uint16", Fixed((length,)), description="model length"),
    ]


def _standard_model(
    model: SunSpecModelDef, start: int, refs: Mapping[tuple[int, str], tuple[Point, SunSpecRef]]
) -> list[Field]:
    scales = _scale_factors(model, refs)
    fields = header(model.id, model.length, start, model.name)
    for spoint in model.points:
        field = Field(
            start + spoint.offset,
            spoint.size,
            str(model.id),
            spoint.name,
            spoint.type,
            Fixed(sunspec.marker_words(spoint.type, spoint.size)),
            units=spoint.units,
            description="not implemented",
        )
        fields.append(_fill(field, model, spoint, refs, scales))
    return fields


def _fill(
    field: Field,
    model: SunSpecModelDef,
    spoint: SunSpecPointDef,
    refs: Mapping[tuple[int, str], tuple[Point, SunSpecRef]],
    scales: Mapping[str, int],
) -> Field:
    """`field` (a not-implemented SunSpec point) with what fills it, if anything does."""
    key = (model.id, spoint.name)
    if key in refs:
        point, ref = refs[key]
        return _annotated(field, spoint, point, ref, scales.get(spoint.sf or "", 0))
    if spoint.type == "sunssf" and spoint.name in scales:
        users = ", ".join(
            p.name for p in model.points if p.sf == spoint.name and (model.id, p.name) in refs
        )
        return replace(
            field,
            source=Fixed(sunspec.encode_int("sunssf", scales[spoint.name], 1)),
            scale=str(scales[spoint.name]),
            description=f"scale factor of {users}",
        )
    if key in FIXED_VALUES:
        value = FIXED_VALUES[key]
        symbol = spoint.symbols.get(value, str(value))
        return replace(
            field, source=Fixed(sunspec.split(value, field.count)), description=f"fixed: {symbol}"
        )
    if model.id == 1 and spoint.name in IDENTITY_POINTS:
        return replace(
            field, source=Identity(spoint.name), description="from the site configuration"
        )
    if model.id == 1 and spoint.name == "DA":
        return replace(field, source=DeviceAddress(), description="the unit id of this device")
    return field


def _annotated(
    field: Field, spoint: SunSpecPointDef, point: Point, ref: SunSpecRef, sf: int
) -> Field:
    factor = SUNSPEC_UNIT_FACTORS.get((point.unit, spoint.units), 1.0)
    source = SunSpecValue(point.id, spoint.type, sf, factor, ref.values)
    writable = spoint.writable and point.writable
    if ref.values:
        shown = ", ".join(
            f"{s} {spoint.symbols.get(s, '')}".strip() for s in sorted({v for _, v in ref.values})
        )
        extent = f"{shown} (from {point.id} states {', '.join(f'{k}->{v}' for k, v in ref.values)})"
    elif point.range is not None:
        low, high = point.range
        extent = f"{low * factor:g} .. {high * factor:g}"
    else:
        extent = "0, 1" if point.type is DataType.BOOL else ""
    return replace(
        field,
        source=source,
        point_id=point.id,
        writable=writable,
        scale=f"10^{sf}" if spoint.sf else "",
        value_range=extent,
        description=point.description,
    )


def _scale_factors(
    model: SunSpecModelDef, refs: Mapping[tuple[int, str], tuple[Point, SunSpecRef]]
) -> dict[str, int]:
    """Each scale-factor point of `model` that an annotated point uses, with its value."""
    scales: dict[str, int] = {}
    for spoint in model.points:
        entry = refs.get((model.id, spoint.name))
        if entry is None or spoint.sf is None:
            continue
        point = entry[0]
        factor = SUNSPEC_UNIT_FACTORS.get((point.unit, spoint.units), 1.0)
        low, high = point.range if point.range is not None else TYPE_RANGES[point.type]
        low, high = sorted((low * factor, high * factor))
        sf = sunspec_scale(spoint.type, True, low, high, sunspec.sf_floor(spoint.units))
        if sf is None:
            raise LayoutError(f"{point.id}: {low:g} .. {high:g} does not fit {spoint.type}")
        scales[spoint.sf] = max(sf, scales.get(spoint.sf, sf))
    return scales


def native_field(point: Point, address: int, model: str, name: str) -> Field:
    """A point in its native encoding at `address` (the native map, the vendor model)."""
    assert point.modbus is not None  # noqa: S101 - callers pass mapped points only
    mapping = point.modbus
    if point.states:
        extent = ", ".join(f"{k} {v}" for k, v in sorted(point.states.items()))
    elif point.type is DataType.BOOL:
        extent = "0 false, 1 true"
    elif point.range is not None:
        extent = f"{point.range[0]:g} .. {point.range[1]:g}"
    else:
        extent = ""
    return Field(
        address,
        mapping.count,
        model,
        name,
        mapping.type.value,
        NativeValue(point.id, mapping),
        point_id=point.id,
        writable=point.writable,
        units=point.unit,
        scale=f"x{mapping.gain:g}" if mapping.gain != 1 else "",
        value_range=extent,
        description=point.description,
    )


def _native(table: PointTable) -> list[Field]:
    return [
        native_field(p, p.modbus.address, "native", p.id) for p in table.modbus_points() if p.modbus
    ]


def _bits(table: PointTable) -> list[Field]:
    bits: list[Field] = []
    if ALARM_POINT in table:
        meanings = bit_meanings(table[ALARM_POINT].description)
        for bit in range(ALARM_BITS):
            bits.append(
                Field(
                    bit, 1, "bits", f"{ALARM_POINT}.bit{bit}", "bit", AlarmBit(ALARM_POINT, bit),
                    point_id=ALARM_POINT, value_range="0, 1",
                    description=f"bit {bit} of {ALARM_POINT}: {meanings.get(bit, 'not assigned')}",
                )
            )  # fmt: skip
    for point in table.modbus_points():
        if point.type is DataType.BOOL and point.modbus is not None:
            bits.append(
                Field(
                    point.modbus.address, 1, "bits", point.id, "bit", AlarmBit(point.id, None),
                    point_id=point.id, writable=point.writable, value_range="0, 1",
                    description=point.description,
                )
            )  # fmt: skip
    return bits


def bit_meanings(description: str) -> dict[int, str]:
    """Bit names from a description like "...: bit 0 grid meter lost, 1 BMS lost, 2 ...."."""
    listed = description.partition(": bit ")[2].rstrip(".")
    meanings: dict[int, str] = {}
    for item in listed.split(", "):
        number, _, name = item.partition(" ")
        if number.isdigit() and name:
            meanings[int(number)] = name
    return meanings
