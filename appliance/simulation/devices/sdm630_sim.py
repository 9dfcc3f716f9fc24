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
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Literal

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusBaseServer, ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from appliance.drivers.base import MeterReading
from appliance.drivers.sdm630 import RegisterDef, Sdm630Map, encode_value, load_sdm630_map

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


class Sdm630Simulator:
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
        if not 1 <= unit_id <= 247:
            raise ValueError(f"unit_id must be 1..247, got {unit_id!r}")
        self._source = source
        self._unit_id = unit_id
        self._name = name
        self._serial_number = serial_number
        self._map = register_map or load_sdm630_map()
        self._servers: list[ModbusBaseServer] = []
        self._requests: Counter[int] = Counter()

    @property
    def name(self) -> str:
        return self._name

    @property
    def unit_id(self) -> int:
        return self._unit_id

    def request_count(self, function_code: int | None = None) -> int:
        """Requests that passed the address checks (all, or of one function code)."""
        if function_code is None:
            return sum(self._requests.values())
        return self._requests[function_code]

    def reset_request_count(self) -> None:
        self._requests.clear()

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve Modbus TCP; returns the bound port (useful with ``port=0``)."""
        server = ModbusTcpServer(
            self._device(baudrate=None),
            address=(host, port),
            trace_pdu=self._only_our_unit,  # type: ignore[arg-type]  # may return None
        )
        await self._listen(server, f"tcp://{host}:{port}")
        listener = server.transport
        if not isinstance(listener, asyncio.Server) or not listener.sockets:
            self._servers.remove(server)
            await self._shutdown(server)
            raise RuntimeError(f"{self._name}: pymodbus did not create a TCP listener")
        bound = int(listener.sockets[0].getsockname()[1])
        _LOG.info(
            "%s: serving Modbus TCP on %s:%d, unit %d", self._name, host, bound, self._unit_id
        )
        return bound

    async def start_rtu(
        self,
        serial_port: str,
        baudrate: int = 9600,
        *,
        parity: Literal["N", "E", "O"] = "N",
        stopbits: int = 1,
        bytesize: int = 8,
    ) -> None:
        """Serve Modbus RTU on a serial port (pymodbus' own default would be 19200)."""
        server = ModbusSerialServer(
            self._device(baudrate=baudrate),
            framer=FramerType.RTU,
            port=serial_port,
            baudrate=baudrate,
            parity=parity,
            stopbits=stopbits,
            bytesize=bytesize,
            trace_pdu=self._only_our_unit,  # type: ignore[arg-type]  # may return None
        )
        await self._listen(server, serial_port)
        _LOG.info(
            "%s: serving Modbus RTU on %s at %d baud, unit %d",
            self._name,
            serial_port,
            baudrate,
            self._unit_id,
        )

    async def stop(self) -> None:
        """Stop every server (closes their connections); safe to call more than once."""
        servers, self._servers = self._servers, []
        for server in servers:
            await self._shutdown(server)

    # ------------------------------------------------------------------ internals

    async def _listen(self, server: ModbusBaseServer, where: str) -> None:
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus: "Could not start listen"
            await self._shutdown(server)
            raise RuntimeError(f"{self._name}: cannot serve on {where}: {exc}") from exc
        self._servers.append(server)

    async def _shutdown(self, server: ModbusBaseServer) -> None:
        await server.shutdown()  # type: ignore[no-untyped-call]  # untyped in pymodbus 3.16.1
        _LOG.debug("%s: server %s stopped", self._name, server)

    def _only_our_unit(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU | None:
        """trace_pdu hook: drop requests for other unit ids (None = no response).

        Without it pymodbus 3.16.1 answers an unknown unit id with exception 0x04 (its
        SimCore raises KeyError, which the request handler turns into DEVICE_FAILURE).
        """
        if sending or pdu.dev_id == self._unit_id:
            return pdu
        _LOG.debug("%s: ignoring request for unit %d", self._name, pdu.dev_id)
        return None

    def _device(self, *, baudrate: int | None) -> SimDevice:
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
        self._requests[function_code] += 1
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
