"""Readable reference implementation of D2Pruner: one item at a time, float64, networkx.

Each module implements one step of the method specification and reads like it; speed lives in
:mod:`d2pruner.fast`, which exposes the same functions with a leading batch dimension and a
validity mask.
"""

from d2pruner.reference.debias import debiased_importance
from d2pruner.reference.graph import cosine_similarity, hybrid_graph
from d2pruner.reference.mis import greedy_mis
from d2pruner.reference.pivots import select_pivots
from d2pruner.reference.select import select_tokens

__all__ = ["cosine_similarity", "debiased_importance", "greedy_mis", "hybrid_graph", "select_pivots", "select_tokens"]
