"""The properties of the method specification, on both backends (Hypothesis)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import assume, example, given
from hypothesis import strategies as st

from d2pruner.spec import D2PrunerConfig, Role, TokenLayout, is_edge, spatially_adjacent
from d2pruner.testing import SelectionCase, batches, near_threshold_batches, selection_cases
from conftest import DEVICES
from helpers import BACKENDS, n_pivots, ranks, run, run_fast_batch, run_reference

def adjacency(case: SelectionCase) -> np.ndarray:
    """The full hybrid-graph adjacency over all N tokens from the spec's edge rule in float64 (exact enough:
    the strategies keep every fused similarity 1e-4 from theta). Rows are scaled by a power of two before
    their norms, as the spec says, so a tiny non-zero row is a direction, not a zero. No self-loops."""
    f = np.ldexp(case.features, -np.frexp(np.abs(case.features).max(axis=1))[1][:, None])
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    lay = case.layout
    adj = spatially_adjacent(lay.view[:, None], lay.row[:, None], lay.col[:, None], lay.view[None], lay.row[None],
                             lay.col[None], case.config.spatial_radius)
    a = is_edge(f @ f.T, adj, case.config)
    np.fill_diagonal(a, False)
    return a


_TINY_ROW_CASE = SelectionCase(  # a row of -4.3e-21 points away from row 0 (cos -1), it is not a zero row (cos 0)
    np.zeros(6), None, np.array([[1.0], [0.0], [0.0], [0.0], [0.0], [-4.26942488e-21]]), TokenLayout.grid(2, 3), 2,
    D2PrunerConfig(pivot_ratio=0.0, sim_threshold=-0.00019999999494757503))

# Counterexamples found while developing, pinned (see each comment).
_TIE_CASE = SelectionCase(  # all scores tied: order must fall back to the index
    np.full(4, 0.25), None, np.eye(4), TokenLayout.grid(2, 2), 3, D2PrunerConfig())
_DENSE_CASE = SelectionCase(  # complete graph: one MIS member, the rest top-up
    np.array([0.5, 0.25, 0.125, 0.0625, 0.0, 0.0]), None, np.ones((6, 2)), TokenLayout.grid(2, 3), 6,
    D2PrunerConfig(pivot_ratio=0.5))
_BLOCK_CASE = SelectionCase(  # pivots blocking their spatial neighbours
    np.linspace(1.0, 0.125, 9), None, np.ones((9, 1)), TokenLayout.grid(3, 3), 4,
    D2PrunerConfig(spatial_weight=0.5, pivot_ratio=0.25, pivots_block_neighbours=True))
_NEG_ZERO_CASE = SelectionCase(  # -0.0 ties with 0.0
    np.array([0.0, -0.0, 0.0]), None, np.eye(3), TokenLayout.grid(1, 3), 2, D2PrunerConfig())

_NEAR_TIE_CASE = SelectionCase(  # float32 scores would tie (then index 0 wins); float64 ranks token 1 first
    np.array([0.11493263393640518, 0.11493264138698578]), np.full(2, 0.7290151119232178), np.eye(2),
    TokenLayout.grid(1, 2), 1, D2PrunerConfig())

_SUBNORMAL_CASE = SelectionCase(
    np.array([0.0, 0.0, 1.401298464324817e-45]), None, np.zeros((3, 1)), TokenLayout.grid(1, 3), 1, D2PrunerConfig())

PINNED = (_TIE_CASE, _DENSE_CASE, _BLOCK_CASE, _NEG_ZERO_CASE, _NEAR_TIE_CASE, _TINY_ROW_CASE)


def pin(test=None, **extra):
    """Add every pinned case as an ``@example`` (``extra``: values for the test's other arguments)."""
    def decorate(t):
        for case in PINNED:
            t = example(case=case, **extra)(t)
        return t
    return decorate(test) if test is not None else decorate


@pytest.mark.parametrize("backend", BACKENDS)
@given(case=selection_cases())
@pin
def test_exact_budget(backend, case):
    sel = run(backend, case)
    assert len(sel) == case.n_keep
    assert np.all(np.diff(sel.kept) > 0), "kept indices must be unique and ascending"
    assert sel.kept.min() >= 0 and sel.kept.max() < case.n_tokens
    counts = sel.counts()
    assert counts["pivot"] == n_pivots(case)
    assert counts["mis"] + counts["topup"] == case.n_keep - n_pivots(case)


@pytest.mark.parametrize("backend", BACKENDS)
@given(case=selection_cases())
@pin
def test_pivot_retention(backend, case):
    sel = run(backend, case)
    top = np.sort(ranks(case)[: n_pivots(case)])
    np.testing.assert_array_equal(sel.indices(Role.PIVOT), top)


@pytest.mark.parametrize("backend", BACKENDS)
@given(case=selection_cases())
@pin
def test_independence(backend, case):
    sel = run(backend, case)
    adj = adjacency(case)
    mis = sel.indices(Role.MIS)
    assert not adj[np.ix_(mis, mis)].any(), "two MIS tokens are adjacent"
    if case.config.pivots_block_neighbours:
        assert not adj[np.ix_(mis, sel.indices(Role.PIVOT))].any(), "an MIS token is adjacent to a pivot"


@pytest.mark.parametrize("backend", BACKENDS)
@given(case=selection_cases())
@pin
def test_maximality_or_lfmis_prefix(backend, case):
    """With top-up the MIS is maximal; without, it is the rank-order prefix of the LFMIS.

    LFMIS characterisation: a candidate ranked before the last MIS member is left out iff an MIS
    member ranked before it (or, when pivots block, a pivot) is its neighbour.
    """
    sel = run(backend, case)
    adj = adjacency(case)
    order = ranks(case)
    position = np.empty(case.n_tokens, dtype=np.int64)
    position[order] = np.arange(case.n_tokens)
    pivots, mis = set(sel.indices(Role.PIVOT).tolist()), set(sel.indices(Role.MIS).tolist())
    blockers = mis | pivots if case.config.pivots_block_neighbours else mis
    candidates = [int(i) for i in order if i not in pivots]
    if sel.counts()["topup"]:
        for i in candidates:
            if i not in mis:
                assert any(adj[i, j] for j in blockers), f"token {i} could still join the MIS"
    else:
        last = max((position[i] for i in mis), default=-1)
        for i in candidates:
            if position[i] < last and i not in mis:
                earlier = [j for j in blockers if j in pivots or position[j] < position[i]]
                assert any(adj[i, j] for j in earlier), f"token {i} is skipped without an earlier neighbour in the MIS"


@pytest.mark.parametrize("device", DEVICES)
@given(cases=batches(max_items=3))
@example(cases=[_TIE_CASE])
@example(cases=[_DENSE_CASE])
@example(cases=[_BLOCK_CASE])
@example(cases=[_NEG_ZERO_CASE])
@example(cases=[_NEAR_TIE_CASE])
def test_reference_equals_fast(device, cases):
    got, _ = run_fast_batch(cases, device)
    for i, case in enumerate(cases):
        want = run_reference(case)
        assert got[i] == want, f"item {i}: fast {got[i]} != reference {want}"


@given(cases=batches(min_items=2, max_items=4))
def test_batch_invariance(cases):
    together, _ = run_fast_batch(cases)
    for i, case in enumerate(cases):
        alone, _ = run_fast_batch([case])
        assert together[i] == alone[0], f"item {i} changes with its batch"


@pytest.mark.parametrize("backend", BACKENDS)
@given(case=selection_cases())
@pin
def test_no_edges_is_top_by_rank(backend, case):
    case = dataclasses.replace(case, config=dataclasses.replace(case.config, spatial_weight=0.0, sim_threshold=1.5))
    sel = run(backend, case)
    np.testing.assert_array_equal(sel.kept, np.sort(ranks(case)[: case.n_keep]))
    assert sel.counts()["topup"] == 0


@pytest.mark.parametrize("backend", BACKENDS)
@given(case=selection_cases(), level=st.sampled_from([0.03125, 0.5, 1.0, 3.0]))
@pin(level=3.0)
def test_uniform_prior_is_no_prior(backend, case, level):
    scaled = case.attn / (level + case.config.eps)
    assume(np.unique(scaled).size == np.unique(case.attn).size)  # division created no new tie
    with_prior = dataclasses.replace(case, prior=np.full(case.n_tokens, level))
    without = dataclasses.replace(case, prior=None)
    assert run(backend, with_prior) == run(backend, without)


@pytest.mark.parametrize("backend", BACKENDS)
@given(case=selection_cases(), k_attn=st.sampled_from([0.5, 2.0, 8.0]), k_prior=st.sampled_from([0.25, 4.0]))
@pin(k_attn=8.0, k_prior=0.25)
@example(case=_SUBNORMAL_CASE, k_attn=0.5, k_prior=0.25)  # halving the smallest float32 subnormal gives 0 in float32
def test_positive_scaling_is_invariant(backend, case, k_attn, k_prior):
    case = dataclasses.replace(case, config=dataclasses.replace(case.config, eps=0.0))  # "eps aside"
    scaled = dataclasses.replace(case, attn=case.attn * k_attn, prior=None if case.prior is None else case.prior * k_prior)
    s0 = case.attn if case.prior is None else case.attn / case.prior
    s1 = scaled.attn if scaled.prior is None else scaled.attn / scaled.prior
    assume(np.array_equal(np.argsort(s0, kind="stable"), np.argsort(s1, kind="stable")))  # rounding kept the order
    assume(np.unique(s0).size == np.unique(s1).size)
    for a in (scaled.attn, scaled.prior if scaled.prior is not None else np.ones(1)):
        assume(np.array_equal(a.astype(np.float32).astype(np.float64), a))  # still float32-exact (no subnormal lost)
    assert run(backend, scaled) == run(backend, case)


@pytest.mark.parametrize("backend", BACKENDS)
@given(case=selection_cases())
@pin
def test_full_budget_keeps_everything(backend, case):
    case = dataclasses.replace(case, n_keep=case.n_tokens)
    np.testing.assert_array_equal(run(backend, case).kept, np.arange(case.n_tokens))


# cos((1, 1, 0), (1, 0, 1)) is exactly 1/2 = theta: no edge (strict), on every backend and dtype.
_AT_THETA_CASE = SelectionCase(
    np.array([0.5, 0.25, 0.125]), None, np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]),
    TokenLayout.grid(1, 3), 2, D2PrunerConfig(pivot_ratio=0.0, sim_threshold=0.5))
# float32 rounds cos(2, 3) to 0.80000006 one way round and 0.8 the other (the fast graph was asymmetric).
_ASYMMETRIC_CASE = SelectionCase(
    np.array([0.9, 0.8, 0.6, 0.7, 0.5, 0.4]), None,
    np.array([[0, 0, 9], [0, 0, -9], [7.473, 0, 0.001], [1.232, 0.896, 0.226], [0, 7, 0], [0, -7, 0]], np.float32).astype(np.float64),
    TokenLayout.grid(2, 3), 4, D2PrunerConfig())


@given(drawn=near_threshold_batches())
@example(drawn=([_AT_THETA_CASE], "float16"))
@example(drawn=([_ASYMMETRIC_CASE], "float32"))
def test_reference_equals_fast_at_the_threshold(drawn):
    """Pairs exactly on or ulps beside theta, features in float16/bfloat16/float32/float64: both backends
    take the exact rule (the oracle decides each pair with spec.cosine_exceeds), so they agree and
    the MIS is independent."""
    from d2pruner.spec import cosine_exceeds, cosine_thresholds

    from d2pruner.fast import pack, select_tokens as fast_select

    cases, dtype = drawn
    attn, valid = pack([torch.tensor(c.attn) for c in cases])  # float64: only the features take the drawn dtype
    feats, _ = pack([torch.tensor(c.features).to(getattr(torch, dtype)) for c in cases])
    lay, _ = pack([torch.tensor(c.layout.as_array()) for c in cases])
    prior = None if cases[0].prior is None else pack([torch.tensor(c.prior) for c in cases], pad_value=1)[0]
    got = fast_select(attn, prior, feats, lay, [c.n_keep for c in cases], cases[0].config, valid).to_list()
    for i, case in enumerate(cases):
        want = run_reference(case)
        assert got[i] == want, f"item {i} ({dtype}): fast {got[i]} != reference {want}"
        lay, t = case.layout, cosine_thresholds(case.config)
        mis = want.indices(Role.MIS).tolist()
        for a in mis:
            for b in mis:
                if a < b:
                    adj = int(max(abs(lay.row[a] - lay.row[b]), abs(lay.col[a] - lay.col[b])) <= case.config.spatial_radius
                              and lay.view[a] == lay.view[b])
                    assert not cosine_exceeds(case.features[a], case.features[b], t[adj]), f"MIS tokens {a}, {b} are adjacent"
