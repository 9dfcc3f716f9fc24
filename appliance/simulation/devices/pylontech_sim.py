"""Protocol-level Pylontech CAN BMS simulator: the broadcast frames on a python-can bus.

Every ``period_s`` (1 s like a real pack and Battery-Emulator) it sends 0x351, 0x355, 0x356,
0x359, 0x35C, 0x35E and, with ``extension_frames``, 0x373, encoded with the same DBC the
driver decodes (``models/devices/pylontech.dbc``) from the plain values ``source()`` returns.
The bus can be any python-can bus: ``virtual`` inside one process, or the channel bus of
`SocketcandServer` to reach the appliance in another process.

Faults (`PylontechFaults`, take effect from the next cycle):

* ``silent``: nothing is sent (the driver reports DeviceUnavailable once stale);
* ``garbage``: every frame goes out too short for its id, filled with random bytes (the
  driver counts them as malformed and reports DeviceProtocolError);
* ``out_of_range``: SoC 150 % (DeviceProtocolError);
* ``delay_s``: added to the period (slow; DeviceUnavailable when period + delay exceeds the
  driver's ``stale_after_s``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import can
from cantools.database.can import Database as CanDatabase

from appliance.drivers.pylontech_can import (
    ID_CELL_EXTREMES,
    ID_FLAGS,
    ID_LIMITS,
    ID_MANUFACTURER,
    ID_MEASUREMENTS,
    ID_REQUEST,
    ID_SOC_SOH,
    MIN_DATA_LENGTH,
    RequestFlag,
    WireCurrentSign,
    load_pylontech_dbc,
)
from appliance.simulation.plant import NodeState

_LOG = logging.getLogger(__name__)

_TICK_S = 0.05  # how often the send loop looks at the faults while it waits
OUT_OF_RANGE_SOC_PCT = 150.0


@dataclass(frozen=True, slots=True)
class BmsValues:
    """What one BMS reports, in SI units. Current > 0 = discharge (the simulator converts)."""

    soc_pct: float
    soh_pct: float
    voltage_v: float
    current_a: float
    temperature_c: float
    charge_voltage_limit_v: float
    charge_current_limit_a: float
    discharge_current_limit_a: float
    discharge_voltage_limit_v: float | None = None  # None: 0x351 goes out with DLC 6
    alarm_flags: int = 0  # ProtectionFlag bits (bytes 0-1 of 0x359)
    warning_flags: int = 0  # ProtectionFlag bits (bytes 2-3)
    request_flags: int = int(RequestFlag.CHARGE_ENABLE | RequestFlag.DISCHARGE_ENABLE)
    module_count: int = 1
    manufacturer: str = "PYLON"
    # 0x373 (sent with extension_frames and all four present)
    cell_voltage_min_v: float | None = None
    cell_voltage_max_v: float | None = None
    temperature_min_c: float | None = None
    temperature_max_c: float | None = None


def bms_values_from_node(node: NodeState) -> BmsValues:
    """The BMS frames of one plant battery node.

    The pack temperature of 0x356 is the hottest sensor (as Battery-Emulator sends it). The
    request flags enable charge / discharge while the node's limit is above 0 A.
    """
    request = RequestFlag(0)
    if node.charge_current_limit_a > 0:
        request |= RequestFlag.CHARGE_ENABLE
    if node.discharge_current_limit_a > 0:
        request |= RequestFlag.DISCHARGE_ENABLE
    return BmsValues(
        soc_pct=node.soc_pct,
        soh_pct=node.soh_pct,
        voltage_v=node.voltage_v,
        current_a=node.current_a,
        temperature_c=node.temperature_max_c,
        charge_voltage_limit_v=node.charge_voltage_limit_v,
        charge_current_limit_a=node.charge_current_limit_a,
        discharge_current_limit_a=node.discharge_current_limit_a,
        discharge_voltage_limit_v=node.discharge_voltage_limit_v,
        alarm_flags=int(node.alarm_flags),
        warning_flags=int(node.warning_flags),
        request_flags=int(request),
        cell_voltage_min_v=node.cell_voltage_min_v,
        cell_voltage_max_v=node.cell_voltage_max_v,
        temperature_min_c=node.temperature_min_c,
        temperature_max_c=node.temperature_max_c,
    )


@dataclass(slots=True)
class PylontechFaults:
    """Faults to inject; see the module docstring."""

    silent: bool = False
    garbage: bool = False
    out_of_range: bool = False
    delay_s: float = 0.0

    def clear(self) -> None:
        self.silent = self.garbage = self.out_of_range = False
        self.delay_s = 0.0


class PylontechSimulator:
    """Broadcasts the frames of one BMS on ``bus`` every ``period_s`` while started."""

    def __init__(
        self,
        source: Callable[[], BmsValues],
        bus: can.BusABC,
        period_s: float = 1.0,
        *,
        extension_frames: bool = False,
        current_positive_on_wire: WireCurrentSign = "charge",
        name: str = "pylontech-sim",
        seed: int = 0,
        database: CanDatabase | None = None,
    ) -> None:
        if not period_s > 0:
            raise ValueError(f"period_s must be > 0, got {period_s!r}")
        self._source = source
        self._bus = bus
        self._period_s = period_s
        self._extension = extension_frames
        self._wire_sign = -1.0 if current_positive_on_wire == "charge" else 1.0
        self._name = name
        self._rng = random.Random(seed)
        self._db = database or load_pylontech_dbc()
        self._task: asyncio.Task[None] | None = None
        self.faults = PylontechFaults()
        self.cycles_sent = 0
        self.frames_sent = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start broadcasting (the first cycle goes out at once)."""
        if self.running:
            return
        self._task = asyncio.create_task(self._run(), name=f"{self._name}-broadcast")

    async def stop(self) -> None:
        """Stop broadcasting; the bus stays open (the caller owns it). Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def frames(self, values: BmsValues) -> list[can.Message]:
        """One regular cycle for ``values`` (faults not applied).

        Raises OverflowError / cantools EncodeError if a value does not fit its field.
        """
        soc = OUT_OF_RANGE_SOC_PCT if self.faults.out_of_range else values.soc_pct
        dvl = values.discharge_voltage_limit_v
        limits = {
            "ChargeVoltageLimit": values.charge_voltage_limit_v,
            "ChargeCurrentLimit": values.charge_current_limit_a,
            "DischargeCurrentLimit": values.discharge_current_limit_a,
            "DischargeVoltageLimit": 0.0 if dvl is None else dvl,
        }
        frames = [
            self._frame(ID_LIMITS, limits, length=6 if dvl is None else 8),
            self._frame(ID_SOC_SOH, {"StateOfCharge": soc, "StateOfHealth": values.soh_pct}),
            self._frame(
                ID_MEASUREMENTS,
                {
                    "BatteryVoltage": values.voltage_v,
                    "BatteryCurrent": self._wire_sign * values.current_a,
                    "BatteryTemperature": values.temperature_c,
                },
            ),
            self._frame(
                ID_FLAGS,
                {
                    "AlarmFlags": values.alarm_flags,
                    "WarningFlags": values.warning_flags,
                    "ModuleCount": values.module_count,
                    "Marker": int.from_bytes(b"PN", "little"),
                },
            ),
            self._frame(ID_REQUEST, {"RequestFlags": values.request_flags}),
            can.Message(
                arbitration_id=ID_MANUFACTURER,
                is_extended_id=False,
                data=values.manufacturer.encode("ascii")[:8].ljust(8, b" "),
            ),
        ]
        cells = {
            "MinCellVoltage": values.cell_voltage_min_v,
            "MaxCellVoltage": values.cell_voltage_max_v,
            "MinCellTemperature": values.temperature_min_c,
            "MaxCellTemperature": values.temperature_max_c,
        }
        present = {k: v for k, v in cells.items() if v is not None}
        if self._extension and len(present) == len(cells):
            frames.append(self._frame(ID_CELL_EXTREMES, present))
        return frames

    def send_cycle(self) -> int:
        """Send one cycle now, with the faults applied; returns the frames sent."""
        if self.faults.silent:
            return 0
        try:
            frames = self.frames(self._source())
        except Exception as exc:  # noqa: BLE001  # a failing source or unencodable value
            _LOG.warning("%s: cannot build frames, skipping a cycle: %r", self._name, exc)
            return 0
        if self.faults.garbage:
            frames = [self._garbage(f.arbitration_id) for f in frames]
        sent = 0
        for msg in frames:
            try:
                self._bus.send(msg)
            except can.CanError as exc:
                _LOG.warning("%s: send 0x%03X failed: %s", self._name, msg.arbitration_id, exc)
                continue
            sent += 1
        self.frames_sent += sent
        self.cycles_sent += 1
        return sent

    # ------------------------------------------------------------------ internals

    def _frame(
        self, frame_id: int, signals: Mapping[str, float], length: int | None = None
    ) -> can.Message:
        message = self._db.get_message_by_frame_id(frame_id)
        # strict=False: the DBC ranges are the driver's plausibility limits; the simulator
        # must be able to send implausible values (out_of_range). Values that do not fit the
        # field at all still raise OverflowError.
        data = message.encode(signals, strict=False)
        return can.Message(
            arbitration_id=frame_id, is_extended_id=False, data=data[: length or len(data)]
        )

    def _garbage(self, frame_id: int) -> can.Message:
        length = self._rng.randrange(MIN_DATA_LENGTH[frame_id])  # always too short
        data = bytes(self._rng.randrange(256) for _ in range(length))
        return can.Message(arbitration_id=frame_id, is_extended_id=False, data=data)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last: float | None = None
        while True:
            now = loop.time()
            period = self._period_s + max(0.0, self.faults.delay_s)
            if last is None or now - last >= period:
                last = now
                self.send_cycle()
                continue
            # Short sleeps, so that a fault change (e.g. delay_s back to 0) acts promptly.
            await asyncio.sleep(min(period - (now - last), _TICK_S))
