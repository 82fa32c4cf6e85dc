"""DivPrune (CVPR'25): greedy max-min diversity of the projected visual features, before the LLM.

* :func:`divprune_selection` / :func:`divprune_order` -- greedy max-min diversity on the cosine
  distance ``1 - cos``.
* :class:`DivPruneMethod` -- the method object for the model hooks.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from d2pruner.methods.base import ItemInputs, Method, kept_selection, register
from d2pruner.methods.common import as_kept, check_n_keep, cosine, first_max
from d2pruner.spec import Selection

__all__ = ["DivPruneMethod", "divprune_order", "divprune_selection"]


def divprune_selection(features: torch.Tensor, n_keep: Sequence[int]) -> torch.Tensor:
    """DivPrune's kept indices (B, K), ascending, padded with -1; see :func:`divprune_order`."""
    return as_kept(divprune_order(features, check_n_keep(features.shape[1], n_keep)), n_keep)


def divprune_order(features: torch.Tensor, k: int) -> torch.Tensor:
    """DivPrune: greedy max-min diversity on ``1 - cos``.

    First the token whose nearest other token is farthest; then, repeatedly, the token whose minimum
    distance to the selected set is largest (O(kN) with a running minimum).

    >>> f = torch.tensor([[[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [-1.0, 0.0]]])
    >>> divprune_selection(f, [2]).tolist()  # 3 has the farthest nearest neighbour, then 0 is farthest from 3
    [[0, 3]]
    """
    b, n, _ = features.shape
    dist = 1.0 - cosine(features)  # (B, N, N)
    eye = torch.eye(n, dtype=torch.bool, device=features.device)
    nearest = dist.masked_fill(eye, float("inf")).min(dim=2).values if n > 1 else torch.zeros(b, 1, device=features.device)
    first = first_max(nearest)  # (B,)
    chosen = [first]
    taken = torch.zeros(b, n, dtype=torch.bool, device=features.device).scatter_(1, first[:, None], True)
    min_dist = dist.gather(1, first[:, None, None].expand(b, 1, n))[:, 0]  # (B, N) distance to the selected set
    for _ in range(1, k):
        nxt = first_max(min_dist.masked_fill(taken, float("-inf")))  # (B,)
        chosen.append(nxt)
        taken.scatter_(1, nxt[:, None], True)
        min_dist = torch.minimum(min_dist, dist.gather(1, nxt[:, None, None].expand(b, 1, n))[:, 0])
    return torch.stack(chosen, dim=1)  # (B, K) in pick order


@register
@dataclasses.dataclass(frozen=True)
class DivPruneMethod(Method):
    """DivPrune (CVPR'25): greedy max-min diversity of the projected visual features, before the LLM."""

    name: str = "divprune"
    needs = frozenset()
    default_layer = 0

    def select(self, items: Sequence[ItemInputs], n_keep: Sequence[int]) -> list[Selection]:
        return [kept_selection(divprune_selection(it.features[None], [k])[0]) for it, k in zip(items, n_keep)]
