"""Protocol-level simulators for the surplus-load actuators: real pymodbus 3.16 servers.

* `RelayModuleSimulator`: a Wellpro WP8024ADAM (see `appliance.drivers.relay_module`):
  coils 0..3 (RY1..RY4, FC 01/05/15), discrete inputs 0..7 (DI_01..DI_08, FC 02), holding
  registers 0x64/0x65 (address, line parameters; FC 03, read-only here).
* `PwmControllerSimulator`: the generic PWM controller of `appliance.drivers.pwm_heater`:
  one holding register (0..full scale, FC 03/06/16) at a configurable address.

Both answer 0x02 for unmapped addresses (and writes to read-only registers), 0x01 for
function codes the device does not have, 0x04 when a plant callback raises; requests for
another unit id get no answer, as on an RS485 line.

The simulators keep the *physical* output state (relay contacts, PWM output) apart from
pymodbus' register image: a write goes through the SimDevice ``action``, which moves the
physical state (unless a fault says otherwise) and reports it to the plant; every read
serves the physical state. pymodbus' write echo (FC 05/06) repeats the request, as a real
device does, so a stuck output is only visible in the read-back.

Faults (``sim.faults``, effective from the next request; the first four, and the transport,
are `appliance.simulation.devices.modbus_server`'s):

* ``silent``: no answer at all (the driver's DeviceTimeout);
* ``delay_s``: answer after this many seconds (ended early by `stop`);
* ``garbage``: an answer that does not fit the request (bit/byte count 0, a write echo with
  another address): a well-formed frame with nonsense content, so it reaches the driver;
* ``bad_crc``: RTU only, the CRC of every answer is wrong (pymodbus' framer discards such a
  frame, so the driver sees no answer); TCP has no CRC and ignores it;
* relay module: ``stuck_channels`` (1-based): writes are acknowledged, the contact stays;
* PWM controller: ``stuck`` (writes acknowledged, output unchanged) and ``out_of_range``
  (reads return 0xFFFF, beyond full scale);
* `drop_connections` closes every open TCP connection (RTU has none to drop).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.simulator import DataType, SimData, SimDevice

from appliance.drivers.pwm_heater import PwmRegister
from appliance.drivers.relay_module import FIRST_COIL, FIRST_INPUT, INPUT_COUNT, RELAY_COUNT
from appliance.simulation.devices.modbus_server import ModbusDeviceServer, ModbusFaults

_LOG = logging.getLogger(__name__)

_SINGLE_WRITES = frozenset({5, 6})  # pymodbus reads these back for the echo: one more action call
_ADDRESS_REGISTER = 0x0064  # WP8024: slave address
_LINE_REGISTER = 0x0065  # WP8024: 1..8 = 4800..38400 baud, 8N1 (1..4) or 8E1 (5..8)
_LINE_CODES = {("N", 4800): 1, ("N", 9600): 2, ("N", 19200): 3, ("N", 38400): 4}
_LINE_CODES |= {("E", 4800): 5, ("E", 9600): 6, ("E", 19200): 7, ("E", 38400): 8}


@dataclass
class RelayFaults(ModbusFaults):
    #: Relay channels (1..4) whose contact does not follow writes (the write is acknowledged).
    stuck_channels: set[int] = field(default_factory=set)


@dataclass
class PwmFaults(ModbusFaults):
    stuck: bool = False
    out_of_range: bool = False


class _SimulatedActuator(ModbusDeviceServer):
    """A device whose requests go to `_model`: writes move the physical state, reads serve it.

    pymodbus' echo of FC 05/06 (a second ``action`` call) is neither counted nor modelled.
    """

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """SimDevice hook, called after pymodbus' own address / read-only checks."""
        echo = set_values is None and function_code in _SINGLE_WRITES
        if not echo:
            self._count(function_code)
            await self._maybe_delay()
        try:
            if echo:
                return None  # the echo repeats the request, whatever the output did
            # ``address`` is the request's: a bit number for coils / inputs, else a register.
            return await self._model(function_code, address, current_registers, set_values)
        except Exception as exc:  # noqa: BLE001  # any plant callback failure is a device failure
            _LOG.warning("%s: plant callback failed, answering 0x04: %r", self._name, exc)
            return ExcCodes.DEVICE_FAILURE

    async def _model(
        self,
        function_code: int,
        address: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """Apply a write to the device model / refresh ``registers`` for a read."""
        raise NotImplementedError


def _bits_to_word(bits: tuple[bool, ...]) -> int:
    return sum(1 << i for i, bit in enumerate(bits) if bit)


# --------------------------------------------------------------------------- relay module


class RelayModuleSimulator(_SimulatedActuator):
    """A WP8024ADAM: ``on_change(relays)`` is told every contact change, ``inputs()`` is read
    at every FC 02 request (8 bools, DI_01 first, True = active).

    All relays start off (the module's state after power-up).
    """

    faults: RelayFaults

    def __init__(
        self,
        on_change: Callable[[tuple[bool, ...]], None],
        inputs: Callable[[], tuple[bool, ...]],
        *,
        unit_id: int = 1,
        name: str = "wp8024-sim",
    ) -> None:
        super().__init__(unit_id=unit_id, name=name)
        self._on_change = on_change
        self._inputs = inputs
        self._relays: tuple[bool, ...] = (False,) * RELAY_COUNT
        self.faults = RelayFaults()

    @property
    def relays(self) -> tuple[bool, ...]:
        """The contacts as they are (RY1 first), whatever was last written."""
        return self._relays

    def _device(self, *, parity: str | None, baudrate: int | None) -> SimDevice:
        line = (parity or "N", baudrate or 9600)  # TCP: the factory default line
        coils = [SimData(FIRST_COIL, values=[False] * RELAY_COUNT, datatype=DataType.BITS)]
        inputs = [
            SimData(
                FIRST_INPUT, values=[False] * INPUT_COUNT, datatype=DataType.BITS, readonly=True
            )
        ]
        holding = [
            SimData(
                _ADDRESS_REGISTER,
                values=[self._unit_id, _LINE_CODES.get(line, 0)],
                datatype=DataType.REGISTERS,
                readonly=True,  # changing address or baud rate is not simulated
            )
        ]
        # SimDevice's 4-tuple form needs a non-empty input register list; refused with 0x01.
        no_input_registers = [SimData(0, values=0, datatype=DataType.REGISTERS)]
        return SimDevice(
            id=self._unit_id,
            simdata=(coils, inputs, holding, no_input_registers),
            action=self._action,
        )

    def _refusal(self, request: ModbusPDU) -> ExcCodes | None:
        fc, address = request.function_code, request.address
        if fc in (3, 6, 16):
            return None  # pymodbus checks register addresses and read-only itself
        if fc == 1:
            span = (address, address + request.count, FIRST_COIL + RELAY_COUNT)
        elif fc == 2:
            span = (address, address + request.count, FIRST_INPUT + INPUT_COUNT)
        elif fc == 5:
            span = (address, address + 1, FIRST_COIL + RELAY_COUNT)
        elif fc == 15:
            span = (address, address + len(request.bits), FIRST_COIL + RELAY_COUNT)
        else:
            return ExcCodes.ILLEGAL_FUNCTION  # FC 04, 22, 23, diagnostics ...
        start, end, limit = span
        return None if 0 <= start < end <= limit else ExcCodes.ILLEGAL_ADDRESS

    async def _model(
        self,
        function_code: int,
        address: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        # One 16-bit word holds all coils (and one all inputs): registers[0].
        if function_code == 1:
            registers[0] = _bits_to_word(self._relays)
        elif function_code == 2:
            registers[0] = _bits_to_word(self._read_inputs())
        elif function_code in (5, 15) and set_values is not None:
            self._write(address, [bool(v) for v in set_values])
        return None

    def _read_inputs(self) -> tuple[bool, ...]:
        values = tuple(self._inputs())
        if len(values) != INPUT_COUNT or not all(isinstance(v, bool) for v in values):
            raise ValueError(f"inputs() must return {INPUT_COUNT} bools, got {values!r}")
        return values

    def _write(self, address: int, values: list[bool]) -> None:
        relays = list(self._relays)
        for offset, value in enumerate(values):
            index = address - FIRST_COIL + offset
            if index + 1 in self.faults.stuck_channels:
                _LOG.debug("%s: relay %d stuck, write ignored", self._name, index + 1)
                continue
            relays[index] = value
        new = tuple(relays)
        if new != self._relays:
            self._relays = new
            _LOG.debug("%s: relays now %s", self._name, new)
            self._on_change(new)


# --------------------------------------------------------------------------- PWM controller


class PwmControllerSimulator(_SimulatedActuator):
    """A PWM power controller with one holding register (0..full scale); ``on_change(pct)`` is
    told every change of the output level. Writes beyond full scale are refused (0x03).

    The output starts at 0 %.
    """

    faults: PwmFaults

    def __init__(
        self,
        on_change: Callable[[float], None],
        *,
        unit_id: int = 1,
        register: PwmRegister | None = None,
        name: str = "pwm-sim",
    ) -> None:
        super().__init__(unit_id=unit_id, name=name)
        self._on_change = on_change
        self._register = register or PwmRegister()
        self._raw = 0
        self.faults = PwmFaults()

    @property
    def level_pct(self) -> float:
        """The output level as it is, in percent of full scale."""
        return 100.0 * self._raw / self._register.full_scale

    @property
    def raw(self) -> int:
        return self._raw

    def _device(self, *, parity: str | None, baudrate: int | None) -> SimDevice:
        holding = [SimData(self._register.address, values=0, datatype=DataType.REGISTERS)]
        no_bits = [SimData(0, values=False, datatype=DataType.BITS)]
        return SimDevice(
            id=self._unit_id,
            simdata=(no_bits, list(no_bits), holding, [SimData(0, datatype=DataType.REGISTERS)]),
            action=self._action,
        )

    def _refusal(self, request: ModbusPDU) -> ExcCodes | None:
        return None if request.function_code in (3, 6, 16) else ExcCodes.ILLEGAL_FUNCTION

    async def _model(
        self,
        function_code: int,
        address: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        # The holding block starts at the register: registers[0] is the level.
        if set_values is None:
            registers[0] = 0xFFFF if self.faults.out_of_range else self._raw
            return None
        (value,) = (int(v) for v in set_values)
        if not 0 <= value <= self._register.full_scale:
            return ExcCodes.ILLEGAL_VALUE
        if self.faults.stuck:
            _LOG.debug("%s: output stuck, write of %d ignored", self._name, value)
        elif value != self._raw:
            self._raw = value
            self._on_change(self.level_pct)
        return None
