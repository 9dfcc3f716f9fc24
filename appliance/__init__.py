"""PV + battery site appliance: acquisition, control, and its OPC UA / Modbus faces."""

__version__ = "0.1.0"
