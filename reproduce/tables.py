"""The table of a run: derived columns, paper vs ours per cell, each row's FLOPs and measured efficiency,
Markdown and CSV.

:func:`build_table` turns the cell records into one long-form line per (row, column): the paper's
value, ours, the difference and whether it is within the spec's tolerance, the derived columns (Avg,
Rel) computed as the spec says, a ``prefill TFLOPs`` line per row, and the row's measured lines
(:data:`MEASURED_LINES`: median time to first token and its speed-up over the unpruned row measured on
the same machine and settings, decode time per token, peak memory, selection time, the attention
implementation and where it was measured); :func:`table_csv` and :func:`table_markdown` print them.
:func:`golden_form` is the CSV with the timings masked, as the smoke twins' goldens hold it.
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


#: The measured lines of each row run, after its ``prefill TFLOPs`` line (the ``benchmark`` field of the CSV).
MEASURED_LINES = ("TTFT ms", "TTFT speed-up", "decode ms/token", "peak memory MiB", "selection ms", "attention",
                  "measured on")
#: The measured lines whose values are timings or name the machine: masked in :func:`golden_form`.
TIMED_LINES = ("TTFT ms", "TTFT speed-up", "decode ms/token", "peak memory MiB", "selection ms", "measured on")


def row_timing(cells: list[dict]) -> dict | None:
    """The measured efficiency of one row from its cell records (their ``timing``,
    :func:`reproduce.records.timing_summary`), or None when none of them was measured.

    All the row's samples measured in one context (:func:`d2pruner.measure.measurement_context`) are
    pooled; where its cells were measured in several contexts, the one with the most samples is used
    and the other cells are counted in ``cells_left_out``.
    """
    timed = [r for r in cells if (r.get("timing") or {}).get("n_timed")]
    if not timed:
        return None
    by_context: dict[str, list[dict]] = {}
    for r in timed:
        by_context.setdefault(r["timing"]["context_id"], []).append(r)
    cid = max(sorted(by_context), key=lambda c: sum(r["timing"]["n_timed"] for r in by_context[c]))
    chosen = by_context[cid]
    from reproduce.records import TIMING_FIELDS

    samples = {f: [p[f] for r in chosen for p in r["timing"]["per_sample"].values()] for f in TIMING_FIELDS}
    return {"context": chosen[0]["timing"]["context"], "context_id": cid, "memory": chosen[0]["timing"]["memory"],
            "n": sum(r["timing"]["n_timed"] for r in chosen), "cells_left_out": len(timed) - len(chosen),
            "samples": samples,
            "ttft_by_benchmark": {r["benchmark"]: [p["ttft_ms"] for p in r["timing"]["per_sample"].values()]
                                  for r in chosen},
            "attention": sorted({r.get("provenance", {}).get("attn_implementation") for r in chosen} - {None})}


def ttft_speedup(row: dict | None, base: dict | None) -> tuple[float | None, str]:
    """The unpruned row's median time to first token over this row's, on the benchmarks both measured,
    and the line's status; never across machines or settings (other :func:`row_timing` contexts).

    >>> a = {"context_id": "x", "context": {}, "ttft_by_benchmark": {"POPE": [10.0, 12.0]}}
    >>> ttft_speedup({**a, "ttft_by_benchmark": {"POPE": [4.0, 7.0]}}, a)
    (2.0, 'measured')
    >>> ttft_speedup({**a, "context_id": "y"}, a)[0] is None
    True
    """
    from d2pruner.measure import context_label, summary

    if row is None:
        return None, "not measured"
    if base is None:
        return None, "not compared: the unpruned row was not measured"
    if row["context_id"] != base["context_id"]:
        where = context_label(base["context"]) if base["context"] else base["context_id"]
        return None, f"not compared: the unpruned row was measured elsewhere ({where})"
    common = sorted(set(row["ttft_by_benchmark"]) & set(base["ttft_by_benchmark"]))
    if not common:
        return None, "not compared: no benchmark measured in both rows"
    mine = summary([v for b in common for v in row["ttft_by_benchmark"][b]])
    ref = summary([v for b in common for v in base["ttft_by_benchmark"][b]])
    if mine is None or ref is None or not mine["median"]:
        return None, "not compared: no time to first token"
    return ref["median"] / mine["median"], "measured"


def measured_lines(row: Row, timing: dict | None, base: dict | None) -> list[dict]:
    """The measured lines of one row (:data:`MEASURED_LINES`)."""
    from d2pruner.measure import context_label, summary

    def line(bench, value, status, n=""):
        return {"method": row.method, "budget": row.budget, "benchmark": bench, "paper": "", "reproduced": value,
                "delta": "", "within_tolerance": "", "n_samples": n, "answers_sha256": "", "status": status}

    if timing is None:
        return [line(b, "", "not measured") for b in MEASURED_LINES]
    left = f"; {timing['cells_left_out']} cell(s) measured elsewhere left out" if timing["cells_left_out"] else ""
    status = "measured" + left
    s = {f: summary(v) for f, v in timing["samples"].items()}
    speedup, why = ttft_speedup(timing, base)

    def fmt(stat, key="median", digits=2):
        return "" if stat is None else f"{stat[key]:.{digits}f}"

    n = timing["n"]
    return [line("TTFT ms", fmt(s["ttft_ms"]), status, n),
            line("TTFT speed-up", "" if speedup is None else f"{speedup:.2f}", why + left if speedup else why, n),
            line("decode ms/token", fmt(s["decode_ms_per_token"]), status, n),
            line("peak memory MiB", fmt(s["peak_mib"], "max", 0), f"{status}: {timing['memory']}", n),
            line("selection ms", fmt(s["selection_ms"]), status if s["selection_ms"] else "no selection", n),
            line("attention", ", ".join(timing["attention"]), "setting"),
            line("measured on", context_label(timing["context"]), "setting")]


def build_table(spec: dict, rows: list[Row], skipped: list, records: dict) -> list[dict]:
    """One long-form line per (row, benchmark incl. derived): paper, reproduced, delta, within tolerance;
    then the row's ``prefill TFLOPs`` and its measured lines (:func:`measured_lines`)."""
    paper = paper_values(spec)
    tol = spec["tolerance"]
    columns = [c["benchmark"] for c in spec["columns"]]
    per_row = {}
    for row in rows:
        per_row[row.label] = {c: records[(row.label, c)]["value"] if (row.label, c) in records else None for c in columns}
    vanilla = next((per_row[r.label] for r in rows if r.method == "Vanilla"), None)
    timings = {r.label: row_timing([records[(r.label, c)] for c in columns if (r.label, c) in records]) for r in rows}
    base_timing = next((timings[r.label] for r in rows if r.method == "Vanilla"), None)
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
        lines += measured_lines(row, timings[row.label], base_timing)
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


def golden_form(csv_text: str) -> str:
    """The table's CSV with the timings and the machine masked (``*``), as the smoke goldens hold it:
    everything else (rows, values, answers' hashes, FLOPs, which lines were measured and how many
    samples, the attention implementation) is compared exactly. Idempotent.

    >>> text = "method,budget,benchmark,reproduced,status\\nV,1,TTFT ms,12.5,measured\\nV,1,POPE,80.00,run\\n"
    >>> golden_form(text).splitlines()[1:]
    ['V,1,TTFT ms,*,measured', 'V,1,POPE,80.00,run']
    """
    lines = list(csv.DictReader(io.StringIO(csv_text)))
    if not lines:
        return csv_text
    for ln in lines:
        if ln["benchmark"] in TIMED_LINES and ln["reproduced"]:
            ln["reproduced"] = "*"
        if ln["benchmark"] == "TTFT speed-up" and ln["status"].startswith("not compared: the unpruned row was measured elsewhere"):
            ln["status"] = "not compared: the unpruned row was measured elsewhere (*)"
    return table_csv(lines)


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


def micro_view(spec: dict) -> dict:
    """The spec as its micro twin's table shows it: no paper values (micro-model numbers are never compared
    with the paper's) and the micro section's note in place of a beyond-the-paper note."""
    view = {k: v for k, v in spec.items() if k != "beyond_paper"}
    view["paper_file"] = None
    return view


def table_header(spec: dict, smoke: bool, model_id: str, limit: int | None, micro: bool = False) -> str:
    """The Markdown table's heading: table, caption, spec version, model, sample limit and the FLOPs note."""
    mode = (" (smoke: tiny random model, tiny local data — not the paper numbers)" if smoke else
            " (micro twin: models trained here on synthetic scenes — micro-model numbers, not the paper's)" if micro else "")
    budgets = spec.get("micro", {}).get("budgets") if micro else None
    scaled = (f"\n\nRow budgets are the paper's; the micro model runs them scaled to its own visual tokens: "
              + ", ".join(f"{a} → {b}" for a, b in budgets.items()) + "." if budgets else "")
    return (f"## {spec['table']}{mode}"
            f"\n\n{spec['caption']}. Spec v{spec['spec_version']}; model {model_id}; "
            f"{'limit ' + str(limit) + ' samples per benchmark' if limit else 'full benchmarks'}.{scaled}"
            f"\n\n{flops_note(spec)}" + (f"\n\n**Beyond the paper.** {spec['beyond_paper']}" if spec.get("beyond_paper") else "")
            + (f"\n\n{spec['micro']['note']}" if micro and spec.get("micro", {}).get("note") else ""))


def table_markdown(spec: dict, lines: list[dict], header: str) -> str:
    """The wide table: one line per row, each cell ``ours / paper (delta, mark)``."""
    columns = [c["benchmark"] for c in spec["columns"]] + ["prefill TFLOPs", *MEASURED_LINES]
    order, cells = [], {}
    for ln in lines:
        label = (ln["method"], ln["budget"])
        if label not in cells:
            order.append(label)
            cells[label] = {"status": ln["status"]}
        cells[label][ln["benchmark"]] = ln
        if ln["status"].startswith("not run: "):
            cells[label]["status"] = ln["status"]
    compared = spec["paper_file"] is not None  # a table beyond the paper, or a micro twin: our values alone
    legend = ("Each cell: reproduced / paper (difference; ✓ within tolerance, ✗ not). `?` = the paper's value is "
              "unknown; blank = not run." if compared else "Each cell: our value (no paper value to compare with); "
              "— = not run or no value.")
    out = [header, "", legend, "",
           "| method | budget | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    places: dict[str, str] = {}
    for label in order:
        row = cells[label]
        if row["status"].startswith("not run: "):
            out.append(f"| {label[0]} | {label[1]} | " + " | ".join(
                (f"— / {row[c]['paper'] or '?'}" if compared else "—") if c in row else "" for c in columns)
                + f" |  ← {row['status']}")
            continue
        shown = []
        for c in columns:
            ln = row.get(c)
            if ln is None:
                shown.append("")
            elif c == "measured on":
                if ln["reproduced"]:
                    places.setdefault(ln["reproduced"], chr(ord("A") + len(places)))
                shown.append(f"[{places[ln['reproduced']]}]" if ln["reproduced"] else "—")
            elif c == "TTFT speed-up":
                shown.append(f"{ln['reproduced']}×" if ln["reproduced"] else "— (" + ln["status"].removeprefix("not compared: ")
                             .split(" (")[0] + ")")
            elif c in MEASURED_LINES or c == "prefill TFLOPs" or not compared:
                shown.append(ln["reproduced"] or "—")
            elif not ln["reproduced"]:
                shown.append(f"— / {ln['paper'] or '?'}")
            elif not ln["paper"]:
                shown.append(f"{ln['reproduced']} / ?")
            else:
                mark = "✓" if ln["within_tolerance"] == "yes" else "✗"
                shown.append(f"{ln['reproduced']} / {ln['paper']} ({ln['delta']} {mark})")
        out.append(f"| {label[0]} | {label[1]} | " + " | ".join(shown) + " |")
    memory = sorted({ln["status"].split(": ", 1)[1] for ln in lines
                     if ln["benchmark"] == "peak memory MiB" and ": " in ln["status"]})
    out += ["", timing_note(memory)] + [f"[{tag}] {place}" + ("  " if i < len(places) - 1 else "")
                                        for i, (place, tag) in enumerate(places.items())]
    claims = abstract_lines(spec, lines) if compared else []
    return "\n".join(out + ([""] + claims if claims else [])) + "\n"


def timing_note(memory: list[str]) -> str:
    """What the measured columns mean (printed under the Markdown table)."""
    kinds = "; ".join(memory) if memory else "not measured"
    return ("Measured columns, over the row's answered samples (each sample: the prompt pass and decoding of its "
            "batch): TTFT = time to first token, from the start of the prompt pass (vision encoder, pruning work, "
            "language model) to the first new token's logits, median; speed-up = the unpruned row's median TTFT / "
            "the row's, on the benchmarks both measured, only between rows measured on the same machine and "
            "settings (`measured on`; otherwise not compared); decode = per generated token after the first, median; "
            f"peak memory = the largest over the row's generate calls ({kinds}); selection = the method's own "
            "selection time per batch, median (d2pruner.measure; CUDA events on a GPU, a monotonic clock on CPU, one "
            "warm-up call per cell left out). Attention: the unpruned row runs the fastest implementation the "
            "spec lists that runs here (FlashAttention on a GPU where installed), pruned rows the fastest the "
            "pruning hooks support (sdpa: they cut the 4-D attention mask, which FlashAttention does not take; "
            "no method needs eager attention weights, each computes its attention rows from the layer's q/k). "
            "Timings on CPU check the code path, not the speed.")
