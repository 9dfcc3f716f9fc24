"""The OPC UA face (asyncua server): model, quality, commands and security; see face.py."""

from appliance.northbound.opcua.face import OpcUaFace

__all__ = ["OpcUaFace"]
