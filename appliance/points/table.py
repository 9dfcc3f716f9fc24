"""Load and validate `models/points.yaml`, the one declaration of every published point.

Validation is hard and exhaustive: every problem found is reported at once, each naming the
file, the point id and the field, so that whoever edits the table fixes it in one pass.
Templated blocks (battery nodes, inverters, surplus loads) are expanded to their maximum
count here, so address overlaps are checked for the largest site the table allows.
"""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import yaml

from appliance.errors import ConfigError
from appliance.points.model import (
    SUNSPEC_UNIT_FACTORS,
    SUNSPEC_VALUE_TYPES,
    TYPE_RANGES,
    Access,
    ArchiveSpec,
    Command,
    DataType,
    Kind,
    ModbusMapping,
    Point,
    RegisterType,
    SunSpecModelDef,
    SunSpecPointDef,
    SunSpecRef,
)

_E = TypeVar("_E", Kind, DataType, Access, RegisterType)

# Which register encodings may carry which value types.
_ALLOWED_REGISTERS: dict[DataType, set[RegisterType]] = {
    DataType.BOOL: {RegisterType.UINT16},
    DataType.INT16: {RegisterType.INT16},
    DataType.UINT16: {RegisterType.UINT16},
    DataType.INT32: {RegisterType.INT32},
    DataType.UINT32: {RegisterType.UINT32},
    DataType.FLOAT32: set(RegisterType),
    DataType.FLOAT64: set(RegisterType),
    DataType.ENUM: {RegisterType.UINT16},
    DataType.TIMESTAMP: {RegisterType.UINT32},
}

_BLOCK_KEYS = {
    "block",
    "label",
    "opcua",
    "opcua_type",
    "modbus_base",
    "repeat",
    "stale_after_s",
    "archive_every_s",
    "points",
}
_POINT_KEYS = {
    "id",
    "label",
    "description",
    "kind",
    "type",
    "unit",
    "range",
    "access",
    "stale_after_s",
    "modbus",
    "opcua",
    "archive",
    "command",
    "states",
    "sunspec",
}
_MODBUS_KEYS = {"offset", "type", "count", "gain"}
_SUNSPEC_KEYS = {"model", "point", "values"}


@dataclass(frozen=True, slots=True)
class Problem:
    """One validation failure, located as precisely as the table allows."""

    file: str
    point: str | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"point '{self.point}', " if self.point else ""
        return f"{self.file}: {where}field '{self.field}': {self.message}"


class PointTableError(ConfigError):
    """The point table is invalid; `problems` lists every failure found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "\n  ".join(str(p) for p in problems)
        super().__init__(f"{len(problems)} problem(s) in the point table:\n  {lines}")


@dataclass(frozen=True, slots=True)
class BlockInfo:
    """A device block as declared: its label, OPC UA object and template size."""

    name: str
    label: str
    opcua_type: str
    max_count: int | None  # None for a single (non-templated) block


class PointTable:
    """An ordered, validated, immutable set of points with lookups for each face."""

    def __init__(
        self,
        points: Iterable[Point],
        commands: Mapping[str, Command],
        blocks: Mapping[str, BlockInfo],
        source: str,
    ) -> None:
        self._points: dict[str, Point] = {p.id: p for p in points}
        self.commands: Mapping[str, Command] = dict(commands)
        self.blocks: Mapping[str, BlockInfo] = dict(blocks)
        self.source = source

    def __getitem__(self, point_id: str) -> Point:
        return self._points[point_id]

    def __contains__(self, point_id: object) -> bool:
        return point_id in self._points

    def __iter__(self) -> Iterator[Point]:
        return iter(self._points.values())

    def __len__(self) -> int:
        return len(self._points)

    def ids(self) -> list[str]:
        return list(self._points)

    def in_block(self, block: str, node: int | None = None) -> list[Point]:
        return [p for p in self if p.block == block and (node is None or p.node == node)]

    def modbus_points(self) -> list[Point]:
        """Points with a register mapping, in address order."""
        mapped = [p for p in self if p.modbus is not None]
        return sorted(mapped, key=lambda p: p.modbus.address if p.modbus else 0)

    def for_site(self, counts: Mapping[str, int]) -> PointTable:
        """The points of a site with `counts[block]` instances of each templated block.

        Addresses do not move: node n keeps the address it has in the full table.
        """
        for block, count in counts.items():
            info = self.blocks.get(block)
            if info is None or info.max_count is None:
                raise ConfigError(f"{self.source}: block '{block}' is not a templated block")
            if not 0 <= count <= info.max_count:
                raise ConfigError(
                    f"{self.source}: block '{block}': {count} instances requested; "
                    f"allowed 0 .. {info.max_count}"
                )
        kept = [p for p in self if p.node is None or p.node <= counts.get(p.block, 0)]
        return PointTable(kept, self.commands, self.blocks, self.source)


@functools.cache
def shipped_point_table() -> PointTable:
    """The table shipped with the appliance (`models/points.yaml`), loaded once."""
    resource = importlib.resources.files("appliance.models") / "points.yaml"
    return load_point_table_text(resource.read_text(encoding="utf-8"), "models/points.yaml")


def load_point_table(path: Path) -> PointTable:
    return load_point_table_text(path.read_text(encoding="utf-8"), str(path))


def load_point_table_text(text: str, source: str) -> PointTable:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise PointTableError([Problem(source, None, "<yaml>", f"not valid YAML{where}")]) from exc
    return _Builder(source).build(doc)


class _Builder:
    """Turns the parsed YAML into points, collecting problems instead of stopping at one."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []

    def problem(self, point: str | None, field: str, message: str) -> None:
        self.problems.append(Problem(self.source, point, field, message))

    def build(self, doc: Any) -> PointTable:
        if not isinstance(doc, dict):
            raise PointTableError([Problem(self.source, None, "<root>", "expected a mapping")])
        self._unknown_keys(doc, {"schema", "commands", "blocks"}, None, "")
        commands = self._commands(doc.get("commands", []))
        points: list[Point] = []
        blocks: dict[str, BlockInfo] = {}
        raw_blocks = doc.get("blocks")
        if not isinstance(raw_blocks, list) or not raw_blocks:
            self.problem(None, "blocks", "expected a non-empty list of blocks")
            raw_blocks = []
        for index, raw in enumerate(raw_blocks):
            block_points, info = self._block(raw, f"blocks[{index}]")
            if info is not None:
                if info.name in blocks:
                    self.problem(None, f"blocks[{index}].block", f"duplicate block '{info.name}'")
                blocks[info.name] = info
            points.extend(block_points)
        self._check_table(points, commands)
        if self.problems:
            raise PointTableError(self.problems)
        return PointTable(points, commands, blocks, self.source)

    def _unknown_keys(
        self, raw: dict[str, Any], allowed: set[str], point: str | None, at: str
    ) -> None:
        for key in raw:
            if key not in allowed:
                self.problem(
                    point,
                    f"{at}{key}",
                    f"unknown key; allowed keys: {', '.join(sorted(allowed))}",
                )

    def _commands(self, raw: Any) -> dict[str, Command]:
        commands: dict[str, Command] = {}
        if not isinstance(raw, list):
            self.problem(None, "commands", "expected a list of {name, description}")
            return commands
        for index, item in enumerate(raw):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                self.problem(None, f"commands[{index}]", "expected {name, description}")
                continue
            name = item["name"]
            if name in commands:
                self.problem(None, f"commands[{index}].name", f"duplicate command '{name}'")
            commands[name] = Command(name, str(item.get("description", "")))
        return commands

    def _block(self, raw: Any, at: str) -> tuple[list[Point], BlockInfo | None]:
        if not isinstance(raw, dict):
            self.problem(None, at, "expected a mapping")
            return [], None
        self._unknown_keys(raw, _BLOCK_KEYS, None, f"{at}.")
        name = raw.get("block")
        opcua = raw.get("opcua")
        base = raw.get("modbus_base", 0)
        if not isinstance(name, str) or not name.isidentifier():
            self.problem(None, f"{at}.block", f"{name!r} is not a valid block name")
            return [], None
        if not isinstance(opcua, str) or not opcua:
            self.problem(None, f"{at}.opcua", "required: the block's OPC UA browse path")
            return [], None
        if not isinstance(base, int) or isinstance(base, bool) or not 0 <= base <= 65535:
            self.problem(None, f"{at}.modbus_base", f"{base!r} is not an address 0 .. 65535")
            base = 0
        count, stride = self._repeat(raw.get("repeat"), at)
        info = BlockInfo(
            name, str(raw.get("label", name)), str(raw.get("opcua_type", "")), count or None
        )
        templates = [
            self._template(raw, item, name, at, i, stride)
            for i, item in enumerate(raw.get("points") or [])
        ]
        points: list[Point] = []
        for node in range(1, count + 1) if count else [None]:
            offset_base = base + (stride * (node - 1) if node else 0)
            for template in templates:
                if template is not None:
                    points.append(_instantiate(template, node, offset_base))
        return points, info

    def _repeat(self, raw: Any, at: str) -> tuple[int, int]:
        if raw is None:
            return 0, 0
        if not isinstance(raw, dict) or set(raw) != {"max", "stride"}:
            self.problem(None, f"{at}.repeat", "expected {max: N, stride: registers}")
            return 0, 0
        count, stride = raw["max"], raw["stride"]
        if not isinstance(count, int) or not 1 <= count <= 256:
            self.problem(None, f"{at}.repeat.max", f"{count!r} is out of range; allowed 1 .. 256")
            count = 0
        if not isinstance(stride, int) or stride < 1:
            self.problem(None, f"{at}.repeat.stride", f"{stride!r} must be a positive integer")
            stride = 0
        return count, stride

    def _template(
        self, block: dict[str, Any], raw: Any, name: str, at: str, index: int, stride: int
    ) -> Point | None:
        """One point as written in a block, with its address relative to the block base."""
        at = f"{at}.points[{index}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
            self.problem(None, at, "expected a mapping with a string 'id'")
            return None
        local_id = raw["id"]
        templated = stride > 0
        point_id = f"{name}.{{n}}.{local_id}" if templated else f"{name}.{local_id}"
        self._unknown_keys(raw, _POINT_KEYS, point_id, "")
        kind = self._enum(Kind, raw, "kind", point_id)
        dtype = self._enum(DataType, raw, "type", point_id)
        access = self._enum(Access, raw, "access", point_id, default=Access.READ)
        if kind is None or dtype is None or access is None:
            return None
        value_range = self._range(raw, dtype, point_id)
        modbus = self._modbus(raw.get("modbus"), dtype, value_range, point_id, stride)
        stale = raw.get("stale_after_s", block.get("stale_after_s"))
        if stale is not None and (not isinstance(stale, int | float) or stale <= 0):
            self.problem(
                point_id, "stale_after_s", f"{stale!r} must be a positive number of seconds"
            )
            stale = None
        opcua_name = raw.get("opcua")
        if not isinstance(opcua_name, str) or not opcua_name.isidentifier():
            self.problem(point_id, "opcua", f"{opcua_name!r} is not a valid browse name")
            opcua_name = local_id
        states = self._states(raw.get("states"), dtype, point_id)
        command = raw.get("command")
        if command is not None and not isinstance(command, str):
            self.problem(point_id, "command", "expected a command name")
            command = None
        for text_field in ("label", "description", "unit"):
            if not isinstance(raw.get(text_field, ""), str):
                self.problem(point_id, text_field, "expected text")
        if not raw.get("description"):
            self.problem(point_id, "description", "required: every point is documented")
        return Point(
            id=point_id,
            label=str(raw.get("label", local_id)),
            description=str(raw.get("description", "")),
            kind=kind,
            type=dtype,
            unit=str(raw.get("unit", "")),
            access=access,
            block=name,
            opcua_path=f"{block['opcua']}/{opcua_name}",
            range=value_range,
            stale_after_s=float(stale) if stale is not None else None,
            modbus=modbus,
            archive=self._archive(raw.get("archive", True), block, name, local_id, point_id),
            command=command,
            states=states,
            sunspec=self._sunspec(
                raw.get("sunspec"), dtype, str(raw.get("unit", "")), value_range, states, point_id
            ),
        )

    def _enum(
        self,
        enum_type: type[_E],
        raw: dict[str, Any],
        key: str,
        point_id: str,
        default: _E | None = None,
    ) -> _E | None:
        value = raw.get(key)
        if value is None and default is not None:
            return default
        try:
            return enum_type(str(value))
        except ValueError:
            allowed = ", ".join(e.value for e in enum_type)
            self.problem(point_id, key, f"{value!r} is not allowed; allowed: {allowed}")
            return None

    def _range(
        self, raw: dict[str, Any], dtype: DataType, point_id: str
    ) -> tuple[float, float] | None:
        value = raw.get("range")
        if value is None:
            return None
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        ):
            self.problem(point_id, "range", f"{value!r} must be [min, max]")
            return None
        low, high = float(value[0]), float(value[1])
        if low > high:
            self.problem(point_id, "range", f"min {low:g} is above max {high:g}")
        type_low, type_high = TYPE_RANGES[dtype]
        if low < type_low or high > type_high:
            self.problem(
                point_id,
                "range",
                f"[{low:g}, {high:g}] does not fit type {dtype.value} ({type_low:g} .. {type_high:g})",
            )
        return low, high

    def _modbus(
        self,
        raw: Any,
        dtype: DataType,
        value_range: tuple[float, float] | None,
        point_id: str,
        stride: int,
    ) -> ModbusMapping | None:
        if raw is None:
            return None
        if not isinstance(raw, dict):
            self.problem(point_id, "modbus", "expected {offset, type}")
            return None
        self._unknown_keys(raw, _MODBUS_KEYS, point_id, "modbus.")
        offset = raw.get("offset")
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            self.problem(point_id, "modbus.offset", f"{offset!r} must be a non-negative integer")
            return None
        rtype = self._enum(RegisterType, raw, "type", point_id)
        if rtype is None:
            return None
        if rtype not in _ALLOWED_REGISTERS[dtype]:
            allowed = ", ".join(sorted(r.value for r in _ALLOWED_REGISTERS[dtype]))
            self.problem(
                point_id,
                "modbus.type",
                f"{rtype.value} cannot carry {dtype.value}; allowed: {allowed}",
            )
        count = raw.get("count", rtype.registers)
        if count != rtype.registers:
            self.problem(
                point_id,
                "modbus.count",
                f"{count!r} registers do not match type {rtype.value} ({rtype.registers})",
            )
        if stride and offset + rtype.registers > stride:
            self.problem(
                point_id,
                "modbus.offset",
                f"{offset} + {rtype.registers} registers runs past the block stride of {stride}",
            )
        gain = raw.get("gain", 1)
        if not isinstance(gain, int | float) or isinstance(gain, bool) or gain <= 0:
            self.problem(point_id, "modbus.gain", f"{gain!r} must be a positive number")
            gain = 1
        if value_range is not None and rtype is not RegisterType.FLOAT32:
            raw_low, raw_high = rtype.raw_range
            low, high = value_range[0] * gain, value_range[1] * gain
            if low < raw_low or high > raw_high:
                self.problem(
                    point_id,
                    "range",
                    f"[{value_range[0]:g}, {value_range[1]:g}] x gain {gain:g} does not fit "
                    f"register type {rtype.value} ({raw_low:g} .. {raw_high:g})",
                )
        return ModbusMapping(address=offset, type=rtype, gain=float(gain))

    def _sunspec(
        self,
        raw: Any,
        dtype: DataType,
        unit: str,
        value_range: tuple[float, float] | None,
        states: dict[int, str],
        point_id: str,
    ) -> tuple[SunSpecRef, ...]:
        """`sunspec: {model, point[, values]}` or a list of them: where the Modbus face shows it."""
        if raw is None:
            return ()
        items = raw if isinstance(raw, list) else [raw]
        refs: list[SunSpecRef] = []
        for index, item in enumerate(items):
            at = f"sunspec[{index}]" if isinstance(raw, list) else "sunspec"
            if not isinstance(item, dict):
                self.problem(point_id, at, "expected {model: <SunSpec model id>, point: <name>}")
                continue
            self._unknown_keys(item, _SUNSPEC_KEYS, point_id, f"{at}.")
            target = self._sunspec_target(item, at, point_id)
            if target is None:
                continue
            model, spoint = target
            mismatch = sunspec_mismatch(spoint, dtype, unit, value_range)
            if mismatch is not None:
                self.problem(point_id, at, f"model {model.id} point {spoint.name}: {mismatch}")
                continue
            values = self._sunspec_values(item.get("values"), spoint, dtype, states, point_id, at)
            refs.append(SunSpecRef(model.id, spoint.name, values))
        return tuple(refs)

    def _sunspec_target(
        self, item: dict[str, Any], at: str, point_id: str
    ) -> tuple[SunSpecModelDef, SunSpecPointDef] | None:
        catalog = sunspec_catalog()
        model_id = item.get("model")
        model = None if isinstance(model_id, bool) else catalog.get(model_id)  # type: ignore[arg-type]
        if model is None:
            known = ", ".join(str(m) for m in sorted(catalog))
            self.problem(
                point_id,
                f"{at}.model",
                f"{model_id!r} is not a known SunSpec model; known: {known}",
            )
            return None
        name = item.get("point")
        spoint = model.point(name) if isinstance(name, str) else None
        if spoint is None:
            self.problem(
                point_id,
                f"{at}.point",
                f"{name!r} is not a point of model {model.id} ({model.name})",
            )
            return None
        return model, spoint

    def _sunspec_values(
        self,
        raw: Any,
        spoint: SunSpecPointDef,
        dtype: DataType,
        states: dict[int, str],
        point_id: str,
        at: str,
    ) -> tuple[tuple[int, int], ...]:
        enum_target = spoint.type in ("enum16", "enum32")
        if raw is None:
            if enum_target:
                self.problem(
                    point_id,
                    f"{at}.values",
                    f"required for the {spoint.type} point {spoint.name}: "
                    "{point state: SunSpec symbol value}",
                )
            return ()
        if not enum_target:
            self.problem(
                point_id, f"{at}.values", f"only for enum16/enum32 targets, not {spoint.type}"
            )
            return ()
        if not isinstance(raw, dict):
            self.problem(point_id, f"{at}.values", "expected {point state: SunSpec symbol value}")
            return ()
        own = set(states) if dtype is DataType.ENUM else {0, 1}
        pairs: list[tuple[int, int]] = []
        for key, symbol in raw.items():
            if key not in own:
                allowed = ", ".join(str(k) for k in sorted(own))
                self.problem(
                    point_id, f"{at}.values.{key}", f"{key!r} is not a state; allowed: {allowed}"
                )
            elif symbol not in spoint.symbols or isinstance(symbol, bool):
                allowed = ", ".join(f"{k} ({v})" for k, v in sorted(spoint.symbols.items()))
                self.problem(
                    point_id,
                    f"{at}.values.{key}",
                    f"{symbol!r} is not a symbol of {spoint.name}; allowed: {allowed}",
                )
            else:
                pairs.append((int(key), int(symbol)))
        return tuple(sorted(pairs))

    def _archive(
        self, raw: Any, block: dict[str, Any], name: str, local_id: str, point_id: str
    ) -> ArchiveSpec | None:
        every = block.get("archive_every_s")
        if raw is False or (every is None and raw is True):
            return None
        if isinstance(raw, dict):
            self._unknown_keys(raw, {"every_s"}, point_id, "archive.")
            every = raw.get("every_s", every)
        elif raw is not True:
            self.problem(point_id, "archive", "expected true, false or {every_s: N}")
            return None
        if not isinstance(every, int | float) or isinstance(every, bool) or every <= 0:
            self.problem(point_id, "archive.every_s", f"{every!r} must be a positive number")
            return None
        return ArchiveSpec(measurement=name, field=local_id, every_s=float(every))

    def _states(self, raw: Any, dtype: DataType, point_id: str) -> dict[int, str]:
        if dtype is not DataType.ENUM:
            if raw is not None:
                self.problem(point_id, "states", "only enum points have states")
            return {}
        if not isinstance(raw, dict) or not raw:
            self.problem(point_id, "states", "an enum point needs {value: name} states")
            return {}
        states: dict[int, str] = {}
        for key, label in raw.items():
            if not isinstance(key, int) or not 0 <= key <= 65535 or not isinstance(label, str):
                self.problem(
                    point_id, f"states.{key}", "expected an integer 0 .. 65535 mapped to a name"
                )
                continue
            if label in states.values():
                self.problem(point_id, f"states.{key}", f"state name '{label}' is used twice")
            states[key] = label
        return states

    def _check_table(self, points: list[Point], commands: Mapping[str, Command]) -> None:
        seen: dict[str, Point] = {}
        paths: dict[str, str] = {}
        for point in points:
            if point.id in seen:
                self.problem(point.id, "id", "duplicate id")
            seen[point.id] = point
            if point.opcua_path in paths and paths[point.opcua_path] != point.id:
                self.problem(
                    point.id,
                    "opcua",
                    f"browse path {point.opcua_path} is also used by '{paths[point.opcua_path]}'",
                )
            paths.setdefault(point.opcua_path, point.id)
            if point.writable and point.command is None:
                self.problem(
                    point.id, "command", "a writable point needs a command to route writes to"
                )
            if point.command is not None and point.command not in commands:
                self.problem(
                    point.id,
                    "command",
                    f"'{point.command}' is not a declared command; declared: {', '.join(sorted(commands))}",
                )
            if point.command is not None and not point.writable:
                self.problem(
                    point.id,
                    "access",
                    "a point with a command must be writable (read_write or write)",
                )
        self._check_overlaps(points)
        self._check_sunspec_targets(points)

    def _check_sunspec_targets(self, points: list[Point]) -> None:
        """Each SunSpec point of a device (the site, or node n) carries at most one point."""
        seen: dict[tuple[int | None, int, str], str] = {}
        for point in points:
            for ref in point.sunspec:
                key = (point.node, ref.model, ref.point)
                if key in seen:
                    self.problem(
                        point.id,
                        "sunspec",
                        f"model {ref.model} point {ref.point} already carries '{seen[key]}'",
                    )
                seen.setdefault(key, point.id)

    def _check_overlaps(self, points: list[Point]) -> None:
        mapped = sorted(
            ((p.modbus, p) for p in points if p.modbus is not None), key=lambda m: m[0].address
        )
        previous: tuple[ModbusMapping, Point] | None = None
        for modbus, point in mapped:
            if previous is not None and modbus.address <= previous[0].last_address:
                self.problem(
                    point.id,
                    "modbus.offset",
                    f"registers {modbus.address}..{modbus.last_address} overlap '{previous[1].id}' "
                    f"({previous[0].address}..{previous[0].last_address})",
                )
            if modbus.last_address > 65535:
                self.problem(
                    point.id, "modbus.offset", f"address {modbus.last_address} is above 65535"
                )
            if previous is None or modbus.last_address > previous[0].last_address:
                previous = (modbus, point)


# --------------------------------------------------------------------------- SunSpec models

#: Raw limits of the SunSpec value types, excluding each type's "not implemented" marker
#: (an accumulator's marker is 0, which stays a valid reading).
SUNSPEC_RAW_LIMITS: dict[str, tuple[float, float]] = {
    "int16": (-32767, 32767), "uint16": (0, 65534), "acc16": (0, 65535),
    "enum16": (0, 65534), "bitfield16": (0, 65534),
    "int32": (-(2**31) + 1, 2**31 - 1), "uint32": (0, 2**32 - 2), "acc32": (0, 2**32 - 1),
    "enum32": (0, 2**32 - 2), "bitfield32": (0, 2**32 - 2), "float32": (-3.4e38, 3.4e38),
    "int64": (-(2**63) + 1, 2**63 - 1), "uint64": (0, 2**64 - 2), "acc64": (0, 2**64 - 1),
}  # fmt: skip
SUNSPEC_SF_RANGE = range(-10, 11)


def sunspec_mismatch(
    spoint: SunSpecPointDef, dtype: DataType, unit: str, value_range: tuple[float, float] | None
) -> str | None:
    """Why a point of type `dtype` cannot be shown as `spoint`, or None if it can."""
    stype = spoint.type
    if stype not in SUNSPEC_VALUE_TYPES:
        return f"type {stype} carries no point value; allowed: {', '.join(SUNSPEC_VALUE_TYPES)}"
    allowed = _SUNSPEC_CARRIERS.get(stype[:-2])  # enum16 -> enum, bitfield32 -> bitfield
    if stype == "bitfield32":
        allowed = (DataType.BOOL, DataType.UINT16, DataType.UINT32)
    if allowed is not None:
        if dtype in allowed:
            return None
        return (
            f"{dtype.value} cannot be shown as {stype}; allowed: "
            f"{', '.join(d.value for d in allowed)} points"
        )
    return _sunspec_number_problem(spoint, dtype, unit, value_range)


def _sunspec_number_problem(
    spoint: SunSpecPointDef, dtype: DataType, unit: str, value_range: tuple[float, float] | None
) -> str | None:
    stype = spoint.type
    if dtype is DataType.ENUM:
        return f"an enum cannot be shown as the number {stype}; allowed: an enum16 point"
    factor = SUNSPEC_UNIT_FACTORS.get((unit, spoint.units))
    if factor is None:
        return f"unit {unit!r} cannot be shown in SunSpec unit {spoint.units!r}"
    low, high = value_range if value_range is not None else TYPE_RANGES[dtype]
    if sunspec_scale(stype, spoint.sf is not None, low * factor, high * factor) is None:
        return f"values {low:g} .. {high:g} {unit} do not fit {stype} at any scale factor"
    return None


# Which point types an enum or bit-field SunSpec point can carry (numbers take any but enum).
_SUNSPEC_CARRIERS: dict[str, tuple[DataType, ...]] = {
    "enum": (DataType.ENUM, DataType.BOOL),
    "bitfield": (DataType.BOOL, DataType.UINT16),
}


def sunspec_scale(
    stype: str, scaled: bool, low: float, high: float, floor: int = -10
) -> int | None:
    """The finest scale factor (>= floor) at which low .. high fits `stype`; 0 if unscaled.

    None when it does not fit (unscaled: at 10^0; scaled: at any factor up to 10^10).
    """
    raw_low, raw_high = SUNSPEC_RAW_LIMITS[stype]
    candidates = [sf for sf in SUNSPEC_SF_RANGE if sf >= floor] if scaled else [0]
    for sf in candidates:
        if raw_low <= low / 10.0**sf and high / 10.0**sf <= raw_high:
            return sf
    return None


@functools.cache
def sunspec_catalog() -> Mapping[int, SunSpecModelDef]:
    """The SunSpec models shipped in models/devices/sunspec (model_<id>.yaml), by id."""
    root = importlib.resources.files("appliance.models") / "devices" / "sunspec"
    models: dict[int, SunSpecModelDef] = {}
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.startswith("model_") and entry.name.endswith(".yaml"):
            model = _sunspec_model(
                entry.read_text(encoding="utf-8"), f"models/devices/sunspec/{entry.name}"
            )
            models[model.id] = model
    return models


def _sunspec_model(text: str, source: str) -> SunSpecModelDef:
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), int):
        raise ConfigError(f"{source}: expected a mapping with an integer id")
    points: list[SunSpecPointDef] = []
    offset = 2
    for index, entry in enumerate(doc.get("points") or []):
        where = f"{source}: points[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ConfigError(f"{where}: expected a mapping with a name")
        stype = str(entry.get("type"))
        size = entry.get("size") if stype == "string" else SUNSPEC_VALUE_TYPES.get(stype, 1)
        if not isinstance(size, int) or entry.get("offset") != offset:
            raise ConfigError(f"{where} ({entry['name']}): offset {offset} and a size expected")
        points.append(
            SunSpecPointDef(
                name=entry["name"],
                offset=offset,
                type=stype,
                size=size,
                units=str(entry.get("units", "")),
                sf=entry.get("sf"),
                writable=entry.get("access", "R") == "RW",
                symbols={int(k): str(v) for k, v in (entry.get("symbols") or {}).items()},
            )
        )
        offset += size
    if doc.get("length") != offset - 2:
        raise ConfigError(
            f"{source}: length {doc.get('length')!r}; the points add up to {offset - 2}"
        )
    return SunSpecModelDef(doc["id"], str(doc.get("name", "")), offset - 2, tuple(points))


def _instantiate(template: Point, node: int | None, base: int) -> Point:
    """Resolve a template for one node: id and browse path get the node number, address the base."""
    modbus = template.modbus
    if modbus is not None:
        modbus = replace(modbus, address=base + modbus.address)
    if node is None:
        return replace(template, modbus=modbus)
    archive = template.archive
    return replace(
        template,
        id=template.id.replace("{n}", str(node)),
        opcua_path=template.opcua_path.replace("{n}", str(node)),
        node=node,
        modbus=modbus,
        archive=archive,
    )
