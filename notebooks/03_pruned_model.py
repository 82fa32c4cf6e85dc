# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # D2Pruner inside a model
#
# We attach D2Pruner to LLaVA-1.5 (and InternVL-2.5) through `d2pruner.models` and generate with
# and without pruning. With the real checkpoints in the local Hugging Face cache the notebook uses
# them; otherwise it uses the tiny random models of the same architectures built in code, and says
# so — their answers are noise, but the mechanics (what is kept, what it saves) are the real ones.

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
from skimage import data, transform

from d2pruner import viz
from d2pruner.flops import CONVENTIONS, LMDims, prefill_flops, reduction
from d2pruner.models import internvl, llava, tiny
from d2pruner.models.family import get_family
from d2pruner.models.loading import build_inputs, load_model

CHECKPOINT = get_family("llava").checkpoint

photo = data.astronaut()
try:
    model, processor, family = load_model(CHECKPOINT, dtype=torch.float16,
                                          device="cuda" if torch.cuda.is_available() else "cpu")
    inputs = build_inputs(processor, family, __import__("PIL.Image").Image.fromarray(photo), "What is in the image?",
                          device=model.device)
    print("using the real checkpoint", CHECKPOINT)
except OSError as err:
    print("real checkpoint unavailable ->", str(err).split(". ")[0])
    print("using the tiny random LLaVA instead (same architecture, 24x24 visual tokens)")
    model, processor, family = tiny.tiny_llava(), None, "llava"
    pixels = transform.resize(photo, (48, 48), anti_aliasing=True).transpose(2, 0, 1)
    pixels = (torch.tensor(pixels, dtype=torch.float32)[None] - 0.45) / 0.27
    ids = torch.tensor([[1, 17, 33] + [tiny.IMAGE_TOKEN] * 576 + [45, 61, 9]])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}

# %% [markdown]
# ## Generate with and without pruning
#
# `attach` hooks decoder layers 1 (attention row) and 2+ (dropping tokens); the handle's
# statistics say what was kept. Without a positional prior D2Pruner runs un-debiased and the
# statistics say so (`debiased: False`); `python -m d2pruner.models.prior` measures one.

# %%
prompt_len = inputs["input_ids"].shape[1]
with torch.no_grad():
    full = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    with llava.attach(model, budget=64) as handle:
        pruned = model.generate(**inputs, max_new_tokens=8, do_sample=False)
stats = handle.stats[0]
print("unpruned:", full[0, prompt_len:].tolist())
print("pruned:  ", pruned[0, prompt_len:].tolist())
print(f"visual tokens {stats.n_visual_before} -> {stats.n_visual_after}, roles {stats.counts()}, "
      f"selection {stats.selection_ms:.1f} ms, debiased: {stats.debiased}")

# %% [markdown]
# ## What it saves
#
# Prefill FLOPs of this model's language model, read from its config, unpruned against pruned at
# layer 2, under the `exact` convention of `d2pruner.flops` (GQA-aware projections, full n² term,
# 3-matrix MLP); and the same for the full-size LLaVA-1.5-7B from its shipped config.

# %%
from d2pruner.flops import paper_config

n_text = prompt_len - stats.n_visual_before
for name, dims in (("this model", LMDims.from_config(model.config)),
                   ("LLaVA-1.5-7B", LMDims.from_config(paper_config(CHECKPOINT)))):
    conv = CONVENTIONS["exact"]
    before = prefill_flops(dims, n_text, [(0, 576)], conv)
    after = prefill_flops(dims, n_text, [(0, 576), (2, stats.n_visual_after)], conv)
    print(f"{name:13s}: {before / 1e9:10.3f} -> {after / 1e9:10.3f} GFLOPs ({reduction(after, before):.1f} % fewer)")

# %% [markdown]
# ## The kept tokens on the image
#
# Red: pivots (most important by the model's layer-1 attention of the last token); blue: tokens
# added by the maximal independent set. (With random weights the attention has no meaning: the
# picture shows the mechanics.)

# %%
fig, ax = plt.subplots(figsize=(4.5, 4.5))
viz.show_tokens(ax, photo, 24, stats.kept, stats.roles, f"LLaVA: {stats.n_visual_after} of {stats.n_visual_before} kept")
plt.show()

# %% [markdown]
# ## InternVL-2.5: tiles and thumbnail
#
# For InternVL the handle needs each image's tile grid (the processor does not report it):
# `handle.set_image_sizes` recomputes it by the processor's rule. Here: the tiny InternVL with the
# photograph cut into 2 tiles side by side plus the thumbnail (768 visual tokens), keeping 10 %.

# %%
ivl = tiny.tiny_internvl()
tiles = [transform.resize(photo[:, :256], (64, 64)), transform.resize(photo[:, 256:], (64, 64)),
         transform.resize(photo, (64, 64))]
px = (torch.tensor(np.stack(tiles).transpose(0, 3, 1, 2), dtype=torch.float32) - 0.45) / 0.27
ids = torch.tensor([[1, 17] + [tiny.IMAGE_TOKEN] * 768 + [45, 61]])
with torch.no_grad(), internvl.attach(ivl, budget=0.1) as h:
    h.set_tile_grids([(1, 2)])
    out = ivl.generate(input_ids=ids, pixel_values=px, max_new_tokens=4, do_sample=False)
s = h.stats[0]
print(f"InternVL: {s.n_visual_before} -> {s.n_visual_after} visual tokens, roles {s.counts()}")
in_tiles = s.kept[s.kept < 512]
print(f"{len(in_tiles)} kept in the two tiles, {len(s.kept) - len(in_tiles)} in the thumbnail")
