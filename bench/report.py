"""Writing a benchmark's figures into its own section of docs/performance.md.

Each benchmark owns the text between ``<!-- KEY:begin -->`` and ``<!-- KEY:end -->``; a
run replaces only that section, so the benchmarks can be re-run one at a time. The file is
locked while it is rewritten so two benchmarks finishing together do not lose a section.
"""

from __future__ import annotations

import fcntl
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REPORT = REPO / "docs" / "performance.md"
HEADER = "# Performance\n\nFigures of real runs on this project's machines.\n"


def machine() -> str:
    """One line naming what the figures were measured on."""
    import os  # noqa: PLC0415

    return (
        f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {sys.version.split()[0]}, {platform.system()}"
    )


def markers(key: str) -> tuple[str, str]:
    return f"<!-- {key}:begin -->", f"<!-- {key}:end -->"


def write_section(key: str, body: str, report: Path = REPORT) -> None:
    """Replace (or append) the section `key` of `report` with `body` (markdown)."""
    begin, end = markers(key)
    section = f"{begin}\n{body.strip()}\n{end}"
    report.parent.mkdir(parents=True, exist_ok=True)
    with open(report.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = report.read_text() if report.exists() else HEADER
        if begin in text and end in text:
            before, rest = text.split(begin, 1)
            text = before + section + rest.split(end, 1)[1]
        else:
            text = text.rstrip() + "\n\n" + section + "\n"
        report.write_text(text)
