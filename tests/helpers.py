"""Runs a :class:`d2pruner.testing.SelectionCase` through either backend, and graph facts for oracles."""

from __future__ import annotations

import numpy as np
import torch

from d2pruner import reference
from d2pruner.fast import pack, select_tokens as fast_select
from d2pruner.spec import Selection, is_edge, pivot_count, rank_order, spatially_adjacent
from d2pruner.testing import SelectionCase

BACKENDS = ["reference", "fast"]


def run_reference(case: SelectionCase) -> Selection:
    return reference.select_tokens(case.attn, case.prior, case.features, case.layout, case.n_keep, case.config)


def run_fast_batch(cases: list[SelectionCase], device: str = "cpu", dtype=torch.float32):
    """One call of the fast backend on a padded batch; returns (selections, rounds)."""
    attn, valid = pack([torch.tensor(c.attn, dtype=dtype) for c in cases])
    feats, _ = pack([torch.tensor(c.features, dtype=dtype) for c in cases])
    lay, _ = pack([torch.tensor(c.layout.as_array()) for c in cases])
    prior = None if cases[0].prior is None else pack([torch.tensor(c.prior, dtype=dtype) for c in cases], pad_value=1)[0]
    out = fast_select(attn.to(device), None if prior is None else prior.to(device), feats.to(device), lay.to(device),
                      [c.n_keep for c in cases], cases[0].config, valid.to(device))
    return out.to_list(), out.rounds


def run(backend: str, case: SelectionCase, device: str = "cpu") -> Selection:
    if backend == "reference":
        return run_reference(case)
    return run_fast_batch([case], device)[0][0]


def adjacency(case: SelectionCase) -> np.ndarray:
    """The full hybrid-graph adjacency over all N tokens, from the spec rule (float64), no self-loops."""
    f = case.features / np.maximum(np.linalg.norm(case.features, axis=1, keepdims=True), 1e-12)
    lay = case.layout
    adj = spatially_adjacent(lay.view[:, None], lay.row[:, None], lay.col[:, None], lay.view[None], lay.row[None],
                             lay.col[None], case.config.spatial_radius)
    a = is_edge(f @ f.T, adj, case.config)
    np.fill_diagonal(a, False)
    return a


def ranks(case: SelectionCase) -> np.ndarray:
    """Token indices in rank order, from the spec."""
    s = case.attn if case.prior is None else case.attn / (case.prior + case.config.eps)
    return rank_order(s)


def n_pivots(case: SelectionCase) -> int:
    return pivot_count(case.n_keep, case.config.pivot_ratio)
