"""Is there a positional bias in a micro model, and what does debiasing change?
``python -m reproduce.micro bias --family internvl``.

The prior command (:mod:`d2pruner.models.prior`) measures the mean attention of the last prompt token
to each visual position over calibration scenes (split ``calibration``, never trained on). Here it is
measured twice, on the even and on the odd scenes: if the two halves' maps agree (Pearson correlation
of the per-position values), the pattern is a property of the model, not noise, i.e. a positional
bias; its spread is given as the max/min ratio and the coefficient of variation. Then D2Pruner runs
on held-out test items of the family's probe task at the probe budget with the shipped prior and with a
flat one (= no debiasing), everything else equal. Nothing is injected: the prior is what the model's
attention gives. Writes ``<out>/bias-<family>.json``, ``.md`` and ``.png`` (the two half maps).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

import numpy as np
import torch

from reproduce.micro import models

__all__ = ["PROBES", "half_priors", "debiasing_effect", "main"]

#: family -> (probe task, budget, D2Pruner configuration): REC at 10 % for InternVL (Table 3's
#: setting); GQA at 16 of 144 tokens for LLaVA (Table 1's 64 of 576).
PROBES = {"internvl": ("refcoco_bbox_rec_val", 0.1, "localization"), "llava": ("gqa", 16, "default")}
#: What one prior value stands for, per family.
_LAYOUT = {"internvl": "one per position of a tile, shared by every tile and the thumbnail", "llava": "one per grid cell"}


def half_priors(model, processor, family: str, n: int, prompt: str) -> tuple[np.ndarray, np.ndarray]:
    """The prior measured on the even and on the odd of ``n`` calibration scenes."""
    from PIL import Image

    from d2pruner.models.family import get_family
    from d2pruner.models.prior import measure
    from reproduce.micro.data import write_scenes

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_scenes(pathlib.Path(tmp) / "scenes", n)
        for half in (0, 1):
            images = [(p.name, lambda p=p: Image.open(p).convert("RGB")) for p in paths[half::2]]
            meta = {"model_id": "micro", "model_class": type(model).__name__, "prune_layer": 2, "prompt": prompt,
                    "per": f"calibration scenes, half {half}"}
            prior = measure(model, processor, get_family(family), images, prompt=prompt, prune_layer=2, max_tiles=4,
                            meta=meta, out=pathlib.Path(tmp) / f"half{half}.json", progress=False)
            out.append(np.asarray(prior.values, dtype=np.float64))
    return out[0], out[1]


def debiasing_effect(model, processor, family: str, prior, n: int) -> dict[str, float]:
    """Accuracy (%) of D2Pruner on ``n`` test items of the family's probe, with ``prior`` and with a flat prior."""
    from d2pruner import D2PrunerConfig
    from d2pruner.models import attach
    from reproduce.micro import teach
    from reproduce.micro.data import SPLITS
    from reproduce.micro.evaluate import answer, score

    task, budget, config = PROBES[family]
    cfg = D2PrunerConfig.for_localization() if config == "localization" else D2PrunerConfig()
    examples = teach.task_examples(task, n, SPLITS["test"])
    flat = torch.ones(len(np.asarray(prior.values)))
    out = {}
    for name, p in (("debiased (shipped prior)", prior), ("flat prior (no debiasing)", flat)):
        with attach(model, budget, method="d2pruner", prior=p, config=cfg) as handle:
            answers = answer(model, processor, family, examples, handle=handle)
        out[name] = round(100.0 * sum(score(task, a, e[2]) for a, e in zip(answers, examples)) / n, 2)
    with torch.no_grad():
        answers = answer(model, processor, family, examples)
    out["unpruned"] = round(100.0 * sum(score(task, a, e[2]) for a, e in zip(answers, examples)) / n, 2)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reproduce.micro bias", description=__doc__.splitlines()[0])
    p.add_argument("--family", required=True, choices=models.FAMILIES)
    p.add_argument("--scenes", type=int, default=128, help="calibration scenes for the two half maps")
    p.add_argument("--items", type=int, default=200, help="test items of the probe task")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("docs/results/micro"))
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    from d2pruner.models.loading import load_model
    from d2pruner.models.prior import Prior

    folder = models.checkpoint_dir(args.family)
    model, processor, family = load_model(str(folder), dtype=torch.float32)
    shipped = Prior.load(folder / "prior.json")
    a, b = half_priors(model, processor, family, args.scenes, shipped.meta["prompt"])
    r = float(np.corrcoef(a, b)[0, 1])
    values = np.asarray(shipped.values, dtype=np.float64)
    report = {
        "family": family, "command": "python -m reproduce.micro bias " + " ".join(argv if argv is not None else sys.argv[1:]),
        "positions": len(values), "prompt": shipped.meta["prompt"],
        "split_half_correlation": round(r, 4),
        "max_over_min": round(float(values.max() / values.min()), 3),
        "coefficient_of_variation": round(float(values.std() / values.mean()), 4),
        "bias": bool(r >= 0.8),
        "rule": "a positional bias exists when the two half maps correlate at r >= 0.8",
        "probe": {"task": PROBES[family][0], "budget": PROBES[family][1], "config": PROBES[family][2],
                  "items": args.items, "accuracy": debiasing_effect(model, processor, family, shipped, args.items)},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"bias-{family}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    side = int(round(len(values) ** 0.5))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    for ax, v, title in zip(axes, (values, a, b), ("shipped prior", "even scenes", "odd scenes")):
        im = ax.imshow(v.reshape(side, side), cmap="viridis")
        ax.set_title(title)
        ax.set_xticks([]), ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"micro {family}: mean attention of the last prompt token per visual position (layer 1)")
    fig.savefig(stem.with_suffix(".png"), dpi=80, bbox_inches="tight")
    acc = report["probe"]["accuracy"]
    lines = [f"# Positional bias of the micro {family} model", "", f"Command: `{report['command']}`", "",
             f"- positions: {report['positions']} ({_LAYOUT[family]}); "
             f"prompt: {report['prompt']!r}",
             f"- split-half correlation of the two maps: {report['split_half_correlation']} "
             f"({'a positional bias exists' if report['bias'] else 'no reliable positional bias'}: {report['rule']})",
             f"- max / min of the shipped prior: {report['max_over_min']}; coefficient of variation: "
             f"{report['coefficient_of_variation']}",
             f"- D2Pruner on {args.items} test items of {report['probe']['task']} at budget {report['probe']['budget']} "
             f"({report['probe']['config']} settings): " + "; ".join(f"{k} {v:.2f} %" for k, v in acc.items()),
             "", f"![maps]({stem.name}.png)", ""]
    stem.with_suffix(".md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0
