"""SparseVLM (ICML'25): progressive pruning in the LLM by the attention of text raters, with the
recycling of dropped tokens.

* :func:`sparsevlm_raters` -- the text raters; :func:`sparsevlm_counts` -- a stage's selected and
  recycled counts; :func:`dpc_knn_clusters` -- density-peak clustering; :func:`sparsevlm_selection` /
  :class:`SparseVLMStage` -- one stage: ranking by the raters' attention, and the recycling of
  dropped tokens by clustering and merging.
* :class:`SparseVLMMethod` -- the method object (stages and budgets after PyramidDrop's rule).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch

from d2pruner.methods.base import ItemInputs, MergedSelection, Need, register
from d2pruner.methods.common import check_n_keep, first_max
from d2pruner.methods.pyramiddrop import PyramidDropMethod
from d2pruner.spec import Role, Selection, rank_order

__all__ = ["SparseVLMMethod", "SparseVLMStage", "dpc_knn_clusters", "sparsevlm_counts", "sparsevlm_raters",
           "sparsevlm_selection"]


def sparsevlm_raters(visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """SparseVLM's text raters: which text tokens are relevant to the image.

    Each visual token spreads a softmax over the text tokens (``softmax_T(V T^T)``, on the LLM's input
    embeddings); a text token's relevance is that softmax averaged over the visual tokens, and the
    raters are the text tokens whose relevance is strictly above the mean relevance. When none is
    (all relevances equal, e.g. a single text token), every text token rates.

    Parameters
    ----------
    visual : Tensor (N, D); text : Tensor (T, D), T >= 1

    Returns
    -------
    Tensor (T,) bool

    >>> v = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    >>> sparsevlm_raters(v, torch.tensor([[3.0, 0.0], [0.0, 1.0], [1.0, 1.0]])).tolist()
    [True, False, False]
    """
    if text.shape[0] == 0:
        raise ValueError("sparsevlm_raters needs at least one text token")
    rel = (visual.double() @ text.double().T).softmax(dim=1).mean(dim=0)  # (T,)
    raters = rel > rel.mean()
    return raters if bool(raters.any()) else torch.ones_like(raters)


def sparsevlm_counts(n_current: int, n_keep: int) -> tuple[int, int]:
    """``(selected, recycled)`` tokens of one SparseVLM stage that keeps ``n_keep`` of ``n_current``.

    SparseVLM recycles ``m = floor(0.3 d) + 1`` of the ``d`` dropped tokens into ``floor(m / 10) + 1``
    merged tokens (none when nothing is dropped). We count the merged tokens in the budget: the
    selection is the largest ``s <= n_keep`` with ``s + clusters(n_current - s) == n_keep`` (one always
    exists when ``clusters(n_current) <= n_keep``, since the left side grows by 0 or 1 per step);
    otherwise (tiny budgets) nothing is recycled.

    >>> sparsevlm_counts(576, 353), sparsevlm_counts(576, 576), sparsevlm_counts(576, 2), sparsevlm_counts(10, 1)
    ((345, 8), (576, 0), (2, 0), (0, 1))
    """
    check_n_keep(n_current, [n_keep])
    for sel in range(n_keep, -1, -1):
        recycled = _clusters(n_current - sel)
        if sel + recycled == n_keep:
            return sel, recycled
    return n_keep, 0


def _candidates(dropped: int) -> int:
    return (3 * dropped) // 10 + 1 if dropped > 0 else 0  # floor(0.3 d) + 1, exactly


def _clusters(dropped: int) -> int:
    return _candidates(dropped) // 10 + 1 if dropped > 0 else 0


def dpc_knn_clusters(features: torch.Tensor, n_clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Density-peak clustering with k-nearest-neighbour density (DPC-kNN), as SparseVLM recycles with.

    Distances are Euclidean divided by sqrt(D). A token's density is ``exp(-mean of its squared
    distances to its k = n_clusters nearest tokens, itself included)``; its separation is the distance
    to the nearest token of strictly higher density (the largest distance overall when there is none).
    The ``n_clusters`` tokens with the largest density x separation are the centres (ties to the lower
    index); every token joins its nearest centre (ties to the lower centre), a centre itself.

    Parameters
    ----------
    features : Tensor (M, D); n_clusters : int, 1 <= n_clusters <= M

    Returns
    -------
    (centres (C,) ascending, assignment (M,) the centre index of each token)

    >>> f = torch.tensor([[0.0], [1.0], [1.5], [7.0], [7.25], [9.0]])
    >>> centres, assignment = dpc_knn_clusters(f, 3)  # 1 is densest; 4 is dense and far from anything denser
    >>> centres.tolist(), assignment.tolist()
    ([0, 1, 4], [0, 1, 1, 4, 4, 4])
    """
    m, d = features.shape
    if not 1 <= n_clusters <= m:
        raise ValueError(f"n_clusters={n_clusters} must lie in [1, {m}]")
    x = features.double()
    dist = torch.cdist(x, x) / d ** 0.5  # (M, M)
    nearest = torch.sort(dist, dim=1).values[:, :n_clusters]  # (M, k), itself first
    density = torch.exp(-(nearest ** 2).mean(dim=1))  # (M,)
    higher = density[None, :] > density[:, None]  # (M, M): j denser than i
    separation = torch.where(higher, dist, torch.full_like(dist, float(dist.max()))).min(dim=1).values  # (M,)
    centres = torch.sort(rank_order(separation * density)[:n_clusters]).values  # (C,)
    assignment = centres[first_max(-dist[:, centres])]  # (M,) nearest centre, lower on ties
    assignment[centres] = centres
    return centres, assignment


@dataclasses.dataclass(frozen=True, eq=False)
class SparseVLMStage:
    """One SparseVLM stage of one item: ``selected`` (by the raters' attention), ``centres`` (recycled
    tokens whose slots carry the merged features) and ``merged`` (C, D), aligned with ``centres``;
    ``candidates`` the dropped tokens that were clustered and ``assignment`` their centres."""

    selected: torch.Tensor
    centres: torch.Tensor
    merged: torch.Tensor
    candidates: torch.Tensor
    assignment: torch.Tensor

    @property
    def kept(self) -> torch.Tensor:
        return torch.sort(torch.cat([self.selected, self.centres])).values


def sparsevlm_selection(score: torch.Tensor, features: torch.Tensor, n_keep: int) -> SparseVLMStage:
    """One SparseVLM stage for one item: keep exactly ``n_keep`` of the N current visual tokens.

    1. ``(s, c) = sparsevlm_counts(N, n_keep)``; the ``s`` tokens with the highest ``score`` (the
       raters' mean attention) are selected, ties to the lower index.
    2. Of the dropped tokens, the ``floor(0.3 d) + 1`` with the highest score are recycled: clustered
       into ``c`` groups (:func:`dpc_knn_clusters` on ``features``) and each group averaged; the merged
       token takes its centre's slot.

    >>> score = torch.tensor([0.9, 0.8, 0.1, 0.3, 0.2, 0.0])
    >>> st = sparsevlm_selection(score, torch.arange(6.0)[:, None], 3)
    >>> st.selected.tolist(), st.centres.tolist(), st.kept.tolist(), st.merged.tolist()
    ([0, 1], [3], [0, 1, 3], [[3.5]])
    """
    n = score.shape[0]
    n_sel, n_rec = sparsevlm_counts(n, n_keep)
    order = rank_order(score.double())  # (N,) best first
    selected = torch.sort(order[:n_sel]).values
    empty = order[:0]
    if n_rec == 0:
        return SparseVLMStage(selected, empty, features[:0], empty, empty)
    dropped = order[n_sel:]  # (d,) in score order
    candidates = dropped[:_candidates(len(dropped))]  # (m,)
    centres_local, assign_local = dpc_knn_clusters(features[candidates], n_rec)
    merged = torch.stack([features[candidates[assign_local == c]].mean(dim=0) for c in centres_local.tolist()])  # (C, D)
    centres = candidates[centres_local]
    order_c = torch.argsort(centres)
    return SparseVLMStage(selected, centres[order_c], merged[order_c], candidates, candidates[assign_local])


@register
@dataclasses.dataclass(frozen=True)
class SparseVLMMethod(PyramidDropMethod):
    """SparseVLM (ICML'25), in the LLM, progressive: after decoder layers 2, 6 and 15 of 32 (cuts at the
    inputs of layers 3, 7 and 16, from the attention and the hidden states of layers 2, 6 and 15).

    * Raters, once per prompt pass on the LLM's input embeddings: the text tokens after the image whose
      relevance to the visual tokens is above the mean (:func:`sparsevlm_raters`).
    * At each stage the current visual tokens are ranked by the raters' attention, mean over raters
      and heads (softmax over the full causal key length), and the top ones kept; of the dropped ones
      the 30% ranked highest are recycled: clustered by density peaks (DPC-kNN) on their hidden states
      and each cluster averaged into one token that takes its centre's slot
      (:func:`sparsevlm_selection`). Recycled tokens count in the stage's budget.

    Stages on other depths: ``p_j = max(p_{j-1} + 1, floor(p_j * L / 32 + 1/2))`` for p = 2, 6, 15, cut
    at ``p_j + 1`` (layers 1, 2, 3 of a 4-layer model).

    Budget (our equivalent-token rule, shared with PyramidDrop): the visual tokens averaged over the
    layers equal the budget (within one token), with counts ``n1``, ``round(lam n1)``, ``round(lam n2)`` after the three
    stages (``lam`` = 0.5) and ``n1`` solved from the average; budgets the first ``p_1 + 1`` full layers
    make unreachable raise.

    >>> SparseVLMMethod().stage_layers(32), SparseVLMMethod().stage_budgets(576, 192, 32)
    ([3, 7, 16], [353, 177, 89])
    """

    lam: float = 0.5
    name: str = "sparsevlm"
    needs = frozenset({Need.RATER_ATTENTION})
    progressive = True
    scores_at_stage_layer = False  # the layer before each cut, whose output the cut acts on
    default_layer = None

    def stage_layers(self, n_layers: int) -> list[int]:
        points = []
        for p in (2, 6, 15):
            scaled = int(np.floor(p * n_layers / 32 + 0.5))
            points.append(max(points[-1] + 1 if points else 0, scaled))
        layers = [p + 1 for p in points]
        if layers[-1] > n_layers - 1:
            raise ValueError(f"sparsevlm needs at least 4 decoder layers, the model has {n_layers}")
        return layers

    def raters(self, visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The item's raters among its text tokens (``Need.RATER_ATTENTION``): :func:`sparsevlm_raters`."""
        return sparsevlm_raters(visual, text)

    def select(self, items: Sequence[ItemInputs], n_keep: Sequence[int]) -> list[Selection]:
        out = []
        for i, (it, k) in enumerate(zip(items, n_keep)):
            if it.rater_attention is None:
                raise ValueError(f"sparsevlm needs the text raters' attention of item {i}; attach it through the model hooks")
            stage = sparsevlm_selection(it.rater_attention.double().mean(dim=0), it.features, k)
            kept = stage.kept.cpu().numpy()
            out.append(MergedSelection(kept, np.full(len(kept), int(Role.KEPT), np.int8),
                                       replaced=stage.centres.cpu().numpy(), features=stage.merged))
        return out
