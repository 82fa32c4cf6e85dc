"""D2Pruner: debiased importance and structural diversity for pruning the visual tokens of MLLMs.

The public API::

    from d2pruner import select_tokens, D2PrunerConfig, TokenLayout
    sel = select_tokens(attn, features, TokenLayout.grid(24, 24), budget=64)

Stage functions live in :mod:`d2pruner.reference` (readable, networkx) and :mod:`d2pruner.fast`
(batched torch); both implement the rules of :mod:`d2pruner.spec` and give identical selections.
"""

from d2pruner.api import BACKENDS, select_tokens
from d2pruner.spec import D2PrunerConfig, Role, Selection, TokenLayout, pivot_count, rank_order, resolve_budget

__version__ = "0.1.0"

__all__ = ["BACKENDS", "D2PrunerConfig", "Role", "Selection", "TokenLayout", "__version__", "pivot_count",
           "rank_order", "resolve_budget", "select_tokens"]
