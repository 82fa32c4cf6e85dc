"""DART (EMNLP'25): pivots by key norm, then each pivot claims the visual tokens least similar to it
(duplication, not importance).

* :func:`dart_selection` -- DART for one item, on plain tensors.
* :class:`DARTMethod` -- the method object at layer K = 2.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch

from d2pruner.methods.base import ItemInputs, Method, Need, register
from d2pruner.methods.common import check_n_keep, unit
from d2pruner.spec import Role, Selection, rank_order

__all__ = ["DARTMethod", "dart_selection"]


def dart_selection(features: torch.Tensor, key_norms: torch.Tensor, n_keep: int, text_features: torch.Tensor | None = None,
                   text_key_norms: torch.Tensor | None = None, image_pivots: int = 4, text_pivots: int = 4) -> tuple[list[int], list[int]]:
    """DART for one item (our reading of the published description).

    Pivots: the ``image_pivots`` visual tokens and the ``text_pivots`` text tokens with the largest
    L1 key norms (ties to the lower index). The visual pivots are kept. The rest of the budget is
    split over the pivots in order (visual pivots first, the remainder to the first ones), and each
    pivot in turn claims its share of the not-yet-kept visual tokens least cosine-similar to it.

    Parameters
    ----------
    features : Tensor (N, D) -- visual hidden states; key_norms : Tensor (N,)
    n_keep : int; text_features : Tensor (T, D) or None; text_key_norms : Tensor (T,) or None

    Returns
    -------
    (kept, pivots): kept visual indices ascending, and the visual pivots. With no pivot at all
    (``image_pivots=0`` and no text pivot) the budget is filled in key-norm order.

    >>> f = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    >>> dart_selection(f, torch.tensor([5.0, 1.0, 1.0, 1.0]), 2, image_pivots=1, text_pivots=0)
    ([0, 3], [0])
    """
    n = features.shape[0]
    check_n_keep(n, [n_keep])
    img_piv = rank_order(key_norms.double())[: min(image_pivots, n_keep)].tolist()
    pivots = [features[i] for i in img_piv]
    if text_features is not None and text_key_norms is not None and len(text_key_norms) and text_pivots > 0:
        pivots += [text_features[j] for j in rank_order(text_key_norms.double())[:text_pivots].tolist()]
    kept = list(img_piv)
    remaining = n_keep - len(kept)
    if not pivots:  # no pivot at all (none asked for, no text): fall back to the key-norm order
        return sorted(rank_order(key_norms.double())[:n_keep].tolist()), []
    unit_rows = unit(features[None])[0]  # (N, D)
    taken = torch.zeros(n, dtype=torch.bool, device=features.device)
    taken[kept] = True
    for j, pivot in enumerate(pivots):
        quota = remaining // len(pivots) + (1 if j < remaining % len(pivots) else 0)
        if quota == 0:
            continue
        p = unit(pivot[None, None])[0, 0].to(unit_rows.dtype)
        sim = (unit_rows @ p).double().masked_fill(taken, float("inf"))  # (N,)
        picks = rank_order(-sim)[:quota]  # least similar first, ties to the lower index
        taken[picks] = True
        kept += picks.tolist()
    return sorted(kept), img_piv


@register
@dataclasses.dataclass(frozen=True)
class DARTMethod(Method):
    """DART (EMNLP'25) at layer K = 2: pivots by the L1 norm of layer K-1's keys (4 visual tokens and 4
    of the text tokens after the image), then duplication-based picks on the hidden states entering
    layer K after the final norm (:func:`dart_selection`)."""

    image_pivots: int = 4
    text_pivots: int = 4
    name: str = "dart"
    needs = frozenset({Need.KEYS})
    default_layer = 2

    def select(self, items: Sequence[ItemInputs], n_keep: Sequence[int]) -> list[Selection]:
        out = []
        for it, k in zip(items, n_keep):
            if it.key_norms is None:
                raise ValueError("dart needs the pruning layer's key norms; attach it through the model hooks")
            feats = it.features if it.normed_features is None else it.normed_features
            kept, _ = dart_selection(feats, it.key_norms, k, it.text_features, it.text_key_norms,
                                     self.image_pivots, self.text_pivots)
            out.append(Selection(np.array(kept, np.int64), np.full(len(kept), int(Role.KEPT), np.int8)))
        return out
