"""FastV (ECCV'24): the top-n visual tokens of the raw last-token attention at layer K-1, K = 2.

* :func:`fastv_selection` -- the top-n of the raw attention row (D2Pruner's score without the prior).
* :class:`FastVMethod` -- the method object for the model hooks.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from d2pruner.methods.base import ItemInputs, Method, Need, kept_selection, register
from d2pruner.methods.common import as_kept, check_n_keep, need_attention
from d2pruner.spec import Selection, rank_order

__all__ = ["FastVMethod", "fastv_selection"]


def fastv_selection(attn: torch.Tensor, n_keep: Sequence[int]) -> torch.Tensor:
    """FastV: the ``n_keep`` tokens with the highest raw attention (``attn`` (B, N)).

    >>> fastv_selection(torch.tensor([[0.1, 0.5, 0.5, 0.2]]), [2]).tolist()
    [[1, 2]]
    """
    k = check_n_keep(attn.shape[1], n_keep)
    return as_kept(rank_order(attn.to(torch.float64))[:, :k], n_keep)


@register
@dataclasses.dataclass(frozen=True)
class FastVMethod(Method):
    """FastV (ECCV'24): the top-n tokens of the raw last-token attention at layer K-1, K = 2."""

    name: str = "fastv"
    needs = frozenset({Need.ATTENTION})
    default_layer = 2

    def select(self, items: Sequence[ItemInputs], n_keep: Sequence[int]) -> list[Selection]:
        need_attention(self.name, items)
        return [kept_selection(fastv_selection(it.attn[None].float(), [k])[0]) for it, k in zip(items, n_keep)]
