"""Read the site configuration: YAML -> checked `SiteConfig`, or one `ConfigError` listing every problem.

    cfg = load_config("/etc/appliance/site.yaml")
    cfg = simulated_site_config()            # the built-in simulated site

Relative paths under ``archive`` are made relative to ``data_dir``; ``data_dir`` itself may be
relative (to the working directory), as in the simulated site (``./var``).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
from importlib.resources.abc import Traversable
from pathlib import Path

import yaml

from appliance.config.schema import SiteConfig, site_problems
from appliance.config.validate import (
    Builder,
    ConfigValidationError,
    FieldPath,
    Problem,
    describe,
    render_path,
)
from appliance.errors import ConfigError

SIMULATED_SITE = "simulated.yaml"
EXAMPLE_SITE = "example-site.yaml"


def models_root() -> Traversable:
    """The shipped models (package ``appliance.models``; the ``models/`` folder of a checkout)."""
    try:
        return importlib.resources.files("appliance.models")
    except ModuleNotFoundError:
        checkout = Path(__file__).resolve().parents[2] / "models"
        if checkout.is_dir():
            return checkout
        raise ConfigError(
            "the built-in models (package appliance.models) are not installed"
        ) from None


def builtin_site(name: str) -> Traversable:
    """A shipped site file, e.g. ``builtin_site("example-site.yaml")``."""
    return models_root() / "sites" / name


# --------------------------------------------------------------------------- YAML


def _yaml_problem(source: str, exc: yaml.YAMLError) -> Problem:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        what = exc.problem or "invalid YAML"
        context = f" ({exc.context})" if exc.context else ""
        return Problem(
            source, "", f"YAML syntax error: {what}{context}", mark.line + 1, mark.column + 1
        )
    return Problem(source, "", f"YAML syntax error: {exc}")


def _index(
    node: yaml.Node, path: FieldPath, lines: dict[FieldPath, int], dups: list[Problem], source: str
) -> None:
    """Record the line of every key and list item; report keys written twice in one mapping."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = key_node.value
            line = key_node.start_mark.line + 1
            child = (*path, key)
            if key in seen:
                dups.append(
                    Problem(
                        source,
                        render_path(child),
                        f"key {key!r} is written twice (also on line {seen[key]}); "
                        "allowed: each key once",
                        line,
                    )
                )
                continue
            seen[key] = line
            lines.setdefault(child, line)
            _index(value_node, child, lines, dups, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            child = (*path, i)
            lines.setdefault(child, item.start_mark.line + 1)
            _index(item, child, lines, dups, source)


def parse_yaml(text: str, source: str) -> tuple[object, dict[FieldPath, int], list[Problem]]:
    """(data, line of each path, duplicate-key problems); a syntax error raises at once."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[FieldPath, int] = {}
        dups: list[Problem] = []
        if node is None:
            return None, lines, dups
        lines[()] = node.start_mark.line + 1
        _index(node, (), lines, dups, source)
        data: object = loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigValidationError([_yaml_problem(source, exc)]) from None
    except RecursionError:
        raise ConfigValidationError(
            [Problem(source, "", "the YAML nests too deeply (a recursive alias?)")]
        ) from None
    finally:
        loader.dispose()
    return data, lines, dups


# --------------------------------------------------------------------------- loading


def _resolve_paths(cfg: SiteConfig) -> SiteConfig:
    """Put relative archive paths under data_dir."""
    archive = cfg.archive
    spool = dataclasses.replace(archive.spool, path=cfg.data_dir / archive.spool.path)
    local = dataclasses.replace(archive.local, path=cfg.data_dir / archive.local.path)
    return dataclasses.replace(cfg, archive=dataclasses.replace(archive, spool=spool, local=local))


def device_map_path(name: str, base_dir: Path | None = None) -> Path | Traversable | None:
    """Where the register map `name` of a generic device is: next to the site file first, then
    the shipped models/devices; None when neither has it."""
    if base_dir is not None and (base_dir / name).is_file():
        return base_dir / name
    shipped = models_root() / "devices" / name
    return shipped if shipped.is_file() else None


def _check_maps(cfg: SiteConfig, base_dir: Path | None, builder: Builder) -> None:
    for i, node in enumerate(cfg.devices.battery_nodes):
        name = node.inverter.map
        if name is None or device_map_path(name, base_dir) is not None:
            continue
        shipped = models_root() / "devices"
        known = (
            sorted(p.name for p in shipped.iterdir() if p.name.endswith((".yaml", ".yml")))
            if shipped.is_dir()
            else []
        )
        where = f"{base_dir} or the shipped models/devices" if base_dir else "models/devices"
        builder.report(
            ("devices", "battery_nodes", i, "inverter", "map"),
            f"{name!r} is not a file in {where}; allowed: {', '.join(known) or '(none shipped)'}",
        )


def load_config_text(
    text: str, source_name: str = "<text>", *, base_dir: Path | None = None
) -> SiteConfig:
    """Check and build a site configuration from YAML text.

    `source_name` starts every problem line; `base_dir` is where register maps named in the
    file are looked for first (the site file's directory when loading from a file).
    Raises `ConfigValidationError` (a `ConfigError`) listing every problem.
    """
    data, lines, dups = parse_yaml(text, source_name)
    builder = Builder(source_name, lines)
    builder.problems.extend(dups)
    if data is None:
        builder.report((), f"the file is empty; expected {describe(SiteConfig)}")
        builder.raise_if_problems()
    cfg = builder.build(SiteConfig, data)
    if cfg is not None:
        cfg = _resolve_paths(cfg)
        for path, message in site_problems(cfg):
            builder.report(path, message)
        _check_maps(cfg, base_dir, builder)
    builder.raise_if_problems()
    if cfg is None:  # pragma: no cover - build() only fails after reporting a problem
        raise ConfigError(f"{source_name}: invalid site configuration")
    return dataclasses.replace(cfg, source=source_name)


def load_config(path: str | os.PathLike[str]) -> SiteConfig:
    """Read and check the site configuration file at `path`."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigValidationError(
            [Problem(str(file), "", "the site configuration file does not exist")]
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigValidationError(
            [Problem(str(file), "", f"is not UTF-8 text (bad byte at offset {exc.start})")]
        ) from None
    except OSError as exc:
        raise ConfigValidationError(
            [Problem(str(file), "", f"cannot read the site configuration: {exc.strerror}")]
        ) from None
    return load_config_text(text, str(file), base_dir=file.parent)


def simulated_site_config() -> SiteConfig:
    """The built-in simulated site (models/sites/simulated.yaml): everything on 127.0.0.1."""
    site = builtin_site(SIMULATED_SITE)
    return load_config_text(site.read_text(encoding="utf-8"), str(site))
