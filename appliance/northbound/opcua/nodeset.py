"""The information model as an OPC UA NodeSet2 XML document (OPC 10000-6 Annex F).

Written from the same `InformationModel` the server loads, with a `<Models>` element that
names the model and the base model it needs (asyncua's own exporter writes none, and
NodeSet consumers such as the UA Cloud Library or UaModeler want it).

The committed file, models/opcua/appliance.NodeSet2.xml, describes the shipped point table
with ONE instance of each templated block (Battery1, Inverter1, SurplusLoad1): the types are
complete, further nodes are identical instances under Site with the next number. It uses the
default namespace URI of the configuration schema; a site that configures another
`faces.opcua.namespace_uri` serves the same nodes under that URI. Regenerate it with

    python -m appliance.northbound.opcua generate
"""

from __future__ import annotations

import functools
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from asyncua import ua

import appliance
from appliance.config.schema import OpcUaFace as OpcUaFaceConfig
from appliance.northbound.opcua.model import (
    InformationModel,
    NodeClass,
    NodeRef,
    NodeSpec,
    build_model,
)
from appliance.northbound.opcua.uatypes import ObjectIds
from appliance.points.table import PointTable, shipped_point_table

UA_NS = "http://opcfoundation.org/UA/2011/03/UANodeSet.xsd"
TYPES_NS = "http://opcfoundation.org/UA/2008/02/Types.xsd"
BASE_MODEL_URI = "http://opcfoundation.org/UA/"
# AnalogUnitRangeType and MultiStateValueDiscreteType with EnumValues need a 1.05 base model.
BASE_MODEL_VERSION = "1.05.02"
BASE_MODEL_DATE = "2022-11-01T00:00:00Z"
NODESET_PATH = Path("models/opcua/appliance.NodeSet2.xml")

#: One instance per templated block in the published NodeSet (see the module docstring).
NODESET_COUNTS = {"battery": 1, "inverter": 1, "surplus": 1}

_ALIASES: dict[str, int] = {
    "Boolean": ObjectIds.Boolean,
    "Int16": ObjectIds.Int16,
    "UInt16": ObjectIds.UInt16,
    "Int32": ObjectIds.Int32,
    "UInt32": ObjectIds.UInt32,
    "Double": ObjectIds.Double,
    "DateTime": ObjectIds.DateTime,
    "LocalizedText": ObjectIds.LocalizedText,
    "Range": ObjectIds.Range,
    "EUInformation": ObjectIds.EUInformation,
    "EnumValueType": ObjectIds.EnumValueType,
    "Argument": ObjectIds.Argument,
    "Organizes": ObjectIds.Organizes,
    "HasComponent": ObjectIds.HasComponent,
    "HasProperty": ObjectIds.HasProperty,
    "HasSubtype": ObjectIds.HasSubtype,
    "HasTypeDefinition": ObjectIds.HasTypeDefinition,
    "HasModellingRule": ObjectIds.HasModellingRule,
}
_ALIAS_OF = {number: name for name, number in _ALIASES.items()}
_ENCODINGS: dict[type, int] = {
    ua.Range: ObjectIds.Range_Encoding_DefaultXml,
    ua.EUInformation: ObjectIds.EUInformation_Encoding_DefaultXml,
    ua.EnumValueType: ObjectIds.EnumValueType_Encoding_DefaultXml,
    ua.Argument: ObjectIds.Argument_Encoding_DefaultXml,
}


def nodeset_table() -> PointTable:
    return shipped_point_table().for_site(NODESET_COUNTS)


@functools.cache
def shipped_nodeset_xml() -> str:
    """The NodeSet of the shipped table, as committed in models/opcua/."""
    namespace_uri = OpcUaFaceConfig().namespace_uri
    return nodeset_xml(build_model(nodeset_table(), namespace_uri), appliance.__version__)


def nodeset_xml(model: InformationModel, version: str) -> str:
    ET.register_namespace("", UA_NS)
    ET.register_namespace("uax", TYPES_NS)
    root = ET.Element(_ua("UANodeSet"))
    uris = ET.SubElement(root, _ua("NamespaceUris"))
    ET.SubElement(uris, _ua("Uri")).text = model.namespace_uri
    models = ET.SubElement(root, _ua("Models"))
    own = ET.SubElement(models, _ua("Model"), ModelUri=model.namespace_uri, Version=version)
    ET.SubElement(
        own,
        _ua("RequiredModel"),
        ModelUri=BASE_MODEL_URI,
        Version=BASE_MODEL_VERSION,
        PublicationDate=BASE_MODEL_DATE,
    )
    aliases = ET.SubElement(root, _ua("Aliases"))
    for name, number in _ALIASES.items():
        ET.SubElement(aliases, _ua("Alias"), Alias=name).text = f"i={number}"
    for node in model.nodes:
        root.append(_node(node))
    ET.indent(root, space="  ")
    body = ET.tostring(root, encoding="unicode")
    return f'<?xml version="1.0" encoding="utf-8"?>\n{body}\n'


def _ua(tag: str) -> str:
    return f"{{{UA_NS}}}{tag}"


def _t(tag: str) -> str:
    return f"{{{TYPES_NS}}}{tag}"


def _ref(ref: NodeRef) -> str:
    return f"i={ref}" if isinstance(ref, int) else f"ns=1;s={ref}"


def _node(node: NodeSpec) -> ET.Element:
    name = node.browse_name if node.standard_name else f"1:{node.browse_name}"
    attrs = {"NodeId": _ref(node.node_id), "BrowseName": name}
    if node.node_class is not NodeClass.OBJECT_TYPE:
        attrs["ParentNodeId"] = _ref(node.parent)
    if node.node_class is NodeClass.VARIABLE:
        assert node.data_type is not None  # noqa: S101 - the model always types variables
        attrs["DataType"] = _ALIAS_OF.get(node.data_type, f"i={node.data_type}")
        if node.value_rank != ua.ValueRank.Scalar:
            attrs["ValueRank"] = str(int(node.value_rank))
            attrs["ArrayDimensions"] = "0"
        if node.access_level != 1:
            attrs["AccessLevel"] = str(node.access_level)
    element = ET.Element(_ua(node.node_class.value), attrs)
    ET.SubElement(element, _ua("DisplayName")).text = node.browse_name
    ET.SubElement(element, _ua("Description")).text = node.description
    refs = ET.SubElement(element, _ua("References"))
    parent_ref = ET.SubElement(
        refs, _ua("Reference"), ReferenceType=_ALIAS_OF[node.reference], IsForward="false"
    )
    parent_ref.text = _ref(node.parent)
    if node.type_definition is not None and node.node_class is not NodeClass.OBJECT_TYPE:
        ET.SubElement(refs, _ua("Reference"), ReferenceType="HasTypeDefinition").text = _ref(
            node.type_definition
        )
    if node.modelling_rule is not None:
        ET.SubElement(refs, _ua("Reference"), ReferenceType="HasModellingRule").text = _ref(
            node.modelling_rule
        )
    if node.value is not None:
        value = ET.SubElement(element, _ua("Value"))
        value.append(_value(node.value))
    return element


def _value(value: Any) -> ET.Element:
    if isinstance(value, list):
        if all(isinstance(v, ua.LocalizedText) for v in value):
            items = ET.Element(_t("ListOfLocalizedText"))
        else:
            items = ET.Element(_t("ListOfExtensionObject"))
        for item in value:
            items.append(_value(item))
        return items
    if isinstance(value, ua.LocalizedText):
        return _text(_t("LocalizedText"), value)
    encoding = _ENCODINGS.get(type(value))
    if encoding is None:
        raise TypeError(f"no NodeSet encoding for {type(value).__name__}")
    ext = ET.Element(_t("ExtensionObject"))
    type_id = ET.SubElement(ext, _t("TypeId"))
    ET.SubElement(type_id, _t("Identifier")).text = f"i={encoding}"
    ET.SubElement(ext, _t("Body")).append(_structure(value))
    return ext


def _structure(value: Any) -> ET.Element:
    element = ET.Element(_t(type(value).__name__))
    if isinstance(value, ua.Range):
        ET.SubElement(element, _t("Low")).text = _number(value.Low)
        ET.SubElement(element, _t("High")).text = _number(value.High)
    elif isinstance(value, ua.EUInformation):
        ET.SubElement(element, _t("NamespaceUri")).text = value.NamespaceUri
        ET.SubElement(element, _t("UnitId")).text = str(value.UnitId)
        element.append(_text(_t("DisplayName"), value.DisplayName))
        element.append(_text(_t("Description"), value.Description))
    elif isinstance(value, ua.EnumValueType):
        ET.SubElement(element, _t("Value")).text = str(value.Value)
        element.append(_text(_t("DisplayName"), value.DisplayName))
        element.append(_text(_t("Description"), value.Description))
    elif isinstance(value, ua.Argument):
        ET.SubElement(element, _t("Name")).text = value.Name
        data_type = ET.SubElement(element, _t("DataType"))
        ET.SubElement(data_type, _t("Identifier")).text = value.DataType.to_string()
        ET.SubElement(element, _t("ValueRank")).text = str(int(value.ValueRank))
        ET.SubElement(element, _t("ArrayDimensions"))
        element.append(_text(_t("Description"), value.Description))
    return element


def _text(tag: str, text: ua.LocalizedText) -> ET.Element:
    element = ET.Element(tag)
    ET.SubElement(element, _t("Locale")).text = text.Locale or ""
    ET.SubElement(element, _t("Text")).text = text.Text or ""
    return element


def _number(value: float) -> str:
    if math.isfinite(value) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))
