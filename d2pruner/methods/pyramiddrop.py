"""PyramidDrop (CVPR'25): progressive pruning in three stages by the last token's attention.

* :class:`PyramidDropMethod` -- the method object; its stages (:meth:`~PyramidDropMethod.stage_layers`)
  and per-stage counts (:meth:`~PyramidDropMethod.stage_budgets`); each stage keeps the top of the
  attention row (:func:`d2pruner.methods.fastv.fastv_selection`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from d2pruner.methods.base import ItemInputs, Method, Need, kept_selection, register
from d2pruner.methods.common import need_attention
from d2pruner.methods.fastv import fastv_selection
from d2pruner.spec import Selection, round_half_up

__all__ = ["PyramidDropMethod"]


@register
@dataclasses.dataclass(frozen=True)
class PyramidDropMethod(Method):
    """PyramidDrop (CVPR'25): three stages at 1/4, 1/2 and 3/4 of the depth (layers 8/16/24 of 32),
    each keeping the top of the last token's attention among the remaining visual tokens, the count
    shrinking by ``lam`` = 0.5 from stage to stage. As in the public code, a stage layer scores with
    its *own* queries and keys on its input (the sequence the previous stage left; softmax over the
    whole causal row, mean over heads) and the cut is made at that input.

    Budget (our equivalent-token rule): the visual tokens *averaged over the layers* equal the budget
    to within one token (rounding); the first stage's count follows,
    ``n1 = (B*L - s1*N) / ((s2-s1) + lam*(s3-s2) + lam^2*(L-s3))``, then ``n2 = max(1, round(lam*n1))``,
    ``n3 = max(1, round(lam*n2))``, halves rounded up. The first 1/4 of the layers see all N tokens,
    so budgets below N/4 (e.g. 128 or 64 of 576) cannot be met and raise.

    >>> PyramidDropMethod().stage_budgets(576, 192, 32)
    [110, 55, 28]
    """

    lam: float = 0.5
    name: str = "pyramiddrop"
    needs = frozenset({Need.ATTENTION})
    progressive = True
    scores_at_stage_layer = True
    default_layer = None

    def stage_layers(self, n_layers: int) -> list[int]:
        layers = [n_layers // 4, n_layers // 2, 3 * n_layers // 4]
        if layers[0] < 1 or len(set(layers)) < 3:
            raise ValueError(f"pyramiddrop needs at least 4 decoder layers, the model has {n_layers}")
        return layers

    def stage_budgets(self, n_visual: int, n_keep: int, n_layers: int) -> list[int]:
        s1, s2, s3 = self.stage_layers(n_layers)
        lam = self.lam
        n1 = (n_keep * n_layers - s1 * n_visual) / ((s2 - s1) + lam * (s3 - s2) + lam * lam * (n_layers - s3))
        counts = [round_half_up(n1)]
        counts += [max(1, round_half_up(lam * counts[-1]))]
        counts += [max(1, round_half_up(lam * counts[-1]))]
        if counts[0] < 1 or counts[0] > n_visual:
            low = -(-(s1 * n_visual + (n_layers - s1)) // n_layers)
            high = n_visual
            raise ValueError(f"{self.name} cannot average {n_keep} visual tokens per layer: its first {s1} of {n_layers} "
                             f"layers see all {n_visual}; reachable averages lie between about {low} and {high}")
        return counts

    def select(self, items: Sequence[ItemInputs], n_keep: Sequence[int]) -> list[Selection]:
        need_attention(self.name, items)
        return [kept_selection(fastv_selection(it.attn[None].float(), [k])[0]) for it, k in zip(items, n_keep)]
