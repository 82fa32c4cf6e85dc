"""The table of a run: derived columns, paper vs ours per cell, each row's FLOPs, Markdown and CSV.

:func:`build_table` turns the cell records into one long-form line per (row, column): the paper's
value, ours, the difference and whether it is within the spec's tolerance, the derived columns (Avg,
Rel) computed as the spec says, and a ``prefill TFLOPs`` line per row; :func:`table_csv` and
:func:`table_markdown` print them.
"""

from __future__ import annotations

import csv
import io

from reproduce.specs import ROOT, Row, paper_values


def derived_values(spec: dict, values: dict[str, float | None], vanilla: dict[str, float | None] | None) -> dict:
    """The spec's derived columns for one row, from its benchmark ``values`` (None where not run).

    >>> spec = {"columns": [{"benchmark": "A"}, {"benchmark": "MME"},
    ...     {"benchmark": "Avg", "derived": "mean", "of": ["A", "MME"], "divide": {"MME": 20}},
    ...     {"benchmark": "Rel", "derived": "relative", "of": "Avg", "to": "Vanilla"}]}
    >>> derived_values(spec, {"A": 60.0, "MME": 1500.0}, {"Avg": 80.0})
    {'Avg': 67.5, 'Rel': 84.375}
    >>> derived_values(spec, {"A": 60.0, "MME": None}, None)
    {'Avg': None, 'Rel': None}
    >>> spec = {"columns": [{"benchmark": "Rel", "derived": "relative_mean", "of": ["A", "MME"], "to": "Vanilla"}]}
    >>> derived_values(spec, {"A": 60.0, "MME": 1500.0}, {"A": 80.0, "MME": 1500.0})  # (75 % + 100 %) / 2
    {'Rel': 87.5}
    """
    out: dict[str, float | None] = {}
    for col in spec["columns"]:
        if col.get("derived") == "mean":
            parts = [values.get(b) for b in col["of"]]
            if any(p is None for p in parts):
                out[col["benchmark"]] = None
            else:
                div = col.get("divide", {})
                out[col["benchmark"]] = sum(p / div.get(b, 1) for b, p in zip(col["of"], parts)) / len(parts)
        elif col.get("derived") == "relative":
            mine = out.get(col["of"], values.get(col["of"]))
            ref = (vanilla or {}).get(col["of"])
            out[col["benchmark"]] = None if mine is None or not ref else 100.0 * mine / ref
        elif col.get("derived") == "relative_mean":  # mean over benchmarks of row / unpruned, in percent
            pairs = [(values.get(b), (vanilla or {}).get(b)) for b in col["of"]]
            ok = all(m is not None and r for m, r in pairs)
            out[col["benchmark"]] = 100.0 * sum(m / r for m, r in pairs) / len(pairs) if ok else None
    return out


def flops_note(spec: dict) -> str:
    """What the table's FLOPs column counts.

    >>> from reproduce.specs import load_spec
    >>> flops_note(load_spec("table3"))
    'Prefill TFLOPs: the full-size OpenGVLab/InternVL2_5-8B-MPO-hf with 64 text tokens and 1792 visual tokens before pruning (6 tiles + thumbnail; a real image has 256 to 3328), exact counting convention (reproduce.efficiency).'
    """
    from d2pruner.models.family import get_family
    from reproduce.efficiency import ROW_TEXT_TOKENS
    from reproduce.specs import row_visual_tokens

    family = get_family(spec["model"]["family"])
    note = f" ({family.row_visual_note})" if family.row_visual_note else ""
    return (f"Prefill TFLOPs: the full-size {spec['model']['id']} with {ROW_TEXT_TOKENS} text tokens and "
            f"{row_visual_tokens(spec)} visual tokens before pruning{note}, exact counting convention (reproduce.efficiency).")


def row_flops(spec: dict, row: Row) -> str:
    """Prefill TFLOPs of the row on the spec's full-size model (see :func:`reproduce.efficiency.row_tflops`)."""
    from reproduce.efficiency import row_tflops

    try:
        return f"{row_tflops(spec, row.key, row.budget):.2f}"
    except ValueError as err:
        return f"n/a ({err})"


def build_table(spec: dict, rows: list[Row], skipped: list, records: dict) -> list[dict]:
    """One long-form line per (row, benchmark incl. derived): paper, reproduced, delta, within tolerance."""
    paper = paper_values(spec)
    tol = spec["tolerance"]
    columns = [c["benchmark"] for c in spec["columns"]]
    per_row = {}
    for row in rows:
        per_row[row.label] = {c: records[(row.label, c)]["value"] if (row.label, c) in records else None for c in columns}
    vanilla = next((per_row[r.label] for r in rows if r.method == "Vanilla"), None)
    if vanilla is not None:
        vanilla.update(derived_values(spec, vanilla, None))
    lines = []
    for row in rows:
        values = per_row[row.label]
        values.update({k: v for k, v in derived_values(spec, values, vanilla).items()})
        for bench in columns:
            mine, theirs = values.get(bench), paper.get((row.method, row.budget, bench))
            delta = None if mine is None or theirs is None else mine - theirs
            rec = records.get((row.label, bench), {})
            lines.append({"method": row.method, "budget": row.budget, "benchmark": bench,
                          "paper": _fmt(theirs), "reproduced": _fmt(mine), "delta": _fmt(delta, signed=True),
                          "within_tolerance": "" if delta is None else ("yes" if abs(delta) <= tol.get(bench, tol["default"]) else "no"),
                          "n_samples": rec.get("n_samples", ""), "answers_sha256": rec.get("answers_sha256", ""),
                          "status": "run" if mine is not None else "not run"})
        lines.append({"method": row.method, "budget": row.budget, "benchmark": "prefill TFLOPs", "paper": "",
                      "reproduced": row_flops(spec, row), "delta": "", "within_tolerance": "", "n_samples": "",
                      "answers_sha256": "", "status": "computed"})
    for method, budget, why in skipped:
        for bench in columns:
            theirs = paper.get((method, budget, bench))
            lines.append({"method": method, "budget": budget, "benchmark": bench, "paper": _fmt(theirs),
                          "reproduced": "", "delta": "", "within_tolerance": "", "n_samples": "", "answers_sha256": "",
                          "status": f"not run: {why}"})
    return lines


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def table_csv(lines: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(lines[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(lines)
    return buf.getvalue()


def abstract_lines(spec: dict, lines: list[dict]) -> list[str]:
    """The abstract's claims this table can check, beside our value of the same kind (the spec's
    ``abstract`` entries: a claim of ``paper_tables/abstract.csv``, the method and the derived column).

    >>> from reproduce.specs import load_spec
    >>> spec = load_spec("table3")
    >>> abstract_lines(spec, [{"method": "D2Pruner", "budget": "10%", "benchmark": "Rel", "reproduced": "84.10"}])
    ['Abstract: InternVL-2.5-8B localization performance retained at 90% token reduction = 85.7 % of unpruned (abstract (primary)); ours, D2Pruner Rel: 10% → 84.10.']
    """
    with open(ROOT / "paper_tables" / "abstract.csv", encoding="utf-8") as f:
        claims = {r["claim"]: r for r in csv.DictReader(f)}
    out = []
    for entry in spec.get("abstract", []):
        claim = claims[entry["claim"]]
        ours = [f"{ln['budget']} → {ln['reproduced'] or 'not run'}" for ln in lines
                if ln["method"] == entry["method"] and ln["benchmark"] == entry["column"]]
        out.append(f"Abstract: {claim['claim']} = {claim['value']} {claim['unit']} ({claim['provenance']}); "
                   f"ours, {entry['method']} {entry['column']}: {', '.join(ours)}.")
    return out


def table_header(spec: dict, smoke: bool, model_id: str, limit: int | None) -> str:
    """The Markdown table's heading: table, caption, spec version, model, sample limit and the FLOPs note."""
    return (f"## {spec['table']}{' (smoke: tiny random model, tiny local data — not the paper numbers)' if smoke else ''}"
            f"\n\n{spec['caption']}. Spec v{spec['spec_version']}; model {model_id}; "
            f"{'limit ' + str(limit) + ' samples per benchmark' if limit else 'full benchmarks'}."
            f"\n\n{flops_note(spec)}" + (f"\n\n**Beyond the paper.** {spec['beyond_paper']}" if spec.get("beyond_paper") else ""))


def table_markdown(spec: dict, lines: list[dict], header: str) -> str:
    """The wide table: one line per row, each cell ``ours / paper (delta, mark)``."""
    columns = [c["benchmark"] for c in spec["columns"]] + ["prefill TFLOPs"]
    order, cells = [], {}
    for ln in lines:
        label = (ln["method"], ln["budget"])
        if label not in cells:
            order.append(label)
            cells[label] = {"status": ln["status"]}
        cells[label][ln["benchmark"]] = ln
        if ln["status"].startswith("not run: "):
            cells[label]["status"] = ln["status"]
    out = [header, "", "Each cell: reproduced / paper (difference; ✓ within tolerance, ✗ not). "
           "`?` = the paper's value is unknown; blank = not run.", "",
           "| method | budget | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for label in order:
        row = cells[label]
        if row["status"].startswith("not run: "):
            out.append(f"| {label[0]} | {label[1]} | " + " | ".join(
                f"— / {row[c]['paper'] or '?'}" if c in row else "" for c in columns) + f" |  ← {row['status']}")
            continue
        shown = []
        for c in columns:
            ln = row.get(c)
            if ln is None:
                shown.append("")
            elif c == "prefill TFLOPs":
                shown.append(ln["reproduced"])
            elif not ln["reproduced"]:
                shown.append(f"— / {ln['paper'] or '?'}")
            elif not ln["paper"]:
                shown.append(f"{ln['reproduced']} / ?")
            else:
                mark = "✓" if ln["within_tolerance"] == "yes" else "✗"
                shown.append(f"{ln['reproduced']} / {ln['paper']} ({ln['delta']} {mark})")
        out.append(f"| {label[0]} | {label[1]} | " + " | ".join(shown) + " |")
    claims = abstract_lines(spec, lines)
    return "\n".join(out + ([""] + claims if claims else [])) + "\n"
