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
# # Reference and fast backend: the same selection, proven by properties
#
# `d2pruner.reference` follows the method one item at a time with networkx; `d2pruner.fast` does
# the same in batched torch, with the greedy MIS computed in parallel rounds. This notebook runs
# both on the same inputs, runs one of the suite's Hypothesis properties live, shows a property
# catching a deliberately broken variant, and times both backends across N.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from hypothesis import given, settings

from d2pruner import D2PrunerConfig, Role, TokenLayout, pivot_count, select_tokens
from d2pruner.testing import batches, selection_cases

rng = np.random.default_rng(0)
sizes = [(24, 24), (16, 16), (12, 20)]
attn = [rng.random(h * w) for h, w in sizes]
feats = [rng.normal(size=(h * w, 32)) + 2.0 * rng.normal(size=(1, 32)) for h, w in sizes]
layouts = [TokenLayout.grid(h, w) for h, w in sizes]
ref = select_tokens(attn, feats, layouts, 0.1, backend="reference")
fast = select_tokens(attn, feats, layouts, 0.1, backend="fast")  # one batched call for all three items
for i, (r, f) in enumerate(zip(ref, fast)):
    print(f"item {i}: N={len(layouts[i])}, kept {len(f)}, roles {f.counts()}, identical: {r == f}")

# %% [markdown]
# ## A property, live
#
# The suite's differential property: for any batch the strategies in `d2pruner.testing` draw
# (ties, duplicated and zero features, several views, every config switch), the fast backend's
# selection equals the reference's exactly, item by item. Here it runs on 100 random batches.

# %%
checked = []


@settings(max_examples=100, database=None, deadline=None)
@given(batches(max_items=3))
def fast_equals_reference(cases):
    got = select_tokens([c.attn for c in cases], [c.features for c in cases], [c.layout for c in cases],
                        [c.n_keep for c in cases], prior=None if cases[0].prior is None else [c.prior for c in cases],
                        config=cases[0].config)
    for case, g in zip(cases, got):
        want = select_tokens(case.attn, case.features, case.layout, case.n_keep, prior=case.prior,
                             config=case.config, backend="reference")
        assert g == want
    checked.append(len(cases))


fast_equals_reference()
print(f"{len(checked)} batches ({sum(checked)} items): fast == reference on all of them")

# %% [markdown]
# ## A broken variant, caught
#
# Suppose an implementation forgot the top-up (step 6): when the MIS runs out, it would return
# fewer tokens than asked. The exact-budget property finds an input where that happens and
# Hypothesis shrinks it to a small counterexample.

# %%
def without_topup(case):
    sel = select_tokens(case.attn, case.features, case.layout, case.n_keep, prior=case.prior, config=case.config)
    return sel.kept[sel.roles != int(Role.TOPUP)]


@settings(max_examples=300, database=None, deadline=None)
@given(selection_cases())
def exact_budget(case):
    assert len(without_topup(case)) == case.n_keep, f"kept {len(without_topup(case))} of {case.n_keep}"


try:
    exact_budget()
    print("not caught")
except AssertionError as err:
    print("caught:", err)

# %% [markdown]
# ## Time across N
#
# One item of the seeded demo inputs of `python -m d2pruner` (clustered features, so the graph has
# many edges, as real visual features do), D = 64, a budget of 1/9 of N. The reference's cost grows
# with the number of edges it hands to networkx; the fast backend's with its similarity matmul and
# a few O(N²) mask passes. `benchmarks/selection.py` measures the full grid (up to N = 3328, D = 4096).

# %%
from d2pruner.__main__ import demo_inputs

ns, t_ref, t_fast = [64, 144, 256, 400, 576, 784], [], []
for n in ns:
    side = int(n ** 0.5)
    a, p, f, lay = demo_inputs(seed=1, side=side, dim=64)
    for backend, store in (("reference", t_ref), ("fast", t_fast)):
        select_tokens(a, f, lay, max(1, n // 9), prior=p, backend=backend)  # warm-up
        t0 = time.perf_counter()
        for _ in range(3):
            select_tokens(a, f, lay, max(1, n // 9), prior=p, backend=backend)
        store.append((time.perf_counter() - t0) / 3 * 1e3)
plt.figure(figsize=(5, 3.5))
plt.plot(ns, t_ref, "o-", label="reference (networkx)")
plt.plot(ns, t_fast, "o-", label="fast (torch)")
plt.xlabel("N visual tokens")
plt.ylabel("ms per selection")
plt.yscale("log")
plt.legend()
plt.title("one item, D = 64, CPU")
plt.show()
print({n: round(r / f, 1) for n, r, f in zip(ns, t_ref, t_fast)}, "(reference / fast)")
