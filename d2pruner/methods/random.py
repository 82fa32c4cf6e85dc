"""Random: uniform sampling of the visual tokens without replacement, from an explicit seed.

* :func:`random_selection` -- ``n_keep`` of ``n_tokens`` uniformly without replacement.
* :class:`RandomMethod` -- the method object, seeded per prompt.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from d2pruner.methods.base import ItemInputs, Method, Need, kept_selection, register
from d2pruner.methods.common import as_kept, check_n_keep
from d2pruner.spec import Selection

__all__ = ["RandomMethod", "random_selection"]


def random_selection(n_tokens: int, n_keep: Sequence[int], seed: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """``n_keep[b]`` tokens of ``n_tokens`` uniformly without replacement; reproducible from ``seed``.

    >>> random_selection(10, [3], seed=0).tolist() == random_selection(10, [3], seed=0).tolist()
    True
    """
    k = check_n_keep(n_tokens, n_keep)
    gen = torch.Generator().manual_seed(int(seed))
    perms = torch.stack([torch.randperm(n_tokens, generator=gen) for _ in n_keep])  # (B, N) on the CPU generator
    return as_kept(perms[:, :k].to(device), n_keep)


@register
@dataclasses.dataclass(frozen=True)
class RandomMethod(Method):
    """Uniform sampling without replacement, drawn from ``seed`` and the item's prompt: an item's choice
    depends only on ``seed``, its token ids (:attr:`~d2pruner.methods.base.ItemInputs.token_key`), N and
    its budget -- reproducible, the same alone or in any batch and at any pruning point, and different
    for prompts with different token ids (so a benchmark is not pruned with one fixed mask). The image
    enters only through its placeholder count: on LLaVA, whose 576 placeholders are alike, the same
    question about two images draws the same tokens."""

    seed: int = 0
    name: str = "random"
    needs = frozenset({Need.TOKEN_KEY})
    default_layer = 0

    def item_seed(self, item) -> int:
        """The seed of one item's draw: ``seed`` mixed with the item's token key (``seed`` alone without one)."""
        key = getattr(item, "token_key", None)
        return int(self.seed) if key is None else (int(self.seed) * 0x9E3779B1 + int(key)) % 2**63

    def select(self, items: Sequence[ItemInputs], n_keep: Sequence[int]) -> list[Selection]:
        return [kept_selection(random_selection(len(it.layout), [k], self.item_seed(it))[0])
                for it, k in zip(items, n_keep)]
