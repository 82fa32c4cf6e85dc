"""Held-out accuracy of a micro model by greedy generation: ``python -m reproduce.micro evaluate``.

Per task of the family's mixture, ``n`` items of a held-out split (validation for the model cards) are
asked in the family's prompt, answered greedily, and scored as the task's metric does at its core:
REC by IoU >= 0.5 of the parsed box (:func:`reproduce.tasks.utils.parse_internvl_box`), the others by
exact match (case and surrounding space ignored). The micro tables score through lmms-eval itself;
this is the model card's quick measure, and what CI compares with the card.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import torch

from reproduce.micro import models, teach

__all__ = ["answer", "score", "evaluate", "main"]


def answer(model, processor, family: str, examples: list[tuple], batch: int = 32, max_new_tokens: int = 24,
           handle=None) -> list[str]:
    """Greedy answers to ``(image, context, target)`` examples (targets unused); with a pruning ``handle``
    attached to ``model``, each batch's instructions and tile grids are given to it first (as the
    table adapter does)."""
    from d2pruner.models.family import get_family

    fam = get_family(family)
    tok = processor.tokenizer
    end = tok.convert_tokens_to_ids(models.answer_end(family))
    out = []
    for i in range(0, len(examples), batch):
        chunk = examples[i:i + batch]
        inputs = fam.build_batch(processor, [e[0] for e in chunk], [e[1] for e in chunk], max_tiles=4)
        if handle is not None:
            handle.set_instructions([e[1] for e in chunk])
            handle.set_item_hints(fam.item_hints(processor, [e[0] for e in chunk], 4))
        with torch.inference_mode():
            ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                 eos_token_id=[end], pad_token_id=tok.pad_token_id,
                                 suppress_tokens=[int(model.config.image_token_id)])
        out += [t.strip() for t in tok.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)]
    return out


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def score(stock: str, answer_text: str, target: str) -> bool:
    """Whether ``answer_text`` is right for ``target`` (REC: IoU >= 0.5; else exact match, case ignored).

    >>> score("refcoco_bbox_rec_val", "[[0, 0, 250, 250]]", "[[0, 0, 250, 125]]"), score("pope", "Yes", "yes")
    (True, True)
    """
    if stock.startswith("refcoco"):
        from reproduce.tasks.utils import parse_internvl_box

        box, truth = parse_internvl_box(answer_text), parse_internvl_box(target)
        return box is not None and _iou(box, truth) >= 0.5
    return answer_text.strip().lower() == target.strip().lower()


def evaluate(model, processor, family: str, split: str = "validation", n: int = 200) -> dict[str, float]:
    """Per task of the family's mixture, the percentage of ``n`` items of ``split`` answered right."""
    from reproduce.micro.data import SPLITS

    if split not in ("validation", "test"):
        raise ValueError(f"split {split!r}: evaluate on 'validation' or 'test'")
    model.eval()
    out = {}
    for stock in teach.MIXES[family]:
        examples = teach.task_examples(stock, n, SPLITS[split])
        answers = answer(model, processor, family, examples)
        out[stock] = round(100.0 * sum(score(stock, a, e[2]) for a, e in zip(answers, examples)) / n, 2)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reproduce.micro evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--family", required=True, choices=models.FAMILIES)
    p.add_argument("--checkpoint", type=pathlib.Path, help="checkpoint folder (default: the shipped one)")
    p.add_argument("--tolerance", type=float, default=1.0, help="largest allowed |measured - card| in points")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    from d2pruner.models.loading import load_model

    folder = args.checkpoint or models.checkpoint_dir(args.family)
    card = json.loads((folder / "card.json").read_text(encoding="utf-8"))
    model, processor, _ = load_model(str(folder), dtype=torch.float32)
    measured = evaluate(model, processor, args.family, card["heldout"]["split"], card["heldout"]["items"])
    bad = {k: (v, card["heldout"]["accuracy"][k]) for k, v in measured.items()
           if abs(v - card["heldout"]["accuracy"][k]) > args.tolerance}
    for k, v in measured.items():
        print(f"{k:<24} measured {v:6.2f}  card {card['heldout']['accuracy'][k]:6.2f}")
    if bad:
        print(f"error: accuracy differs from the model card by more than {args.tolerance} points: {bad}", file=sys.stderr)
        return 1
    return 0
