"""``python -m reproduce list``: the tables, what each would run, and which paper cells are known."""

from __future__ import annotations

import csv

from reproduce.specs import ROOT, TABLES, load_spec


def summaries() -> list[dict]:
    """One summary per table spec: model, rows (implemented or not), columns, known paper cells."""
    from reproduce.specs import model_choice, select_rows

    out = []
    for table in TABLES:
        spec = load_spec(table)
        paper = []
        if spec["paper_file"] is not None:  # None: a table beyond the paper
            with open(ROOT / spec["paper_file"], encoding="utf-8") as f:
                paper = list(csv.DictReader(f))
        known = sum(r["value"] != "unknown" for r in paper)
        runnable, skipped = select_rows(spec, smoke=False, wanted=None)
        out.append({"table": spec["table"], "spec_version": spec["spec_version"], "caption": spec["caption"],
                    "model": spec["model"]["id"], "weights": model_choice(spec)["weights"],
                    "base": spec["model"].get("base"), "rows": len(spec["rows"]), "runnable_rows": len(runnable),
                    "not_run": [(f"{m}@{b}", why) for m, b, why in skipped],
                    "columns": [c["benchmark"] for c in spec["columns"]],
                    "paper_cells": len(paper), "known_cells": known, "beyond_paper": spec["paper_file"] is None,
                    "micro": (f"micro {spec['micro']['model']}, {len(select_rows(spec, False, None, micro=True)[0])} "
                              f"rows that run" if "micro" in spec else None)})
    return out


def main(argv: list[str] | None = None) -> int:
    for s in summaries():
        print(f"{s['table']} (spec v{s['spec_version']}): {s['caption']}")
        print(f"  model {s['model']}; {s['rows']} rows, {s['runnable_rows']} runnable")
        print(f"  weights: {s['weights']}")
        if s["base"]:
            print(f"  base weights ({s['base']['id']}): {s['base']['how']}")
        for label, why in s["not_run"]:
            print(f"  not run: {label}: {why.split(': ')[0] if len(why) > 100 else why}")
        print(f"  columns: {', '.join(s['columns'])}")
        print(f"  micro twin (--micro): {s['micro'] or 'none (no micro model of this family)'}")
        if s["beyond_paper"]:
            print(f"  {s['table']}: beyond the paper, no paper cells")
        else:
            print(f"  paper cells known: {s['known_cells']} of {s['paper_cells']}")
    print(f"Run a table: python -m reproduce {'|'.join(TABLES)} [--smoke | --micro [--reduced]] [--rows ...] [--columns ...] "
          "[--limit N] [--out DIR]")
    return 0
