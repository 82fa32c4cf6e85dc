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
# # D2Pruner, step by step, inside a micro LLaVA
#
# We follow the method specification's steps (debiased importance, pivots, the hybrid graph, the
# greedy maximal independent set, the kept tokens) on the inputs a model really gives:
#
# - the **attention row** of the last text token over the visual tokens at decoder layer K−1 = 1;
# - the **features**: the visual hidden states entering layer K = 2;
# - the **positional prior**: the mean of that row over calibration scenes with one generic prompt.
#
# The model is the repository's **micro LLaVA**: transformers' own `LlavaForConditionalGeneration`,
# small (a CLIP tower on 96 px with 8 px patches, so 12×12 = 144 visual tokens where LLaVA-1.5 has
# 24×24 = 576; a 4-layer Llama of width 128), trained from scratch in this repository
# (`reproduce/micro`) on synthetic scenes of coloured shapes over dimmed photographs, to answer the
# benchmarks' kinds of questions about them. Its prior was measured on held-out calibration scenes
# (`prior.json` beside the checkpoint). It is not LLaVA-1.5: **every number here is a micro-model
# number**. The budget is 16 of 144 tokens, the micro analogue of LLaVA-1.5's 64 of 576.

# %%
import json

import matplotlib.pyplot as plt
import numpy as np
import torch

from d2pruner import D2PrunerConfig, Role, pivot_count, rank_order, reference, select_tokens, viz
from d2pruner.models import attach
from d2pruner.models.family import get_family
from d2pruner.models.loading import build_inputs, load_model
from d2pruner.models.prior import Prior, attention_rows
from reproduce.micro import evaluate, teach
from reproduce.micro.data import SPLITS, draw
from reproduce.micro.models import checkpoint_dir
from reproduce.micro.questions import colour_question
from reproduce.micro.scenes import SHAPES, SIZES, render

folder = checkpoint_dir("llava")
model, processor, family_name = load_model(str(folder), dtype=torch.float32)
family = get_family(family_name)
prior = Prior.load(folder / "prior.json")
card = json.loads((folder / "card.json").read_text())
print(f"{type(model).__name__} from {folder.name}/: {card['parameters']:,} parameters, trained {card['steps']} steps")
print(f"its card's held-out (validation) accuracy on the GQA-like questions: {card['heldout']['accuracy']['gqa']} %")
print(f"prior: {len(prior.values)} values from {prior.meta['n_images']} calibration scenes, prompt {prior.meta['prompt']!r}")

# %% [markdown]
# ## The scene and the question
#
# Item 0 of micro GQA, test split: a scene (rendered at 128 px; the processor resizes it to the
# tower's 96 px) and a question about the colour of one object, which it names by its shape (and
# size), in the GQA task's own prompt. The white outline marks the object the question names.

# %%
scene, (question, truth) = draw(SPLITS["test"], "gqa", 0, colour_question)
image = render(scene, 128)
picture = np.asarray(image)
(context,) = teach.contexts("gqa", [{"question": question}])
inputs = build_inputs(processor, family_name, image, context)
words = question.rstrip("?").split()
named = scene.matching(shape=next(w for w in words if w in SHAPES), size=next((w for w in words if w in SIZES), None))
print(repr(context), "-> truth:", truth)
fig, ax = plt.subplots(figsize=(3.5, 3.5))
ax.imshow(picture)
for o in named:
    viz.show_box(ax, o.box_1000(), picture, "white", "named")
ax.set_title(question, fontsize=9)
ax.axis("off")
plt.show()

# %% [markdown]
# ## The three inputs, read from the model
#
# `d2pruner.models.prior.attention_rows` runs the model up to layer K−1 and computes the last
# token's attention row there, as the pruning hook does (softmax over the whole sequence, mean over
# heads); the features are the hidden states that enter layer K (`output_hidden_states`: entry K is
# layer K's input). The family's `items` say where the 144 visual tokens sit in the sequence and
# how they are laid out (one 12×12 grid).

# %%
cfg = D2PrunerConfig()
K = cfg.prune_layer
BUDGET = 16
find_items = lambda ids: family.items(model, ids, None, inputs)  # noqa: E731  (positions, layout) per item
(row, layout), = attention_rows(model, inputs, K, find_items)
(positions, _), = find_items(inputs["input_ids"])
with torch.no_grad():
    hidden = model(**inputs, output_hidden_states=True).hidden_states[K][0, positions]
attn, features = row.numpy(), hidden.numpy()
SIDE = int(layout.row.max()) + 1
print(f"{len(layout)} visual tokens ({SIDE}x{SIDE}); features of width {features.shape[1]}; budget {BUDGET}")
print(f"the last token's attention at layer {K - 1}: {attn.sum():.3f} of it on the visual tokens")

# %% [markdown]
# ## 1. Debiased importance
#
# The raw row (left) mixes what the question asks for with where a token sits; the prior (middle)
# is where that attention goes on average, over calibration scenes with one generic prompt. Dividing
# by it, `s = attn / (prior + eps)`, leaves what this scene and question add (right).

# %%
scores = reference.debiased_importance(attn, prior.values, cfg.eps)
fig, axes = plt.subplots(1, 3, figsize=(12, 4))
viz.show_scores(axes[0], attn, SIDE, picture, "raw attention row (layer K-1)")
viz.show_scores(axes[1], prior.values, SIDE, None, "positional prior (calibration mean)", cmap="viridis")
viz.show_scores(axes[2], scores, SIDE, picture, "debiased importance")
for ax in (axes[0], axes[2]):
    for o in named:
        viz.show_box(ax, o.box_1000(), picture, "white")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2–3. Rank and pivots
#
# Tokens are ranked by score (ties to the lower index) and the first `floor(0.7 · budget)` are
# kept outright as pivots.

# %%
pivots = reference.select_pivots(scores, BUDGET, cfg.pivot_ratio)
order = rank_order(scores)
candidates = [int(i) for i in order if i not in set(pivots.tolist())]
n_take = BUDGET - pivot_count(BUDGET, cfg.pivot_ratio)
print(f"{len(pivots)} pivots; {len(candidates)} candidates for the remaining {n_take} places")
fig, ax = plt.subplots(figsize=(4.5, 4.5))
viz.show_tokens(ax, picture, SIDE, sorted(pivots.tolist()), [Role.PIVOT] * len(pivots), "pivots")
plt.show()

# %% [markdown]
# ## 4. The hybrid graph
#
# Among the non-pivot tokens, an edge joins two tokens when `(1 − w)·cos + w·adjacent > θ`, the
# cosine taken between their layer-K features. With the general-understanding setting (w = 0) only
# similar tokens are joined, wherever they are; with the localization setting (w = 0.5, θ = 0.8)
# only spatial neighbours whose cosine exceeds 0.6 are. Purple: edges between non-neighbours;
# green: between neighbours.

# %%
semantic = reference.hybrid_graph(features, layout, cfg, nodes=candidates)
local_cfg = D2PrunerConfig.for_localization()
spatial = reference.hybrid_graph(features, layout, local_cfg, nodes=candidates)
print(f"w = 0: {semantic.number_of_edges()} edges; w = 0.5: {spatial.number_of_edges()} edges "
      f"(among {len(candidates)} candidates)")
fig, axes = plt.subplots(1, 2, figsize=(10, 5))
viz.show_graph(axes[0], picture, SIDE, semantic, "w = 0 (semantic)")
viz.show_graph(axes[1], picture, SIDE, spatial, "w = 0.5 (hybrid)")
plt.show()

# %% [markdown]
# ## 5. The greedy MIS
#
# Walk the candidates in rank order; take a token if none of its neighbours was taken; stop after
# the remaining places are filled. Each pick blocks the tokens that look like it, so the picks
# spread over distinct content.

# %%
taken = reference.greedy_mis(semantic, candidates, n_take)
fig, ax = plt.subplots(figsize=(4.5, 4.5))
viz.show_mis_order(ax, picture, SIDE, taken, "MIS picks in order (w = 0)")
plt.show()

# %% [markdown]
# ## 6–7. The kept tokens and the answer, beside FastV and DivPrune at the same budget
#
# `select_tokens` runs all the steps at once. `attach` hooks the model so that every prompt pass
# does it itself, inside `generate`; the handle's statistics say what was kept. Each method is
# attached in turn, 16 of 144 tokens, greedy answer. FastV keeps the top of the raw attention row
# (the positional bias included) from layer K on; DivPrune keeps the most mutually distant projected
# features, before the LLM (importance plays no part); D2Pruner keeps the debiased-important tokens
# (pivots, red) and spreads the rest over distinct content (MIS, blue). "on object": kept tokens that overlap the named object
# (white outline).

# %%
sel = select_tokens(attn, features, layout, BUDGET, prior=prior.values, config=cfg)
print("select_tokens:", sel.kept.tolist(), sel.counts())
x1, y1, x2, y2 = (np.array([o.box_1000() for o in named]) * SIDE / 1000).T  # the named object(s), in tokens
on_object = ((layout.col[:, None] + 1 > x1) & (layout.col[:, None] < x2)
             & (layout.row[:, None] + 1 > y1) & (layout.row[:, None] < y2)).any(axis=1)
tok = processor.tokenizer
generation = dict(max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id,
                  eos_token_id=family.eos_ids(model, processor), suppress_tokens=[int(model.config.image_token_id)])
n_prompt = inputs["input_ids"].shape[1]
with torch.no_grad():
    answer = tok.decode(model.generate(**inputs, **generation)[0, n_prompt:], skip_special_tokens=True).strip()
print(f"unpruned  kept {len(layout)}, {on_object.sum()} on the object, answer {answer!r} (truth {truth!r})")
fig, axes = plt.subplots(1, 3, figsize=(13, 4.8))
for ax, method in zip(axes, ("fastv", "divprune", "d2pruner")):
    with torch.no_grad(), attach(model, BUDGET, method=method, prior=prior) as handle:
        out = model.generate(**inputs, **generation)
    stats = handle.stats[0]
    answer = tok.decode(out[0, n_prompt:], skip_special_tokens=True).strip()
    roles = stats.roles if method == "d2pruner" else None
    viz.show_tokens(ax, picture, SIDE, stats.kept, roles, f"{method}: {answer!r} ({on_object[stats.kept].sum()} on object)")
    for o in named:
        viz.show_box(ax, o.box_1000(), picture, "white")
    print(f"{method:9s} kept {stats.n_visual_after}, {on_object[stats.kept].sum()} on the object, answer {answer!r}")
plt.tight_layout()
plt.show()
print("inside generate, D2Pruner kept exactly the step-by-step selection:", np.array_equal(stats.kept, sel.kept),
      "| debiased:", stats.debiased)

# %% [markdown]
# ## 8. Over many questions
#
# One scene proves little. The first 96 items of micro GQA, test split (colour, shape, size,
# relation-colour and left/right questions in turn), answered greedily by the unpruned model and by
# each method at 16 of 144 tokens; accuracy as the model card measures it (exact match).
# Micro-model numbers, on scenes like those it was trained on.

# %%
examples = teach.task_examples("gqa", 96, SPLITS["test"])
for method in (None, "fastv", "divprune", "d2pruner"):
    if method is None:
        answers = evaluate.answer(model, processor, family_name, examples, max_new_tokens=4)
    else:
        with attach(model, BUDGET, method=method, prior=prior) as handle:
            answers = evaluate.answer(model, processor, family_name, examples, max_new_tokens=4, handle=handle)
    right = np.mean([evaluate.score("gqa", a, e[2]) for a, e in zip(answers, examples)])
    print(f"{method or 'unpruned':9s}: {100 * right:5.1f} % of {len(examples)} right")
