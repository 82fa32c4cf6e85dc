"""MMR with D2Pruner's debiased attention (``"mmr-d2score"``): a training-free IDPruner variant.

* :func:`mmr_selection` / :func:`mmr_order` -- maximal marginal relevance (IDPruner):
  ``lam * Imp - (1 - lam) * max cos``.
* :class:`MMRMethod` -- the method object, with the debiased attention as the importance.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from d2pruner.methods.base import ItemInputs, Method, Need, kept_selection, register
from d2pruner.methods.common import as_kept, check_n_keep, cosine, first_max, minmax, need_attention
from d2pruner.spec import D2PrunerConfig, Selection

__all__ = ["MMRMethod", "mmr_order", "mmr_selection"]


def mmr_selection(importance: torch.Tensor, features: torch.Tensor, n_keep: Sequence[int], lam: float = 0.5) -> torch.Tensor:
    """MMR's kept indices (B, K), ascending, padded with -1; see :func:`mmr_order`."""
    return as_kept(mmr_order(importance, features, check_n_keep(importance.shape[1], n_keep), lam), n_keep)


def mmr_order(importance: torch.Tensor, features: torch.Tensor, k: int, lam: float = 0.5) -> torch.Tensor:
    """IDPruner-style MMR: first the most important token, then ``argmax lam * Imp - (1 - lam) * max cos``
    to the selected set, with ``Imp`` min-max normalised per item.

    >>> imp = torch.tensor([[1.0, 0.9, 0.0]])
    >>> f = torch.tensor([[[1.0, 0.0], [1.0, 0.01], [0.0, 1.0]]])
    >>> mmr_selection(imp, f, [2]).tolist()  # token 1 duplicates token 0: the orthogonal token 2 wins
    [[0, 2]]
    """
    b, n = importance.shape
    imp = minmax(importance.to(torch.float64))  # (B, N)
    sim = cosine(features).to(torch.float64)  # (B, N, N)
    first = first_max(imp)
    chosen = [first]
    taken = torch.zeros(b, n, dtype=torch.bool, device=imp.device).scatter_(1, first[:, None], True)
    max_sim = sim.gather(1, first[:, None, None].expand(b, 1, n))[:, 0]  # (B, N)
    for _ in range(1, k):
        score = lam * imp - (1.0 - lam) * max_sim
        nxt = first_max(score.masked_fill(taken, float("-inf")))
        chosen.append(nxt)
        taken.scatter_(1, nxt[:, None], True)
        max_sim = torch.maximum(max_sim, sim.gather(1, nxt[:, None, None].expand(b, 1, n))[:, 0])
    return torch.stack(chosen, dim=1)  # (B, K) in pick order


@register
@dataclasses.dataclass(frozen=True)
class MMRMethod(Method):
    """Training-free IDPruner variant: maximal marginal relevance with D2Pruner's debiased attention as
    the importance (the published IDPruner uses a trained scorer), at layer K = 2."""

    lam: float = 0.5
    eps: float = D2PrunerConfig.eps
    name: str = "mmr-d2score"
    needs = frozenset({Need.ATTENTION, Need.PRIOR})
    default_layer = 2

    def select(self, items: Sequence[ItemInputs], n_keep: Sequence[int]) -> list[Selection]:
        need_attention(self.name, items)
        out = []
        for it, k in zip(items, n_keep):
            imp = it.attn.double() if it.prior is None else it.attn.double() / (it.prior.double() + self.eps)
            out.append(kept_selection(mmr_selection(imp[None], it.features[None], [k], self.lam)[0]))
        return out
