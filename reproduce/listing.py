"""``python -m reproduce list``: the tables, what each would run, and which paper cells are known."""

from __future__ import annotations

import csv
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
SPECS = pathlib.Path(__file__).resolve().parent / "specs"


def summaries() -> list[dict]:
    """One summary per table spec: model, rows (implemented or not), columns, known paper cells."""
    from d2pruner.methods import METHODS

    out = []
    for path in sorted(SPECS.glob("table*.json")):
        spec = json.loads(path.read_text())
        paper = list(csv.DictReader(open(ROOT / spec["paper_file"])))
        known = sum(r["value"] != "unknown" for r in paper)
        keys = spec["method_keys"]
        runnable = [r for r in spec["rows"] if r["method"] == "Vanilla" or keys[r["method"]] in METHODS]
        missing = sorted({r["method"] for r in spec["rows"] if r["method"] != "Vanilla" and keys[r["method"]] not in METHODS})
        out.append({"table": spec["table"], "spec_version": spec["spec_version"], "caption": spec["caption"],
                    "model": spec["model"]["id"], "rows": len(spec["rows"]), "runnable_rows": len(runnable),
                    "not_implemented": missing, "columns": [c["benchmark"] for c in spec["columns"]],
                    "paper_cells": len(paper), "known_cells": known})
    return out


def main(argv: list[str] | None = None) -> int:
    for s in summaries():
        print(f"{s['table']} (spec v{s['spec_version']}): {s['caption']}")
        print(f"  model {s['model']}; {s['rows']} rows, {s['runnable_rows']} runnable"
              + (f" (not implemented: {', '.join(s['not_implemented'])})" if s["not_implemented"] else ""))
        print(f"  columns: {', '.join(s['columns'])}")
        print(f"  paper cells known: {s['known_cells']} of {s['paper_cells']}")
    print("Run a table: python -m reproduce table1|table2|table3 [--smoke] [--rows ...] [--columns ...] [--limit N] [--out DIR]")
    return 0
