"""Batched torch implementation of D2Pruner: the functions of :mod:`d2pruner.reference` with a
leading batch dimension and a validity mask, on any device, with exactly the same selection.
"""

from d2pruner.fast.debias import debiased_importance
from d2pruner.fast.graph import cosine_similarity, hybrid_graph
from d2pruner.fast.mis import MISResult, greedy_mis
from d2pruner.fast.pivots import select_pivots
from d2pruner.fast.ragged import pack, unpack
from d2pruner.fast.select import BatchSelection, select_tokens

__all__ = ["BatchSelection", "MISResult", "cosine_similarity", "debiased_importance", "greedy_mis", "hybrid_graph",
           "pack", "select_pivots", "select_tokens", "unpack"]
