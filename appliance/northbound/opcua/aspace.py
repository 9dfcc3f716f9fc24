"""Put an `InformationModel` into a running asyncua address space.

The nodes go in through the NodeManagement service directly, in one batch: asyncua's
`add_variable` / `instantiate` helpers cost about a millisecond per node (and `instantiate`
seconds per object, FreeOpcUa/opcua-asyncio #97, #1605), and they copy the BrowseName into
the Description, which the model sets itself.
"""

from __future__ import annotations

from asyncua import ua
from asyncua.server.internal_server import InternalServer

from appliance.northbound.opcua.model import InformationModel, NodeClass, NodeRef, NodeSpec
from appliance.northbound.opcua.uatypes import ObjectIds, node_id


def ua_node_id(ref: NodeRef, namespace: int) -> ua.NodeId:
    return node_id(ref, 0 if isinstance(ref, int) else namespace)


class ModelLoadError(RuntimeError):
    """The model could not be added; names every node that failed and why."""


def load_model(iserver: InternalServer, model: InformationModel, namespace: int) -> None:
    items = [_add_item(node, namespace) for node in model.nodes]
    results = iserver.node_mgt_service.add_nodes(items)
    failures = [
        f"{node.node_id}: {result.StatusCode.name}"
        for node, result in zip(model.nodes, results, strict=True)
        if not result.StatusCode.is_good()
    ]
    rules = [
        ua.AddReferencesItem(
            SourceNodeId=ua_node_id(node.node_id, namespace),
            ReferenceTypeId=node_id(ObjectIds.HasModellingRule),
            IsForward=True,
            TargetNodeId=node_id(node.modelling_rule),
            TargetNodeClass=ua.NodeClass.Object,
        )
        for node in model.nodes
        if node.modelling_rule is not None
    ]
    for item, status in zip(rules, iserver.node_mgt_service.add_references(rules), strict=True):
        if not status.is_good():
            failures.append(f"{item.SourceNodeId.Identifier} modelling rule: {status.name}")
    if failures:
        raise ModelLoadError(f"{len(failures)} node(s) not added: {'; '.join(failures[:10])}")


def _add_item(node: NodeSpec, namespace: int) -> ua.AddNodesItem:
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = ua_node_id(node.node_id, namespace)
    item.BrowseName = ua.QualifiedName(node.browse_name, 0 if node.standard_name else namespace)
    item.ParentNodeId = ua_node_id(node.parent, namespace)
    item.ReferenceTypeId = node_id(node.reference)
    display = ua.LocalizedText(node.browse_name)
    description = ua.LocalizedText(node.description, "en")
    if node.node_class is NodeClass.OBJECT_TYPE:
        item.NodeClass = ua.NodeClass.ObjectType
        type_attrs = ua.ObjectTypeAttributes()
        type_attrs.DisplayName, type_attrs.Description = display, description
        type_attrs.IsAbstract = False
        item.NodeAttributes = type_attrs
    elif node.node_class is NodeClass.OBJECT:
        item.NodeClass = ua.NodeClass.Object
        object_attrs = ua.ObjectAttributes()
        object_attrs.DisplayName, object_attrs.Description = display, description
        object_attrs.EventNotifier = 0
        item.NodeAttributes = object_attrs
        item.TypeDefinition = _type_definition(node, namespace)
    elif node.node_class is NodeClass.METHOD:
        item.NodeClass = ua.NodeClass.Method
        method_attrs = ua.MethodAttributes()
        method_attrs.DisplayName, method_attrs.Description = display, description
        method_attrs.Executable = True
        method_attrs.UserExecutable = True
        item.NodeAttributes = method_attrs
    else:
        item.NodeClass = ua.NodeClass.Variable
        item.NodeAttributes = _variable_attributes(node, display, description)
        item.TypeDefinition = _type_definition(node, namespace)
    return item


def _type_definition(node: NodeSpec, namespace: int) -> ua.NodeId:
    if node.type_definition is None:
        raise ValueError(f"{node.node_id}: an object or variable needs a type definition")
    return ua_node_id(node.type_definition, namespace)


def _variable_attributes(
    node: NodeSpec, display: ua.LocalizedText, description: ua.LocalizedText
) -> ua.VariableAttributes:
    attrs = ua.VariableAttributes()
    attrs.DisplayName, attrs.Description = display, description
    if node.data_type is None:
        raise ValueError(f"{node.node_id}: a variable needs a data type")
    attrs.DataType = node_id(node.data_type)
    attrs.ValueRank = node.value_rank
    attrs.ArrayDimensions = [0] if node.value_rank == ua.ValueRank.OneDimension else []
    attrs.AccessLevel = node.access_level
    attrs.UserAccessLevel = node.access_level
    attrs.Historizing = False
    attrs.MinimumSamplingInterval = 0.0
    if node.value is not None and node.variant_type is not None:
        attrs.Value = ua.Variant(
            node.value,
            node.variant_type,
            is_array=node.value_rank == ua.ValueRank.OneDimension,
        )
    else:
        # Point variables start empty; the face writes Bad_WaitingForInitialData before it
        # starts serving, and the type check of later writes uses the DataType.
        attrs.Value = ua.Variant(None, ua.VariantType.Null)
    return attrs
