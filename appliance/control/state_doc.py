"""docs/state-machine.md, generated from the state machine's definition (`modes.py`).

    .venv/bin/python -m appliance.control.state_doc docs/state-machine.md

A test regenerates the text and fails when the committed file differs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from appliance.control.interface import LOOP_CONFIG
from appliance.control.modes import (
    SEPARATOR,
    STATE_NUMBER,
    STATES,
    TRANSITIONS,
    State,
    StateDef,
)


def _node_id(state: State) -> str:
    return state.leaf


def _title(state: State) -> str:
    number = STATE_NUMBER.get(state)
    return state.leaf if number is None else f"{state.leaf} ({number})"


def _mermaid_state(d: StateDef, indent: str) -> list[str]:
    lines = [f'{indent}state "{_title(d.state)}" as {_node_id(d.state)}']
    lines += [f"{indent}{_node_id(d.state)} : entry / {a.name.lower()}" for a in d.on_enter]
    lines += [f"{indent}{_node_id(d.state)} : exit / {a.name.lower()}" for a in d.on_exit]
    return lines


def mermaid() -> str:
    lines = ["stateDiagram-v2", "    [*] --> stop"]
    for d in STATES:
        if SEPARATOR in d.state.value:
            continue
        children = [c for c in STATES if c.state.value.startswith(d.state.value + SEPARATOR)]
        if not children:
            lines += _mermaid_state(d, "    ")
            continue
        lines.append(f"    state {_node_id(d.state)} {{")
        for child in children:
            lines += _mermaid_state(child, "        ")
        lines.append("    }")
        lines += [f"    {_node_id(d.state)} : exit / {a.name.lower()}" for a in d.on_exit]
    for t in TRANSITIONS:
        guard = f" [{', '.join(t.conditions)}]" if t.conditions else ""
        for source in t.sources:
            lines.append(f"    {_node_id(source)} --> {_node_id(t.dest)} : {t.trigger}{guard}")
    return "\n".join(lines)


def _actions(actions: Sequence[object]) -> str:
    return "<br>".join(str(getattr(a, "value", a)) for a in actions) or "-"


def render() -> str:
    states = [
        "| State | Number | Meaning | Law | Entry | Exit |",
        "|---|---|---|---|---|---|",
    ]
    for d in STATES:
        number = STATE_NUMBER.get(d.state)
        law = LOOP_CONFIG[d.state].law if d.state in LOOP_CONFIG else "-"
        states.append(
            f"| {d.state.value} | {'-' if number is None else number} | {d.description} | {law} "
            f"| {_actions(d.on_enter)} | {_actions(d.on_exit)} |"
        )
    transitions = [
        "| Trigger | From | To | Conditions | When |",
        "|---|---|---|---|---|",
    ]
    for t in TRANSITIONS:
        sources = ", ".join(s.value for s in t.sources)
        conditions = ", ".join(t.conditions) or "-"
        transitions.append(
            f"| {t.trigger} | {sources} | {t.dest.value} | {conditions} | {t.description} |"
        )
    return "\n".join(
        [
            "# Controller state machine",
            "",
            "Generated from `appliance/control/modes.py` by",
            "`python -m appliance.control.state_doc docs/state-machine.md`; a test fails when this",
            "file and the definition disagree. The operating states are children of `operating`: a",
            "transition from `operating` applies to each of them. A transition fires only from its",
            "sources and only when all its conditions hold; otherwise it is refused and the state",
            "stays. The number is the value of the point `controller.state`.",
            "",
            "```mermaid",
            mermaid(),
            "```",
            "",
            "## States",
            "",
            *states,
            "",
            "## Transitions",
            "",
            *transitions,
            "",
            "Precedence each cycle (`modes.next_trigger`): fault (latched until the reset_alarms",
            "command with the cause gone) > backup (off grid) > emergency recharge > no inverter",
            "active > the requested mode; a grid mode without a grid reading degrades to sensor_loss.",
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        sys.stderr.write("usage: python -m appliance.control.state_doc OUTPUT.md\n")
        return 2
    Path(args[0]).write_text(render(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
