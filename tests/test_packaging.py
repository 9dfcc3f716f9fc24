"""The wheel an operator installs carries the data in models/ and finds it without a checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_wheel_ships_models_and_loads_them_outside_the_checkout(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("appliance-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "site")
    data_files = [
        p.relative_to(REPO / "models").as_posix()
        for p in (REPO / "models").rglob("*")
        if p.is_file() and p.suffix in {".yaml", ".dbc", ".xml", ".csv"}
    ]
    missing = [f for f in data_files if f"appliance/models/{f}" not in names]
    assert data_files
    assert missing == []
    # Import from the unpacked wheel only (dependencies still come from this environment).
    probe = (
        "import appliance, sys;"
        "from appliance.points.table import shipped_point_table;"
        "from appliance.config import simulated_site_config;"
        "assert appliance.__file__.startswith(sys.argv[1]), appliance.__file__;"
        "print(len(shipped_point_table()), simulated_site_config().site.id)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "site")],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
        capture_output=True,
        text=True,
        check=True,
    )
    count, site = result.stdout.split()
    assert int(count) > 1000
    assert site == "simulated"
