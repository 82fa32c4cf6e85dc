"""The spec module's rules: budgets, pivots, the total order, layouts, the edge rule; mirrored APIs."""

from __future__ import annotations

import inspect
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from d2pruner import fast, reference
from d2pruner.fast import pack, unpack
from d2pruner.spec import D2PrunerConfig, TokenLayout, is_edge, validate_item, pivot_count, rank_order, resolve_budget, spatially_adjacent
from d2pruner.testing import MARGIN, _float32_fused, batches, fused_similarity, layouts, near_threshold_batches, safe_threshold


@given(n=st.integers(1, 5000), ratio=st.floats(0.0, 1.0, exclude_min=True))
@example(n=5, ratio=0.5).via("half rounds up")
@example(n=3328, ratio=0.1)
def test_ratio_budget_bounds_and_rounding(n, ratio):
    k = resolve_budget(ratio, n)
    assert 1 <= k <= n
    exact = Fraction(repr(ratio)) * n
    assert k == max(1, math.floor(exact + Fraction(1, 2)))
    assert abs(k - exact) <= Fraction(1, 2) or k == 1


@given(n=st.integers(1, 5000), r1=st.floats(0.001, 1.0), r2=st.floats(0.001, 1.0))
def test_ratio_budget_is_monotone(n, r1, r2):
    lo, hi = sorted([r1, r2])
    assert resolve_budget(lo, n) <= resolve_budget(hi, n)


@given(n_keep=st.integers(0, 10_000), ratio=st.sampled_from([0.7, 0.1, 0.3, 0.9, 0.35]) | st.floats(0, 1))
def test_pivot_count_is_exact_floor(n_keep, ratio):
    n_p = pivot_count(n_keep, ratio)
    assert 0 <= n_p <= n_keep
    assert n_p == math.floor(Fraction(repr(ratio)) * n_keep)


def test_pivot_count_survives_binary_rounding():
    # In floats 0.7 * 90 == 62.99999999999999 and 0.35 * 180 == 62.99999999999999: a plain floor gives 62.
    assert 0.7 * 90 < 63 and 0.35 * 180 < 63
    assert pivot_count(90, 0.7) == 63 and pivot_count(180, 0.35) == 63 and pivot_count(192, 0.7) == 134


@given(scores=st.lists(st.sampled_from([0.0, -0.0, 0.5, 1.0, 2.0]) | st.floats(0, 10), min_size=1, max_size=40))
def test_rank_order_total_and_backends_agree(scores):
    s = np.array(scores, dtype=np.float64)
    want = sorted(range(len(s)), key=lambda i: (-s[i], i))
    assert rank_order(s).tolist() == want
    assert rank_order(torch.tensor(s)).tolist() == want
    assert rank_order(torch.tensor(s)[None].repeat(3, 1)).tolist() == [want] * 3


@given(layout=layouts(max_tokens=64))
def test_layout_round_trip_and_unique(layout):
    again = TokenLayout.from_array(layout.as_array())
    assert again == layout
    assert np.unique(layout.as_array(), axis=0).shape[0] == len(layout)


@pytest.mark.parametrize("rows,cols,n", [(1, 1, 256), (1, 2, 768), (2, 3, 1792), (3, 4, 3328)])
def test_internvl_token_counts(rows, cols, n):
    lay = TokenLayout.internvl(rows, cols)
    assert len(lay) == n
    assert lay.n_views == (1 if rows * cols == 1 else 2)
    assert lay.row[: rows * cols * 256].max() == rows * 16 - 1 and lay.col[: rows * cols * 256].max() == cols * 16 - 1


def test_internvl_tile_placement():
    lay = TokenLayout.internvl(2, 2)  # token 256 is the first of tile (0, 1); 512 of tile (1, 0)
    assert lay.as_array()[[255, 256, 512, 1023, 1024]].tolist() == [[0, 15, 15], [0, 0, 16], [0, 16, 0], [0, 31, 31], [1, 0, 0]]


@given(layout=layouts(max_tokens=40), radius=st.integers(0, 3))
def test_spatial_adjacency_symmetric_and_within_views(layout, radius):
    v, r, c = layout.view, layout.row, layout.col
    adj = spatially_adjacent(v[:, None], r[:, None], c[:, None], v[None], r[None], c[None], radius)
    assert (adj == adj.T).all() and adj.diagonal().all()
    assert not adj[v[:, None] != v[None]].any()
    tv = [torch.tensor(x) for x in (v, r, c)]
    t_adj = spatially_adjacent(tv[0][:, None], tv[1][:, None], tv[2][:, None], tv[0][None], tv[1][None], tv[2][None], radius)
    assert np.array_equal(t_adj.numpy(), adj)


@given(cos=st.floats(-1, 1), adjacent=st.booleans(), w=st.floats(0, 1), theta=st.floats(-1, 1.5))
@example(cos=0.0, adjacent=True, w=3.151750358601732e-180, theta=0.0).via("bool tensor made the term float32")
def test_edge_rule_same_in_numpy_and_torch(cos, adjacent, w, theta):
    cfg = D2PrunerConfig(spatial_weight=w, sim_threshold=theta)
    want = (1 - w) * cos + w * float(adjacent) > theta
    assert bool(is_edge(np.float64(cos), adjacent, cfg)) == want
    assert bool(is_edge(torch.tensor(cos, dtype=torch.float64), torch.tensor(adjacent), cfg)) == want


def test_localization_edges_are_neighbours_above_0_6():
    cfg = D2PrunerConfig.for_localization()
    assert is_edge(0.61, 1, cfg) and not is_edge(0.59, 1, cfg) and not is_edge(1.0, 0, cfg)


# --- mirrored backends -------------------------------------------------------------------------------

MIRRORED = ["debiased_importance", "select_pivots", "cosine_similarity", "hybrid_graph", "greedy_mis", "select_tokens"]


@pytest.mark.parametrize("name", MIRRORED)
def test_fast_mirrors_reference_signature(name):
    """fast.f takes the reference's arguments, in order, plus a trailing validity mask."""
    ref = list(inspect.signature(getattr(reference, name)).parameters)
    got = list(inspect.signature(getattr(fast, name)).parameters)
    assert got == ref + ["valid"], f"{name}: reference {ref} vs fast {got}"


def test_mirrored_defaults_come_from_the_spec():
    cfg = D2PrunerConfig()
    for mod in (reference, fast):
        assert inspect.signature(mod.debiased_importance).parameters["eps"].default == cfg.eps
        assert inspect.signature(mod.select_pivots).parameters["pivot_ratio"].default == cfg.pivot_ratio


# --- ragged batches ----------------------------------------------------------------------------------

@given(sizes=st.lists(st.integers(1, 12), min_size=1, max_size=5), width=st.integers(1, 3))
def test_pack_unpack_round_trip(sizes, width):
    items = [torch.arange(n * width, dtype=torch.float32).reshape(n, width) + 100 * i for i, n in enumerate(sizes)]
    padded, valid = pack(items)
    assert padded.shape == (len(sizes), max(sizes), width)
    assert valid.sum(1).tolist() == sizes
    for a, b in zip(unpack(padded, valid), items):
        assert torch.equal(a, b)


# --- the strategies themselves -----------------------------------------------------------------------

@given(cases=batches(max_items=3))
def test_strategies_give_valid_cases_with_margin(cases):
    cfg = cases[0].config
    for case in cases:
        assert case.config == cfg
        validate_item(case.attn, case.prior, case.features, case.layout, case.n_keep)
        fused = fused_similarity(case.features, case.layout, cfg.spatial_weight, cfg.spatial_radius)
        assert fused.size == 0 or np.abs(fused - cfg.sim_threshold).min() >= MARGIN
        for a in (case.attn, case.features, case.prior if case.prior is not None else np.ones(1)):
            assert np.array_equal(a.astype(np.float32).astype(np.float64), a), "values must be float32-exact"


@given(values=st.lists(st.floats(-2, 2), max_size=50), preferred=st.floats(-1.5, 1.5))
def test_safe_threshold_keeps_margin_and_prefers_request(values, preferred):
    v = np.array(values)
    t = safe_threshold(v, preferred)
    assert v.size == 0 or np.abs(v - t).min() >= MARGIN
    if v.size == 0 or np.abs(v - preferred).min() >= MARGIN:
        assert t == preferred


@given(drawn=near_threshold_batches())
def test_near_threshold_strategy_puts_theta_on_a_pair(drawn):
    """The threshold lies within 2 float32 ulps of a fused similarity -- exact, or as a plain float32 Gram
    matrix computes it (which differs for tiny rows) -- and the features are exact in the dtype."""
    cases, dtype = drawn
    cfg = cases[0].config
    w, rho = cfg.spatial_weight, cfg.spatial_radius
    fused = np.concatenate([np.concatenate([fused_similarity(c.features, c.layout, w, rho),
                                            _float32_fused(c.features, c.layout, w, rho)]) for c in cases])
    if fused.size:
        assert np.abs(fused - cfg.sim_threshold).min() <= 4 * np.spacing(np.float32(max(1.0, abs(cfg.sim_threshold)))) + 1e-6
    for case in cases:
        validate_item(case.attn, case.prior, case.features, case.layout, case.n_keep)
        held = torch.tensor(case.features).to(getattr(torch, dtype)).double().numpy()
        assert np.array_equal(held, case.features), f"features not exact in {dtype}"


@pytest.mark.parametrize("backend", ["reference", "fast"])
@pytest.mark.parametrize("features,theta,kept", [
    # cos(0, 1) = -1/2 exactly; float64 gives -0.4999999999999999: no edge at theta = -0.5, an edge just below
    ([[-4.0, -4.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 0.0]], -0.5, [0, 1]),
    ([[-4.0, -4.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 0.0]], float(np.nextafter(-0.5, -1.0)), [0, 2]),
    ([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0], [-1.0, -1.0, -1.0]], 0.5, [0, 1]),  # cos(0, 1) = 1/2 exactly
    ([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0], [-1.0, -1.0, -1.0]], float(np.nextafter(0.5, 0.0)), [0, 2]),
])
def test_a_cosine_at_theta_is_decided_exactly(backend, features, theta, kept):
    """The strict rule on the exact cosine: tokens 0 and 1 are joined iff cos(0, 1) > theta; if they are
    not, the MIS takes both, else token 0 and then token 2 (joined to neither)."""
    from d2pruner import select_tokens

    cfg = D2PrunerConfig(pivot_ratio=0.0, sim_threshold=theta)
    sel = select_tokens(np.array([0.5, 0.25, 0.125]), np.array(features), TokenLayout.grid(1, 3), 2, config=cfg, backend=backend)
    assert sel.kept.tolist() == kept and sel.counts()["mis"] == 2, f"{backend} at theta={theta!r}: {sel}"
