"""The Modbus slave face: SunSpec-discoverable, commands through the core, TCP and RTU."""

from appliance.northbound.modbus.face import ModbusFace

__all__ = ["ModbusFace"]
