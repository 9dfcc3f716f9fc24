"""The generated part of docs/opcua.md: the model's objects, variables and methods.

Rendered from the same model as the NodeSet (shipped table, one instance per templated
block), between two marker lines that the rest of the hand-written document surrounds.
"""

from __future__ import annotations

from collections.abc import Iterator

from appliance.config.schema import OpcUaFace as OpcUaFaceConfig
from appliance.northbound.opcua.model import (
    COMMANDS,
    InformationModel,
    NodeClass,
    NodeSpec,
    build_model,
    data_type_name,
)
from appliance.northbound.opcua.nodeset import NODESET_COUNTS, nodeset_table
from appliance.northbound.opcua.uatypes import ObjectIds
from appliance.northbound.opcua.units import unit_for
from appliance.points.table import PointTable

BEGIN = "<!-- BEGIN GENERATED: OPC UA model (python -m appliance.northbound.opcua generate) -->"
END = "<!-- END GENERATED: OPC UA model -->"

_VARIABLE_TYPES = {
    ObjectIds.AnalogUnitRangeType: "AnalogUnitRange",
    ObjectIds.AnalogUnitType: "AnalogUnit",
    ObjectIds.AnalogItemType: "AnalogItem",
    ObjectIds.TwoStateDiscreteType: "TwoStateDiscrete",
    ObjectIds.MultiStateValueDiscreteType: "MultiStateValueDiscrete",
    ObjectIds.BaseDataVariableType: "BaseDataVariable",
}
_ACCESS = {1: "read", 2: "write", 3: "read, write"}


def model_section() -> str:
    table = nodeset_table()
    model = build_model(table, OpcUaFaceConfig().namespace_uri)
    return "\n".join([BEGIN, *_render(model, table), END])


def replace_section(document: str, section: str) -> str:
    start, end = document.find(BEGIN), document.find(END)
    if start < 0 or end < start:
        raise ValueError("docs/opcua.md lacks the generated-section markers")
    return document[:start] + section + document[end + len(END) :]


def current_section(document: str) -> str:
    start, end = document.find(BEGIN), document.find(END)
    if start < 0 or end < start:
        return ""
    return document[start : end + len(END)]


def _render(model: InformationModel, table: PointTable) -> Iterator[str]:
    templated = ", ".join(f"`{block}`" for block in NODESET_COUNTS)
    yield ""
    yield (
        f"Namespace `{model.namespace_uri}` (the default of `faces.opcua.namespace_uri`). "
        f"Templated blocks ({templated}) are shown with their first instance; node *n* is "
        "the same object with *n* in its name (`Site/Battery2/...`). NodeIds are strings "
        "in that namespace: the dotted browse path below (`ns=<index>;s=Site.GridMeter."
        "AcActivePowerTotal`)."
    )
    by_parent: dict[str, list[NodeSpec]] = {}
    for node in model.nodes:
        if isinstance(node.parent, str):
            by_parent.setdefault(node.parent, []).append(node)
    objects = [
        n
        for n in model.nodes
        if n.node_class is NodeClass.OBJECT and n.node_id not in ("Site", COMMANDS)
    ]
    for obj in objects:
        type_name = str(obj.type_definition).removeprefix("Types.")
        yield ""
        yield f"### Site/{obj.browse_name} ({type_name}): {obj.description}"
        yield ""
        yield "| Variable | VariableType | DataType | Unit | EURange / states | Access | Description |"
        yield "|---|---|---|---|---|---|---|"
        for var in by_parent.get(obj.node_id, []):
            if var.point_id is not None:
                yield _variable_row(var, table)
    yield ""
    yield "### Site/Commands (methods)"
    yield ""
    yield "| Method | Inputs | Outputs | Routed to | Description |"
    yield "|---|---|---|---|---|"
    for method in model.methods:
        inputs = ", ".join(f"{a.name}: {data_type_name(a.data_type)}" for a in method.inputs)
        outputs = ", ".join(f"{a.name}: {data_type_name(a.data_type)}" for a in method.outputs)
        routed = ", ".join(f"`{p}`" for p in method.point_ids[:1])
        if method.templated:
            routed += " (by Node)"
        yield (
            f"| {method.browse_name} | {inputs or '-'} | {outputs or '-'} | {routed} "
            f"| {method.description} |"
        )


def _variable_row(var: NodeSpec, table: PointTable) -> str:
    assert var.point_id is not None  # noqa: S101 - only point variables are passed
    point = table[var.point_id]
    unit = unit_for(point.unit) if point.unit and point.type.value != "timestamp" else None
    unit_text = f"{unit.symbol} ({unit.code})" if unit else (point.unit or "-")
    if point.states:
        extent = ", ".join(f"{k} {v}" for k, v in sorted(point.states.items()))
    elif point.range is not None:
        extent = f"{point.range[0]:g} .. {point.range[1]:g}"
    else:
        extent = "-"
    variable_type = _VARIABLE_TYPES.get(int(var.type_definition or 0), "?")
    data_type = data_type_name(var.data_type or 0)
    access = _ACCESS.get(var.access_level, str(var.access_level))
    description = point.description.replace("|", "/")
    return (
        f"| {var.browse_name} | {variable_type} | {data_type} | {unit_text} | {extent} "
        f"| {access} | {description} |"
    )
