"""Steps 1-7 of the method for one item: debias, rank, pivots, hybrid graph, greedy MIS, top-up.

If the MIS runs out before the budget is met (the graph is too dense), the remaining places go to
the highest-ranked tokens not yet kept (step 6, "top-up"). The output lists the kept indices in
ascending order with the role of each: pivot, mis or topup.
"""

from __future__ import annotations

import numpy as np

from d2pruner.reference.debias import debiased_importance
from d2pruner.reference.graph import hybrid_graph
from d2pruner.reference.mis import greedy_mis
from d2pruner.reference.pivots import select_pivots
from d2pruner.spec import D2PrunerConfig, Role, Selection, TokenLayout, rank_order, validate_item

__all__ = ["select_tokens"]


def select_tokens(attn, prior, features, layout: TokenLayout, n_keep: int, config: D2PrunerConfig | None = None) -> Selection:
    """D2Pruner's selection for one item (reference implementation, float64).

    Parameters
    ----------
    attn : array-like of float, shape (N,)
        Last-text-token attention to the visual tokens at layer K-1.
    prior : array-like of float, shape (N,), or None
        Positional-bias prior.
    features : array-like of float, shape (N, D)
        Visual hidden states entering layer K.
    layout : TokenLayout
        Token positions.
    n_keep : int
        Number of tokens to keep, ``1 <= n_keep <= N``.
    config : D2PrunerConfig, optional

    Returns
    -------
    Selection

    Raises
    ------
    ValueError
        On invalid input (see :func:`d2pruner.spec.validate_item`).

    Examples
    --------
    A 3x3 grid whose importance falls with the index; token 1 duplicates token 0 and token 3
    duplicates token 2. With ``n_keep=4`` the two pivots are 0 and 1; the MIS takes 2, which blocks
    its duplicate 3, then 4:

    >>> feats = np.eye(9); feats[1] = feats[0]; feats[3] = feats[2]
    >>> attn = np.linspace(0.9, 0.1, 9)
    >>> select_tokens(attn, None, feats, TokenLayout.grid(3, 3), n_keep=4)
    Selection(kept=[0, 1, 2, 4], roles=['pivot', 'pivot', 'mis', 'mis'])

    If all tokens are alike the graph is complete, the MIS has one member and the top-up fills in:

    >>> select_tokens(attn, None, np.ones((9, 2)), TokenLayout.grid(3, 3), n_keep=5)
    Selection(kept=[0, 1, 2, 3, 4], roles=['pivot', 'pivot', 'pivot', 'mis', 'topup'])
    """
    config = config or D2PrunerConfig()
    validate_item(attn, prior, features, layout, n_keep)
    scores = debiased_importance(attn, prior, config.eps)
    order = rank_order(scores)
    pivots = select_pivots(scores, n_keep, config.pivot_ratio)
    pivot_set = set(pivots.tolist())
    candidates = [int(i) for i in order if i not in pivot_set]
    n_take = n_keep - len(pivots)

    nodes = range(len(order)) if config.pivots_block_neighbours else candidates
    graph = hybrid_graph(features, layout, config, nodes=nodes)
    selected = pivots.tolist() if config.pivots_block_neighbours else ()
    mis = greedy_mis(graph, candidates, n_take, selected=selected)

    mis_set = set(mis)
    topup = [i for i in candidates if i not in mis_set][: n_take - len(mis)]

    kept = list(pivots) + mis + topup
    roles = [Role.PIVOT] * len(pivots) + [Role.MIS] * len(mis) + [Role.TOPUP] * len(topup)
    return Selection(np.array(kept, dtype=np.int64), np.array(roles, dtype=np.int8))
