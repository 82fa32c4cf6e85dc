"""``python -m reproduce efficiency``: FLOPs reduction of the paper's two models at the paper's budgets,
and of Qwen2.5-VL-7B and Qwen3-VL-8B at a reference image size.

Five tables, printed and written as Markdown and CSV under ``--out``:

1. D2Pruner (K = 2) at each budget, for a few prompt lengths, under each counting convention of
   :mod:`d2pruner.flops` (LLaVA-1.5-7B: 192/128/64 of 576; InternVL-2.5-8B: 25 % and 10 % at 1, 6
   and 12 tiles; Qwen2.5-VL-7B and Qwen3-VL-8B: 192/128/64 of the reference image's 576);
2. which convention, budget and text length reproduce the abstract's 74.2 % (to the printed
   decimal), searching text lengths 0 to 1000, or that none does;
3. per-method prefill FLOPs for LLaVA-1.5-7B table rows at each budget, each method at its own
   pruning point (:func:`method_schedule`: at K = 2, before the LLM, or progressive stages under the
   package's equivalent-token rule; the budgets a progressive method cannot reach are marked so);
4. the vision tower of the two Qwen checkpoints on the reference image (:func:`d2pruner.flops.qwen_vision_flops`);
5. per-method prefill FLOPs of the two Qwen checkpoints on the reference image: the LLM part as in
   table 3 (on each model's own layer count; methods the family refuses are marked so), the vision
   tower, which no method here changes (they all prune after the patch merger), and the sum.

**The Qwen reference image** (:data:`QWEN_GRID`): a square image of 24 x 24 visual tokens, i.e. 576
after the 2 x 2 merger -- 672 x 672 px for Qwen2.5-VL (28 px a token), 768 x 768 px for Qwen3-VL (32 px
a token). Qwen's processors give a real image a variable number of tokens (about its pixel count / 28^2
or / 32^2); this one was chosen because it gives the same 576 visual tokens as LLaVA-1.5, so the paper's
192/128/64 budgets keep their fractions (1/3, 2/9, 1/9) and the tables compare across models, it is
the families' prior grid (24 x 24), both images lie inside the processors' default pixel range and
resize to themselves (no rounding), and 768 px is Qwen3-VL's native position-embedding grid (48 x 48 =
2304 patches, no interpolation). Qwen2.5-VL's 112-px attention windows then tile its 48 x 48 patch grid
exactly (36 windows of 64 patches).

The models are the table specs' (:func:`reproduce.specs.family_models`; a family no spec names: its
default checkpoint); their dimensions come from the configs shipped in ``d2pruner/data`` (see their
``_source``).
"""

from __future__ import annotations

import argparse
import csv
import pathlib

from d2pruner.flops import CONVENTIONS, LMDims, paper_config, prefill_flops, qwen_vision_flops, reduction

# FAMILY: the printed name of each family's model in the tables below
MODEL_NAMES = {"llava": "LLaVA-1.5-7B", "internvl": "InternVL-2.5-8B", "qwen2_5_vl": "Qwen2.5-VL-7B",
               "qwen3_vl": "Qwen3-VL-8B"}
#: The Qwen families of tables 4 and 5 and their reference image (see the module docstring).
QWEN_FAMILIES = ("qwen2_5_vl", "qwen3_vl")
#: Visual tokens per side of the Qwen reference image (after the 2 x 2 merger): 24 x 24 = 576.
QWEN_GRID = 24
QWEN_BUDGETS = (192, 128, 64)
LLAVA_BUDGETS = (192, 128, 64)
TEXT_LENGTHS = (32, 64, 128)
PAPER_REDUCTION = 74.2  # abstract: LLaVA-1.5-7B, general understanding
K = 2
#: The methods of the per-method table: display name -> name in :data:`d2pruner.methods.METHODS`.
TABLE_METHODS = {"D2Pruner": "d2pruner", "FastV": "fastv", "DART": "dart", "IDPruner-MMR": "mmr-d2score",
                 "VisionZip": "visionzip", "DivPrune": "divprune", "CDPruner": "cdpruner", "Random": "random",
                 "PyramidDrop": "pyramiddrop", "SparseVLM": "sparsevlm"}


def model_of(family: str) -> str:
    """The model id the table specs give ``family`` (``"llava"``, ``"internvl"``), or the family's
    default checkpoint where no spec names one.

    >>> model_of("qwen3_vl")
    'Qwen/Qwen3-VL-8B-Instruct'
    """
    from d2pruner.models.family import get_family
    from reproduce.specs import family_models

    return family_models().get(family) or get_family(family).checkpoint


def qwen_reference(family: str) -> dict:
    """The Qwen reference image of ``family`` on its checkpoint: ``model``, ``pixels`` (side), ``grid``
    (the patch grid ``(t, h, w)``, as the processor's ``image_grid_thw``) and ``visual`` tokens.

    >>> {f: (r["pixels"], r["grid"], r["visual"]) for f in QWEN_FAMILIES for r in [qwen_reference(f)]}
    {'qwen2_5_vl': (672, (1, 48, 48), 576), 'qwen3_vl': (768, (1, 48, 48), 576)}
    """
    model = model_of(family)
    vc = paper_config(model)["vision_config"]
    merge, patch = int(vc["spatial_merge_size"]), int(vc["patch_size"])
    side = QWEN_GRID * merge
    return {"model": model, "pixels": side * patch, "grid": (1, side, side), "visual": QWEN_GRID ** 2}


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
    for family in QWEN_FAMILIES:
        ref = qwen_reference(family)
        cases += [(ref["model"], MODEL_NAMES[family], ref["visual"], f"{b}/{ref['visual']} ({ref['pixels']} px)", b)
                  for b in QWEN_BUDGETS]
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


def table_qwen_vision(convention: str = "exact") -> list[dict]:
    """The vision tower of each Qwen checkpoint on the reference image, by part (GFLOPs)."""
    rows = []
    for family in QWEN_FAMILIES:
        ref = qwen_reference(family)
        parts = qwen_vision_flops(paper_config(ref["model"])["vision_config"], ref["grid"], CONVENTIONS[convention], parts=True)
        rows.append({"model": MODEL_NAMES[family], "image_px": f"{ref['pixels']}x{ref['pixels']}",
                     "patch_grid": "x".join(map(str, ref["grid"])), "visual_tokens": ref["visual"],
                     **{f"{k}_GFLOPs": round(v / 1e9, 2) for k, v in parts.items()}})
    return rows


def table_qwen_methods(text: int = 64, convention: str = "exact") -> list[dict]:
    """Per-method prefill FLOPs of each Qwen checkpoint on the reference image: LLM (each method's own
    schedule on the model's layers), vision tower (the same for every method) and their sum."""
    from d2pruner.methods.base import get_method
    from d2pruner.models.family import get_family

    conv = CONVENTIONS[convention]
    rows = []
    for family in QWEN_FAMILIES:
        ref = qwen_reference(family)
        cfg = paper_config(ref["model"])
        dims, n = LMDims.from_config(cfg), ref["visual"]
        vision = qwen_vision_flops(cfg["vision_config"], ref["grid"], conv)
        llm_full = prefill_flops(dims, text, [(0, n)], conv)

        def row(method, budget, sched, llm):
            empty = llm is None
            return {"model": MODEL_NAMES[family], "method": method, "budget": budget, "schedule": sched,
                    "LLM_TFLOPs": "" if empty else round(llm / 1e12, 4),
                    "LLM_reduction": "" if empty else round(reduction(llm, llm_full), 2),
                    "vision_TFLOPs": round(vision / 1e12, 4),
                    "total_TFLOPs": "" if empty else round((llm + vision) / 1e12, 4),
                    "total_reduction": "" if empty else round(reduction(llm + vision, llm_full + vision), 2)}

        rows.append(row("unpruned", n, f"[(0, {n})]", llm_full))
        for budget in QWEN_BUDGETS:
            for method, key in TABLE_METHODS.items():
                refused = get_family(family).refusal(get_method(key))
                if refused:
                    rows.append(row(method, budget, f"refused: {refused}", None))
                    continue
                try:
                    sched = method_schedule(key, n, budget, dims.layers)
                except ValueError as err:
                    rows.append(row(method, budget, f"unreachable: {err}", None))
                    continue
                rows.append(row(method, budget, str(sched), prefill_flops(dims, text, sched, conv)))
    return rows


#: The text tokens a table row's FLOPs are counted for (the visual tokens: the family's ``row_visual_tokens``).
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


def qwen_reference_text() -> str:
    """The reference image of each Qwen checkpoint in words (the tables' titles).

    >>> qwen_reference_text()
    '672 x 672 px for Qwen2.5-VL-7B (48 x 48 patches of 14 px), 768 x 768 px for Qwen3-VL-8B (48 x 48 patches of 16 px)'
    """
    parts = []
    for family in QWEN_FAMILIES:
        ref = qwen_reference(family)
        _, h, w = ref["grid"]
        parts.append(f"{ref['pixels']} x {ref['pixels']} px for {MODEL_NAMES[family]} ({h} x {w} patches of "
                     f"{ref['pixels'] // h} px)")
    return ", ".join(parts)


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
        "qwen_vision": ("Qwen vision towers on the reference image (24 x 24 = 576 visual tokens; 'exact' convention; "
                        "the same for every method below)", table_qwen_vision()),
        "qwen_methods": (f"Qwen2.5-VL-7B and Qwen3-VL-8B prefill FLOPs per method on the reference image (576 visual "
                         f"tokens: {qwen_reference_text()}; 'exact' convention, {args.text_tokens} text tokens): LLM, vision "
                         "tower (no method here changes it) and their sum", table_qwen_methods(args.text_tokens)),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    doc = ["# Efficiency: FLOPs (generated by `python -m reproduce efficiency`)", "",
           "Conventions: " + "; ".join(f"`{n}` = {c}" for n, c in CONVENTIONS.items()), "",
           f"Qwen reference image: {qwen_reference_text()}; 576 visual tokens, the same as LLaVA-1.5's, so the 192/128/64 "
           "budgets keep their fractions (see `reproduce/efficiency.py` and `docs/efficiency.md`). Tables 1-3 and the "
           "LLM columns count the language model's prefill only; the vision columns count the Qwen vision tower.", "",
           "Models (dimensions from the configs shipped in `d2pruner/data`): "
           + ", ".join(f"{MODEL_NAMES[f]} = `{model_of(f)}`" for f in MODEL_NAMES), ""]
    print("\n".join(doc))
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
