"""The acquisition and control core: pollers, store, the 500 ms cycle, commands, the faces' feed.

The core runs in the appliance's main process on its own event loop and shares it with
nothing but its own pollers; the faces (OPC UA, Modbus slave, archive, metrics) run in a
separate process fed once per cycle (see `faces_supervisor.py` and docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from appliance.clock import Clock, SystemClock
from appliance.config.schema import SiteConfig
from appliance.control.command_types import CommandRequest, CommandResult
from appliance.control.commands import validate_command
from appliance.control.site import SiteController
from appliance.control.site_io import ClusterTelemetry, ControlOutputs
from appliance.runtime.devices import Devices, build_devices
from appliance.runtime.poller import Poller, next_slot
from appliance.runtime.site_inputs import SiteInputsBuilder
from appliance.runtime.site_table import site_point_table
from appliance.store import DataStore, Quality

log = logging.getLogger(__name__)

#: The control cycle's slots lag the pollers' by this much: a grid meter read over Modbus TCP
#: (a few ms, even under load) is in the store when the cycle runs. A slower read (RTU at
#: 9600 baud takes ~0.2 s) is used by the next cycle instead; staleness limits are unaffected.
GRID_POLL_LEAD_S = 0.08

_STATUS_RUNNING, _STATUS_DEGRADED = 1, 2
_INITIAL_MODES = {"stop": 0, "activate": 1, "maxself": 2, "chargeonly": 3}


@dataclass
class CycleStats:
    """Timing of the control cycle: how late each cycle started against its schedule."""

    cycles: int = 0
    overruns: int = 0
    lateness_s: deque[float] = field(default_factory=lambda: deque(maxlen=7200))

    def record(self, lateness_s: float, period_s: float) -> None:
        self.cycles += 1
        self.lateness_s.append(lateness_s)
        if lateness_s >= period_s:
            self.overruns += 1


class Core:
    """Owns the store and everything that writes to it; runs the periodic cycle."""

    def __init__(self, config: SiteConfig, *, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.table = site_point_table(config)
        self.store = DataStore(self.table, clock=self.clock)
        self.devices = Devices()
        self.period_s = config.control.loop_interval_s
        self.stats = CycleStats()
        self.started_at = self.clock.monotonic()
        self.alive_counter = 0
        self.face_restarts = 0
        # Called after every cycle, in order: the faces' feed and command intake hook in here.
        self.cycle_hooks: list[Callable[[], None]] = []
        self.controller = SiteController.from_site(config)
        self.inputs = SiteInputsBuilder(
            self.store,
            [node.limits for node in config.devices.battery_nodes],
            len(config.devices.surplus_loads),
        )
        self.telemetry: ClusterTelemetry | None = None
        # Fixed for the site: computed once, not scanned from the table every cycle.
        self._inverter_power_ids = [
            p.id for p in self.table.in_block("inverter") if p.id.endswith(".active_power")
        ]
        self._last_violations: tuple[str, ...] = ()
        self._initialise_points()

    def _initialise_points(self) -> None:
        control = self.config.control
        self.store.put_many(
            {
                "appliance.status": 0,
                "controller.profile": 0 if control.profile == "balancing" else 1,
                # Shown from the start; the controller publishes them every cycle after.
                "controller.mode": _INITIAL_MODES[control.initial_mode],
                "controller.grid_target": control.grid_target_w,
                "controller.reserve_soc": control.reserve_soc_pct,
                "heartbeat.timeout": control.heartbeat_timeout_s,
            }
        )

    # -- the cycle ---------------------------------------------------------------

    def cycle(self, lateness_s: float) -> None:
        """One control cycle: process image in, controller step, setpoints out.

        Never awaits and never blocks: setpoints go to per-inverter writers that send them
        on their own tasks, and values go to the store.
        """
        self.stats.record(lateness_s, self.period_s)
        self.alive_counter = (self.alive_counter + 1) % 0xFFFFFFFF
        outputs = self.controller.step(self.inputs.build(self.clock.monotonic(), self.clock.time()))
        self._actuate(outputs)
        self.store.put_many(outputs.point_values)
        if outputs.telemetry is not None:
            self.telemetry = outputs.telemetry
        self._derive_house_consumption()
        degraded = any(not p.up for p in self.pollers)
        self.store.put_many(
            {
                "appliance.alive_counter": self.alive_counter,
                "appliance.uptime": int(self.clock.monotonic() - self.started_at),
                "appliance.loop_lateness": lateness_s * 1000.0,
                "appliance.loop_overruns": self.stats.overruns,
                "appliance.face_restarts": self.face_restarts,
                "appliance.status": _STATUS_DEGRADED if degraded else _STATUS_RUNNING,
            }
        )

    def _actuate(self, outputs: ControlOutputs) -> None:
        if outputs.violations and outputs.violations != self._last_violations:
            log.warning(
                "control: constraint check corrected the command: %s", "; ".join(outputs.violations)
            )
        self._last_violations = outputs.violations
        for index, setpoint_w in enumerate(outputs.node_setpoints_w, start=1):
            writer = self.devices.inverter_writers.get(index)
            if writer is not None:
                # Written every cycle: it also restarts the inverter's revert timer.
                writer.submit(setpoint_w)
        for load in outputs.loads:
            relays = self.devices.load_writers.get(load.index)
            if relays is not None:
                relays.submit(load.relays)
            heater = self.devices.heater_writers.get(load.index)
            if heater is not None:
                # relays[0] is the heater's standby relay: open means no power at all.
                heater.submit(load.duty_pct if load.relays and load.relays[0] else 0.0)

    def _derive_house_consumption(self) -> None:
        """House = grid import + PV production + battery discharge, only from fresh inputs."""
        if self.config.devices.consumption_clamp is not None:
            return  # measured directly
        grid_ok, grid_w = self.store.read_fresh("grid.active_power")
        pv_ok, pv_w = self.store.read_fresh("pv.active_power")
        battery = self.store.snapshot(self._inverter_power_ids)
        battery_ok = all(s.quality is Quality.GOOD for s in battery.values())
        if not self.config.devices.pv_meter:
            pv_ok, pv_w = True, 0.0
        if grid_ok and pv_ok and battery_ok:
            battery_w = math.fsum(float(s.value or 0.0) for s in battery.values())
            self.store.put(
                "house.active_power", float(grid_w or 0.0) + float(pv_w or 0.0) + battery_w
            )

    # -- commands ----------------------------------------------------------------

    def handle_command(self, request: CommandRequest) -> CommandResult:
        """Check against the point, then against the state machine; apply when both accept."""
        result = validate_command(self.table, request)
        if result.accepted:
            result = self.controller.command(request, self.clock.monotonic())
        if not result.accepted:
            log.info(
                "command %s from %s rejected: %s", request.command, request.source, result.reason
            )
            return result
        if request.command == "heartbeat":
            self.store.put_many(
                {"heartbeat.counter": request.value, "heartbeat.last_time": int(self.clock.time())}
            )
        elif request.point_id is not None and request.value is not None:
            # Shown at once; the controller publishes the value it uses from the next cycle.
            self.store.put(request.point_id, request.value)
        log.info(
            "command %s from %s accepted (%s = %s)",
            request.command,
            request.source,
            request.point_id,
            request.value,
        )
        return result

    @property
    def pollers(self) -> list[Poller]:
        return self.devices.pollers

    async def open_devices(self) -> None:
        """Build the drivers; they connect on their first read, so this does not wait on devices."""
        self.devices = await build_devices(self.config, self.store)

    async def close(self) -> None:
        await self.devices.close()

    # -- the loop ----------------------------------------------------------------

    async def run_cycles(self, phase_s: float = 0.0) -> None:
        """Run `cycle` every period on a fixed schedule, measuring how late each one starts.

        The slots are `phase_s` after those of pollers started together with this task
        (`GRID_POLL_LEAD_S`): a meter read at the start of its slot is in the store when the
        cycle runs, so a change waits for one poll, not for a poll and then a cycle.
        """
        loop = asyncio.get_running_loop()
        scheduled = loop.time() + phase_s
        await asyncio.sleep(phase_s)
        while True:
            now = loop.time()
            lateness = max(0.0, now - scheduled)
            overrun = lateness >= self.period_s
            if overrun:
                log.warning(
                    "control cycle started %.0f ms late: overrun %d since start",
                    lateness * 1000,
                    self.stats.overruns + 1,
                )
            self.cycle(lateness)
            for hook in self.cycle_hooks:
                hook()
            # The slot after this cycle's start: a cycle that ran past it starts late and is
            # counted above; slots missed by a late start are skipped, not run as a burst of
            # catch-up cycles, and the phase is kept.
            scheduled = next_slot(scheduled, now, self.period_s)
            await asyncio.sleep(max(0.0, scheduled - loop.time()))
