"""The `appliance` command as an operator uses it: check-config, points, --version."""

from __future__ import annotations

import importlib.resources
import subprocess
import sys
from pathlib import Path

import pytest

from appliance import __version__
from appliance.cli import main
from appliance.points.docs import render_csv, render_markdown
from appliance.points.table import shipped_point_table

REPO = Path(__file__).resolve().parent.parent


def shipped_site(name: str) -> Path:
    return Path(str(importlib.resources.files("appliance.models") / "sites" / name))


@pytest.mark.parametrize("name", ["simulated.yaml", "example-site.yaml"])
def test_check_config_accepts_the_shipped_examples(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", str(shipped_site(name))]) == 0
    assert ": ok (site '" in capsys.readouterr().out


def test_check_config_names_file_field_path_and_allowed_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = shipped_site("simulated.yaml").read_text()
    bad = tmp_path / "site.yaml"
    bad.write_text(text.replace("profile: balancing", "profile: bang_bang"))
    assert main(["check-config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err
    assert "control.profile" in err
    assert "bang_bang" in err
    assert "balancing" in err
    assert "spec" in err


def test_check_config_reports_out_of_range_with_the_allowed_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = shipped_site("simulated.yaml").read_text()
    bad = tmp_path / "site.yaml"
    bad.write_text(text.replace("max_charge_w: 5000", "max_charge_w: -5", 1))
    assert main(["check-config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "devices.battery_nodes[0].limits.max_charge_w" in err
    assert "-5" in err


def test_check_config_on_a_missing_file_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", str(tmp_path / "nope.yaml")]) == 1
    assert "nope.yaml" in capsys.readouterr().err


def test_version_is_printed() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == f"appliance {__version__}"


def test_points_table_lists_site_points(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["points", "--nodes", "2"]) == 0
    out = capsys.readouterr().out
    assert "battery.2.soc" in out
    assert "battery.3.soc" not in out
    assert "Site.GridMeter.AcActivePowerTotal" in out


def test_generated_point_docs_are_committed_and_current() -> None:
    table = shipped_point_table()
    assert (REPO / "docs" / "points.md").read_text() == render_markdown(table), "run `make docs`"
    assert (REPO / "docs" / "points.csv").read_text() == render_csv(table), "run `make docs`"
