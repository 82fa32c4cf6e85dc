"""Hand-checked selections on small grids, on both backends (the expected answers are worked out
in each docstring from the method specification)."""

from __future__ import annotations

import numpy as np
import pytest

from d2pruner import D2PrunerConfig, Role, TokenLayout, select_tokens

P, M, T = Role.PIVOT, Role.MIS, Role.TOPUP
BACKENDS = ["reference", "fast"]


def check(sel, kept, roles):
    assert sel.kept.tolist() == kept
    assert [Role(int(r)) for r in sel.roles] == roles


@pytest.mark.parametrize("backend", BACKENDS)
def test_3x3_semantic_duplicates(backend):
    """Importance falls with the index; 1 duplicates 0 and 3 duplicates 2. n_keep=4: n_p=floor(2.8)=2
    pivots (0, 1); the MIS takes 2, which blocks its duplicate 3, then 4."""
    feats = np.eye(9)
    feats[1], feats[3] = feats[0], feats[2]
    sel = select_tokens(np.linspace(0.9, 0.1, 9), feats, TokenLayout.grid(3, 3), 4, backend=backend)
    check(sel, [0, 1, 2, 4], [P, P, M, M])


@pytest.mark.parametrize("backend", BACKENDS)
def test_4x4_spatial_graph_is_the_kings_graph(backend):
    """All features equal and w=0.5: edges are exactly the 8-neighbourhood. n_keep=5: pivots 0,1,2.
    The MIS takes 3 (its neighbours 2, 6, 7 drop out), then 4."""
    attn = np.linspace(1.0, 0.25, 16)
    cfg = D2PrunerConfig.for_localization()
    sel = select_tokens(attn, np.ones((16, 3)), TokenLayout.grid(4, 4), 5, config=cfg, backend=backend)
    check(sel, [0, 1, 2, 3, 4], [P, P, P, M, M])


@pytest.mark.parametrize("backend", BACKENDS)
def test_4x4_pivots_block_neighbours(backend):
    """As above with pivots_block_neighbours: pivots 0,1,2 block 3,4,5,6,7; the MIS takes 8 = (2,0),
    which blocks 9, 12, 13, then 10 = (2,2)."""
    cfg = D2PrunerConfig.for_localization(pivots_block_neighbours=True)
    sel = select_tokens(np.linspace(1.0, 0.25, 16), np.ones((16, 3)), TokenLayout.grid(4, 4), 5, config=cfg,
                        backend=backend)
    check(sel, [0, 1, 2, 8, 10], [P, P, P, M, M])


@pytest.mark.parametrize("backend", BACKENDS)
def test_4x4_dense_graph_tops_up(backend):
    """All features equal, w=0: a complete graph. n_keep=4: pivots 0,1; the MIS takes 2 and blocks
    all the rest; the top-up adds the best remaining token, 3."""
    sel = select_tokens(np.linspace(1.0, 0.25, 16), np.ones((16, 3)), TokenLayout.grid(4, 4), 4, backend=backend)
    check(sel, [0, 1, 2, 3], [P, P, M, T])


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_views_canvas_and_thumbnail(backend):
    """InternVL-like: two 2x2 tiles side by side on one canvas (tokens 0-7) and a 2x2 thumbnail (8-11).
    Equal features, w=0.5, no pivots. Rank: 3, 4, 8, then the rest by index. Token 3 = canvas (1,1)
    blocks tile 0 and, across the tile border, 4 = (0,2) and 6 = (1,2); the thumbnail is another view,
    so 8 is taken; then 5 = (0,3) is two columns from 3 and is taken."""
    attn = np.full(12, 0.1)
    attn[[3, 4, 8]] = [0.9, 0.8, 0.7]
    cfg = D2PrunerConfig.for_localization(pivot_ratio=0.0)
    lay = TokenLayout.internvl(1, 2, tile_side=2)
    sel = select_tokens(attn, np.ones((12, 2)), lay, 3, config=cfg, backend=backend)
    check(sel, [3, 5, 8], [M, M, M])


@pytest.mark.parametrize("backend", BACKENDS)
def test_prior_reorders(backend):
    """attn (0.3, 0.2, 0.1) over prior (0.6, 0.2, 0.1), eps=0: scores (0.5, 1, 1): rank 1, 2, 0.
    n_keep=2 with r=0.5: pivot 1, then the MIS takes 2. Without the prior: pivot 0, MIS 1."""
    cfg = D2PrunerConfig(pivot_ratio=0.5, eps=0.0)
    args = (np.array([0.3, 0.2, 0.1]), np.eye(3), TokenLayout.grid(1, 3), 2)
    check(select_tokens(*args, prior=np.array([0.6, 0.2, 0.1]), config=cfg, backend=backend), [1, 2], [P, M])
    check(select_tokens(*args, config=cfg, backend=backend), [0, 1], [P, M])


def test_batch_of_mixed_sizes_matches_items():
    """The public API batches a list of items of different N in one fast call."""
    rng = np.random.default_rng(3)
    sizes = [(24, 24), (4, 4), (2, 5)]
    attn = [rng.random(h * w) for h, w in sizes]
    feats = [rng.normal(size=(h * w, 16)) for h, w in sizes]
    lays = [TokenLayout.grid(h, w) for h, w in sizes]
    batch = select_tokens(attn, feats, lays, [64, 0.25, 1.0])
    assert [len(s) for s in batch] == [64, 4, 10]
    for i in range(3):
        assert batch[i] == select_tokens(attn[i], feats[i], lays[i], [64, 0.25, 1.0][i], backend="reference")
