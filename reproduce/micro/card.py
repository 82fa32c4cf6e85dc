"""A trained micro model written as a checkpoint folder with its model card.

The folder holds what ``save_pretrained`` writes for the model (``model.safetensors``, configs) and the
processor (tokenizer, image processor), plus ``card.json`` (everything measured, for code and CI) and
``README.md`` (the same for readers). It is written beside the target and swapped in at the end, so
an interrupted write never leaves half a checkpoint.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import shutil

__all__ = ["LOSS_PREFIX", "write_checkpoint", "versions", "card_markdown"]

#: Steps whose losses the card records exactly (the 50-step reproducibility test compares them).
LOSS_PREFIX = 50


def write_checkpoint(trainer, out: pathlib.Path, command: str, eval_items: int = 200) -> dict:
    """Save ``trainer``'s model and processor to ``out`` with ``card.json`` and ``README.md``; the card."""
    from reproduce.micro.data import SPLITS
    from reproduce.micro.evaluate import evaluate

    out = pathlib.Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = trainer.model.eval()
    model.save_pretrained(tmp)
    trainer.processor.save_pretrained(tmp)
    accuracy = evaluate(model, trainer.processor, trainer.s.family, "validation", eval_items)
    losses = trainer.losses
    card = {
        "family": trainer.s.family,
        "model_class": type(model).__name__,
        "command": command,
        "settings": trainer.s.as_dict(),
        "mix": trainer.s.mix(),
        "seeds": {"weights": trainer.s.seed, "train_chunks": "1000 + chunk (reproduce.micro.teach.train_seed)",
                  "validation": SPLITS["validation"], "test": SPLITS["test"]},
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": trainer.step,
        "train_seconds": round(trainer.seconds, 1),
        "versions": versions(),
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "loss_prefix": losses[:LOSS_PREFIX],
        "loss_curve": {str(s): round(sum(losses[max(0, s - 10):s]) / len(losses[max(0, s - 10):s]), 4)
                       for s in range(10, len(losses) + 1, 10)},
        "heldout": {"split": "validation", "items": eval_items, "accuracy": accuracy,
                    "metric": "REC: IoU >= 0.5 of the parsed box; others: exact match (case ignored), greedy"},
    }
    (tmp / "card.json").write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
    (tmp / "README.md").write_text(card_markdown(card), encoding="utf-8")
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return card


def versions() -> dict:
    """The versions and machine a checkpoint was trained with."""
    import platform

    import numpy
    import PIL
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": numpy.__version__, "pillow": PIL.__version__, "machine": platform.machine(),
            "threads": torch.get_num_threads()}


def card_markdown(card: dict) -> str:
    """The model card for readers (every number from ``card``)."""
    acc = card["heldout"]["accuracy"]
    curve = card["loss_curve"]
    marks = [k for k in curve if int(k) % max(10, (len(curve) // 15) * 10) == 0] or list(curve)
    lines = [
        f"# Micro {card['family']} ({card['model_class']})",
        "",
        "A micro model trained from scratch on synthetic scenes (reproduce.micro) so that runs without a GPU",
        "print meaningful numbers. **Its numbers are micro-model numbers, not the paper's.**",
        "",
        f"- command: `{card['command']}`",
        f"- parameters: {card['parameters']:,}; steps: {card['steps']} x batch {card['settings']['batch']}; "
        f"training time: {card['train_seconds'] / 60:.1f} min on {card['versions']['threads']} CPU threads",
        f"- seeds: weights {card['seeds']['weights']}; training chunks {card['seeds']['train_chunks']}; "
        f"validation {card['seeds']['validation']}; test {card['seeds']['test']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in card["versions"].items()),
        f"- mixture (examples per batch): " + ", ".join(f"{k} {v}" for k, v in card["mix"].items()),
        "",
        f"## Held-out accuracy ({card['heldout']['split']} split, {card['heldout']['items']} items per task)",
        "",
        f"{card['heldout']['metric']}.",
        "",
        "| task | accuracy (%) |",
        "|---|---|",
        *[f"| {k} | {v:.2f} |" for k, v in acc.items()],
        "",
        "## Loss (mean of 10 steps)",
        "",
        "| step | loss |",
        "|---|---|",
        *[f"| {k} | {curve[k]:.4f} |" for k in marks],
        "",
    ]
    return "\n".join(lines)
