"""The defining property of each baseline selection rule, checked step by step (Hypothesis)."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from d2pruner.methods import (cdpruner_order, cdpruner_select, cdpruner_selection, divprune_order, divprune_selection,
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


def _normal_case(seed):
    """A batch whose mutual-nearest pairs a plain matmul rounded asymmetrically, so that DivPrune's first
    pick differed batched and alone (found by Hypothesis; fixed by an exactly symmetric cosine)."""
    rng = np.random.default_rng(seed)
    b, n, d = rng.integers(2, 4), rng.integers(2, 25), rng.integers(1, 6)
    return torch.tensor(rng.normal(size=(b, n, d))), torch.tensor(rng.random((b, n))), [1] * int(b)


@given(batch())
@example(_normal_case(226))
@example(_normal_case(275))
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
    # whole subsets, not just inclusions (a random window would pass the test above): 3 of 6 -> 20 subsets
    from itertools import combinations

    subsets = {c: 0 for c in combinations(range(6), 3)}
    for seed in range(4000):
        subsets[tuple(random_selection(6, [3], seed=seed)[0].tolist())] += 1
    chi2 = sum((c - 200) ** 2 / 200 for c in subsets.values())
    assert chi2 < 50, f"3-of-6 subsets far from uniform (chi2={chi2:.1f}, 19 dof; p < 1e-4 above 50)"


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


@given(batch(max_n=12))
def test_cdpruner_select_negates_the_tower_relevance_by_default(data):
    """The plain-tensor entry reads the text tower's raw cosine: negated (CDPruner's code for CLIP) by
    default, as is with ``negate_relevance=False``."""
    feats, cos, n_keep = data
    negated, plain = cdpruner_select(feats, cos, n_keep), cdpruner_select(feats, cos, n_keep, negate_relevance=False)
    assert torch.equal(negated, cdpruner_selection(feats, -cos, n_keep))
    assert torch.equal(plain, cdpruner_selection(feats, cos, n_keep))


def test_cdpruner_select_follows_the_sign_of_the_relevance():
    """Two distinct directions, the most relevant token first: the sign decides which one leads."""
    feats = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]]])
    cos = torch.tensor([[0.9, 0.1, 0.8, 0.2]])
    assert cdpruner_select(feats, cos, [1], negate_relevance=False).tolist() == [[0]]
    assert cdpruner_select(feats, cos, [1]).tolist() == [[1]]


@given(batch(max_n=20), st.integers(0, 4), st.integers(0, 3))
@example((torch.tensor([[[0.1257]]], dtype=torch.float64), torch.tensor([[0.2698]], dtype=torch.float64), [1]), 0, 0)
def test_dart_keeps_the_key_norm_pivots_and_claims_the_least_similar(data, n_img, n_txt):
    from hypothesis import assume

    from d2pruner.methods import dart_selection

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


@given(batch(max_n=24), st.integers(0, 3))
def test_visionzip_dominant_targets_assignment_and_merge(data, c_shift):
    """VisionZip step by step: dominant = top-D of the [CLS] attention (ties to the lower index); targets
    = every max(1, R // C)-th remaining token; the rest go to the key-most-similar target (lower target on
    ties); a contextual token is the mean of its target and its assigned tokens; D + C = the budget."""
    from d2pruner.methods import visionzip_merge, visionzip_selection, visionzip_split

    feats, scores, n_keep = data
    keys, cls, k = feats[0], scores[0], n_keep[0]
    n = len(cls)
    c = min(k, visionzip_split(k)[1] + c_shift)
    plan = visionzip_selection(cls, keys, k, n_contextual=c)
    s = cls.tolist()
    assert plan.dominant.tolist() == sorted(sorted(range(n), key=lambda j: (-s[j], j))[: k - c])
    assert len(plan.kept) == k == len(set(plan.kept.tolist())) and plan.kept.tolist() == sorted(plan.kept.tolist())
    remaining = [j for j in range(n) if j not in plan.dominant.tolist()]
    step = max(1, len(remaining) // c) if c else 1
    assert plan.targets.tolist() == (remaining[::step][:c] if c else [])
    sim = cosine(keys.numpy())
    targets = plan.targets.tolist()
    for j in range(n):
        a = int(plan.assignment[j])
        if j in remaining and j not in targets and targets:
            best = max(sim[j, t] for t in targets)
            first = next(t for t in targets if sim[j, t] >= best - 1e-9)  # the lower target of (float) ties
            assert a in targets and abs(sim[j, a] - sim[j, first]) <= 1e-9, f"token {j} went to {a}, not {first}"
        else:
            assert a == -1
    merged = visionzip_merge(feats[-1], plan)
    for row, t in zip(merged, targets):
        group = [t] + [j for j in range(n) if int(plan.assignment[j]) == t]
        torch.testing.assert_close(row, feats[-1][group].mean(dim=0), atol=1e-12, rtol=0)


def test_visionzip_split_reproduces_the_published_settings_and_sums_to_the_budget():
    from d2pruner.methods import visionzip_split

    assert [visionzip_split(k) for k in (64, 128, 192)] == [(54, 10), (108, 20), (162, 30)]
    for k in range(1, 3000):
        d, c = visionzip_split(k)
        assert d + c == k and d >= 1 and abs(c - 10 * k / 64) <= 0.5


def test_visionzip_ties_go_to_the_lower_index():
    from d2pruner.methods import visionzip_selection

    cls = torch.tensor([0.3, 0.3, 0.3, 0.1, 0.1, 0.1, 0.1])
    keys = torch.tensor([[1.0, 0.0]] * 7)  # every key alike: each merged token ties between both targets
    plan = visionzip_selection(cls, keys, 4, n_contextual=2)
    assert plan.dominant.tolist() == [0, 1] and plan.targets.tolist() == [2, 4]
    assert plan.assignment.tolist() == [-1, -1, -1, 2, -1, 2, 2]


@given(batch(max_n=16))
def test_sparsevlm_raters_are_the_text_tokens_above_the_mean_relevance(data):
    from d2pruner.methods import sparsevlm_raters

    feats, _, _ = data
    visual, text = feats[0].numpy(), feats[-1].numpy()[:5]
    logits = visual @ text.T  # (N, T)
    soft = np.exp(logits - logits.max(axis=1, keepdims=True))
    rel = (soft / soft.sum(axis=1, keepdims=True)).mean(axis=0)  # (T,)
    want = rel > rel.mean()
    got = sparsevlm_raters(feats[0], feats[-1][:5]).numpy()
    if not want.any():
        assert got.all(), "with no token above the mean, every text token rates"
        return
    unsure = np.abs(rel - rel.mean()) < 1e-12  # float ties with the mean
    assert np.array_equal(got[~unsure], want[~unsure])


@given(st.integers(1, 3000), st.data())
def test_sparsevlm_counts_fill_the_budget_exactly(n, data):
    from d2pruner.methods import sparsevlm_counts

    k = data.draw(st.integers(1, n))
    sel, rec = sparsevlm_counts(n, k)
    clusters = lambda d: (int(np.floor(0.3 * d + 1e-9)) + 1) // 10 + 1 if d else 0  # noqa: E731
    assert sel + rec == k and sel >= 0
    if rec:
        assert rec == clusters(n - sel)
        assert all(s + clusters(n - s) != k for s in range(sel + 1, k + 1)), "the selection must be the largest"
    else:
        assert sel == k


def _dpc_reference(x, k):
    """DPC-kNN written out with numpy loops (float64)."""
    m = len(x)
    dist = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)) / np.sqrt(x.shape[1])
    density = np.array([np.exp(-np.mean(np.sort(dist[i])[:k] ** 2)) for i in range(m)])
    sep = np.array([min([dist[i, j] for j in range(m) if density[j] > density[i]], default=dist.max()) for i in range(m)])
    return dist, density, sep


@given(batch(max_n=20), st.data())
def test_sparsevlm_stage_selects_by_the_raters_and_recycles_by_density_peaks(data, draw):
    from hypothesis import assume

    from d2pruner.methods import sparsevlm_counts, sparsevlm_selection

    feats, scores, n_keep = data
    f, score, k = feats[0], scores[0], n_keep[0]
    n = len(score)
    stage = sparsevlm_selection(score, f, k)
    sel, rec = sparsevlm_counts(n, k)
    s = score.tolist()
    order = sorted(range(n), key=lambda j: (-s[j], j))
    assert stage.selected.tolist() == sorted(order[:sel])
    assert len(stage.kept) == k == len(set(stage.kept.tolist()))
    assert len(stage.centres) == rec
    if not rec:
        return
    dropped = order[sel:]
    cand = dropped[: (3 * len(dropped)) // 10 + 1]
    assert stage.candidates.tolist() == cand, "the recycled tokens are the best-ranked dropped ones"
    x = f[cand].numpy()
    dist, density, sep = _dpc_reference(x, rec)
    val = sep * density
    assume(len(set(np.round(val, 9))) == len(val))  # no float near-ties among centre scores
    centres_local = sorted(np.argsort(-val, kind="stable")[:rec].tolist())
    assert stage.centres.tolist() == sorted(cand[c] for c in centres_local)
    for j, c in zip(cand, stage.assignment.tolist()):
        lj = cand.index(j)
        if j in stage.centres.tolist():
            assert c == j
        else:
            best = min(dist[lj, cl] for cl in centres_local)
            assert abs(dist[lj, cand.index(c)] - best) <= 1e-9, "a token joins its nearest centre"
    for row, c in zip(stage.merged, stage.centres.tolist()):
        group = [j for j, a in zip(cand, stage.assignment.tolist()) if a == c]
        torch.testing.assert_close(row, f[group].mean(dim=0), atol=1e-12, rtol=0)
