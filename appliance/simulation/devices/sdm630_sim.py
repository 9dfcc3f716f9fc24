"""Protocol-level Eastron SDM630 simulator: a real pymodbus 3.16 server (SimDevice/SimData).

Serves the map of ``models/devices/sdm630.yaml`` (the same table the driver decodes):

* input registers (FC 04): refreshed from ``source()`` inside the SimDevice ``action`` on
  every read, so one response is one consistent snapshot (never half old / half new);
  registers without a MeterReading field are derived (apparent power, averages, angles) or 0;
  undocumented gaps inside the map's read blocks read as 0;
* holding registers (FC 03): the commissioning registers of section 1.3, read-only;
* anything else: exception 0x02 (unmapped address, or a write), 0x01 (coil / discrete input
  functions), 0x04 if ``source()`` raises or returns a value the register cannot hold;
* requests for another unit id get no answer, as on an RS485 line.

Transport, request counts and faults (``sim.faults``) are those of
`appliance.simulation.devices.modbus_server`.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterable

from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimData, SimDevice

from appliance.drivers.base import MeterReading
from appliance.drivers.sdm630 import RegisterDef, Sdm630Map, encode_value, load_sdm630_map
from appliance.simulation.devices.modbus_server import ModbusDeviceServer

_LOG = logging.getLogger(__name__)

_FC_READ_INPUT = 4
_BIT_FUNCTIONS = frozenset({1, 2, 5, 15})  # coils / discrete inputs: the meter has none
_BAUD_CODES = {2400: 0, 4800: 1, 9600: 2, 19200: 3, 38400: 4}  # holding register 0x001C
_SIM_TYPES = {"float32": DataType.FLOAT32, "uint32": DataType.UINT32}


def _apparent_power(reading: MeterReading, phase: int) -> float:
    i = phase - 1
    return math.hypot(reading.active_power_w[i], reading.reactive_power_var[i])


def _phase_angle(reading: MeterReading, phase: int) -> float:
    i = phase - 1
    return math.degrees(math.atan2(reading.reactive_power_var[i], reading.active_power_w[i]))


# Input registers the driver does not decode, computed from the reading for realism.
_DERIVED: dict[str, Callable[[MeterReading], float]] = {
    **{f"apparent_power_l{n}": functools.partial(_apparent_power, phase=n) for n in (1, 2, 3)},
    **{f"phase_angle_l{n}": functools.partial(_phase_angle, phase=n) for n in (1, 2, 3)},
    "average_voltage_ln": lambda r: sum(r.voltage_v) / 3,
    "average_current": lambda r: sum(r.current_a) / 3,
    "sum_current": lambda r: sum(r.current_a),
    "total_apparent_power": lambda r: sum(_apparent_power(r, n) for n in (1, 2, 3)),
    "total_phase_angle": lambda r: math.degrees(
        math.atan2(r.total_reactive_power_var, r.total_active_power_w)
    ),
}


def _register_value(reg: RegisterDef, reading: MeterReading) -> float:
    if reg.field is None:
        derive = _DERIVED.get(reg.name)
        return derive(reading) if derive else 0.0
    value = getattr(reading, reg.field)
    return float(value[reg.phase - 1] if reg.phase is not None else value)


def _runs(addresses: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted addresses -> contiguous (start, count) runs."""
    runs: list[tuple[int, int]] = []
    for address in sorted(set(addresses)):
        if runs and runs[-1][0] + runs[-1][1] == address:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((address, 1))
    return runs


class Sdm630Simulator(ModbusDeviceServer):
    """An SDM630 on Modbus TCP and/or RTU; values come from ``source()`` at each read.

    Several servers (e.g. one TCP and one RTU) may run at once; `stop` ends them all.
    """

    def __init__(
        self,
        source: Callable[[], MeterReading],
        *,
        unit_id: int = 1,
        name: str = "sdm630-sim",
        serial_number: int = 12345678,
        register_map: Sdm630Map | None = None,
    ) -> None:
        super().__init__(unit_id=unit_id, name=name)
        self._source = source
        self._serial_number = serial_number
        self._map = register_map or load_sdm630_map()

    # ------------------------------------------------------------------ internals

    def _device(self, *, parity: str | None, baudrate: int | None) -> SimDevice:
        holding_values = {"node_address": float(self._unit_id)}
        if baudrate in _BAUD_CODES:
            holding_values["baud_rate"] = float(_BAUD_CODES[baudrate])
        holding = [
            SimData(
                reg.address,
                values=self._holding_value(reg, holding_values),
                datatype=_SIM_TYPES[reg.type],
                readonly=True,
            )
            for reg in self._map.holding_registers
        ]
        # Input registers: one REGISTERS run per contiguous range of valid addresses; the
        # action writes the values. Gaps between runs are invalid (exception 0x02).
        valid = {a for reg in self._map.input_registers for a in range(reg.address, reg.end)}
        valid |= {a for block in self._map.read_blocks for a in range(block.start, block.end)}
        inputs = [
            SimData(start, count=count, values=0, datatype=DataType.REGISTERS, readonly=True)
            for start, count in _runs(valid)
        ]
        # SimDevice's 4-tuple form needs non-empty coil / discrete input lists (an empty list
        # raises IndexError); one dummy bit each, refused in the action with 0x01.
        no_bits = [SimData(0, values=False, datatype=DataType.BITS)]
        return SimDevice(
            id=self._unit_id,
            simdata=(no_bits, list(no_bits), holding, inputs),
            action=self._action,
        )

    def _holding_value(self, reg: RegisterDef, overrides: dict[str, float]) -> int | float:
        if reg.name == "serial_number":
            return int(self._serial_number)
        value = overrides.get(reg.name, reg.default if reg.default is not None else 0.0)
        return int(value) if reg.type == "uint32" else float(value)

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """SimDevice hook, called after pymodbus' address / read-only checks."""
        if function_code in _BIT_FUNCTIONS:
            return ExcCodes.ILLEGAL_FUNCTION
        if set_values is not None:  # every register is read-only; defensive
            return ExcCodes.ILLEGAL_ADDRESS
        self._count(function_code)
        await self._maybe_delay()
        if function_code == _FC_READ_INPUT:
            # No await below: the whole image is replaced before pymodbus slices the answer.
            try:
                reading = self._source()
                image = [
                    (reg.address - start_address, encode_value(reg, _register_value(reg, reading)))
                    for reg in self._map.input_registers
                ]
            except Exception as exc:  # noqa: BLE001  # any source failure is a device failure
                _LOG.warning("%s: source failed, answering 0x04: %r", self._name, exc)
                return ExcCodes.DEVICE_FAILURE
            for offset, words in image:
                current_registers[offset : offset + len(words)] = words
        _LOG.debug("%s: FC%02d 0x%04X+%d served", self._name, function_code, address, count)
        return None
