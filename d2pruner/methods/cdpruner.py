"""CDPruner (NeurIPS'25): greedy MAP of a conditional DPP over the visual tokens, before the LLM.

* :func:`cdpruner_selection` / :func:`cdpruner_order` -- greedy MAP of ``L = diag(q) S diag(q)``
  (fast greedy MAP inference by incremental Cholesky, Chen et al., NeurIPS 2018), exactly n steps.
* :func:`cdpruner_relevance` -- the sign choice of the relevance (``negate_relevance``).
* :func:`cdpruner_select` -- the whole rule on plain tensors, from the text tower's raw relevance.
* :class:`CDPrunerMethod` -- the method object, with a CLIP text tower for the relevance.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch

from d2pruner.methods.base import ItemInputs, Method, Need, kept_selection, register
from d2pruner.methods.common import as_kept, check_n_keep, cosine, first_max, minmax
from d2pruner.spec import Selection

__all__ = ["CDPrunerMethod", "cdpruner_order", "cdpruner_relevance", "cdpruner_select", "cdpruner_selection"]


def cdpruner_selection(features: torch.Tensor, relevance: torch.Tensor, n_keep: Sequence[int]) -> torch.Tensor:
    """CDPruner's kept indices (B, K), ascending, padded with -1; see :func:`cdpruner_order`."""
    return as_kept(cdpruner_order(features, relevance, check_n_keep(features.shape[1], n_keep)), n_keep)


def cdpruner_order(features: torch.Tensor, relevance: torch.Tensor, k: int) -> torch.Tensor:
    """CDPruner: greedy MAP of the DPP with kernel ``L = diag(q) S diag(q)``, ``S`` the cosine similarity
    and ``q`` the min-max normalised relevance; each step adds the token with the largest marginal
    gain ``log det L[S + i] - log det L[S]`` (incremental Cholesky). Exactly ``n_keep`` steps: once
    every remaining gain is 0 (the kernel's rank is exhausted) the lowest index among the largest
    residuals is taken.

    >>> f = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    >>> cdpruner_selection(f, torch.tensor([[1.0, 0.9, 0.5, 0.0]]), [2]).tolist()  # 1 duplicates 0
    [[0, 2]]
    """
    b, n, _ = features.shape
    q = minmax(relevance.to(torch.float64))  # (B, N)
    kernel = q[:, :, None] * cosine(features.to(torch.float64)) * q[:, None, :]  # (B, N, N)
    residual = kernel.diagonal(dim1=1, dim2=2).clone()  # (B, N): d_i^2
    factors = torch.zeros(b, k, n, dtype=torch.float64, device=features.device)  # rows of the Cholesky factor
    taken = torch.zeros(b, n, dtype=torch.bool, device=features.device)
    chosen = []
    rows = torch.arange(b, device=features.device)
    # Residuals below this are rounding noise of an exhausted kernel rank: treat them as 0, so the
    # pick falls to the lowest index instead of to noise (which differs with batch composition).
    tol = 1e-9 * residual.max(dim=1, keepdim=True).values.clamp(min=1e-300)  # (B, 1)
    for step in range(k):
        clean = torch.where(residual > tol, residual, torch.zeros_like(residual))
        j = first_max(clean.masked_fill(taken, float("-inf")))  # (B,)
        chosen.append(j)
        taken[rows, j] = True
        d_j = residual[rows, j].clamp(min=0).sqrt()  # (B,)
        dot = (factors[:, :step, :] * factors[rows, :step, j][:, :, None]).sum(dim=1)  # (B, N): <c_j, c_i>
        e = (kernel[rows, j] - dot) / d_j.clamp(min=1e-12)[:, None]  # (B, N)
        e = torch.where((d_j * d_j > tol[:, 0])[:, None], e, torch.zeros_like(e))
        factors[:, step] = e
        residual = residual - e * e
    return torch.stack(chosen, dim=1)  # (B, K) in pick order


def cdpruner_relevance(raw: torch.Tensor, negate_relevance: bool = True) -> torch.Tensor:
    """The relevance CDPruner min-max normalises, from ``raw``, the text tower's image-instruction
    cosine (any shape): minus the cosine with ``negate_relevance`` (CDPruner's public code for CLIP-based
    models such as LLaVA), the cosine itself without (the relevance as the paper writes it).

    >>> cdpruner_relevance(torch.tensor([0.5, -0.25])).tolist(), cdpruner_relevance(torch.tensor([0.5]), False).tolist()
    ([-0.5, 0.25], [0.5])
    """
    return -raw if negate_relevance else raw


def cdpruner_select(features: torch.Tensor, relevance: torch.Tensor, n_keep: Sequence[int],
                    negate_relevance: bool = True) -> torch.Tensor:
    """CDPruner on plain tensors: kept indices (B, K), ascending, padded with -1.

    ``features`` (B, N, D) are the projected visual features (the LLM's input) and ``relevance`` (B, N)
    the raw cosine of each visual token to the item's instruction from the text tower, signed by
    :func:`cdpruner_relevance` (``negate_relevance``) before :func:`cdpruner_selection`.

    >>> f = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    >>> cos = torch.tensor([[1.0, 0.9, 0.5, 0.0]])
    >>> cdpruner_select(f, cos, [2], negate_relevance=False).tolist(), cdpruner_select(f, cos, [2]).tolist()
    ([[0, 2]], [[2, 3]])
    """
    return cdpruner_selection(features, cdpruner_relevance(relevance, negate_relevance), n_keep)


@register
@dataclasses.dataclass(frozen=True)
class CDPrunerMethod(Method):
    """CDPruner (NeurIPS'25), before the LLM: greedy MAP of the conditional DPP ``L = diag(q) S diag(q)``
    (:func:`cdpruner_selection`), ``S`` the cosine similarity of the projected visual features (the
    LLM's input) and ``q`` the min-max normalised relevance of each token to the item's instruction
    from a CLIP text tower (:class:`d2pruner.models.clip_text.CLIPTextTower`).

    ``negate_relevance=True`` (default) is CDPruner's public code for CLIP-based models (LLaVA): it uses
    minus the cosine before the min-max normalisation, which its authors describe as intended for CLIP
    (Theia-4869/CDPruner issues #14 and #19); ``False`` is the relevance as the paper writes it
    (:func:`cdpruner_relevance`).

    The instruction reaches the method through :meth:`~d2pruner.models.handle.PruningHandle.set_instructions`.
    ``text_tower=None`` loads ``openai/clip-vit-large-patch14-336`` from the local cache when attached
    to LLaVA (:attr:`needs` then holds :attr:`~d2pruner.methods.base.Need.TEXT_TOWER`); InternVL has
    no CLIP, so a tower must be given explicitly (its image side must then accept InternVL's
    pixel-shuffled features).
    """

    text_tower: Any = None
    negate_relevance: bool = True
    name: str = "cdpruner"
    default_layer = 0

    @property
    def needs(self) -> frozenset[Need]:
        """The vision features and the instruction, and the text tower while none is set."""
        needs = frozenset({Need.VISION_FEATURES, Need.INSTRUCTION})
        return needs | {Need.TEXT_TOWER} if self.text_tower is None else needs

    def relevance(self, item: ItemInputs) -> torch.Tensor:
        """The relevance (N,) of one item's visual tokens, not yet normalised: the text tower's cosine,
        signed by :func:`cdpruner_relevance`."""
        return cdpruner_relevance(self.text_tower.relevance(item.vision_features, item.instruction), self.negate_relevance)

    def select(self, items: Sequence[ItemInputs], n_keep: Sequence[int]) -> list[Selection]:
        if self.text_tower is None:
            raise ValueError("cdpruner needs a CLIP text tower: get_method('cdpruner', text_tower=...) or attach it to "
                             "LLaVA, which loads openai/clip-vit-large-patch14-336 from the local cache")
        out = []
        for i, (it, k) in enumerate(zip(items, n_keep)):
            if it.vision_features is None or it.instruction is None:
                raise ValueError(f"cdpruner needs the vision features and the instruction of item {i}; attach it "
                                 "through the model hooks and call handle.set_instructions([...])")
            cos = self.text_tower.relevance(it.vision_features, it.instruction).to(it.features.device)
            out.append(kept_selection(cdpruner_select(it.features[None], cos[None], [k], self.negate_relevance)[0]))
        return out
