"""Engineering units of the point table as OPC UA EUInformation (UNECE Recommendation 20).

OPC 10000-8 §5.6.3: `EngineeringUnits` carries the UNECE common code packed into an Int32
(`UnitId`) under the namespace below. Codes, symbols and names are those of the OPC
Foundation's `Schema/UNECE_to_OPCUA.csv` (UA-Nodeset); percent (P1) is in Recommendation 20
but not in that file's snapshot, so its UnitId is computed with the same packing rule.
"""

from __future__ import annotations

from dataclasses import dataclass

UNECE_NAMESPACE_URI = "http://www.opcfoundation.org/UA/units/un/cefact"


@dataclass(frozen=True, slots=True)
class Unit:
    code: str  # UNECE common code, e.g. WTT
    symbol: str  # the DisplayName clients show next to the value
    name: str  # the Description

    @property
    def unit_id(self) -> int:
        """The code packed as OPC UA wants it: one byte per character, first character highest."""
        return unece_unit_id(self.code)


def unece_unit_id(code: str) -> int:
    if not 1 <= len(code) <= 3 or not code.isascii():
        raise ValueError(f"{code!r} is not a UNECE common code")
    unit_id = 0
    for char in code:
        unit_id = (unit_id << 8) | ord(char)
    return unit_id


# Keyed by the `unit` strings models/points.yaml uses.
UNITS: dict[str, Unit] = {
    "W": Unit("WTT", "W", "watt"),
    "var": Unit("D44", "var", "var"),
    "V": Unit("VLT", "V", "volt"),
    "A": Unit("AMP", "A", "ampere"),
    "Hz": Unit("HTZ", "Hz", "hertz"),
    "kWh": Unit("KWH", "kW·h", "kilowatt hour"),
    "%": Unit("P1", "%", "percent"),
    "°C": Unit("CEL", "°C", "degree Celsius"),
    "s": Unit("SEC", "s", "second [unit of time]"),
    "ms": Unit("C26", "ms", "millisecond"),
}


def unit_for(symbol: str) -> Unit | None:
    """The unit of a table `unit` string; None for dimensionless points ("")."""
    if not symbol:
        return None
    unit = UNITS.get(symbol)
    if unit is None:
        raise KeyError(
            f"unit {symbol!r} has no UNECE code in appliance/northbound/opcua/units.py; "
            f"known: {', '.join(sorted(UNITS))}"
        )
    return unit
