"""Measure how exactly the model hooks reproduce their references on the tiny models.

Prints, per family and attention implementation: the attention-row error against eager
``output_attentions``; max |logit difference| of a keep-everything run against the unpruned model;
and max |logit difference| of a pruned run against the masking reference (prompt pass and each
greedy decoding step). Runs on CPU and on CUDA when present; ``--out`` writes JSON with provenance.

    python scripts/model_agreement.py --out docs/results/model-agreement-cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from model_inputs import FAMILIES, dropped_positions, left_padded_batch, masked_reference_hooks  # noqa: E402

import d2pruner  # noqa: E402
from d2pruner import D2PrunerConfig  # noqa: E402
from d2pruner.models.family import get_family  # noqa: E402
from d2pruner.models.handle import attach  # noqa: E402
from d2pruner.models.prior import attention_rows  # noqa: E402


def to(batch, device):
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def measure(family: str, attn: str, device: str) -> dict:
    fam = get_family(family)
    model = fam.tiny_model(attn_implementation=attn).to(device)
    batch, items = left_padded_batch(family, [(3, 4), (6, 2)])
    batch = to(batch, device)
    k = D2PrunerConfig().prune_layer

    def attach(budget):
        h = attach(model, budget, family=fam)
        h.set_item_hints(items.grids)
        return h

    row = {"family": family, "attn": attn, "device": device}
    if attn == "eager":
        ref = model(**batch, output_attentions=True).attentions[k - 1][:, :, -1, :].mean(dim=1)
        find = items.find_items(model)
        rows = attention_rows(model, batch, k, find)
        row["attention_row_max_abs_err"] = max(
            (r.to(device).float() - ref[i, find(batch["input_ids"])[i][0]]).abs().max().item() for i, (r, _) in enumerate(rows))
    base = model(**batch).logits[:, -1]
    with attach(1.0):
        row["keep_all_max_abs_dlogit"] = (model(**batch).logits[:, -1] - base).abs().max().item()
    gen_kw = dict(max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with attach([64, 0.1]) as handle:
        pruned = model(**batch).logits[:, -1]
        pruned_gen = model.generate(**batch, **gen_kw)
    dropped = dropped_positions(batch["input_ids"].cpu(), items.find_items(model), handle.stats)
    with masked_reference_hooks(model, k, dropped):
        masked = model(**batch).logits[:, -1]
        masked_gen = model.generate(**batch, **gen_kw)
    row["masking_prefill_max_abs_dlogit"] = (pruned - masked).abs().max().item()
    row["masking_decode_max_abs_dlogit"] = max((a - b).abs().max().item() for a, b in zip(pruned_gen.logits, masked_gen.logits))
    row["masking_same_tokens"] = bool(torch.equal(pruned_gen.sequences, masked_gen.sequences))
    row["pruned_vs_unpruned_max_abs_dlogit"] = (pruned - base).abs().max().item()
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path)
    parser.add_argument("--devices", nargs="*", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    args = parser.parse_args(argv)
    rows = [measure(f, a, d) for d in args.devices for f in FAMILIES for a in ("sdpa", "eager")]
    for r in rows:
        print(json.dumps(r))
    if args.out:
        import transformers

        meta = {"command": "python " + " ".join(sys.argv), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "d2pruner": d2pruner.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
                "python": platform.python_version(),
                "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
