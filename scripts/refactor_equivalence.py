"""Show that a refactoring changed no selection and no logit: dump, then compare two dumps.

For every method of :func:`d2pruner.methods.get_method`, every budget below, both tiny model families
and both attention implementations, one left-padded batch of two items goes through the model with the
method attached: the kept visual tokens of every stage, each item's statistics, the prompt pass's
logits at the last position and three greedy decoding steps (tokens and logits) are recorded. A
method or budget the hooks refuse records its error message instead (a refusal must not change
either). Uses only the public entry points (``attach``, ``get_method``, ``tiny``), so the same script
runs on the code before and after a change::

    git worktree add /tmp/before HEAD~1 && (cd /tmp/before && python scripts/refactor_equivalence.py --dump /tmp/a.pt)
    python scripts/refactor_equivalence.py --dump /tmp/b.pt
    python scripts/refactor_equivalence.py --compare /tmp/a.pt /tmp/b.pt   # exit 1 on any difference
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch

BUDGETS = {"llava": [192, 64, 0.1], "internvl": [0.25, 0.1, 64]}
GRIDS = [(1, 2), (2, 2)]  # InternVL tile grids of the two items


def batch(family: str):
    from d2pruner.models import tiny

    rows, pixels = [], []
    for i, (before, after) in enumerate([(3, 5), (6, 2)]):
        g = torch.Generator().manual_seed(500 + i)
        text = lambda n: torch.randint(3, tiny.IMAGE_TOKEN, (n,), generator=g).tolist()  # noqa: E731
        if family == "llava":
            n_img, images = 576, torch.randn(1, 3, 48, 48, generator=g)
        else:
            tiles = GRIDS[i][0] * GRIDS[i][1] + 1
            n_img, images = 256 * tiles, torch.randn(tiles, 3, 64, 64, generator=g)
        rows.append([1] + text(before) + [tiny.IMAGE_TOKEN] * n_img + text(after))
        pixels.append(images)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tiny.PAD_TOKEN)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.cat(pixels)}


def method_object(name: str, family: str, model):
    from d2pruner.methods import get_method
    from d2pruner.models import tiny

    if name == "cdpruner":
        width = int(model.config.vision_config.hidden_size) * (4 if family == "internvl" else 1)
        return get_method("cdpruner", text_tower=tiny.tiny_clip_text_tower(vision_width=width))
    return get_method(name)


@torch.no_grad()
def run_one(family: str, attn: str, name: str, budget) -> dict:
    from d2pruner.models import internvl, llava, tiny

    model = (tiny.tiny_llava if family == "llava" else tiny.tiny_internvl)(attn_implementation=attn)
    inputs = batch(family)
    prior = torch.linspace(0.5, 1.5, 576 if family == "llava" else 256)
    mod = llava if family == "llava" else internvl
    try:
        method = method_object(name, family, model)
        uses_prior = name in ("d2pruner", "mmr-d2score")
        handle = mod.attach(model, budget, method=method, prior=prior if uses_prior else None)
    except (ValueError, NotImplementedError) as err:
        return {"error": str(err)}
    try:
        if family == "internvl":
            handle.set_tile_grids(GRIDS)
        handle.set_instructions(["what colour is the cat", "how many dogs are there"])
        logits = model(**inputs).logits[:, -1]
        stages = [[k.tolist() for k in stage] for stage in handle.stage_stats]
        stats = [(s.n_visual_before, s.n_visual_after, s.kept.tolist(), s.roles.tolist(), s.debiased, s.method)
                 for s in handle.stats]
        gen = model.generate(**inputs, max_new_tokens=3, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=tiny.PAD_TOKEN)
    except (ValueError, NotImplementedError) as err:
        return {"error": str(err)}
    finally:
        handle.remove()
    return {"logits": logits, "stages": stages, "stats": stats, "sequences": gen.sequences,
            "gen_logits": torch.stack(gen.logits)}


def dump(path: pathlib.Path) -> None:
    from d2pruner.methods import METHODS

    out = {}
    for family in BUDGETS:
        for attn in ("sdpa", "eager"):
            for name in sorted(METHODS):
                for budget in BUDGETS[family]:
                    key = f"{family}/{attn}/{name}/{budget}"
                    out[key] = run_one(family, attn, name, budget)
                    print(key, "error: " + out[key]["error"][:70] if "error" in out[key] else "ok", flush=True)
    torch.save(out, path)


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def compare(a_path: pathlib.Path, b_path: pathlib.Path) -> int:
    a, b = torch.load(a_path), torch.load(b_path)
    bad = sorted(set(a) ^ set(b))
    for key in sorted(set(a) & set(b)):
        if not same(a[key], b[key]):
            bad.append(key)
    runs = sum("error" not in v for v in a.values())
    print(f"{len(a)} cases ({runs} runs, {len(a) - runs} refusals) in {a_path.name}, {len(b)} in {b_path.name}: "
          f"{len(bad)} differ (selections, statistics, logits, greedy tokens compared bit for bit)")
    for key in bad:
        print("  differs:", key)
    return 1 if bad else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--dump", type=pathlib.Path)
    group.add_argument("--compare", type=pathlib.Path, nargs=2)
    args = parser.parse_args(argv)
    if args.dump:
        dump(args.dump)
        return 0
    return compare(*args.compare)


if __name__ == "__main__":
    sys.exit(main())
