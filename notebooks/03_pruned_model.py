# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # D2Pruner inside a model: grounding with InternVL
#
# We attach FastV, DivPrune and D2Pruner to an InternVL model through `d2pruner.models`, ask it for
# the box of a referring expression, and compare the boxes it gives with and without pruning.
#
# With the real InternVL-2.5-8B in the local Hugging Face cache the notebook uses it (without a
# positional prior: D2Pruner then runs un-debiased, and says so). Otherwise it uses the repository's
# **micro InternVL**: transformers' own `InternVLForConditionalGeneration`, small (64 px tiles, 8 px
# patches and pixel shuffle, so 4×4 = 16 tokens per tile where InternVL-2.5 has 16×16 = 256; a
# 4-layer Llama of width 128), trained from scratch in this repository (`reproduce/micro`) on
# synthetic scenes of coloured shapes, including referring expressions answered with boxes in
# InternVL's `[[x1, y1, x2, y2]]` format on a [0, 1000] frame. Its positional prior was measured on
# held-out calibration scenes (`prior.json` beside the checkpoint). **Its numbers are micro-model
# numbers, not the paper's.**

# %%
import json

import matplotlib.pyplot as plt
import numpy as np
import torch

from d2pruner import D2PrunerConfig, TokenLayout, resolve_budget, viz
from d2pruner.flops import CONVENTIONS, LMDims, paper_config, prefill_flops, reduction
from d2pruner.models import attach
from d2pruner.models.family import get_family
from d2pruner.models.loading import build_inputs, load_model
from d2pruner.models.prior import Prior
from reproduce.micro import evaluate, teach
from reproduce.micro.data import SIDE, SPLITS, draw
from reproduce.micro.models import checkpoint_dir
from reproduce.micro.questions import referring
from reproduce.micro.scenes import render
from reproduce.tasks.utils import REC_PROMPT, parse_internvl_box

CHECKPOINT = get_family("internvl").checkpoint
MAX_TILES = 4
try:
    model, processor, family_name = load_model(CHECKPOINT, dtype=torch.float16,
                                               device="cuda" if torch.cuda.is_available() else "cpu")
    prior = None
    print("using the real checkpoint", CHECKPOINT, "(no prior: D2Pruner runs un-debiased)")
except OSError as err:
    print("real checkpoint unavailable ->", str(err).split(". ")[0])
    folder = checkpoint_dir("internvl")
    model, processor, family_name = load_model(str(folder), dtype=torch.float32)
    prior = Prior.load(folder / "prior.json")
    card = json.loads((folder / "card.json").read_text())
    print(f"using the micro InternVL ({folder.name}/: {card['parameters']:,} parameters, {card['steps']} training steps); "
          f"its card's held-out (validation) REC accuracy, IoU >= 0.5: {card['heldout']['accuracy']['refcoco_bbox_rec_val']} %")
family = get_family(family_name)

# %% [markdown]
# ## The scene, the expression, the tiles
#
# Item 0 of micro RefCOCO val, test split: a 128 px scene and an expression naming one object,
# asked with InternVL's grounding prompt (`REC_PROMPT`). The processor cuts the scene into tiles
# and, when there is more than one tile, appends a thumbnail of the whole scene; the handle needs
# that tile grid (`handle.set_item_hints`), which the token ids do not carry.

# %%
scene, (expression, target) = draw(SPLITS["test"], "refcoco_bbox_rec_val", 0, referring)
image = render(scene, SIDE)
picture = np.asarray(image)
question = REC_PROMPT.format(expression)
inputs = build_inputs(processor, family_name, image, question, max_tiles=MAX_TILES, device=model.device)
hints = family.item_hints(processor, [image], MAX_TILES)
(_, layout), = family.items(model, inputs["input_ids"], hints, inputs)
truth = np.array(target.box_1000(), dtype=float)
views = sorted(set(layout.view.tolist()))
view_shape = {v: (layout.row[layout.view == v].max() + 1, layout.col[layout.view == v].max() + 1) for v in views}
n_rows, n_cols = np.array([view_shape[v] for v in layout.view]).T  # each token's view spans the whole scene
x1, y1, x2, y2 = truth / 1000
on_target = ((layout.col + 1 > x1 * n_cols) & (layout.col < x2 * n_cols)
             & (layout.row + 1 > y1 * n_rows) & (layout.row < y2 * n_rows))  # tokens overlapping the named object
print(f"{question!r}\nground truth {truth.tolist()}; tile grid {hints[0]}; {len(layout)} visual tokens, "
      f"per view {np.bincount(layout.view).tolist()} (view 0: the tiles' canvas, view 1: the thumbnail); "
      f"{on_target.sum()} of them overlap the named object")

# %% [markdown]
# ## The box with and without pruning
#
# Greedy generation, unpruned and with each method keeping 10 % of the visual tokens: FastV the top
# of the raw attention row of layer 1, from layer 2 on; DivPrune the most mutually distant projected
# features, before the LLM; D2Pruner with its localization setting (`D2PrunerConfig.for_localization()`:
# in the graph only spatial neighbours with similar features are joined). Boxes are parsed as the
# RefCOCO task parses them; "on the object": kept tokens overlapping the named object.

# %%
tok = processor.tokenizer
generation = dict(max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id,
                  eos_token_id=family.eos_ids(model, processor), suppress_tokens=[int(model.config.image_token_id)])
n_prompt = inputs["input_ids"].shape[1]
runs = {}
for method in (None, "fastv", "divprune", "d2pruner"):
    with torch.no_grad():
        if method is None:
            out, stats = model.generate(**inputs, **generation), None
        else:
            with attach(model, 0.1, method=method, prior=prior, config=D2PrunerConfig.for_localization(),
                        max_tiles=MAX_TILES) as handle:
                handle.set_item_hints(hints)
                out = model.generate(**inputs, **generation)
            stats = handle.stats[0]
    text = tok.decode(out[0, n_prompt:], skip_special_tokens=True).strip()
    runs[method or "unpruned"] = (text, parse_internvl_box(text), stats)
boxes = np.array([box if box is not None else [0.0] * 4 for _, box, _ in runs.values()])
inter = np.clip(np.minimum(boxes[:, 2:], truth[2:]) - np.maximum(boxes[:, :2], truth[:2]), 0, None).prod(axis=1)
areas = np.clip(boxes[:, 2:] - boxes[:, :2], 0, None).prod(axis=1)
iou = inter / (areas + (truth[2:] - truth[:2]).prod() - inter)
for (name, (text, box, stats)), value in zip(runs.items(), iou):
    kept = np.arange(len(layout)) if stats is None else stats.kept
    print(f"{name:9s} {text!r:28s} IoU {value:.2f}   {len(kept):2d} tokens kept, {on_target[kept].sum():2d} on the object"
          + (f", roles {stats.counts()}" if stats is not None and stats.method == "d2pruner" else ""))
print("D2Pruner debiased (divided by a prior):", runs["d2pruner"][2].debiased)

# %% [markdown]
# ## The boxes and the kept tokens over the scene
#
# Top: the tiles' canvas (the tiles side by side cover the whole scene), bottom: the thumbnail.
# Green dashed: the ground truth; cyan: the predicted box. Kept tokens are outlined (D2Pruner:
# pivots red, MIS picks blue; the baselines' in green) and dropped ones dimmed. With the micro model,
# the card's held-out accuracy printed at the top says how far one of its boxes can be trusted: a
# model that rarely finds the object unpruned cannot show what pruning costs it.

# %%
fig, axes = plt.subplots(len(views), len(runs), figsize=(3.4 * len(runs), 3.6 * len(views)), squeeze=False)
for col, (name, (text, box, stats)) in enumerate(runs.items()):
    kept, dim = ([], 1.0) if stats is None else (stats.kept, 0.35)  # unpruned: nothing outlined or dimmed
    roles = stats.roles if stats is not None and stats.method == "d2pruner" else None
    for row, view in enumerate(views):
        ax = axes[row, col]
        title = f"{name}: IoU {iou[col]:.2f}" if row == 0 else f"{name}: thumbnail"
        viz.show_view_tokens(ax, picture, layout, kept, roles, view=view, title=title, dim=dim)
        viz.show_box(ax, truth, picture, "#00ff00", linestyle="--")
        if box is not None and row == 0:
            viz.show_box(ax, box, picture, "#00e5ff")
plt.suptitle(expression)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Over many expressions
#
# One expression proves little. The first 64 items of micro RefCOCO val, test split, answered
# greedily in batches, unpruned and by each method at 10 %; Acc@0.5 (IoU ≥ 0.5 with the ground
# truth) as the model card measures it (`reproduce.micro.evaluate`, which gives the handle each
# batch's tile grids).

# %%
examples = teach.task_examples("refcoco_bbox_rec_val", 64, SPLITS["test"])
for method in (None, "fastv", "divprune", "d2pruner"):
    if method is None:
        answers = evaluate.answer(model, processor, family_name, examples)
    else:
        with attach(model, 0.1, method=method, prior=prior, config=D2PrunerConfig.for_localization(),
                    max_tiles=MAX_TILES) as handle:
            answers = evaluate.answer(model, processor, family_name, examples, handle=handle)
    right = np.mean([evaluate.score("refcoco_bbox_rec_val", a, e[2]) for a, e in zip(answers, examples)])
    print(f"{method or 'unpruned':9s}: Acc@0.5 {100 * right:5.1f} % of {len(examples)}")

# %% [markdown]
# ## What it saves
#
# Prefill FLOPs of the language model, read from its config, unpruned against pruned at layer 2,
# under the `exact` convention of `d2pruner.flops` (GQA-aware projections, full n² term, 3-matrix
# MLP): for this model on this scene, and for the full-size InternVL-2.5-8B (its shipped config)
# on the same tile grid at its own 256 tokens per tile.

# %%
conv = CONVENTIONS["exact"]
d2 = runs["d2pruner"][2]
n_text = n_prompt - d2.n_visual_before
full = paper_config(CHECKPOINT)
for name, dims, n_visual in (("this model", LMDims.from_config(model.config), d2.n_visual_before),
                             ("InternVL-2.5-8B", LMDims.from_config(full), len(TokenLayout.internvl(*hints[0], tile_side=16)))):
    n_kept = resolve_budget(0.1, n_visual)
    before = prefill_flops(dims, n_text, [(0, n_visual)], conv)
    after = prefill_flops(dims, n_text, [(0, n_visual), (2, n_kept)], conv)
    print(f"{name:15s}: {n_visual:4d} -> {n_kept:3d} visual tokens, {before / 1e9:9.3f} -> {after / 1e9:9.3f} GFLOPs "
          f"({reduction(after, before):.1f} % fewer)")
