"""A check of systemd unit files for machines without `systemd-analyze verify`.

Not a full systemd parser: it reads the sections and `Key=value` lines (keys may repeat, as
ExecStart= and DeviceAllow= do), and reports what would make systemd refuse or misread the
unit: a missing section or required key, a relative path where systemd wants an absolute
one, an unknown Type= or Restart= value, a line that is neither a comment, a section nor an
assignment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_SECTION = re.compile(r"\[(?P<name>[A-Za-z-]+)\]")
_ASSIGNMENT = re.compile(r"(?P<key>[A-Za-z][A-Za-z0-9]*)=(?P<value>.*)")
#: Prefixes systemd allows before an Exec*= command (ignore failure, argv0, privileges...).
_EXEC_PREFIXES = "-@:+!"
_EXEC_KEYS = (
    "ExecStart",
    "ExecStartPre",
    "ExecStartPost",
    "ExecStop",
    "ExecStopPost",
    "ExecReload",
)
_PATH_LIST_KEYS = ("ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths")
_TYPES = {"simple", "exec", "forking", "oneshot", "dbus", "notify", "notify-reload", "idle"}
_RESTARTS = {"no", "on-success", "on-failure", "on-abnormal", "on-watchdog", "on-abort", "always"}
_REQUIRED = {
    "Unit": ("Description",),
    "Service": ("Type", "ExecStart"),
    "Install": ("WantedBy",),
}


@dataclass
class Unit:
    sections: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def values(self, section: str, key: str) -> list[str]:
        return [v for k, v in self.sections.get(section, []) if k == key]

    def value(self, section: str, key: str) -> str | None:
        found = self.values(section, key)
        return found[-1] if found else None


def parse_unit(text: str) -> tuple[Unit, list[str]]:
    """The unit and the lines that are neither comments, sections nor assignments."""
    unit = Unit()
    problems: list[str] = []
    current: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        section = _SECTION.fullmatch(line)
        if section is not None:
            current = section["name"]
            unit.sections.setdefault(current, [])
            continue
        assignment = _ASSIGNMENT.fullmatch(line)
        if assignment is None:
            problems.append(f"line {number}: not a section, comment or Key=value: {raw!r}")
        elif current is None:
            problems.append(f"line {number}: {assignment['key']}= before any [section]")
        else:
            unit.sections[current].append((assignment["key"], assignment["value"].strip()))
    return unit, problems


def _exec_path(command: str) -> str:
    return command.lstrip(_EXEC_PREFIXES).split(maxsplit=1)[0] if command.strip() else ""


def unit_problems(text: str, *, service: bool = True) -> list[str]:
    """Everything wrong with the unit file `text` that this check can see (empty: fine)."""
    unit, problems = parse_unit(text)
    required = _REQUIRED if service else {"Unit": ("Description",)}
    for section, keys in required.items():
        if section not in unit.sections:
            problems.append(f"[{section}] is missing")
            continue
        problems += [
            f"[{section}] {key}= is missing" for key in keys if not unit.values(section, key)
        ]
    for key in _EXEC_KEYS:
        for command in unit.values("Service", key):
            path = _exec_path(command)
            if not path.startswith("/"):
                problems.append(f"{key}={command}: the command must be an absolute path")
    for key in _PATH_LIST_KEYS:
        for value in unit.values("Service", key):
            problems += [
                f"{key}: {path!r} is not an absolute path"
                for path in value.split()
                if not path.lstrip("-+").startswith("/")
            ]
    directory = unit.value("Service", "WorkingDirectory")
    if directory is not None and not directory.lstrip("-").startswith(("/", "~")):
        problems.append(f"WorkingDirectory={directory}: not an absolute path")
    kind = unit.value("Service", "Type")
    if kind is not None and kind not in _TYPES:
        problems.append(f"Type={kind}: not one of {sorted(_TYPES)}")
    restart = unit.value("Service", "Restart")
    if restart is not None and restart not in _RESTARTS:
        problems.append(f"Restart={restart}: not one of {sorted(_RESTARTS)}")
    return problems
