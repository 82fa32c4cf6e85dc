"""Prefill latency, time per decoded token, peak memory and D2Pruner's selection time inside the prefill.

On a GPU it builds the full-size paper models from the shipped configs (``d2pruner/data``) with
random weights -- timing does not depend on weight values -- and measures with CUDA events after
warm-up, for LLaVA-1.5-7B at budgets 576/192/128/64 and InternVL-2.5-8B at 100 %/25 %/10 % of
1, 6 and 12 tiles, under sdpa and eager. Every configuration is compared with the unpruned model
measured in the same run. ``--smoke`` runs the same code on the tiny models on the CPU.

    python benchmarks/latency.py --out docs/results/latency-h100.json        # GPU
    python benchmarks/latency.py --smoke --out docs/results/latency-cpu-smoke.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import statistics
import sys
import time

import torch

import d2pruner
from d2pruner.models import tiny
from d2pruner.models.family import family_names, get_family
from d2pruner.models.handle import attach


def make_inputs(family, model, image_token: int, tiles: int, device: str, text: int = 48):
    """One prompt of ``text`` random words around one random image of ``tiles`` tiles, and its hint."""
    gen = torch.Generator().manual_seed(0)
    words = torch.randint(3, 1000 if image_token > 1000 else image_token - 1, (text,), generator=gen)
    batch, hint = family.synthetic_inputs(model, tiles, gen, words)
    return {k: v.to(device) for k, v in batch.items()}, hint


class Timer:
    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def __call__(self, fn, repeats: int, warmup: int) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append(1e3 * (time.perf_counter() - t0))
        return statistics.median(times)


@torch.no_grad()
def measure(model, family, inputs, budget, hint, device, new_tokens, repeats, warmup) -> dict:
    timer = Timer(device)
    px = inputs["pixel_values"].to(model.dtype)
    batch = {**inputs, "pixel_values": px.to(device)}
    handle = None
    if budget is not None:
        handle = attach(model, budget, family=family)
        handle.set_item_hints([hint])
    try:
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        prefill = timer(lambda: model(**batch, logits_to_keep=1), repeats, warmup)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
        gen = timer(lambda: model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False),
                    max(1, repeats // 2), 1)
        stats = handle.stats[0] if handle else None
    finally:
        if handle:
            handle.remove()
    return {"prefill_ms": prefill, "decode_ms_per_token": (gen - prefill) / max(1, new_tokens - 1), "peak_gib": peak,
            "visual_before": stats.n_visual_before if stats else None, "visual_after": stats.n_visual_after if stats else None,
            "selection_ms": stats.selection_ms if stats else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU (CI)")
    parser.add_argument("--families", nargs="*", default=family_names(), choices=family_names())
    parser.add_argument("--attn", nargs="*", default=["sdpa", "eager"])
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
    rows = []
    print(f"{'family':8} {'attn':5} {'tiles':>5} {'budget':>7} {'visual':>11} {'prefill ms':>10} {'decode ms/tok':>13} "
          f"{'peak GiB':>8} {'select ms':>9} {'prefill x':>9} {'decode x':>8}")
    for name in args.families:
        family = get_family(name)
        for attn in args.attn:
            if args.smoke:
                model, token = family.tiny_model(attn_implementation=attn), tiny.IMAGE_TOKEN
            else:
                model = family.full_size_model(attn, torch.float16, device)
                token = int(model.config.image_token_id)
            cases = [(t, b) for t in family.latency_tiles[1 if args.smoke else 0] for b in family.latency_budgets]
            base = None
            for tiles, budget in cases:
                inputs, hint = make_inputs(family, model, token, tiles, device)
                r = measure(model, family, inputs, budget, hint, device, new_tokens, repeats, warmup)
                if budget is None:
                    base = r
                r.update(family=name, attn=attn, tiles=tiles, budget=budget if budget is not None else "unpruned",
                         prefill_ratio=r["prefill_ms"] / base["prefill_ms"],
                         decode_ratio=r["decode_ms_per_token"] / base["decode_ms_per_token"])
                rows.append(r)
                vis = f"{r['visual_before']}->{r['visual_after']}" if r["visual_before"] else "all"
                print(f"{name:8} {attn:5} {tiles:5d} {str(r['budget']):>7} {vis:>11} {r['prefill_ms']:10.2f} "
                      f"{r['decode_ms_per_token']:13.2f} {r['peak_gib'] if r['peak_gib'] is not None else float('nan'):8.2f} "
                      f"{r['selection_ms'] if r['selection_ms'] is not None else float('nan'):9.2f} "
                      f"{r['prefill_ratio']:9.3f} {r['decode_ratio']:8.3f}", flush=True)
            del model
            if device == "cuda":
                torch.cuda.empty_cache()
    if args.out:
        import transformers

        meta = {"command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or platform.machine(),
                "d2pruner": d2pruner.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
                "smoke": args.smoke, "dtype": "float32" if args.smoke else "float16"}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
