"""Regenerate (or check) the committed Modbus artefacts from the point table.

    python -m appliance.northbound.modbus generate   # write both files
    python -m appliance.northbound.modbus check      # exit 1 if either is out of date
    python -m appliance.northbound.modbus vendor-json  # the vendor model for pysunspec2, on stdout

Run from the repository root (or pass --root). `generate` refuses to move an address of the
committed map (the previous release) unless --allow-breaking is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from appliance.northbound.modbus.docs import (
    CSV_PATH,
    DOCS_PATH,
    compatibility,
    current_section,
    markdown_section,
    render_csv,
    replace_section,
)
from appliance.northbound.modbus.layout import site_map
from appliance.northbound.modbus.vendor import VENDOR_MODEL_ID, model_definition_json
from appliance.points.table import shipped_point_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.northbound.modbus")
    parser.add_argument("action", choices=["generate", "check", "vendor-json"])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root")
    parser.add_argument(
        "--allow-breaking", action="store_true", help="generate even if an address moved"
    )
    args = parser.parse_args(argv)
    if args.action == "vendor-json":
        fields = [
            f for f in site_map(shipped_point_table()).registers if f.model == str(VENDOR_MODEL_ID)
        ]
        sys.stdout.write(model_definition_json(fields))
        return 0
    csv_path, docs_path = args.root / CSV_PATH, args.root / DOCS_PATH
    previous = csv_path.read_text(encoding="utf-8") if csv_path.exists() else ""
    document = docs_path.read_text(encoding="utf-8")
    generated_csv, section = render_csv(), markdown_section()
    moved = compatibility(previous)
    if args.action == "check":
        stale = [str(csv_path)] if previous != generated_csv else []
        stale += [str(docs_path)] if current_section(document) != section else []
        for path in stale:
            sys.stderr.write(f"out of date: {path}\n")
        for problem in moved:
            sys.stderr.write(f"moved: {problem}\n")
        return 1 if stale or moved else 0
    if moved and not args.allow_breaking:
        for problem in moved:
            sys.stderr.write(f"moved: {problem}\n")
        sys.stderr.write("refusing to move addresses of the committed map (--allow-breaking)\n")
        return 1
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    csv_path.write_text(generated_csv, encoding="utf-8")
    docs_path.write_text(replace_section(document, section), encoding="utf-8")
    sys.stderr.write(f"wrote {csv_path} and the register map section of {docs_path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
