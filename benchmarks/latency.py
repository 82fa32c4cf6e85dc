"""Time to first token, decode time per token, peak memory and the selection's time, pruned vs unpruned.

On a GPU it builds the full-size paper models from the shipped configs (``d2pruner/data``) with
random weights -- timing does not depend on weight values -- for LLaVA-1.5-7B at budgets 576/192/128/64
and InternVL-2.5-8B at 100 %/25 %/10 % of 1, 6 and 12 tiles (each family's ``latency_budgets`` and
``latency_tiles``), under sdpa and eager. It measures with :mod:`d2pruner.measure`, the code the paper
tables measure every answered sample with (``python -m reproduce``): one ``generate`` call per repeat,
time to first token (the prompt pass with any pruning work), decode time per token, peak memory (CUDA
events and ``max_memory_allocated`` on a GPU; a monotonic clock and the peak resident set size on CPU),
after warm-up calls that are not recorded. Every configuration is compared with the unpruned model
measured in the same run under the same attention implementation, and with the fastest unpruned
baseline: where FlashAttention (``d2pruner.measure.FAST_ATTENTION``) is installed on the GPU the
unpruned model is measured with it too (the pruning hooks run sdpa or eager only: they cut the 4-D
attention mask, which FlashAttention does not take). ``--smoke`` runs the same code on the tiny models
on the CPU (timings there check the code path, not the speed).

    python benchmarks/latency.py --out docs/results/latency-h100.json        # GPU
    python benchmarks/latency.py --smoke --out docs/results/latency-cpu-smoke.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import sys

import torch

import d2pruner
from d2pruner import measure as meter_lib
from d2pruner.models import tiny
from d2pruner.models.family import family_names, get_family
from d2pruner.models.handle import SUPPORTED_ATTENTION, attach


def make_inputs(family, model, image_token: int, tiles: int, device: str, text: int = 48):
    """One prompt of ``text`` random words around one random image of ``tiles`` tiles, and its hint."""
    gen = torch.Generator().manual_seed(0)
    words = torch.randint(3, 1000 if image_token > 1000 else image_token - 1, (text,), generator=gen)
    batch, hint = family.synthetic_inputs(model, tiles, gen, words)
    return {k: v.to(device) for k, v in batch.items()}, hint


@torch.no_grad()
def measure(model, family, inputs, budget, hint, device, new_tokens, repeats, warmup) -> dict:
    """Medians over ``repeats`` measured ``generate`` calls of ``new_tokens`` tokens (after ``warmup``
    unrecorded ones); peak memory: the largest."""
    px = inputs["pixel_values"].to(model.dtype)
    batch = {**inputs, "pixel_values": px.to(device)}
    handle = None
    if budget is not None:
        handle = attach(model, budget, family=family)
        handle.set_item_hints([hint])
    meter = meter_lib.GenerationMeter(model, device)

    def run(**extra):
        return model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, **extra)

    try:
        for _ in range(warmup):
            run()
        passes, selection = [], []
        for _ in range(repeats):
            with meter.measure() as m:
                run(logits_processor=m.logits_processor)
            passes.append(m.result)
            if handle is not None:
                selection.append(handle.stats[0].selection_ms)
        stats = handle.stats[0] if handle else None
    finally:
        if handle:
            handle.remove()

    def median(values):
        s = meter_lib.summary(values)
        return None if s is None else s["median"]

    peak = meter_lib.summary([p.peak_mib for p in passes])
    return {"ttft_ms": median([p.ttft_ms for p in passes]),
            "decode_ms_per_token": median([p.decode_ms_per_token for p in passes]),
            "peak_mib": None if peak is None else peak["max"], "selection_ms": median(selection),
            "visual_before": stats.n_visual_before if stats else None, "visual_after": stats.n_visual_after if stats else None,
            "repeats": repeats}


def _ratio(base, value):
    return None if base is None or not value else base / value


def _fmt(value, spec):
    return format(value, spec) if value is not None else format(float("nan"), spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU (CI)")
    parser.add_argument("--families", nargs="*", default=family_names(), choices=family_names())
    parser.add_argument("--attn", nargs="*", default=["sdpa", "eager"],
                        help="attention implementations of the pruned and unpruned rows (those the hooks support)")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args(argv)
    device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    if not args.smoke and device == "cpu":
        print("error: no CUDA device; run with --smoke for the CPU version on tiny models", file=sys.stderr)
        return 2
    repeats, warmup = (2, 1) if args.smoke else (args.repeats, 2)
    new_tokens = 4 if args.smoke else args.new_tokens
    dtype = torch.float32 if args.smoke else torch.float16
    context = meter_lib.measurement_context(device, dtype, 1)
    attns = list(args.attn)
    fast, passed_over = meter_lib.choose_attention([*meter_lib.FAST_ATTENTION, "sdpa"], device)
    if fast not in attns:  # the fastest unpruned baseline (FlashAttention where installed): unpruned rows only
        attns.append(fast)
    print(f"measured on {meter_lib.context_label(context)}; peak memory: {meter_lib.memory_kind(device)}")
    for why in passed_over:
        print(f"fastest baseline: {why}")
    rows = []
    print(f"{'family':10} {'attn':17} {'tiles':>5} {'budget':>8} {'visual':>11} {'TTFT ms':>9} {'decode ms/tok':>13} "
          f"{'peak MiB':>9} {'select ms':>9} {'TTFT x':>7} {'decode x':>8} {'TTFT x fastest':>14}")
    for name in args.families:
        family = get_family(name)
        family_rows = []
        for attn in attns:
            if args.smoke:
                model, token = family.tiny_model(attn_implementation=attn), tiny.IMAGE_TOKEN
            else:
                model = family.full_size_model(attn, dtype, device)
                token = int(model.config.image_token_id)
            budgets = family.latency_budgets if attn in SUPPORTED_ATTENTION else (None,)
            cases = [(t, b) for t in family.latency_tiles[1 if args.smoke else 0] for b in budgets]
            base = {}
            for tiles, budget in cases:
                inputs, hint = make_inputs(family, model, token, tiles, device)
                r = measure(model, family, inputs, budget, hint, device, new_tokens, repeats, warmup)
                if budget is None:
                    base[tiles] = r
                b = base.get(tiles, {})
                r.update(family=name, attn=attn, tiles=tiles, budget=budget if budget is not None else "unpruned",
                         ttft_speedup=_ratio(b.get("ttft_ms"), r["ttft_ms"]),
                         decode_speedup=_ratio(b.get("decode_ms_per_token"), r["decode_ms_per_token"]))
                family_rows.append(r)
            del model
            if device == "cuda":
                torch.cuda.empty_cache()
        for r in family_rows:  # against the fastest unpruned baseline of the same tiles, whatever its attention
            fastest = min((x["ttft_ms"] for x in family_rows if x["budget"] == "unpruned" and x["tiles"] == r["tiles"]),
                          default=None)
            r["ttft_speedup_vs_fastest"] = _ratio(fastest, r["ttft_ms"])
            vis = f"{r['visual_before']}->{r['visual_after']}" if r["visual_before"] else "all"
            print(f"{name:10} {r['attn']:17} {r['tiles']:5d} {str(r['budget']):>8} {vis:>11} {_fmt(r['ttft_ms'], '9.2f')} "
                  f"{_fmt(r['decode_ms_per_token'], '13.2f')} {_fmt(r['peak_mib'], '9.0f')} {_fmt(r['selection_ms'], '9.2f')} "
                  f"{_fmt(r['ttft_speedup'], '7.3f')} {_fmt(r['decode_speedup'], '8.3f')} "
                  f"{_fmt(r['ttft_speedup_vs_fastest'], '14.3f')}", flush=True)
        rows += family_rows
    if args.out:
        import transformers

        meta = {"command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "device": meter_lib.context_label(context), "context": context,
                "memory": meter_lib.memory_kind(device), "fastest_baseline": fast, "fastest_passed_over": passed_over,
                "d2pruner": d2pruner.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
                "smoke": args.smoke, "dtype": str(dtype).removeprefix("torch."), "new_tokens": new_tokens,
                "repeats": repeats, "warmup": warmup}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
