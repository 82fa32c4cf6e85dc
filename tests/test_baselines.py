"""The defining property of each baseline selection rule, checked step by step (Hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
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
    kept, pivots = dart_selection(f, norms, k, text, torch.arange(len(text), dtype=torch.float64), n_img, n_txt,
                                  pivot_order="norm")
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


def _dart_reference(f, text, img_piv, txt_piv, n_keep, turns):
    """DART's claims written out plainly: the visual pivots ``img_piv`` are kept; the pivots (``img_piv``
    then ``txt_piv``, as rows of ``f`` and ``text``) take turns in the order ``turns`` (indices into that
    list), the j-th turn claiming its share (the remainder to the first turns) of the unkept visual
    tokens least cosine-similar to it, ties to the lower index."""
    vecs = [f[i] for i in img_piv] + [text[j] for j in txt_piv]
    unit_f = f / np.linalg.norm(f, axis=1, keepdims=True)
    kept = list(img_piv)
    rest = n_keep - len(kept)
    for j, t in enumerate(turns):
        quota = rest // len(turns) + (1 if j < rest % len(turns) else 0)
        sims = sorted((float(unit_f[i] @ (vecs[t] / np.linalg.norm(vecs[t]))), i) for i in range(len(f)) if i not in kept)
        kept += [i for _, i in sims[:quota]]
    return sorted(kept)


def test_dart_public_pivot_order_is_the_iteration_order_of_a_set_of_positions():
    """The public code walks ``list(set(image_positions + text_positions))``. Worked by hand on CPython's
    table (8 slots while the set is this small; an int hashes to itself; slot = hash & 7; on a taken
    slot the next one is ``(5 * slot + 1) & 7`` here, since the perturbation ``hash >> 5`` is 0):
    {10, 5, 12} -> slots 2, 5, 4, walked as 10, 12, 5; {13, 5, 21} -> 13 in slot 5, 5 collides and
    goes to slot 2, 21 collides with 13, then with 5, and goes to slot 3: walked as 5, 21, 13."""
    from d2pruner.methods.dart import public_pivot_order

    assert public_pivot_order([10, 5], [12]) == [0, 2, 1]
    assert public_pivot_order([13, 5], [21]) == [1, 2, 0]
    # LLaVA-1.5 sized: 576 visual tokens from position 35, the question after them; 8 pivots, the set grows
    rng = np.random.default_rng(0)
    for _ in range(50):
        img = (35 + rng.choice(576, 4, replace=False)).tolist()
        txt = (611 + rng.choice(30, 4, replace=False)).tolist()
        walk = list(set(img + txt))
        assert [(img + txt)[j] for j in public_pivot_order(img, txt)] == walk
    with pytest.raises(ValueError, match="distinct"):
        public_pivot_order([3, 4], [3])


def test_dart_public_order_decides_the_kept_set_by_hand():
    """Two visual pivots (tokens 5 and 0, at positions 10 and 5) and one text pivot (position 12) claim
    one token each from tokens 1-4 (= e1..e4). Pivot 5 (-e1) claims token 1 in either order. Token 0
    (-e2 - e3/2) and the text pivot (-e2 - e4/2) both want token 2 first: in key-norm order token 0 wins
    it and the text pivot takes token 4 (token 3 dropped); in the public order 10, 12, 5 the text pivot
    wins it and token 0 takes token 3 (token 4 dropped)."""
    from d2pruner.methods import dart_selection

    e = np.eye(4)
    f = torch.tensor(np.stack([-e[1] - e[2] / 2, e[0], e[1], e[2], e[3], -e[0]]))
    norms = torch.tensor([5.0, 1.0, 1.0, 1.0, 1.0, 9.0], dtype=torch.float64)
    text = torch.tensor(np.stack([e[0], -e[1] - e[3] / 2]))
    text_norms = torch.tensor([1.0, 3.0], dtype=torch.float64)
    args = (f, norms, 5, text, text_norms, 2, 1)
    public = dart_selection(*args, positions=torch.arange(5, 11), text_positions=torch.tensor([11, 12]))
    assert public == ([0, 1, 2, 3, 5], [5, 0])
    assert dart_selection(*args, pivot_order="norm") == ([0, 1, 2, 4, 5], [5, 0])
    # the default is the public order, which needs the positions
    with pytest.raises(ValueError, match="positions"):
        dart_selection(*args)
    with pytest.raises(ValueError, match="pivot_order"):
        dart_selection(*args, pivot_order="sorted")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dart_public_order_on_a_llava_sized_prompt(seed):
    """576 visual tokens at positions 35..610, 20 question tokens after them, budget 64: the kept set is
    the claims walked in ``list(set(...))`` of the 8 pivots' positions (built as the public code builds
    it), and on these inputs it differs from the claims walked in key-norm order."""
    from d2pruner.methods import dart_selection

    rng = np.random.default_rng(seed)
    n, t, start, n_keep = 576, 20, 35, 64
    f, text = rng.normal(size=(n, 3)), rng.normal(size=(t, 3))  # few dimensions: the pivots' claims overlap
    norms, text_norms = rng.random(n), rng.random(t)
    img_piv = np.argsort(-norms, kind="stable")[:4].tolist()
    txt_piv = np.argsort(-text_norms, kind="stable")[:4].tolist()
    positions = [start + i for i in img_piv] + [start + n + j for j in txt_piv]
    walk = list(set(positions))
    turns = [positions.index(p) for p in walk]
    assert turns != list(range(8))
    want = _dart_reference(f, text, img_piv, txt_piv, n_keep, turns)
    kept, pivots = dart_selection(torch.tensor(f), torch.tensor(norms), n_keep, torch.tensor(text), torch.tensor(text_norms),
                                  positions=torch.arange(start, start + n), text_positions=torch.arange(start + n, start + n + t))
    assert pivots == img_piv and len(kept) == n_keep
    assert kept == want
    assert kept != _dart_reference(f, text, img_piv, txt_piv, n_keep, list(range(8))), "the two orders agree here"


def test_dart_method_walks_the_public_order_by_default_and_items_select_alone():
    """The method object passes each item's positions (public order by default; ``pivot_order="norm"``
    keeps the key-norm order); a batch keeps what each item keeps alone."""
    from d2pruner.methods import dart_selection, get_method
    from d2pruner.methods.base import ItemInputs
    from d2pruner.spec import TokenLayout

    rng = np.random.default_rng(3)
    items = []
    for start, n, t in [(35, 576, 20), (12, 144, 7)]:
        f = torch.tensor(rng.normal(size=(n, 3)))
        items.append(ItemInputs(attn=None, features=f, layout=TokenLayout.grid(1, n), prior=None,
                                key_norms=torch.tensor(rng.random(n)), text_key_norms=torch.tensor(rng.random(t)),
                                text_features=torch.tensor(rng.normal(size=(t, 3))), normed_features=f,
                                positions=torch.arange(start, start + n),
                                text_positions=torch.arange(start + n, start + n + t)))
    budgets = [64, 30]
    for order in ("public", "norm"):
        method = get_method("dart", pivot_order=order)
        together = [s.kept.tolist() for s in method.select(items, budgets)]
        assert together == [method.select([it], [k])[0].kept.tolist() for it, k in zip(items, budgets)]
        assert together == [dart_selection(it.normed_features, it.key_norms, k, it.text_features, it.text_key_norms,
                                           positions=it.positions, text_positions=it.text_positions,
                                           pivot_order=order)[0] for it, k in zip(items, budgets)]
    assert get_method("dart").pivot_order == "public"
    assert [s.kept.tolist() for s in get_method("dart").select(items, budgets)] != \
        [s.kept.tolist() for s in get_method("dart", pivot_order="norm").select(items, budgets)]
    with pytest.raises(ValueError, match="pivot_order"):
        get_method("dart", pivot_order="sorted")


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
