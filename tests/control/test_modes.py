"""The state machine: every transition, every refused transition, entry/exit actions, precedence."""

from __future__ import annotations

from dataclasses import replace

import pytest

from appliance.control.modes import (
    CONDITION_TEXT,
    STATES,
    TRANSITIONS,
    Action,
    Conditions,
    Facts,
    Mode,
    ModeMachine,
    State,
    TransitionDef,
    next_trigger,
)

ALL_TRUE = Conditions(inverter_active=True, critical_error=False, meter_ok=True, has_setpoint=True)
LEAVES = [s for s in State if s is not State.OPERATING]  # the states the machine can be in


class Recorder:
    def __init__(self) -> None:
        self.actions: list[tuple[Action, State]] = []

    def perform(self, action: Action, state: State) -> None:
        self.actions.append((action, state))


def machine(state: State, conditions: Conditions = ALL_TRUE) -> tuple[ModeMachine, Recorder]:
    recorder = Recorder()
    m = ModeMachine(recorder, initial=state)
    m.conditions = conditions
    return m, recorder


def sources(t: TransitionDef) -> list[State]:
    """The leaf states a transition fires from (a parent stands for its children)."""
    return [s for s in LEAVES if any(s.within(src) for src in t.sources)]


CASES = [(t, s) for t in TRANSITIONS for s in sources(t)]


@pytest.mark.parametrize(
    ("transition", "source"), CASES, ids=[f"{t.trigger}:{s.leaf}" for t, s in CASES]
)
def test_every_transition_fires_from_each_source_when_its_conditions_hold(
    transition: TransitionDef, source: State
) -> None:
    m, _ = machine(source)
    assert m.refusal(transition.trigger) is None
    assert m.fire(transition.trigger) is True
    assert m.current is transition.dest
    assert m.history[-1].trigger == transition.trigger
    assert m.history[-1].source is source


@pytest.mark.parametrize(
    ("transition", "source", "condition"),
    [(t, s, c) for t, s in CASES for c in t.conditions],
    ids=[f"{t.trigger}:{s.leaf}:{c}" for t, s in CASES for c in t.conditions],
)
def test_a_transition_is_refused_when_one_condition_fails(
    transition: TransitionDef, source: State, condition: str
) -> None:
    failing = {
        "inverter_active": replace(ALL_TRUE, inverter_active=False),
        "no_critical_error": replace(ALL_TRUE, critical_error=True),
        "meter_ok": replace(ALL_TRUE, meter_ok=False),
        "has_setpoint": replace(ALL_TRUE, has_setpoint=False),
    }[condition]
    m, recorder = machine(source, failing)
    assert m.refusal(transition.trigger) == CONDITION_TEXT[condition]
    assert m.fire(transition.trigger) is False
    assert m.current is source
    assert recorder.actions == []  # no entry or exit action ran


REFUSED = [(t, s) for t in TRANSITIONS for s in LEAVES if s not in sources(t)]


@pytest.mark.parametrize(
    ("transition", "state"), REFUSED, ids=[f"{t.trigger}:{s.leaf}" for t, s in REFUSED]
)
def test_every_transition_is_refused_from_a_state_it_is_not_declared_for(
    transition: TransitionDef, state: State
) -> None:
    m, recorder = machine(state)
    assert m.refusal(transition.trigger) == f"not allowed in state {state.value}"
    assert m.fire(transition.trigger) is False
    assert m.current is state
    assert recorder.actions == []


def test_unknown_trigger_is_refused() -> None:
    m, _ = machine(State.STOP)
    assert m.refusal("fly") == "unknown transition 'fly'"
    assert m.fire("fly") is False


def test_entering_maxself_resets_the_pid_and_disables_grid_code_ramps() -> None:
    m, recorder = machine(State.STOP)
    m.fire("go_maxself")
    assert recorder.actions == [
        (Action.RESET_PID, State.MAXSELF),
        (Action.RAMPS_OFF, State.MAXSELF),
    ]


def test_leaving_the_operating_states_runs_their_exit_actions_in_order() -> None:
    m, recorder = machine(State.SETPOINT)
    m.fire("trip")
    assert recorder.actions == [
        (Action.RAMPS_OFF, State.SETPOINT),  # exit setpoint
        (Action.HOLD_ZERO, State.OPERATING),  # exit the parent
        (Action.HOLD_ZERO, State.FAULT),  # enter fault
        (Action.REQUEST_STOP, State.FAULT),
    ]


def test_every_state_declares_its_actions_and_appears_once() -> None:
    assert [d.state for d in STATES] == list(State)
    assert all(d.on_enter or d.on_exit for d in STATES)


F = Facts
C = ALL_TRUE


@pytest.mark.parametrize(
    ("current", "requested", "facts", "trigger"),
    [
        # fault is latched: nothing but the reset command leaves it
        (State.FAULT, Mode.MAXSELF, F(C), None),
        # a critical error trips every other state
        (State.MAXSELF, Mode.MAXSELF, F(replace(C, critical_error=True)), "trip"),
        (State.BACKUP, Mode.MAXSELF, F(replace(C, critical_error=True)), "trip"),
        # off grid beats the safety floor; the grid's return goes through stop
        (State.EMERGENCY_RECHARGE, Mode.MAXSELF, F(C, off_grid=True, floor_active=True), "island"),
        (State.BACKUP, Mode.MAXSELF, F(C, off_grid=True), None),
        (State.BACKUP, Mode.MAXSELF, F(C), "grid_back"),
        # the safety floor beats every mode, if an inverter can recharge
        (State.SETPOINT, Mode.SETPOINT, F(C, floor_active=True), "recharge"),
        (State.EMERGENCY_RECHARGE, Mode.SETPOINT, F(C, floor_active=True), None),
        (State.EMERGENCY_RECHARGE, Mode.SETPOINT, F(C), "recharged"),
        (
            State.EMERGENCY_RECHARGE,
            Mode.SETPOINT,
            F(replace(C, inverter_active=False), floor_active=True),
            "lose_inverters",
        ),
        (State.STOP, Mode.MAXSELF, F(replace(C, inverter_active=False), floor_active=True), None),
        # no inverter active: operating states stop, and wait there
        (State.CHARGEONLY, Mode.CHARGEONLY, F(replace(C, inverter_active=False)), "lose_inverters"),
        (State.STOP, Mode.CHARGEONLY, F(replace(C, inverter_active=False)), None),
        # the requested mode
        (State.STOP, Mode.MAXSELF, F(C), "go_maxself"),
        (State.MAXSELF, Mode.MAXSELF, F(C), None),
        (State.MAXSELF, Mode.STOP, F(C), "go_stop"),
        (State.ACTIVATE, Mode.SETPOINT, F(C), "go_setpoint"),
        # a grid mode without a grid reading: sensor loss, or wait in stop
        (State.MAXSELF, Mode.MAXSELF, F(replace(C, meter_ok=False)), "lose_meter"),
        (State.SENSOR_LOSS, Mode.MAXSELF, F(replace(C, meter_ok=False)), None),
        (State.SENSOR_LOSS, Mode.CHARGEONLY, F(C), "go_chargeonly"),
        (State.STOP, Mode.MAXSELF, F(replace(C, meter_ok=False)), None),
        (State.SETPOINT, Mode.MAXSELF, F(replace(C, meter_ok=False)), "go_stop"),
    ],
)
def test_next_trigger_precedence(
    current: State, requested: Mode, facts: Facts, trigger: str | None
) -> None:
    assert next_trigger(current, requested, facts) == trigger
