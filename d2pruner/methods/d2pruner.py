"""D2Pruner itself as a selection method: debiased importance and structural diversity.

* :class:`D2PrunerMethod` -- the method object; the selection is :func:`d2pruner.api.select_tokens`
  (stage functions in :mod:`d2pruner.reference` and :mod:`d2pruner.fast`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from d2pruner.methods.base import ItemInputs, Method, Need, register
from d2pruner.spec import D2PrunerConfig, Selection

__all__ = ["D2PrunerMethod"]


@register
@dataclasses.dataclass(frozen=True)
class D2PrunerMethod(Method):
    """D2Pruner as a selection method for the model hooks (batched fast backend by default)."""

    config: D2PrunerConfig = D2PrunerConfig()
    backend: str = "fast"
    name: str = "d2pruner"
    needs = frozenset({Need.ATTENTION, Need.PRIOR})

    @property
    def default_layer(self) -> int:
        """The pruning layer when the caller gives none: ``config.prune_layer``."""
        return self.config.prune_layer

    def select(self, items: Sequence[ItemInputs], n_keep: Sequence[int]) -> list[Selection]:
        from d2pruner.api import select_tokens

        priors = [it.prior for it in items]
        if any(p is None for p in priors):
            priors = None
        return select_tokens([it.attn for it in items], [it.features for it in items], [it.layout for it in items],
                             list(n_keep), prior=priors, config=self.config, backend=self.backend)
