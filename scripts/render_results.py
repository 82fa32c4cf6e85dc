"""Render the measured results under docs/results/ into the README's results section.

The section between ``<!-- results:start -->`` and ``<!-- results:end -->`` is generated, never
typed: ``python scripts/render_results.py`` rewrites it from the result files, and a test fails if
the README and the files disagree.
"""

from __future__ import annotations

import csv
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _load(name: str):
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def _meta_line(meta: dict) -> str:
    where = meta.get("cuda") or meta.get("device") or meta.get("cpu") or "CPU"
    cores = f", {meta['cpu_count']} cores" if meta.get("cpu_count") else ""
    return f"`{meta['command']}` — {meta['date']}, {where}{cores}, torch {meta['torch']}"


def render() -> str:
    out = []
    sel = _load("selection-cpu.json")
    if sel:
        out += ["**Selection speed** (fast backend vs the bare batched cosine-similarity matmul and vs the reference; "
                "[full output](docs/results/selection-cpu.txt)): " + _meta_line(sel["meta"]), "",
                "| N | B | D | kept | fast / matmul | fast / reference | MIS rounds | identical |", "|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['N']} | {r['B']} | {r['D']} | {r['n_keep']} | {r['fast_over_matmul']:.2f} | "
                f"{r['fast_over_reference']:.3f} | {r['mis_rounds']} | {r['identical']} |" for r in sel["rows"]]
        out.append("")
    peers = _load("selection-peers-cpu.json")
    if peers:
        out += ["**Against the peers' selections** on identical inputs ([output](docs/results/selection-peers-cpu.txt)): "
                + _meta_line(peers["meta"]), "",
                "| N | B | D | D2Pruner ms | fast / DivPrune | fast / CDPruner | fast / MMR |", "|---|---|---|---|---|---|---|"]
        out += [f"| {r['N']} | {r['B']} | {r['D']} | {r['fast_ms']:.1f} | {r['fast_over_divprune']:.3f} | "
                f"{r['fast_over_cdpruner']:.3f} | {r['fast_over_mmr']:.3f} |" for r in peers["rows"]]
        out.append("")
    agree = _load("model-agreement-cpu.json")
    if agree:
        rows = agree["rows"]
        out += ["**Model hooks on the tiny models** (" + _meta_line(agree["meta"]) + "): attention row vs eager "
                f"`output_attentions` ≤ {max(r.get('attention_row_max_abs_err', 0) for r in rows):.1e}; keep-everything vs "
                f"unpruned max |Δlogit| = {max(r['keep_all_max_abs_dlogit'] for r in rows):.1e}; pruned vs masking reference "
                f"max |Δlogit| = {max(max(r['masking_prefill_max_abs_dlogit'], r['masking_decode_max_abs_dlogit']) for r in rows):.1e} "
                f"(prompt pass and 5 greedy steps, both families, sdpa and eager).", ""]
    search = RESULTS / "efficiency" / "search_74_2.csv"
    if search.exists():
        hits = [r for r in csv.DictReader(open(search)) if r["reproduces_74.2"] == "True"]
        out += ["**FLOPs** ([tables](docs/results/efficiency/efficiency.md), `python -m reproduce efficiency`): the "
                "abstract's 74.2 % is reproduced (±0.05) by " + "; ".join(
                    f"`{r['convention']}`, {r['kept']} tokens {r['pruning']}, {r['closest_text_tokens']} text tokens"
                    for r in hits) + "; no convention reaches it at 192 tokens.", ""]
    lat = _load("latency-cpu-smoke.json")
    if lat:
        out += [f"**Latency**: only the CPU smoke run on tiny models exists so far "
                f"([output](docs/results/latency-cpu-smoke.txt)); full-size GPU prefill/decode/memory numbers have not "
                "been measured (no GPU was available to the sessions so far).", ""]
    return "\n".join(out).rstrip() + "\n"


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        print("README has no results markers", file=sys.stderr)
        return 1
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{render()}{END}{tail}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
