"""Regenerate (or check) the committed OPC UA artefacts from the point table.

    python -m appliance.northbound.opcua generate   # write both files
    python -m appliance.northbound.opcua check      # exit 1 if either is out of date

Run from the repository root (or pass --root): it writes models/opcua/appliance.NodeSet2.xml
and the generated model section of docs/opcua.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from appliance.northbound.opcua.docs import current_section, model_section, replace_section
from appliance.northbound.opcua.nodeset import NODESET_PATH, shipped_nodeset_xml

DOCS_PATH = Path("docs/opcua.md")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.northbound.opcua")
    parser.add_argument("action", choices=["generate", "check"])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root")
    args = parser.parse_args(argv)
    nodeset, docs = args.root / NODESET_PATH, args.root / DOCS_PATH
    document = docs.read_text(encoding="utf-8")
    section = model_section()
    if args.action == "check":
        stale = []
        if not nodeset.exists() or nodeset.read_text(encoding="utf-8") != shipped_nodeset_xml():
            stale.append(str(nodeset))
        if current_section(document) != section:
            stale.append(str(docs))
        for path in stale:
            sys.stderr.write(f"out of date: {path}\n")
        return 1 if stale else 0
    nodeset.parent.mkdir(parents=True, exist_ok=True)
    nodeset.write_text(shipped_nodeset_xml(), encoding="utf-8")
    docs.write_text(replace_section(document, section), encoding="utf-8")
    sys.stderr.write(f"wrote {nodeset} and the model section of {docs}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
