"""Tensor helpers shared by several selection rules, and the wrappers' shared input check.

The rules' conventions: each ``*_selection`` function takes one batch of items of one size (``(B, N)``
/ ``(B, N, D)`` tensors) and a list of per-item budgets, and returns kept indices ``(B, K)``
ascending, padded with -1 (``K`` = largest budget); the greedy ones have an ``*_order`` twin
returning the first ``k`` picks in the order they were made. Ties always go to the lower token index.

Shape legend: B items, N tokens, D feature width, K kept.
"""

from __future__ import annotations

from typing import Sequence

import torch

from d2pruner.spec import NORM_EPS, rank_order

__all__ = ["as_kept", "check_n_keep", "cosine", "first_max", "minmax", "need_attention", "unit"]


def as_kept(chosen: torch.Tensor, n_keep: Sequence[int]) -> torch.Tensor:
    """(B, K) chosen indices in pick order -> ascending per item, entries past each budget set to -1.

    >>> as_kept(torch.tensor([[4, 1, 3], [2, 0, 1]]), [3, 2]).tolist()
    [[1, 3, 4], [0, 2, -1]]
    """
    k = chosen.shape[1]
    budget = torch.tensor(list(n_keep), device=chosen.device)[:, None]  # (B, 1)
    big = torch.iinfo(torch.int64).max
    chosen = torch.where(torch.arange(k, device=chosen.device) < budget, chosen, big)  # (B, K)
    chosen = torch.sort(chosen, dim=1).values
    return chosen.masked_fill(chosen == big, -1)


def check_n_keep(n: int, n_keep: Sequence[int]) -> int:
    """The largest budget of ``n_keep``; ``ValueError`` unless every budget lies in ``[1, n]``.

    >>> check_n_keep(5, [2, 5])
    5
    >>> check_n_keep(5, [2, 0])
    Traceback (most recent call last):
    ...
    ValueError: n_keep=0 of item 1 must lie in [1, 5]
    """
    for i, k in enumerate(n_keep):
        if not 1 <= int(k) <= n:
            raise ValueError(f"n_keep={k} of item {i} must lie in [1, {n}]")
    return max(int(k) for k in n_keep)


def first_max(x: torch.Tensor) -> torch.Tensor:
    """Index of the maximum along the last dim, lowest index on ties (NaN never wins).

    >>> first_max(torch.tensor([[0.0, 2.0, 2.0], [float("nan"), 1.0, 0.0]])).tolist()
    [1, 1]
    """
    return rank_order(x.nan_to_num(nan=float("-inf")))[..., 0]


def unit(features: torch.Tensor) -> torch.Tensor:
    """``features`` scaled to unit L2 norm along the last dim (float64 stays float64, anything else
    becomes float32; a zero vector stays zero: the norm is clamped at :data:`~d2pruner.spec.NORM_EPS`).

    >>> unit(torch.tensor([[[3.0, 4.0], [0.0, 0.0]]])).tolist()
    [[[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]]
    """
    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    return torch.nn.functional.normalize(features.to(dtype), dim=-1, eps=NORM_EPS)  # (B, N, D)


def cosine(features: torch.Tensor) -> torch.Tensor:
    """Cosine similarities (B, N, N), exactly symmetric: a matmul rounds ``cos(i, j)`` and ``cos(j, i)``
    differently at times, and which of a mutual-nearest pair wins a tie would then depend on the
    kernel (so on the batch); averaging with the transpose makes the two entries bitwise equal.

    >>> cosine(torch.tensor([[[1.0, 0.0], [0.0, 2.0]]], dtype=torch.float64)).tolist()
    [[[1.0, 0.0], [0.0, 1.0]]]
    """
    unit_rows = unit(features)  # (B, N, D)
    sim = torch.bmm(unit_rows, unit_rows.transpose(1, 2))  # (B, N, N)
    return (sim + sim.transpose(1, 2)) / 2


def minmax(x: torch.Tensor) -> torch.Tensor:
    """``x`` (B, N) min-max normalised to [0, 1] per item (a constant row becomes all 0: the range is
    clamped at 1e-12).

    >>> minmax(torch.tensor([[1.0, 3.0, 2.0], [5.0, 5.0, 5.0]])).tolist()
    [[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]]
    """
    lo, hi = x.min(dim=1, keepdim=True).values, x.max(dim=1, keepdim=True).values
    return (x - lo) / (hi - lo).clamp(min=1e-12)


def need_attention(name: str, items) -> None:
    """``ValueError`` unless every item carries its attention row (``ItemInputs.attn``): method
    ``name`` reads the attention of the layer before its cut, which does not exist before the LLM."""
    if any(it.attn is None for it in items):
        raise ValueError(f"{name} needs the attention row of layer K-1, which is not available before the LLM")
