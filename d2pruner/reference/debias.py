"""Step 1 of the method: debiased importance ``s_i = attn_i / (prior_i + eps)``.

``attn`` is the attention the last text token pays to each visual token at decoder layer K-1
(mean over heads, softmax over the full key sequence); ``prior`` is the mean of that row over a
calibration set of images with one fixed generic prompt. Dividing by the prior removes the part of
the attention that is explained by a token's position alone. With no prior the score is ``attn``.
"""

from __future__ import annotations

import numpy as np

from d2pruner.spec import D2PrunerConfig

__all__ = ["debiased_importance"]


def debiased_importance(attn, prior=None, eps=D2PrunerConfig.eps):
    """Debiased importance of one item's visual tokens, in float64.

    Parameters
    ----------
    attn : array-like of float, shape (N,)
        Attention row, >= 0.
    prior : array-like of float, shape (N,), or None
        Positional-bias prior, > 0. ``None`` means no debiasing.
    eps : float
        Added to the prior before dividing.

    Returns
    -------
    numpy.ndarray of float64, shape (N,)

    Examples
    --------
    >>> debiased_importance([0.2, 0.4], [0.1, 0.4], eps=0.0).tolist()
    [2.0, 1.0]
    >>> debiased_importance([0.2, 0.4]).tolist()
    [0.2, 0.4]
    """
    attn = np.asarray(attn, dtype=np.float64)
    if prior is None:
        return attn.copy()
    prior = np.asarray(prior, dtype=np.float64)
    scores = np.empty_like(attn)
    for i in range(attn.shape[0]):
        scores[i] = attn[i] / (prior[i] + eps)
    return scores
