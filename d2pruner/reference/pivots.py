"""Steps 2-3 of the method: rank the tokens and keep the top ``floor(r * n_keep)`` as pivots.

The rank order is total: score descending, ties by token index ascending
(:func:`d2pruner.spec.rank_order`). Pivots are the first ``n_p`` tokens of that order.
"""

from __future__ import annotations

import numpy as np

from d2pruner.spec import D2PrunerConfig, pivot_count, rank_order

__all__ = ["select_pivots"]


def select_pivots(scores, n_keep, pivot_ratio=D2PrunerConfig.pivot_ratio):
    """The pivot tokens of one item, most important first.

    Parameters
    ----------
    scores : array-like of float, shape (N,)
        Debiased importance.
    n_keep : int
        The item's budget.
    pivot_ratio : float
        r; ``n_p = floor(r * n_keep)``.

    Returns
    -------
    numpy.ndarray of int64, shape (n_p,)
        Pivot indices in rank order.

    Examples
    --------
    >>> select_pivots([0.1, 0.9, 0.5, 0.9], n_keep=3, pivot_ratio=0.7).tolist()  # n_p = 2, tie -> lower index
    [1, 3]
    """
    order = rank_order(np.asarray(scores, dtype=np.float64))
    return order[: pivot_count(n_keep, pivot_ratio)]
