"""Step 1, batched: debiased importance ``attn / (prior + eps)``, in float64 on any device.

Scores are computed in float64 whatever the input dtype, so the rank order is bit-identical to the
reference's. Padding gets ``-inf`` so that it ranks after every real token.
"""

from __future__ import annotations

import torch

from d2pruner.spec import D2PrunerConfig

__all__ = ["debiased_importance"]


def debiased_importance(attn: torch.Tensor, prior: torch.Tensor | None = None, eps: float = D2PrunerConfig.eps,
                        valid: torch.Tensor | None = None) -> torch.Tensor:
    """Debiased importance of a batch.

    Parameters
    ----------
    attn : Tensor, shape (B, N), float
    prior : Tensor, shape (B, N) or (N,), float, or None
    eps : float
    valid : Tensor, shape (B, N), bool, optional

    Returns
    -------
    Tensor, shape (B, N), float64; ``-inf`` where not valid.

    Examples
    --------
    >>> debiased_importance(torch.tensor([[0.2, 0.4]]), torch.tensor([0.1, 0.4]), eps=0.0).tolist()
    [[2.0, 1.0]]
    """
    scores = attn.to(torch.float64)  # (B, N)
    if prior is not None:
        scores = scores / (prior.to(device=attn.device, dtype=torch.float64) + eps)  # (B, N); (N,) broadcasts
    if valid is not None:
        scores = scores.masked_fill(~valid, float("-inf"))
    return scores
