"""Steps 2-3, batched: rank order and the top ``floor(r * n_keep)`` tokens as pivots."""

from __future__ import annotations

import torch

from d2pruner.spec import D2PrunerConfig, pivot_count, rank_order

__all__ = ["select_pivots"]


def select_pivots(scores: torch.Tensor, n_keep, pivot_ratio: float = D2PrunerConfig.pivot_ratio,
                  valid: torch.Tensor | None = None) -> torch.Tensor:
    """Pivot indices of each item in rank order, padded with -1.

    Parameters
    ----------
    scores : Tensor, shape (B, N), float (padding ``-inf``)
    n_keep : sequence of int, length B
    pivot_ratio : float
    valid : Tensor, shape (B, N), bool, optional (padding must already score ``-inf``)

    Returns
    -------
    Tensor, shape (B, P), int64, P = the largest pivot count of the batch.

    Examples
    --------
    >>> select_pivots(torch.tensor([[0.1, 0.9, 0.5, 0.9], [0.3, 0.2, 0.1, 0.0]]), [3, 4]).tolist()
    [[1, 3], [0, 1]]
    """
    n_p = torch.tensor([pivot_count(int(k), pivot_ratio) for k in n_keep], device=scores.device)  # (B,)
    order = rank_order(scores)  # (B, N)
    p = int(n_p.max()) if len(n_p) else 0
    pivots = order[:, :p]  # (B, P)
    return pivots.masked_fill(torch.arange(p, device=scores.device) >= n_p[:, None], -1)
