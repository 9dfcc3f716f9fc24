"""A small generic builder: typed frozen dataclasses from parsed YAML, every problem collected.

The schema is the dataclasses themselves (see `schema.py`): the type annotation of a field
says what is accepted, `field(metadata=rule(...))` adds ranges, patterns, list lengths and
custom checks, a field's default makes the key optional. A dataclass may also define

* ``FORBIDDEN_KEYS: ClassVar[Mapping[str, str]]``: keys that get a dedicated message
  (e.g. a plain-text ``password``); the value of such a key is never echoed;
* ``cross_check(self) -> Iterable[tuple[FieldPath, str]]``: checks between its own fields,
  run once the object was built; paths are relative to the object.

Supported annotations: ``bool``, ``int``, ``float``, ``str``, ``Path``, ``Literal[...]``,
``X | None``, ``tuple[X, ...]``, nested dataclasses, and unions of dataclasses that carry a
``type: Literal["..."]`` field (a tagged union on ``type``).

The builder never stops at the first problem: it walks everything it can and reports one
`Problem` per fault; `Builder.raise_if_problems` raises a single `ConfigValidationError`
(a `ConfigError`) with one line per problem, e.g.::

    site.yaml: devices.battery_nodes[1].limits.max_charge_w: -5 is out of range; allowed 0 .. 1000000 (line 42)
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, get_args, get_origin

from appliance.errors import ConfigError

T = TypeVar("T")

#: A position in the configuration: mapping keys and list indices, e.g. ("devices", "battery_nodes", 1).
FieldPath = tuple[str | int, ...]

#: The key that selects the member of a tagged union.
TAG = "type"


def render_path(path: FieldPath) -> str:
    """``("devices", "battery_nodes", 1, "name")`` -> ``devices.battery_nodes[1].name``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


@dataclass(frozen=True)
class Problem:
    """One fault in a configuration file; `str()` gives the line shown to the site engineer."""

    source: str  # the file name (or the name given to the text)
    path: str  # the field path, e.g. "faces.modbus.port"; "" for the document as a whole
    message: str  # what is wrong and what is allowed
    line: int | None = None  # 1-based line in the file, when known
    column: int | None = None  # 1-based column, only for YAML syntax errors

    def __str__(self) -> str:
        if self.path:
            where = f" (line {self.line})" if self.line is not None else ""
            return f"{self.source}: {self.path}: {self.message}{where}"
        if self.line is not None:
            col = f", column {self.column}" if self.column is not None else ""
            return f"{self.source}: line {self.line}{col}: {self.message}"
        return f"{self.source}: {self.message}"


class ConfigValidationError(ConfigError):
    """A `ConfigError` carrying every problem found; the message has one line per problem."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class Rule:
    """Extra constraints on a field, attached with ``field(metadata=rule(...))``.

    For a ``tuple[X, ...]`` field, ``min_items``/``max_items`` apply to the list and the other
    constraints to each item.
    """

    min: float | None = None
    max: float | None = None
    pattern: str | None = None  # re.fullmatch on strings
    allowed: str = ""  # what is allowed, in words, for pattern and check failures
    check: Callable[[Any], str | None] | None = None  # returns "why not" for a bad value
    min_items: int | None = None
    max_items: int | None = None
    secret: bool = False  # never echo the value in a message


NO_RULE = Rule()

#: Field metadata marking a field that is not read from YAML (must have a default).
INTERNAL: Mapping[str, bool] = {"internal": True}


def rule(
    *,
    min: float | None = None,
    max: float | None = None,
    pattern: str | None = None,
    allowed: str = "",
    check: Callable[[Any], str | None] | None = None,
    min_items: int | None = None,
    max_items: int | None = None,
    secret: bool = False,
) -> dict[str, Rule]:
    """Field metadata carrying a `Rule`: ``port: int = field(default=502, metadata=rule(min=1, max=65535))``."""
    return {
        "rule": Rule(min, max, pattern, allowed, check, min_items, max_items, secret),
    }


# --------------------------------------------------------------------------- formatting


def fmt_number(x: float) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(x)


def fmt_value(value: object, *, secret: bool = False) -> str:
    """A value as the site engineer wrote it, short enough for one line."""
    if secret:
        return "(value not shown)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return fmt_number(value)
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def kind_of(value: object) -> str:
    """What a parsed YAML value is, in words."""
    if value is None:
        return "empty (null)"
    names: list[tuple[type, str]] = [
        (bool, "a boolean"),
        (int, "a whole number"),
        (float, "a number"),
        (str, "a string"),
        (list, "a list"),
        (dict, "a mapping"),
    ]
    for tp, name in names:
        if isinstance(value, tp):
            return name
    return f"a {type(value).__name__}"


def _range_text(r: Rule) -> str:
    if r.min is not None and r.max is not None:
        return f"{fmt_number(r.min)} .. {fmt_number(r.max)}"
    if r.min is not None:
        return f">= {fmt_number(r.min)}"
    if r.max is not None:
        return f"<= {fmt_number(r.max)}"
    return ""


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def yaml_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields of a schema dataclass that are read from YAML, in declaration order."""
    return [f for f in dataclasses.fields(cls) if f.init and not f.metadata.get("internal")]


def _has_default(f: dataclasses.Field[Any]) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _union_members(tp: Any) -> tuple[list[Any], bool]:
    """(members without None, whether None is allowed) for ``X | Y | None``; ([], False) otherwise."""
    if get_origin(tp) in (types.UnionType, typing.Union):
        args = get_args(tp)
        members = [a for a in args if a is not type(None)]
        return members, len(members) < len(args)
    return [], False


def _tag_of(member: Any) -> str:
    return str(get_args(_hints(member)[TAG])[0])


def describe(tp: Any, r: Rule = NO_RULE) -> str:
    """What a field accepts, in words: "a whole number in 1 .. 65535", "one of: N, E, O"."""
    members, _ = _union_members(tp)
    if len(members) == 1:
        return describe(members[0], r)
    if members:
        return f"a mapping with {TAG}: " + " or ".join(_tag_of(m) for m in members)
    origin = get_origin(tp)
    if origin is Literal:
        return "one of: " + ", ".join(fmt_value(a).strip("'") for a in get_args(tp))
    if origin is tuple:
        count = ""
        if r.min_items is not None or r.max_items is not None:
            lo = r.min_items if r.min_items is not None else 0
            hi = r.max_items if r.max_items is not None else "any"
            count = f" ({lo} .. {hi} entries)"
        return f"a list{count} of {describe(get_args(tp)[0], r)}"
    if dataclasses.is_dataclass(tp):
        return "a mapping with keys: " + ", ".join(f.name for f in yaml_fields(cast(type, tp)))
    rng = _range_text(r)
    words: dict[Any, str] = {
        bool: "true or false",
        int: "a whole number" + (f" in {rng}" if rng else ""),
        float: "a number" + (f" in {rng}" if rng else ""),
        str: r.allowed or "a string",
        Path: r.allowed or "a file system path",
    }
    return words.get(tp, str(tp))


# --------------------------------------------------------------------------- the builder


class _Invalid:
    def __repr__(self) -> str:
        return "<invalid>"


INVALID: Any = _Invalid()


class Builder:
    """Builds schema dataclasses from parsed YAML and collects `Problem`s on the way."""

    def __init__(self, source: str, lines: Mapping[FieldPath, int] | None = None) -> None:
        self.source = source
        self.lines: dict[FieldPath, int] = dict(lines or {})
        self.problems: list[Problem] = []

    # -- reporting

    def line_of(self, path: FieldPath) -> int | None:
        """The line of `path`, or of its nearest ancestor the file has (for missing keys)."""
        for n in range(len(path), -1, -1):
            line = self.lines.get(path[:n])
            if line is not None:
                return line
        return None

    def report(self, path: FieldPath, message: str) -> None:
        self.problems.append(Problem(self.source, render_path(path), message, self.line_of(path)))

    def raise_if_problems(self) -> None:
        if self.problems:
            ordered = sorted(self.problems, key=lambda p: p.line if p.line is not None else 1 << 30)
            raise ConfigValidationError(ordered)

    # -- building

    def build(self, cls: type[T], data: object, path: FieldPath = ()) -> T | None:
        """Build `cls` from `data`; None when something was wrong (see `problems`)."""
        result = self._dataclass(cls, data, path)
        return None if result is INVALID else cast(T, result)

    def value(self, tp: Any, value: object, path: FieldPath, r: Rule = NO_RULE) -> Any:
        """Check and convert one value against an annotation; `INVALID` after reporting."""
        members, optional = _union_members(tp)
        if members:
            return self._union(members, optional, value, path, r)
        origin = get_origin(tp)
        if origin is Literal:
            return self._literal(get_args(tp), value, path)
        if origin is tuple:
            return self._sequence(get_args(tp)[0], value, path, r)
        if dataclasses.is_dataclass(tp):
            return self._dataclass(cast(type, tp), value, path)
        scalar = self._scalars().get(tp)
        if scalar is None:
            raise TypeError(f"unsupported schema annotation {tp!r} at {render_path(path)}")
        return scalar(tp, value, path, r)

    def _union(
        self, members: list[Any], optional: bool, value: object, path: FieldPath, r: Rule
    ) -> Any:
        if value is None and optional:
            return None
        if len(members) == 1:
            return self.value(members[0], value, path, r)
        return self._tagged(members, value, path)

    def _scalars(self) -> dict[Any, Callable[[Any, object, FieldPath, Rule], Any]]:
        return {
            bool: self._bool,
            int: self._number,
            float: self._number,
            str: self._str,
            Path: self._str,
        }

    def _wrong_type(self, tp: Any, value: object, path: FieldPath, r: Rule) -> Any:
        shown = fmt_value(value, secret=r.secret)
        if value is None:
            self.report(path, f"a value is required (got null); expected {describe(tp, r)}")
        else:
            self.report(path, f"{shown} is {kind_of(value)}; expected {describe(tp, r)}")
        return INVALID

    def _bool(self, tp: Any, value: object, path: FieldPath, r: Rule) -> Any:
        if isinstance(value, bool):
            return value
        return self._wrong_type(tp, value, path, r)

    def _number(self, tp: Any, value: object, path: FieldPath, r: Rule) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return self._wrong_type(tp, value, path, r)
        if tp is int and isinstance(value, float):
            self.report(
                path, f"{fmt_value(value)} is not a whole number; expected {describe(tp, r)}"
            )
            return INVALID
        if not math.isfinite(value):
            self.report(
                path, f"{fmt_value(value)} is not a finite number; expected {describe(tp, r)}"
            )
            return INVALID
        if (r.min is not None and value < r.min) or (r.max is not None and value > r.max):
            self.report(path, f"{fmt_value(value)} is out of range; allowed {_range_text(r)}")
            return INVALID
        if r.check is not None and (why := r.check(value)) is not None:
            self.report(path, f"{fmt_value(value)} {why}")
            return INVALID
        return float(value) if tp is float else value

    def _str(self, tp: Any, value: object, path: FieldPath, r: Rule) -> Any:
        if not isinstance(value, str):
            if isinstance(value, int | float) and not isinstance(value, bool):
                # YAML reads 10:30 or 0123 as numbers; the fix is quoting.
                shown = fmt_value(value, secret=r.secret)
                self.report(
                    path,
                    f"{shown} is {kind_of(value)}; expected {describe(tp, r)}"
                    " (put the value in quotes)",
                )
                return INVALID
            return self._wrong_type(tp, value, path, r)
        shown = fmt_value(value, secret=r.secret)
        if not value.strip():
            self.report(path, f"{shown} is empty; expected {describe(tp, r)}")
            return INVALID
        if r.pattern is not None and re.fullmatch(r.pattern, value) is None:
            self.report(path, f"{shown} is not valid; allowed: {describe(tp, r)}")
            return INVALID
        if r.check is not None and (why := r.check(value)) is not None:
            self.report(path, f"{shown} {why}")
            return INVALID
        return Path(value) if tp is Path else value

    def _literal(self, allowed: tuple[Any, ...], value: object, path: FieldPath) -> Any:
        for a in allowed:
            if type(value) is type(a) and value == a:
                return a
        listed = ", ".join(fmt_value(a).strip("'") for a in allowed)
        self.report(path, f"{fmt_value(value)} is not allowed; allowed: {listed}")
        return INVALID

    def _sequence(self, item_tp: Any, value: object, path: FieldPath, r: Rule) -> Any:
        if not isinstance(value, list):
            return self._wrong_type(tuple[item_tp, ...], value, path, r)
        lo, hi = r.min_items, r.max_items
        if (lo is not None and len(value) < lo) or (hi is not None and len(value) > hi):
            bounds = f"{lo if lo is not None else 0} .. {hi if hi is not None else 'any'}"
            self.report(path, f"has {len(value)} entries; allowed {bounds} entries")
            return INVALID
        item_rule = dataclasses.replace(r, min_items=None, max_items=None)
        items = [self.value(item_tp, v, (*path, i), item_rule) for i, v in enumerate(value)]
        if any(item is INVALID for item in items):
            return INVALID
        return tuple(items)

    def _tagged(self, members: list[Any], value: object, path: FieldPath) -> Any:
        by_tag = {_tag_of(m): m for m in members}
        listed = ", ".join(by_tag)
        if not isinstance(value, dict):
            expected = f"expected a mapping with {TAG}: {' or '.join(by_tag)}"
            self.report(path, f"{fmt_value(value)} is {kind_of(value)}; {expected}")
            return INVALID
        if TAG not in value:
            self.report((*path, TAG), f"missing required key; allowed: {listed}")
            return INVALID
        member = by_tag.get(value[TAG]) if isinstance(value[TAG], str) else None
        if member is None:
            self.report((*path, TAG), f"{fmt_value(value[TAG])} is not allowed; allowed: {listed}")
            return INVALID
        return self._dataclass(member, value, path)

    def _check_keys(self, cls: type, value: dict[Any, Any], path: FieldPath) -> bool:
        names = [f.name for f in yaml_fields(cls)]
        forbidden: Mapping[str, str] = getattr(cls, "FORBIDDEN_KEYS", {})
        ok = True
        for key in value:
            if isinstance(key, str) and key in names:
                continue
            ok = False
            if not isinstance(key, str):
                self.report(
                    path,
                    f"key {fmt_value(key)} is {kind_of(key)}, not a name (put it in quotes?); "
                    f"allowed keys: {', '.join(names)}",
                )
            elif key in forbidden:
                self.report((*path, key), forbidden[key])
            else:
                hint = difflib.get_close_matches(key, names, n=2, cutoff=0.6)
                maybe = f"; did you mean {' or '.join(repr(h) for h in hint)}?" if hint else ""
                self.report(
                    (*path, key),
                    f"unknown key {key!r}; allowed keys: {', '.join(names)}{maybe}",
                )
        return ok

    def _dataclass(self, cls: type, value: object, path: FieldPath) -> Any:
        if not isinstance(value, dict):
            return self._wrong_type(cls, value, path, NO_RULE)
        hints = _hints(cls)
        if TAG in hints and TAG in value and value[TAG] != _tag_of(cls):
            # The wrong kind of mapping altogether: its other keys would only add noise.
            self.report(
                (*path, TAG), f"{fmt_value(value[TAG])} is not allowed; allowed: {_tag_of(cls)}"
            )
            return INVALID
        ok = self._check_keys(cls, value, path)
        kwargs: dict[str, Any] = {}
        for f in yaml_fields(cls):
            r: Rule = f.metadata.get("rule", NO_RULE)
            if f.name not in value:
                if not _has_default(f):
                    self.report(
                        (*path, f.name),
                        f"missing required key; expected {describe(hints[f.name], r)}",
                    )
                    ok = False
                continue
            built = self.value(hints[f.name], value[f.name], (*path, f.name), r)
            if built is INVALID:
                ok = False
            else:
                kwargs[f.name] = built
        if not ok:
            return INVALID
        obj = cls(**kwargs)
        cross_check: Callable[[], Iterable[tuple[FieldPath, str]]] | None
        cross_check = getattr(obj, "cross_check", None)
        if cross_check is not None:
            for rel, message in cross_check():
                self.report((*path, *rel), message)
        return obj
