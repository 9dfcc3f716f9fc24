"""Surplus loads: staged relay loads and a PI heater with PWM-style output.

The surplus signal is the PV power the site would otherwise export, seen from the loads:

* priority ``battery``: ``-grid - max(battery, 0)``: only what the battery cannot take (it
  charges first; a discharging battery means there is no surplus);
* priority ``loads``: ``-grid - battery``: the battery's charging power counts as surplus too,
  so the loads come first and the battery's grid loop charges with the rest.

Among the loads, a load also sees the power of every load with a lower priority (a larger
``priority`` number) as available, so it can take over from them.

Relay loads (``relay``: one stage per channel; ``sg_ready``: two stages, SG-Ready state 3
then 4) switch one stage at a time with hysteresis (on above the stage power plus a margin,
off when importing more than a margin), keep their minimum on and off times, and wait a
settling time after each action so the meter sees its effect. Operator modes (on / off) act
at once. The PWM heater follows seed 002: error = surplus / rated power, output = Kp x error
+ I (I += dt x error / Tn), 0..100 %, derated from 4 degrees C below its maximum temperature
by 25 %/degree C, off on a broken or shorted sensor or without a power signal for 10 s, and
its power controller's supply relay opens after a configurable time without surplus.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

from appliance.config.schema import SurplusLoadConfig
from appliance.control.params import HeaterParams, RelayParams, SurplusPriority
from appliance.control.site_io import LoadCommand, LoadInputs

_NEVER = -math.inf


class LoadMode(enum.IntEnum):
    """Values of the point surplus.{n}.mode."""

    AUTO = 0
    OFF = 1
    ON = 2


def surplus_signal(
    grid_w: float | None, battery_w: float, priority: SurplusPriority
) -> float | None:
    """Power available to the loads (W, > 0 surplus); None without a grid reading."""
    if grid_w is None:
        return None
    if priority == "loads":
        return -grid_w - battery_w
    return -grid_w - max(battery_w, 0.0)


class RelayLoad:
    """A load switched in stages by relays."""

    def __init__(self, index: int, config: SurplusLoadConfig, params: RelayParams) -> None:
        self.index = index
        self.config = config
        self.params = params
        self.stages = len(config.channels)
        self.stage_w = config.rated_power_w / self.stages
        self.on = 0  # stages switched on
        self._changed_at = [_NEVER] * self.stages

    @property
    def power_w(self) -> float:
        return self.on * self.stage_w

    def can_raise(self, now_s: float) -> bool:
        return self.on < self.stages and now_s - self._changed_at[self.on] >= self.config.min_off_s

    def can_lower(self, now_s: float) -> bool:
        return self.on > 0 and now_s - self._changed_at[self.on - 1] >= self.config.min_on_s

    def set_stages(self, now_s: float, count: int) -> None:
        count = min(max(count, 0), self.stages)
        lo, hi = sorted((self.on, count))
        for stage in range(lo, hi):
            self._changed_at[stage] = now_s
        self.on = count

    def relays(self) -> tuple[bool, ...]:
        if self.config.kind == "sg_ready":
            # channels[0] = SG input 1, channels[1] = SG input 2: (0,0) normal (state 2),
            # (0,1) switch-on recommended (state 3), (1,1) forced on (state 4).
            return ((False, False), (False, True), (True, True))[self.on]
        return tuple(stage < self.on for stage in range(self.stages))


@dataclass(frozen=True, slots=True)
class HeaterState:
    duty_pct: float
    standby_on: bool
    reason: str = ""


class HeaterLoad:
    """The PI heater controller with PWM output (one channel: the standby relay)."""

    def __init__(self, index: int, config: SurplusLoadConfig, params: HeaterParams) -> None:
        self.index = index
        self.config = config
        self.params = params
        self.duty = 0.0  # 0..1
        self.integral = 0.0  # 0..1
        self._last_now: float | None = None
        self._last_signal_s = _NEVER
        self._last_surplus_s = _NEVER
        self.state = HeaterState(0.0, False)

    @property
    def power_w(self) -> float:
        return self.duty * self.config.rated_power_w

    def derate_limit(self, temperature_c: float) -> float:
        """1.0 up to (max - band), then 25 %/degree C less, 0 at the maximum."""
        p = self.params
        over = temperature_c - (p.max_temperature_c - p.derate_band_c)
        return min(1.0, max(0.0, 1.0 - over * p.derate_pct_per_c / 100.0))

    def step(
        self, now_s: float, available_w: float | None, temperature_c: float | None, mode: LoadMode
    ) -> HeaterState:
        dt = 0.0 if self._last_now is None else max(0.0, now_s - self._last_now)
        self._last_now = now_s
        if available_w is not None:
            self._last_signal_s = now_s
            if available_w > 0.0:
                self._last_surplus_s = now_s
        reason = self._shutoff_reason(now_s, temperature_c, mode)
        if reason or temperature_c is None:
            return self._off(reason)
        limit = self.derate_limit(temperature_c)
        if mode is LoadMode.ON:
            self.duty = self.integral = limit
            return self._set(True)
        if now_s - self._last_surplus_s >= self.params.standby_cut_s:
            return self._off("no surplus: standby relay open")
        if available_w is not None:
            error = available_w / self.config.rated_power_w
            self.integral = min(max(self.integral + dt * error / self.params.tn_s, 0.0), limit)
            self.duty = min(max(self.params.kp * error + self.integral, 0.0), limit)
        else:
            self.duty = min(self.duty, limit)
        return self._set(True)

    def _shutoff_reason(self, now_s: float, temperature_c: float | None, mode: LoadMode) -> str:
        p = self.params
        if temperature_c is None or not p.sensor_min_c <= temperature_c <= p.sensor_max_c:
            return "temperature sensor broken or shorted"
        if mode is LoadMode.OFF:
            return "off by operator"
        if mode is LoadMode.AUTO and now_s - self._last_signal_s >= p.signal_timeout_s:
            return "no power signal"
        return ""

    def _off(self, reason: str) -> HeaterState:
        self.duty = self.integral = 0.0
        self.state = HeaterState(0.0, False, reason)
        return self.state

    def _set(self, standby_on: bool) -> HeaterState:
        self.state = HeaterState(self.duty * 100.0, standby_on)
        return self.state


class SurplusLoads:
    """All surplus loads of the site, in priority order."""

    def __init__(
        self,
        configs: Sequence[SurplusLoadConfig],
        *,
        priority: SurplusPriority,
        relay_params: RelayParams,
        heater_params: HeaterParams,
    ) -> None:
        self.priority = priority
        self.relay_params = relay_params
        self.loads: list[RelayLoad | HeaterLoad] = [
            HeaterLoad(i, c, heater_params)
            if c.kind == "pwm_heater"
            else RelayLoad(i, c, relay_params)
            for i, c in enumerate(configs, start=1)
        ]
        self.loads.sort(key=lambda load: (load.config.priority, load.index))
        self.modes: dict[int, LoadMode] = {load.index: LoadMode.AUTO for load in self.loads}
        self._last_action_s = _NEVER
        self._last_signal_s = _NEVER

    def indexes(self) -> list[int]:
        return sorted(self.modes)

    def set_mode(self, index: int, mode: LoadMode) -> None:
        if index not in self.modes:
            raise KeyError(index)
        self.modes[index] = mode

    def step(
        self,
        now_s: float,
        grid_w: float | None,
        battery_w: float,
        inputs: Sequence[LoadInputs] = (),
    ) -> tuple[LoadCommand, ...]:
        signal = surplus_signal(grid_w, battery_w, self.priority)
        if signal is not None:
            self._last_signal_s = now_s
        by_index = {i.index: i for i in inputs}
        available = self._available(signal)
        for load in self.loads:
            if isinstance(load, HeaterLoad):
                temp = by_index[load.index].temperature_c if load.index in by_index else None
                load.step(now_s, available[load.index], temp, self.modes[load.index])
        self._switch_relays(now_s, signal, available, by_index)
        return tuple(
            self._command(load, by_index.get(load.index))
            for load in sorted(self.loads, key=lambda x: x.index)
        )

    # -- internals -----------------------------------------------------------------------

    def _available(self, signal: float | None) -> dict[int, float | None]:
        """Per load: the surplus plus the power of every lower-priority load (displaceable)."""
        out: dict[int, float | None] = {}
        for pos, load in enumerate(self.loads):
            if signal is None:
                out[load.index] = None
            else:
                out[load.index] = signal + sum(other.power_w for other in self.loads[pos + 1 :])
        return out

    def _switch_relays(
        self,
        now_s: float,
        signal: float | None,
        available: dict[int, float | None],
        inputs: dict[int, LoadInputs],
    ) -> None:
        relays = [load for load in self.loads if isinstance(load, RelayLoad)]
        auto: list[RelayLoad] = []
        for load in relays:
            mode = self.modes[load.index]
            online = inputs[load.index].online if load.index in inputs else True
            if not online or mode is LoadMode.OFF:
                load.set_stages(now_s, 0)
            elif mode is LoadMode.ON:
                load.set_stages(now_s, load.stages)
            else:
                auto.append(load)
        if signal is None:
            if now_s - self._last_signal_s >= self.relay_params.signal_timeout_s:
                for load in auto:
                    if load.can_lower(now_s):
                        load.set_stages(now_s, 0)
            return
        if now_s - self._last_action_s < self.relay_params.settle_s:
            return
        if self._raise_one(now_s, auto, available) or self._lower_one(now_s, auto, signal):
            self._last_action_s = now_s

    def _raise_one(
        self, now_s: float, auto: list[RelayLoad], available: dict[int, float | None]
    ) -> bool:
        for load in auto:  # highest priority first
            avail = available[load.index]
            if (
                avail is not None
                and load.can_raise(now_s)
                and avail >= load.stage_w + self.relay_params.on_margin_w
            ):
                load.set_stages(now_s, load.on + 1)
                return True
        return False

    def _lower_one(self, now_s: float, auto: list[RelayLoad], signal: float) -> bool:
        if signal >= -self.relay_params.off_margin_w:
            return False
        for load in reversed(auto):  # lowest priority first
            if load.can_lower(now_s):
                load.set_stages(now_s, load.on - 1)
                return True
        return False

    def _command(self, load: RelayLoad | HeaterLoad, inputs: LoadInputs | None) -> LoadCommand:
        measured = inputs.power_w if inputs is not None else None
        if isinstance(load, HeaterLoad):
            st = load.state
            return LoadCommand(
                index=load.index,
                name=load.config.name,
                relays=(st.standby_on,),
                duty_pct=st.duty_pct,
                power_w=measured if measured is not None else load.power_w,
                active=st.duty_pct > 0.0,
                reason=st.reason,
            )
        return LoadCommand(
            index=load.index,
            name=load.config.name,
            relays=load.relays(),
            duty_pct=100.0 * load.on / load.stages,
            power_w=measured if measured is not None else load.power_w,
            active=load.on > 0,
        )
