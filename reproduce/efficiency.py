"""``python -m reproduce efficiency``: FLOPs reduction of the paper's two models at the paper's budgets.

Three tables, printed and written as Markdown and CSV under ``--out``:

1. D2Pruner (K = 2) at each budget, for a few prompt lengths, under each counting convention of
   :mod:`d2pruner.flops` (LLaVA-1.5-7B: 192/128/64 of 576; InternVL-2.5-8B: 25 % and 10 % at 1, 6
   and 12 tiles);
2. which convention, budget and text length reproduce the abstract's 74.2 % (to the printed
   decimal), searching text lengths 0 to 1000, or that none does;
3. per-method prefill FLOPs for LLaVA-1.5-7B table rows at each budget, each method at its own
   pruning point (:func:`method_schedule`: at K = 2, before the LLM, or progressive stages under the
   package's equivalent-token rule; the budgets a progressive method cannot reach are marked so).

The models are the table specs' (:func:`reproduce.specs.family_models`); their dimensions come from
the configs shipped in ``d2pruner/data`` (see their ``_source``).
"""

from __future__ import annotations

import argparse
import csv
import pathlib

from d2pruner.flops import CONVENTIONS, LMDims, paper_config, prefill_flops, reduction

# FAMILY: the printed name of each family's model in the tables below
MODEL_NAMES = {"llava": "LLaVA-1.5-7B", "internvl": "InternVL-2.5-8B"}
LLAVA_BUDGETS = (192, 128, 64)
TEXT_LENGTHS = (32, 64, 128)
PAPER_REDUCTION = 74.2  # abstract: LLaVA-1.5-7B, general understanding
K = 2
#: The methods of the per-method table: display name -> name in :data:`d2pruner.methods.METHODS`.
TABLE_METHODS = {"D2Pruner": "d2pruner", "FastV": "fastv", "DART": "dart", "IDPruner-MMR": "mmr-d2score",
                 "VisionZip": "visionzip", "DivPrune": "divprune", "CDPruner": "cdpruner", "Random": "random",
                 "PyramidDrop": "pyramiddrop", "SparseVLM": "sparsevlm"}


def model_of(family: str) -> str:
    """The model id the table specs give ``family`` (``"llava"``, ``"internvl"``)."""
    from reproduce.specs import family_models

    return family_models()[family]


def internvl_tokens(tiles: int) -> int:
    return 256 * (tiles + (tiles > 1))


def d2pruner_schedule(n_visual: int, n_keep: int, k: int = K) -> list[tuple[int, int]]:
    return [(0, n_visual), (k, n_keep)] if k > 0 else [(0, n_keep)]


def method_schedule(method: str, n_visual: int, n_keep: int, layers: int = 32) -> list[tuple[int, int]]:
    """``[(layer, visual tokens from that layer on), ...]`` of a method (a registered name of
    :mod:`d2pruner.methods`) at its own pruning point, its :meth:`~d2pruner.methods.base.Method.schedule`:
    ``n_keep`` from layer K or from the LLM's input, or a progressive method's stages under its
    equivalent-token rule (``n_keep`` = the average over the layers; ``ValueError`` where that average
    cannot be reached).

    >>> method_schedule("fastv", 576, 64), method_schedule("divprune", 576, 64)
    ([(0, 576), (2, 64)], [(0, 64)])
    >>> method_schedule("pyramiddrop", 576, 192)
    [(0, 576), (8, 110), (16, 55), (24, 28)]
    """
    from d2pruner.methods.base import get_method

    return get_method(method).schedule(layers, n_visual, n_keep)


def table_d2pruner() -> list[dict]:
    rows = []
    cases = [(model_of("llava"), MODEL_NAMES["llava"], 576, f"{b}/576", b) for b in LLAVA_BUDGETS]
    for tiles in (1, 6, 12):
        n = internvl_tokens(tiles)
        for pct in (25, 10):
            cases.append((model_of("internvl"), MODEL_NAMES["internvl"], n, f"{pct}% of {n} ({tiles} tiles)", max(1, (n * pct + 50) // 100)))
    for model_id, model, n_visual, label, keep in cases:
        dims = LMDims.from_config(paper_config(model_id))
        for text in TEXT_LENGTHS:
            row = {"model": model, "budget": label, "kept": keep, "text_tokens": text}
            for name, conv in CONVENTIONS.items():
                full = prefill_flops(dims, text, [(0, n_visual)], conv)
                row[name] = round(reduction(prefill_flops(dims, text, d2pruner_schedule(n_visual, keep), conv), full), 2)
            rows.append(row)
    return rows


def table_search(max_text: int = 1000) -> list[dict]:
    dims = LMDims.from_config(paper_config(model_of("llava")))
    rows = []
    for name, conv in CONVENTIONS.items():
        for keep in LLAVA_BUDGETS:
            for k, where in ((K, f"K={K}"), (0, "pre-LLM")):
                best = None
                for text in range(max_text + 1):
                    full = prefill_flops(dims, text, [(0, 576)], conv)
                    r = reduction(prefill_flops(dims, text, d2pruner_schedule(576, keep, k), conv), full)
                    if best is None or abs(r - PAPER_REDUCTION) < abs(best[1] - PAPER_REDUCTION):
                        best = (text, r)
                rows.append({"convention": name, "kept": keep, "pruning": where, "closest_text_tokens": best[0],
                             "reduction": round(best[1], 2), "reproduces_74.2": abs(best[1] - PAPER_REDUCTION) < 0.05})
    return rows


def table_methods(text: int = 64, convention: str = "exact") -> list[dict]:
    dims = LMDims.from_config(paper_config(model_of("llava")))
    conv = CONVENTIONS[convention]
    full = prefill_flops(dims, text, [(0, 576)], conv)
    rows = [{"method": "unpruned", "budget": 576, "schedule": "[(0, 576)]", "TFLOPs": round(full / 1e12, 4), "reduction": 0.0}]
    for budget in LLAVA_BUDGETS:
        for method, key in TABLE_METHODS.items():
            try:
                sched = method_schedule(key, 576, budget, dims.layers)
            except ValueError as err:
                rows.append({"method": method, "budget": budget, "schedule": f"unreachable: {err}", "TFLOPs": "",
                             "reduction": ""})
                continue
            f = prefill_flops(dims, text, sched, conv)
            rows.append({"method": method, "budget": budget, "schedule": str(sched), "TFLOPs": round(f / 1e12, 4),
                         "reduction": round(reduction(f, full), 2)})
    return rows


#: The text tokens a table row's FLOPs are counted for (the visual tokens: :data:`reproduce.specs.ROW_VISUAL_TOKENS`).
ROW_TEXT_TOKENS = 64


def row_tflops(spec: dict, method: str | None, budget: str, text: int = ROW_TEXT_TOKENS,
               convention: str = "exact") -> float:
    """Prefill TFLOPs of a table row: the spec's full-size model, ``method`` (a registered name of
    :mod:`d2pruner.methods`, None = unpruned) at ``budget`` (``"64"`` or ``"10%"``), pruning at the
    method's own point (before the LLM, at layer K, or progressive stages: :func:`reproduce.specs.row_schedule`).

    >>> from reproduce.specs import load_spec
    >>> llava = load_spec("table1")
    >>> round(row_tflops(llava, None, "576"), 2), round(row_tflops(llava, "d2pruner", "64"), 2)
    (8.5, 2.09)
    >>> row_tflops(llava, "pyramiddrop", "64")
    Traceback (most recent call last):
    ...
    ValueError: pyramiddrop cannot average 64 visual tokens per layer: its first 8 of 32 layers see all 576; reachable averages lie between about 145 and 576
    """
    from reproduce.specs import row_schedule

    sched = row_schedule(spec, method, budget)
    return prefill_flops(LMDims.from_config(paper_config(spec["model"]["id"])), text, sched, CONVENTIONS[convention]) / 1e12


def markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reproduce efficiency", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("results/efficiency"))
    parser.add_argument("--text-tokens", type=int, default=64, help="prompt length for the per-method table")
    args = parser.parse_args(argv)
    tables = {
        "d2pruner_reduction": ("FLOPs reduction (%) of D2Pruner at K=2, prefill, by counting convention", table_d2pruner()),
        "search_74_2": (f"Closest to the abstract's {PAPER_REDUCTION} % (LLaVA-1.5-7B), text lengths 0-1000", table_search()),
        "methods": (f"LLaVA-1.5-7B prefill FLOPs per method ('exact' convention, {args.text_tokens} text tokens)",
                    table_methods(args.text_tokens)),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    doc = ["# Efficiency: FLOPs (generated by `python -m reproduce efficiency`)", "",
           "Conventions: " + "; ".join(f"`{n}` = {c}" for n, c in CONVENTIONS.items()), ""]
    for name, (title, rows) in tables.items():
        text = f"## {title}\n\n{markdown(rows)}\n"
        print(text)
        doc.append(text)
        with open(args.out / f"{name}.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    (args.out / "efficiency.md").write_text("\n".join(doc))
    print(f"wrote {args.out}/efficiency.md and one CSV per table")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
