"""The defining property of each baseline selection rule, checked step by step (Hypothesis)."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from d2pruner.baselines import (cdpruner_order, cdpruner_selection, divprune_order, divprune_selection,
                                fastv_selection, mmr_order, mmr_selection, random_selection)


@st.composite
def batch(draw, max_n=24):
    b, n, d = draw(st.integers(1, 3)), draw(st.integers(1, max_n)), draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    feats = rng.integers(-2, 3, size=(b, n, d)).astype(np.float64) if draw(st.booleans()) else rng.normal(size=(b, n, d))
    scores = rng.integers(0, 4, size=(b, n)).astype(np.float64) if draw(st.booleans()) else rng.random((b, n))
    n_keep = [draw(st.integers(1, n)) for _ in range(b)]
    return torch.tensor(feats), torch.tensor(scores), n_keep


def check_kept(kept, n, n_keep):
    for row, k in zip(kept.tolist(), n_keep):
        got = [i for i in row if i >= 0]
        assert len(got) == k and got == sorted(set(got)) and all(0 <= i < n for i in got)


def cosine(f):
    u = f / np.maximum(np.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
    return u @ u.T


@given(batch())
def test_budgets_and_batch_invariance(data):
    feats, scores, n_keep = data
    n = feats.shape[1]
    outs = {"fastv": fastv_selection(scores, n_keep), "divprune": divprune_selection(feats, n_keep),
            "mmr": mmr_selection(scores, feats, n_keep), "cdpruner": cdpruner_selection(feats, scores, n_keep),
            "random": random_selection(n, n_keep, seed=3)}
    for name, kept in outs.items():
        check_kept(kept, n, n_keep)
    for i, k in enumerate(n_keep):
        alone = {"fastv": fastv_selection(scores[i:i + 1], [k]), "divprune": divprune_selection(feats[i:i + 1], [k]),
                 "mmr": mmr_selection(scores[i:i + 1], feats[i:i + 1], [k]),
                 "cdpruner": cdpruner_selection(feats[i:i + 1], scores[i:i + 1], [k])}
        for name, kept in alone.items():
            assert [x for x in outs[name][i].tolist() if x >= 0] == kept[0].tolist(), name


@given(batch())
def test_fastv_is_top_n_of_the_raw_row(data):
    _, scores, n_keep = data
    kept = fastv_selection(scores, n_keep)
    for i, k in enumerate(n_keep):
        s = scores[i].tolist()
        want = sorted(sorted(range(len(s)), key=lambda j: (-s[j], j))[:k])
        assert [x for x in kept[i].tolist() if x >= 0] == want


@given(batch())
def test_divprune_max_min_at_every_step(data):
    feats, _, n_keep = data
    k = max(n_keep)
    order = divprune_order(feats, k)
    for i in range(feats.shape[0]):
        dist = 1 - cosine(feats[i].numpy())
        picks = order[i].tolist()
        n = dist.shape[0]
        nearest = [min([dist[a, b] for b in range(n) if b != a], default=0.0) for a in range(n)]
        assert nearest[picks[0]] >= max(nearest) - 1e-9
        for t in range(1, k):
            gain = [min(dist[a, p] for p in picks[:t]) if a not in picks[:t] else -np.inf for a in range(n)]
            assert gain[picks[t]] >= max(gain) - 1e-9, f"step {t} is not the max-min choice"


@given(batch())
def test_mmr_argmax_at_every_step(data):
    feats, scores, n_keep = data
    k = max(n_keep)
    order = mmr_order(scores, feats, k)
    for i in range(feats.shape[0]):
        s = scores[i].numpy()
        imp = (s - s.min()) / max(s.max() - s.min(), 1e-12)
        sim = cosine(feats[i].numpy())
        picks = order[i].tolist()
        assert imp[picks[0]] == imp.max()
        for t in range(1, k):
            val = [0.5 * imp[a] - 0.5 * max(sim[a, p] for p in picks[:t]) if a not in picks[:t] else -np.inf
                   for a in range(len(s))]
            assert val[picks[t]] >= max(val) - 1e-9


@given(batch(max_n=12))
def test_cdpruner_step_maximises_the_log_determinant_gain(data):
    feats, scores, n_keep = data
    k = max(n_keep)
    order = cdpruner_order(feats, scores, k)
    for i in range(feats.shape[0]):
        s = scores[i].numpy()
        q = (s - s.min()) / max(s.max() - s.min(), 1e-12)
        kernel = q[:, None] * cosine(feats[i].numpy()) * q[None, :]
        picks = order[i].tolist()
        for t in range(k):
            base = np.linalg.slogdet(kernel[np.ix_(picks[:t], picks[:t])]) if t else (1.0, 0.0)
            if base[0] <= 0 or base[1] < -20:  # the kernel's rank is exhausted: gains are all 0
                break
            gains = []
            for a in range(len(s)):
                if a in picks[:t]:
                    gains.append(-np.inf)
                    continue
                sign, logdet = np.linalg.slogdet(kernel[np.ix_(picks[:t] + [a], picks[:t] + [a])])
                gains.append(logdet - base[1] if sign > 0 else -np.inf)
            if max(gains) == -np.inf or max(gains) < -20:
                break
            assert gains[picks[t]] >= max(gains) - 1e-6, f"step {t}: gain {gains[picks[t]]} < best {max(gains)}"


def test_random_is_reproducible_and_uniform():
    a, b = random_selection(50, [10, 10], seed=7), random_selection(50, [10, 10], seed=7)
    assert torch.equal(a, b) and not torch.equal(a, random_selection(50, [10, 10], seed=8))
    counts = np.zeros(50)
    for seed in range(2000):
        counts[random_selection(50, [10], seed=seed)[0].numpy()] += 1
    expected = 2000 * 10 / 50
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 100, f"inclusion counts far from uniform (chi2={chi2:.1f}, 49 dof)"


def test_cdpruner_after_the_kernel_rank_is_exhausted():
    """Found by Hypothesis: with D < n_keep the residuals become rounding noise, whose argmax changed
    with the batch. Past the rank, picks now go to the lowest remaining index, batched or alone."""
    g = torch.Generator().manual_seed(0)
    feats, rel = torch.randn(3, 9, 2, generator=g, dtype=torch.float64), torch.rand(3, 9, generator=g, dtype=torch.float64)
    together = cdpruner_order(feats, rel, 6)
    for i in range(3):
        alone = cdpruner_order(feats[i:i + 1], rel[i:i + 1], 6)[0]
        assert alone.tolist() == together[i].tolist()
        rest = sorted(set(range(9)) - set(alone[:2].tolist()))
        assert alone[2:].tolist() == rest[:4], "past the rank, picks must take the lowest remaining indices"


@given(batch(max_n=20), st.integers(0, 4), st.integers(0, 3))
@example((torch.tensor([[[0.1257]]], dtype=torch.float64), torch.tensor([[0.2698]], dtype=torch.float64), [1]), 0, 0)
def test_dart_keeps_the_key_norm_pivots_and_claims_the_least_similar(data, n_img, n_txt):
    from hypothesis import assume

    from d2pruner.baselines import dart_selection

    feats, scores, n_keep = data
    f, norms, k = feats[0], scores[0], n_keep[0]
    text = feats[-1][:3] + 0.5  # (T, D) text hidden states
    kept, pivots = dart_selection(f, norms, k, text, torch.arange(len(text), dtype=torch.float64), n_img, n_txt)
    assert len(kept) == k and kept == sorted(set(kept))
    s = norms.tolist()
    assert pivots == sorted(range(len(s)), key=lambda j: (-s[j], j))[: min(n_img, k)]
    assert set(pivots) <= set(kept)
    n_piv = len(pivots) + min(n_txt, len(text))
    if not pivots or k == len(pivots):
        return
    rest = k - len(pivots)
    quota = rest // n_piv + (1 if rest % n_piv else 0)
    u = f.numpy() / np.maximum(np.linalg.norm(f.numpy(), axis=1, keepdims=True), 1e-12)
    sims = sorted((float(u[i] @ u[pivots[0]]), i) for i in range(len(s)) if i not in pivots)
    if quota < len(sims):
        assume(sims[quota][0] - sims[quota - 1][0] > 1e-9)  # no near-tie at the boundary of the share
    assert {i for _, i in sims[:quota]} <= set(kept), "the first pivot did not claim its least similar tokens"
