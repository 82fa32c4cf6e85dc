"""VisionZip (CVPR'25), before the LLM: dominant tokens by [CLS] attention, contextual tokens by
merging the rest into uniform-stride targets by key similarity.

* :func:`visionzip_split` -- the (dominant, contextual) counts of a budget.
* :func:`visionzip_selection` / :class:`VisionZipPlan` -- which tokens are dominant, which are targets,
  and where the rest merge; :func:`visionzip_merge` -- the merged contextual tokens.
* :class:`VisionZipMethod` -- the method object for the model hooks.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch

from d2pruner.methods.base import ItemInputs, MergedSelection, Method, Need, register
from d2pruner.methods.common import check_n_keep, first_max, unit
from d2pruner.spec import Role, Selection, rank_order

__all__ = ["VisionZipMethod", "VisionZipPlan", "visionzip_merge", "visionzip_selection", "visionzip_split"]


def visionzip_split(n_keep: int) -> tuple[int, int]:
    """VisionZip's ``(dominant, contextual)`` counts for a budget of ``n_keep`` tokens.

    The publication's LLaVA-1.5 settings are 54 + 10 (64 tokens), 108 + 20 (128) and 162 + 30 (192):
    a contextual share of 10/64. For any budget we take ``contextual = round(10 * n_keep / 64)``
    (halves up, in integers) and give the rest to the dominant tokens, so the two add up to the budget
    exactly and the published splits are reproduced.

    >>> [visionzip_split(k) for k in (64, 128, 192, 1, 3, 4, 576)]
    [(54, 10), (108, 20), (162, 30), (1, 0), (3, 0), (3, 1), (486, 90)]
    """
    contextual = (10 * int(n_keep) + 32) // 64
    return int(n_keep) - contextual, contextual


@dataclasses.dataclass(frozen=True, eq=False)
class VisionZipPlan:
    """What VisionZip keeps of one image's N tokens (indices into the N tokens).

    ``dominant`` (D,) and ``targets`` (C,) ascending; ``assignment`` (N,) gives, for every token merged
    into a target, the index of that target, and -1 for the dominant tokens, the targets themselves and
    (when there is no target) the dropped tokens. ``kept`` is ``dominant`` and ``targets`` together,
    ascending."""

    dominant: torch.Tensor
    targets: torch.Tensor
    assignment: torch.Tensor

    @property
    def kept(self) -> torch.Tensor:
        return torch.sort(torch.cat([self.dominant, self.targets])).values


def visionzip_selection(cls_attention: torch.Tensor, keys: torch.Tensor, n_keep: int,
                        n_contextual: int | None = None) -> VisionZipPlan:
    """VisionZip for one image: which tokens are dominant, which are targets, and where the rest merge.

    1. Dominant: the ``D = n_keep - C`` tokens with the largest [CLS] attention (ties to the lower index).
    2. Targets: among the ``R = N - D`` remaining tokens in index order, every ``max(1, R // C)``-th,
       starting with the first, the first ``C`` of them (``C`` from :func:`visionzip_split` unless given).
    3. Every other remaining token goes to the target whose key is most cosine-similar to its own
       (ties to the lower target).

    Parameters
    ----------
    cls_attention : Tensor (N,) -- the [CLS] query's attention to each token (summed over heads)
    keys : Tensor (N, d) -- the same layer's keys (VisionZip: averaged over heads)
    n_keep : int -- 1 <= n_keep <= N
    n_contextual : int, optional -- C, 0 <= C <= n_keep

    Returns
    -------
    VisionZipPlan

    Examples
    --------
    >>> cls = torch.tensor([0.5, 0.1, 0.2, 0.0, 0.05, 0.15])
    >>> keys = torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 1], [1, 0.1], [0.1, 1]])
    >>> plan = visionzip_selection(cls, keys, 3, n_contextual=2)
    >>> plan.dominant.tolist(), plan.targets.tolist(), plan.assignment.tolist()
    ([0], [1, 3], [-1, -1, 3, -1, 1, 3])
    """
    n = cls_attention.shape[0]
    check_n_keep(n, [n_keep])
    n_keep = int(n_keep)
    if n_contextual is None:
        n_contextual = visionzip_split(n_keep)[1]
    if not 0 <= n_contextual <= n_keep:
        raise ValueError(f"n_contextual={n_contextual} must lie in [0, n_keep={n_keep}]")
    n_dominant = n_keep - n_contextual
    device = cls_attention.device
    dominant = torch.sort(rank_order(cls_attention.to(torch.float64))[:n_dominant]).values  # (D,)
    is_dominant = torch.zeros(n, dtype=torch.bool, device=device)
    is_dominant[dominant] = True
    remaining = (~is_dominant).nonzero()[:, 0]  # (R,) ascending
    assignment = torch.full((n,), -1, dtype=torch.long, device=device)
    if n_contextual == 0:
        return VisionZipPlan(dominant, remaining[:0], assignment)
    r = remaining.shape[0]
    step = max(1, r // n_contextual)
    picks = torch.arange(0, r, step, device=device)[:n_contextual]  # (C,) positions among the remaining
    targets = remaining[picks]  # (C,)
    is_target = torch.zeros(r, dtype=torch.bool, device=device)
    is_target[picks] = True
    others = remaining[~is_target]  # (R - C,)
    if others.numel():
        unit_keys = unit(keys[None])[0].to(torch.float64)  # (N, d)
        sim = unit_keys[others] @ unit_keys[targets].T  # (R - C, C)
        assignment[others] = targets[first_max(sim)]
    return VisionZipPlan(dominant, targets, assignment)


def visionzip_merge(features: torch.Tensor, plan: VisionZipPlan) -> torch.Tensor:
    """The contextual tokens (C, D'): each target's feature averaged with those of the tokens assigned
    to it (``features`` (N, D'), in the space the model projects afterwards).

    >>> f = torch.arange(6.0)[:, None]
    >>> plan = VisionZipPlan(torch.tensor([0]), torch.tensor([1, 3]), torch.tensor([-1, -1, 3, -1, 1, 3]))
    >>> visionzip_merge(f, plan).tolist()  # target 1 with 4, target 3 with 2 and 5
    [[2.5], [3.3333332538604736]]
    """
    out = []
    for t in plan.targets.tolist():
        members = torch.cat([torch.tensor([t], device=features.device), (plan.assignment == t).nonzero()[:, 0]])
        out.append(features[members].mean(dim=0))
    if not out:
        return features[:0]
    return torch.stack(out)  # (C, D')


@register
@dataclasses.dataclass(frozen=True)
class VisionZipMethod(Method):
    """VisionZip (CVPR'25), before the LLM: dominant tokens by the [CLS] attention of the vision layer
    whose output the model projects (LLaVA-1.5: ``vision_feature_layer=-2``, the penultimate CLIP
    layer), contextual tokens by merging every other token into uniform-stride targets by the
    similarity of that layer's head-averaged keys (:func:`visionzip_selection`).
    A merged token is the mean of its group's vision features, put through the model's projector, and
    takes its target's place in the sequence. Dominant + contextual = the budget exactly
    (:func:`visionzip_split`: 54 + 10 at 64 tokens).

    Models without a [CLS] token in the projected features (InternVL after pixel shuffle) refuse it at
    attach time.
    """

    name: str = "visionzip"
    needs = frozenset({Need.VISION_FEATURES, Need.CLS_ATTENTION})
    default_layer = 0

    def select(self, items: Sequence[ItemInputs], n_keep: Sequence[int]) -> list[Selection]:
        out = []
        for i, (it, k) in enumerate(zip(items, n_keep)):
            if it.cls_attention is None or it.vision_keys is None or it.vision_features is None or it.project is None:
                raise ValueError(f"visionzip needs the vision tower's [CLS] attention, keys and features of item {i}; "
                                 "attach it through the model hooks of a model with a [CLS] token (LLaVA)")
            plan = visionzip_selection(it.cls_attention, it.vision_keys, k)
            merged = it.project(visionzip_merge(it.vision_features, plan))  # (C, D)
            kept = plan.kept.cpu().numpy()
            out.append(MergedSelection(kept, np.full(len(kept), int(Role.KEPT), np.int8),
                                       replaced=plan.targets.cpu().numpy(), features=merged))
        return out
