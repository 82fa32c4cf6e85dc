# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # D2Pruner, step by step, on a real photograph
#
# We cut scikit-image's *astronaut* photograph into a 24×24 grid — the token grid of LLaVA-1.5 —
# and follow the method specification's steps: debiased importance, pivots, the hybrid graph, the
# greedy maximal independent set, and the kept tokens. No model is loaded here, so two inputs are
# stand-ins, and labelled as such: each token's **feature** is its own pixels (pooled), and the
# **attention row** is a content term (local contrast) multiplied by a **synthetic positional
# bias** that grows along the sequence, the kind of bias D2Pruner's prior removes. Notebook 03
# shows the real attention of a (tiny) model.

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
from skimage import data

from d2pruner import D2PrunerConfig, Role, TokenLayout, methods, pivot_count, rank_order, reference, select_tokens, viz

image = data.astronaut()
SIDE, BUDGET = 24, 64
layout = TokenLayout.grid(SIDE, SIDE)
features = viz.image_grid_features(image, SIDE)
attn, prior = viz.synthetic_attention(image, SIDE)  # SYNTHETIC: content x positional bias
print(f"{len(layout)} tokens, features of width {features.shape[1]}, budget {BUDGET}")

# %% [markdown]
# ## 1. Debiased importance
#
# The raw row (left) is the content term times the positional bias (middle), so the bottom rows
# look important whatever they show. Dividing by the prior, `s = attn / (prior + eps)`, leaves
# the content (right).

# %%
cfg = D2PrunerConfig()
scores = reference.debiased_importance(attn, prior, cfg.eps)
fig, axes = plt.subplots(1, 3, figsize=(12, 4))
viz.show_scores(axes[0], attn, SIDE, image, "raw attention row (synthetic)")
viz.show_scores(axes[1], prior, SIDE, None, "positional prior (synthetic)", cmap="viridis")
viz.show_scores(axes[2], scores, SIDE, image, "debiased importance")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2–3. Rank and pivots
#
# Tokens are ranked by score (ties to the lower index) and the first `floor(0.7 · 64) = 44` are
# kept outright as pivots.

# %%
pivots = reference.select_pivots(scores, BUDGET, cfg.pivot_ratio)
order = rank_order(scores)
candidates = [int(i) for i in order if i not in set(pivots.tolist())]
n_take = BUDGET - pivot_count(BUDGET, cfg.pivot_ratio)
print(f"{len(pivots)} pivots; {len(candidates)} candidates for the remaining {n_take} places")
fig, ax = plt.subplots(figsize=(4.5, 4.5))
viz.show_tokens(ax, image, SIDE, sorted(pivots.tolist()), [Role.PIVOT] * len(pivots), "pivots")
plt.show()

# %% [markdown]
# ## 4. The hybrid graph
#
# Among the non-pivot tokens, an edge joins two tokens when `(1 − w)·cos + w·adjacent > θ`. With
# the general-understanding setting (w = 0) only similar-looking tokens are joined, wherever they
# are; with the localization setting (w = 0.5, θ = 0.8) only spatial neighbours whose cosine
# exceeds 0.6 are. Purple: edges between non-neighbours; green: between neighbours.

# %%
semantic = reference.hybrid_graph(features, layout, cfg, nodes=candidates)
local_cfg = D2PrunerConfig.for_localization()
spatial = reference.hybrid_graph(features, layout, local_cfg, nodes=candidates)
print(f"w = 0: {semantic.number_of_edges()} edges; w = 0.5: {spatial.number_of_edges()} edges")
fig, axes = plt.subplots(1, 2, figsize=(10, 5))
viz.show_graph(axes[0], image, SIDE, semantic, "w = 0 (semantic)")
viz.show_graph(axes[1], image, SIDE, spatial, "w = 0.5 (hybrid)")
plt.show()

# %% [markdown]
# ## 5. The greedy MIS
#
# Walk the candidates in rank order; take a token if none of its neighbours was taken; stop after
# 20. Each pick blocks the tokens that look like it, so the picks spread over distinct content.

# %%
taken = reference.greedy_mis(semantic, candidates, n_take)
fig, ax = plt.subplots(figsize=(4.5, 4.5))
viz.show_mis_order(ax, image, SIDE, taken, "MIS picks in order (w = 0)")
plt.show()

# %% [markdown]
# ## 6–7. The kept tokens, beside FastV and DivPrune at the same budget
#
# FastV keeps the top 64 of the raw row (the bias shows); DivPrune keeps the 64 most mutually
# distant features (importance plays no part); D2Pruner keeps the important content (pivots, red)
# and spreads the rest over distinct content (MIS, blue).

# %%
sel = select_tokens(attn, features, layout, BUDGET, prior=prior, config=cfg)
fastv = methods.fastv_selection(torch.tensor(attn)[None], [BUDGET])[0].tolist()
divprune = methods.divprune_selection(torch.tensor(features)[None], [BUDGET])[0].tolist()
fig, axes = plt.subplots(1, 3, figsize=(13, 4.5))
viz.show_tokens(axes[0], image, SIDE, fastv, None, "FastV (raw attention)")
viz.show_tokens(axes[1], image, SIDE, divprune, None, "DivPrune (diversity only)")
viz.show_tokens(axes[2], image, SIDE, sel.kept, sel.roles, f"D2Pruner {sel.counts()}")
plt.tight_layout()
plt.show()
print("mean row of kept tokens — FastV:", np.mean(layout.row[fastv]).round(1), " D2Pruner:", np.mean(layout.row[sel.kept]).round(1))
