"""DART (EMNLP'25): pivots by key norm, then each pivot claims the visual tokens least similar to it
(duplication, not importance).

* :func:`dart_selection` -- DART for one item, on plain tensors.
* :func:`public_pivot_order` -- the order in which DART's public code walks its pivots.
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

__all__ = ["DARTMethod", "PIVOT_ORDERS", "dart_selection", "public_pivot_order"]

#: How the pivots take turns: ``"public"`` -- as DART's public code walks them (the iteration order of a
#: Python set of their sequence positions, :func:`public_pivot_order`); ``"norm"`` -- the visual pivots
#: by key norm, then the text pivots by key norm.
PIVOT_ORDERS = ("public", "norm")


def public_pivot_order(image_positions: Sequence[int], text_positions: Sequence[int]) -> list[int]:
    """The turn order of the pivots in DART's public code, as indices into
    ``image_positions + text_positions`` (each list in key-norm order, largest first).

    That code puts the pivots' sequence positions (visual pivots first, then text pivots, each in
    top-k order) into one Python ``set`` built from the concatenated list and walks a list of that set.
    A set's iteration order follows CPython's hash table (an int hashes to itself; the slot is the hash
    modulo the table size, with probing on collisions and re-insertion on growth), so the same set is
    built here the same way, from Python ints, and read back.

    >>> public_pivot_order([10, 5], [12])  # slots of a size-8 table: 10 -> 2, 12 -> 4, 5 -> 5
    [0, 2, 1]
    """
    walk = [int(p) for p in image_positions] + [int(p) for p in text_positions]
    if len(set(walk)) != len(walk):
        raise ValueError(f"pivot positions must be distinct, got {walk}")
    turn = {p: j for j, p in enumerate(walk)}
    return [turn[p] for p in list(set(walk))]


def dart_selection(features: torch.Tensor, key_norms: torch.Tensor, n_keep: int, text_features: torch.Tensor | None = None,
                   text_key_norms: torch.Tensor | None = None, image_pivots: int = 4, text_pivots: int = 4, *,
                   positions: torch.Tensor | Sequence[int] | None = None,
                   text_positions: torch.Tensor | Sequence[int] | None = None,
                   pivot_order: str = "public") -> tuple[list[int], list[int]]:
    """DART for one item (our reading of the published description and public code).

    Pivots: the ``image_pivots`` visual tokens and the ``text_pivots`` text tokens with the largest
    L1 key norms (ties to the lower index). The visual pivots are kept. The rest of the budget is
    split over the pivots in turn order (the remainder to the first ones), and each pivot in turn
    claims its share of the not-yet-kept visual tokens least cosine-similar to it.

    The turn order is ``pivot_order`` (:data:`PIVOT_ORDERS`): ``"public"`` (default) walks the pivots
    as DART's public code does (:func:`public_pivot_order`), which needs the tokens' sequence positions
    in the prompt (``positions``, and ``text_positions`` when there are text tokens); ``"norm"`` walks
    the visual pivots by key norm, then the text pivots by key norm, and reads no positions.

    Parameters
    ----------
    features : Tensor (N, D) -- visual hidden states; key_norms : Tensor (N,)
    n_keep : int; text_features : Tensor (T, D) or None; text_key_norms : Tensor (T,) or None
    positions : (N,) ints -- each visual token's sequence position (``"public"`` only)
    text_positions : (T,) ints -- each text token's sequence position (``"public"`` only)
    pivot_order : ``"public"`` or ``"norm"``

    Returns
    -------
    (kept, pivots): kept visual indices ascending, and the visual pivots. With no pivot at all
    (``image_pivots=0`` and no text pivot) the budget is filled in key-norm order.

    >>> f = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    >>> dart_selection(f, torch.tensor([5.0, 1.0, 1.0, 1.0]), 2, image_pivots=1, text_pivots=0, pivot_order="norm")
    ([0, 3], [0])
    """
    if pivot_order not in PIVOT_ORDERS:
        raise ValueError(f"pivot_order must be one of {PIVOT_ORDERS}, got {pivot_order!r}")
    n = features.shape[0]
    check_n_keep(n, [n_keep])
    img_piv = rank_order(key_norms.double())[: min(image_pivots, n_keep)].tolist()
    txt_piv = []
    if text_features is not None and text_key_norms is not None and len(text_key_norms) and text_pivots > 0:
        txt_piv = rank_order(text_key_norms.double())[:text_pivots].tolist()
    pivots = [features[i] for i in img_piv] + [text_features[j] for j in txt_piv]
    if pivot_order == "public":
        if positions is None or (txt_piv and text_positions is None):
            raise ValueError('pivot_order="public" walks the pivots by their sequence positions: pass positions '
                             '(and text_positions), or use pivot_order="norm"')
        pos = torch.as_tensor(positions).tolist()
        if len(pos) != n:
            raise ValueError(f"{len(pos)} positions for {n} visual tokens")
        tpos = [] if not txt_piv else torch.as_tensor(text_positions).tolist()
        if txt_piv and len(tpos) != len(text_key_norms):
            raise ValueError(f"{len(tpos)} text positions for {len(text_key_norms)} text tokens")
        pivots = [pivots[j] for j in public_pivot_order([pos[i] for i in img_piv], [tpos[j] for j in txt_piv])]
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
    layer K after the final norm (:func:`dart_selection`), the pivots taking turns in ``pivot_order``
    (``"public"``: as DART's public code, by the tokens' positions among the prompt's real tokens)."""

    image_pivots: int = 4
    text_pivots: int = 4
    pivot_order: str = "public"
    name: str = "dart"
    needs = frozenset({Need.KEYS})
    default_layer = 2

    def __post_init__(self) -> None:
        if self.pivot_order not in PIVOT_ORDERS:
            raise ValueError(f"dart: pivot_order must be one of {PIVOT_ORDERS}, got {self.pivot_order!r}")

    def select(self, items: Sequence[ItemInputs], n_keep: Sequence[int]) -> list[Selection]:
        out = []
        for it, k in zip(items, n_keep):
            if it.key_norms is None:
                raise ValueError("dart needs the pruning layer's key norms; attach it through the model hooks")
            feats = it.features if it.normed_features is None else it.normed_features
            kept, _ = dart_selection(feats, it.key_norms, k, it.text_features, it.text_key_norms,
                                     self.image_pivots, self.text_pivots, positions=it.positions,
                                     text_positions=it.text_positions, pivot_order=self.pivot_order)
            out.append(Selection(np.array(kept, np.int64), np.full(len(kept), int(Role.KEPT), np.int8)))
        return out
