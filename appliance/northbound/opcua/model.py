"""The OPC UA information model of a site, derived from its point table.

Pure: a `PointTable` and a namespace URI in, an ordered list of node descriptions out. The
same description feeds the running server (`aspace.py`), the committed NodeSet2 XML
(`nodeset.py`) and the generated model section of docs/opcua.md (`docs.py`), so the three
cannot drift apart.

Layout (OPC 10000-8 Data Access types, OPC 34100 ECM browse names from the table):
  Types.<BlockType>                    ObjectType per block (`opcua_type`), HasComponent
                                       instance declarations with ModellingRule Mandatory
  Objects/Site                         the site
  Objects/Site/<Block>/<Point>         one variable per point; NodeId = dotted browse path
  Objects/Site/Commands/<Method>       one method per command of the table

Each point variable is typed by what it is: a flag is a TwoStateDiscreteType (Boolean), an
enum a MultiStateValueDiscreteType (UInt32 with EnumValues and ValueAsText), a value with a
unit and range an AnalogUnitRangeType (EURange + UNECE EngineeringUnits), a value with only
one of them AnalogUnitType / AnalogItemType, anything else (bit fields, counters without a
unit, times) a BaseDataVariableType. Measurements are Double, counters and bit fields UInt32.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from asyncua import ua

from appliance.northbound.opcua.uatypes import ObjectIds, node_id
from appliance.northbound.opcua.units import UNECE_NAMESPACE_URI, unit_for
from appliance.points.model import Access, DataType, Kind, Point
from appliance.points.table import PointTable
from appliance.store import Value

NodeRef = int | str
"""A node the model refers to: an int is a standard (namespace 0) numeric NodeId, a str a
string identifier in the appliance namespace."""

ID = ObjectIds
CURRENT_READ = ua.AccessLevel.CurrentRead.mask
CURRENT_WRITE = ua.AccessLevel.CurrentWrite.mask
MANDATORY = ID.ModellingRule_Mandatory
SITE = "Site"
COMMANDS = "Site.Commands"
TYPES = "Types"


class NodeClass(enum.Enum):
    OBJECT_TYPE = "UAObjectType"
    OBJECT = "UAObject"
    VARIABLE = "UAVariable"
    METHOD = "UAMethod"


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One node of the model; its DisplayName is its BrowseName."""

    node_class: NodeClass
    node_id: str
    browse_name: str
    parent: NodeRef
    reference: int  # reference type from the parent to this node
    description: str
    type_definition: NodeRef | None = None  # HasSubtype super type for an ObjectType
    modelling_rule: int | None = None  # set on instance declarations inside types
    data_type: int | None = None
    variant_type: ua.VariantType | None = None
    value: Any = None  # properties only; point variables start without a value
    value_rank: int = ua.ValueRank.Scalar
    access_level: int = CURRENT_READ
    point_id: str | None = None  # the point this variable publishes (instances only)
    standard_name: bool = False  # BrowseName in namespace 0 (EURange, InputArguments ...)


@dataclass(frozen=True, slots=True)
class MethodArg:
    name: str
    data_type: int
    description: str

    def argument(self) -> ua.Argument:
        return ua.Argument(
            Name=self.name,
            DataType=node_id(self.data_type),
            ValueRank=ua.ValueRank.Scalar,
            ArrayDimensions=[],
            Description=ua.LocalizedText(self.description),
        )


@dataclass(frozen=True, slots=True)
class CommandMethod:
    """A command of the table as a method under Site/Commands."""

    command: str
    browse_name: str
    description: str
    inputs: tuple[MethodArg, ...]
    outputs: tuple[MethodArg, ...]
    point_ids: tuple[str, ...]  # the points the command is routed to (by node for templates)
    templated: bool  # the first input selects the node (1-based)
    trigger_value: Value | None  # sent when the method has no value argument (ResetAlarms)

    @property
    def node_id(self) -> str:
        return f"{COMMANDS}.{self.browse_name}"


@dataclass(frozen=True)
class InformationModel:
    namespace_uri: str
    nodes: tuple[NodeSpec, ...]
    methods: tuple[CommandMethod, ...]
    value_as_text: dict[str, str] = field(default_factory=dict)  # point id -> ValueAsText node

    def point_variables(self) -> Iterator[NodeSpec]:
        return (n for n in self.nodes if n.point_id is not None)


@dataclass(frozen=True, slots=True)
class VariableKind:
    """How one point is typed in OPC UA."""

    type_definition: int
    data_type: int
    variant_type: ua.VariantType


_DATA_TYPES: dict[DataType, tuple[int, ua.VariantType]] = {
    DataType.BOOL: (ID.Boolean, ua.VariantType.Boolean),
    DataType.INT16: (ID.Int16, ua.VariantType.Int16),
    DataType.UINT16: (ID.UInt16, ua.VariantType.UInt16),
    DataType.INT32: (ID.Int32, ua.VariantType.Int32),
    DataType.UINT32: (ID.UInt32, ua.VariantType.UInt32),
    DataType.FLOAT32: (ID.Double, ua.VariantType.Double),
    DataType.FLOAT64: (ID.Double, ua.VariantType.Double),
    DataType.ENUM: (ID.UInt32, ua.VariantType.UInt32),
    DataType.TIMESTAMP: (ID.DateTime, ua.VariantType.DateTime),
}


def variable_kind(point: Point) -> VariableKind:
    data_type, variant_type = _DATA_TYPES[point.type]
    if point.type is DataType.BOOL:
        type_definition = ID.TwoStateDiscreteType
    elif point.type is DataType.ENUM:
        type_definition = ID.MultiStateValueDiscreteType
    elif point.type is DataType.TIMESTAMP:
        type_definition = ID.BaseDataVariableType
    else:
        has_unit = unit_for(point.unit) is not None
        has_range = point.range is not None
        if has_unit and has_range:
            type_definition = ID.AnalogUnitRangeType
        elif has_unit:
            type_definition = ID.AnalogUnitType
        elif has_range:
            type_definition = ID.AnalogItemType
        else:
            type_definition = ID.BaseDataVariableType
    return VariableKind(type_definition, data_type, variant_type)


def browse_name(point: Point) -> str:
    return point.opcua_path.rsplit("/", 1)[1]


def object_path(point: Point) -> str:
    return point.opcua_path.rsplit("/", 1)[0]


def build_model(table: PointTable, namespace_uri: str) -> InformationModel:
    """The whole model of a site: types for its blocks, its instances, its commands."""
    builder = _Builder()
    for block, templates in _block_templates(table):
        builder.object_type(table.blocks[block].opcua_type, table.blocks[block].label, templates)
    builder.instances(table)
    methods = tuple(command_methods(table))
    builder.commands(methods)
    return InformationModel(
        namespace_uri, tuple(builder.nodes), methods, dict(builder.value_as_text)
    )


def _block_templates(table: PointTable) -> Iterator[tuple[str, list[Point]]]:
    """Each block present in the table with the points of its first instance."""
    for block in table.blocks:
        points = table.in_block(block)
        if points:
            first = points[0].node
            yield block, [p for p in points if p.node == first]


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[NodeSpec] = []
        self.value_as_text: dict[str, str] = {}
        self._objects: set[str] = set()

    def object_type(self, name: str, label: str, templates: list[Point]) -> None:
        type_id = f"{TYPES}.{name}"
        self.nodes.append(
            NodeSpec(
                NodeClass.OBJECT_TYPE,
                type_id,
                name,
                parent=ID.BaseObjectType,
                reference=ID.HasSubtype,
                description=f"{label}: the published points of one {label.lower()}.",
            )
        )
        for point in templates:
            self.variable(point, type_id, f"{type_id}.{browse_name(point)}", declaration=True)

    def instances(self, table: PointTable) -> None:
        for point in table:
            parent = object_path(point).replace("/", ".")
            self._object_chain(parent, table, point)
            self.variable(point, parent, point.opcua_node_id, declaration=False)

    def _object_chain(self, node_id: str, table: PointTable, point: Point) -> None:
        """Create the objects from Site down to the point's block object, once each."""
        parts = node_id.split(".")
        for depth in range(1, len(parts) + 1):
            current = ".".join(parts[:depth])
            if current in self._objects:
                continue
            self._objects.add(current)
            is_block = current == node_id
            info = table.blocks[point.block]
            label = f"{info.label} {point.node}" if point.node is not None else info.label
            self.nodes.append(
                NodeSpec(
                    NodeClass.OBJECT,
                    current,
                    parts[depth - 1],
                    parent=".".join(parts[: depth - 1]) if depth > 1 else ID.ObjectsFolder,
                    reference=ID.HasComponent if depth > 1 else ID.Organizes,
                    description=label if is_block else "The PV + battery site and its devices.",
                    type_definition=f"{TYPES}.{info.opcua_type}" if is_block else ID.BaseObjectType,
                )
            )

    def variable(self, point: Point, parent: str, node_id: str, *, declaration: bool) -> None:
        kind = variable_kind(point)
        access = 0 if point.access is Access.WRITE else CURRENT_READ
        if point.writable:
            access |= CURRENT_WRITE
        rule = MANDATORY if declaration else None
        self.nodes.append(
            NodeSpec(
                NodeClass.VARIABLE,
                node_id,
                browse_name(point),
                parent=parent,
                reference=ID.HasComponent,
                description=point.description,
                type_definition=kind.type_definition,
                modelling_rule=rule,
                data_type=kind.data_type,
                variant_type=kind.variant_type,
                access_level=access,
                point_id=None if declaration else point.id,
            )
        )
        for name, description, data_type, value, rank in _properties(point, kind):
            prop_id = f"{node_id}.{name}"
            if name == "ValueAsText" and not declaration:
                self.value_as_text[point.id] = prop_id
            self.nodes.append(
                NodeSpec(
                    NodeClass.VARIABLE,
                    prop_id,
                    name,
                    parent=node_id,
                    reference=ID.HasProperty,
                    description=description,
                    type_definition=ID.PropertyType,
                    modelling_rule=rule,
                    data_type=data_type,
                    variant_type=ua.VariantType.ExtensionObject
                    if data_type in (ID.Range, ID.EUInformation, ID.EnumValueType)
                    else ua.VariantType.LocalizedText,
                    value=value,
                    value_rank=rank,
                    standard_name=True,
                )
            )

    def commands(self, methods: Iterable[CommandMethod]) -> None:
        self.nodes.append(
            NodeSpec(
                NodeClass.OBJECT,
                COMMANDS,
                "Commands",
                parent=SITE,
                reference=ID.HasComponent,
                description=(
                    "Commands to the control core. Each call is checked by the core and "
                    "answered Good or with the specific Bad status of its rejection."
                ),
                type_definition=ID.BaseObjectType,
            )
        )
        for method in methods:
            self.nodes.append(
                NodeSpec(
                    NodeClass.METHOD,
                    method.node_id,
                    method.browse_name,
                    parent=COMMANDS,
                    reference=ID.HasComponent,
                    description=method.description,
                )
            )
            for name, args in (
                ("InputArguments", method.inputs),
                ("OutputArguments", method.outputs),
            ):
                if not args:
                    continue
                self.nodes.append(
                    NodeSpec(
                        NodeClass.VARIABLE,
                        f"{method.node_id}.{name}",
                        name,
                        parent=method.node_id,
                        reference=ID.HasProperty,
                        description=f"The {name[:-9].lower()} arguments of {method.browse_name}.",
                        type_definition=ID.PropertyType,
                        data_type=ID.Argument,
                        variant_type=ua.VariantType.ExtensionObject,
                        value=[arg.argument() for arg in args],
                        value_rank=ua.ValueRank.OneDimension,
                        standard_name=True,
                    )
                )


_Property = tuple[str, str, int, Any, int]


def _properties(point: Point, kind: VariableKind) -> list[_Property]:
    """The mandatory (and applicable optional) properties of the point's variable type."""
    scalar = ua.ValueRank.Scalar
    props: list[_Property] = []
    if kind.type_definition == ID.TwoStateDiscreteType:
        props.append(
            ("FalseState", "Text shown for false.", ID.LocalizedText, _text("False"), scalar)
        )
        props.append(("TrueState", "Text shown for true.", ID.LocalizedText, _text("True"), scalar))
    elif kind.type_definition == ID.MultiStateValueDiscreteType:
        values = [
            ua.EnumValueType(Value=key, DisplayName=_text(name), Description=_text(name))
            for key, name in sorted(point.states.items())
        ]
        props.append(
            (
                "EnumValues",
                "The states: value and name.",
                ID.EnumValueType,
                values,
                ua.ValueRank.OneDimension,
            )
        )
        props.append(
            ("ValueAsText", "The name of the current state.", ID.LocalizedText, _text(""), scalar)
        )
    else:
        if point.range is not None:
            low, high = point.range
            props.append(
                (
                    "EURange",
                    "Range the value is expected in; outside it the status is Uncertain_EngineeringUnitsExceeded.",
                    ID.Range,
                    ua.Range(Low=low, High=high),
                    scalar,
                )
            )
        unit = unit_for(point.unit) if point.type is not DataType.TIMESTAMP else None
        if unit is not None:
            props.append(
                (
                    "EngineeringUnits",
                    f"Unit of the value: {unit.name} (UNECE {unit.code}).",
                    ID.EUInformation,
                    ua.EUInformation(
                        NamespaceUri=UNECE_NAMESPACE_URI,
                        UnitId=unit.unit_id,
                        DisplayName=_text(unit.symbol),
                        Description=_text(unit.name),
                    ),
                    scalar,
                )
            )
    return props


def _text(text: str) -> ua.LocalizedText:
    return ua.LocalizedText(text, "en")


# --------------------------------------------------------------------------- commands

_DATA_TYPE_NAMES = {
    ID.Boolean: "Boolean",
    ID.UInt16: "UInt16",
    ID.UInt32: "UInt32",
    ID.Int16: "Int16",
    ID.Int32: "Int32",
    ID.Double: "Double",
    ID.DateTime: "DateTime",
}


def method_name(command: str) -> str:
    """`set_grid_target` -> `SetGridTarget`."""
    return "".join(part.capitalize() for part in command.split("_"))


def command_methods(table: PointTable) -> Iterator[CommandMethod]:
    """One method per command that routes to at least one point of the site."""
    for name, command in table.commands.items():
        points = [p for p in table if p.command == name]
        if not points:
            continue  # e.g. surplus loads on a site without any: nothing to command
        templated = points[0].node is not None
        if not templated and len(points) > 1:
            raise ValueError(f"command '{name}' routes to {len(points)} points; a method needs one")
        value_point = points[0]
        kind = variable_kind(value_point)
        inputs: list[MethodArg] = []
        if templated:
            block = table.blocks[value_point.block]
            nodes = [p.node for p in points if p.node is not None]
            inputs.append(
                MethodArg(
                    "Node",
                    ID.UInt32,
                    f"Which {block.label.lower()} (1 .. {max(nodes)}).",
                )
            )
        trigger: Value | None = None
        if value_point.kind is Kind.COMMAND and value_point.type is DataType.BOOL:
            trigger = True  # a trigger: calling the method is the action
        else:
            inputs.append(
                MethodArg(browse_name(value_point), kind.data_type, _argument_text(value_point))
            )
        outputs = _heartbeat_outputs(table) if name == "heartbeat" else ()
        yield CommandMethod(
            command=name,
            browse_name=method_name(name),
            description=command.description,
            inputs=tuple(inputs),
            outputs=outputs,
            point_ids=tuple(p.id for p in points),
            templated=templated,
            trigger_value=trigger,
        )


def _heartbeat_outputs(table: PointTable) -> tuple[MethodArg, ...]:
    outputs = []
    if "appliance.alive_counter" in table:
        outputs.append(
            MethodArg(
                "AliveCounter",
                ID.UInt32,
                "The control core's alive counter: it keeps counting while the core runs.",
            )
        )
    outputs.append(
        MethodArg(
            "HeartbeatTimeout",
            ID.Double,
            "Seconds without a heartbeat after which the site falls back to stop.",
        )
    )
    return tuple(outputs)


def _argument_text(point: Point) -> str:
    text = point.description
    if point.states:
        states = ", ".join(f"{k} = {v}" for k, v in sorted(point.states.items()))
        return f"{text} States: {states}."
    details = []
    if point.unit:
        details.append(f"unit {point.unit}")
    if point.range is not None:
        details.append(f"range {point.range[0]:g} .. {point.range[1]:g}")
    return f"{text} ({', '.join(details)})" if details else text


def data_type_name(data_type: int) -> str:
    return _DATA_TYPE_NAMES.get(data_type, f"i={data_type}")
