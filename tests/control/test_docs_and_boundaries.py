"""Generated docs match their definitions; the control package stays pure."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from appliance.control import state_doc

ROOT = Path(__file__).resolve().parents[2]
CONTROL = ROOT / "appliance" / "control"

FORBIDDEN_IMPORTS = (
    "asyncio",
    "socket",
    "time",
    "datetime",
    "threading",
    "pymodbus",
    "asyncua",
    "can",
    "zigpy",
    "serial",
    "appliance.drivers",
    "appliance.runtime",
    "appliance.northbound",
    "appliance.store.datastore",  # the sample types (Value) are plain data and allowed
    "appliance.simulation",
)


def test_state_machine_doc_is_generated_from_the_definition() -> None:
    committed = (ROOT / "docs" / "state-machine.md").read_text(encoding="utf-8")
    assert committed == state_doc.render(), (
        "docs/state-machine.md is out of date: run "
        "`.venv/bin/python -m appliance.control.state_doc docs/state-machine.md`"
    )


def test_state_doc_cli_writes_the_file(tmp_path: Path) -> None:
    target = tmp_path / "sm.md"
    assert state_doc.main([str(target)]) == 0
    assert target.read_text(encoding="utf-8") == state_doc.render()
    assert state_doc.main([]) == 2


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted(CONTROL.glob("*.py")), ids=lambda p: p.name)
def test_control_modules_import_no_io_and_no_clock(path: Path) -> None:
    bad = sorted(
        name
        for name in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN_IMPORTS)
    )
    assert bad == []


def test_the_boundary_check_would_catch_a_forbidden_import(tmp_path: Path) -> None:
    sample = tmp_path / "bad.py"
    sample.write_text("import asyncio\nfrom appliance.runtime.core import Core\n", encoding="utf-8")
    assert _imports(sample) == {"asyncio", "appliance.runtime.core"}
