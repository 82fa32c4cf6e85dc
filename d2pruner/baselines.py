"""Selection rules of the methods the paper compares against, batched in torch.

Each ``*_selection`` function takes one batch of items of one size (``(B, N)`` / ``(B, N, D)``
tensors) and a list of per-item budgets, and returns kept indices ``(B, K)`` ascending, padded with
-1 (``K`` = largest budget); the greedy ones have an ``*_order`` twin returning the first ``k`` picks
in the order they were made. Ties always go to the lower token index. Where a method is published with a pruning point
other than D2Pruner's (pre-LLM for DivPrune, CDPruner and MMR), the *selection* here is the same;
attaching a method at its published point is the model hooks' business.

* :func:`random_selection` -- uniform without replacement, from an explicit seed.
* :func:`fastv_selection` -- the top-n of the raw attention row (D2Pruner's score without the prior).
* :func:`divprune_selection` -- greedy max-min diversity on the cosine distance ``1 - cos``.
* :func:`mmr_selection` -- maximal marginal relevance (IDPruner): ``lam * Imp - (1 - lam) * max cos``.
* :func:`dart_selection` -- DART: pivots by key norm, then each pivot claims the visual tokens least
  similar to it (duplication, not importance).
* :func:`cdpruner_selection` -- greedy MAP of a conditional DPP ``L = diag(q) S diag(q)`` (fast greedy
  MAP inference by incremental Cholesky, Chen et al., NeurIPS 2018), exactly n steps.

Shape legend: B items, N tokens, D feature width, K kept.
"""

from __future__ import annotations

from typing import Sequence

import torch

from d2pruner.spec import NORM_EPS, rank_order

__all__ = ["cdpruner_order", "cdpruner_selection", "dart_selection", "divprune_order", "divprune_selection", "fastv_selection",
           "mmr_order", "mmr_selection", "random_selection"]


def _as_kept(chosen: torch.Tensor, n_keep: Sequence[int]) -> torch.Tensor:
    """(B, K) chosen indices in pick order -> ascending per item, entries past each budget set to -1."""
    k = chosen.shape[1]
    budget = torch.tensor(list(n_keep), device=chosen.device)[:, None]  # (B, 1)
    big = torch.iinfo(torch.int64).max
    chosen = torch.where(torch.arange(k, device=chosen.device) < budget, chosen, big)  # (B, K)
    chosen = torch.sort(chosen, dim=1).values
    return chosen.masked_fill(chosen == big, -1)


def _check(n: int, n_keep: Sequence[int]) -> int:
    for i, k in enumerate(n_keep):
        if not 1 <= int(k) <= n:
            raise ValueError(f"n_keep={k} of item {i} must lie in [1, {n}]")
    return max(int(k) for k in n_keep)


def _first_max(x: torch.Tensor) -> torch.Tensor:
    """Index of the maximum along the last dim, lowest index on ties (NaN never wins)."""
    return rank_order(x.nan_to_num(nan=float("-inf")))[..., 0]


def _unit(features: torch.Tensor) -> torch.Tensor:
    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    return torch.nn.functional.normalize(features.to(dtype), dim=-1, eps=NORM_EPS)  # (B, N, D)


def random_selection(n_tokens: int, n_keep: Sequence[int], seed: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """``n_keep[b]`` tokens of ``n_tokens`` uniformly without replacement; reproducible from ``seed``.

    >>> random_selection(10, [3], seed=0).tolist() == random_selection(10, [3], seed=0).tolist()
    True
    """
    k = _check(n_tokens, n_keep)
    gen = torch.Generator().manual_seed(int(seed))
    perms = torch.stack([torch.randperm(n_tokens, generator=gen) for _ in n_keep])  # (B, N) on the CPU generator
    return _as_kept(perms[:, :k].to(device), n_keep)


def fastv_selection(attn: torch.Tensor, n_keep: Sequence[int]) -> torch.Tensor:
    """FastV: the ``n_keep`` tokens with the highest raw attention (``attn`` (B, N)).

    >>> fastv_selection(torch.tensor([[0.1, 0.5, 0.5, 0.2]]), [2]).tolist()
    [[1, 2]]
    """
    k = _check(attn.shape[1], n_keep)
    return _as_kept(rank_order(attn.to(torch.float64))[:, :k], n_keep)


def divprune_selection(features: torch.Tensor, n_keep: Sequence[int]) -> torch.Tensor:
    """DivPrune's kept indices (B, K), ascending, padded with -1; see :func:`divprune_order`."""
    return _as_kept(divprune_order(features, _check(features.shape[1], n_keep)), n_keep)


def divprune_order(features: torch.Tensor, k: int) -> torch.Tensor:
    """DivPrune: greedy max-min diversity on ``1 - cos``.

    First the token whose nearest other token is farthest; then, repeatedly, the token whose minimum
    distance to the selected set is largest (O(kN) with a running minimum).

    >>> f = torch.tensor([[[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [-1.0, 0.0]]])
    >>> divprune_selection(f, [2]).tolist()  # 3 has the farthest nearest neighbour, then 0 is farthest from 3
    [[0, 3]]
    """
    b, n, _ = features.shape
    unit = _unit(features)
    dist = 1.0 - torch.bmm(unit, unit.transpose(1, 2))  # (B, N, N)
    eye = torch.eye(n, dtype=torch.bool, device=features.device)
    nearest = dist.masked_fill(eye, float("inf")).min(dim=2).values if n > 1 else torch.zeros(b, 1, device=features.device)
    first = _first_max(nearest)  # (B,)
    chosen = [first]
    taken = torch.zeros(b, n, dtype=torch.bool, device=features.device).scatter_(1, first[:, None], True)
    min_dist = dist.gather(1, first[:, None, None].expand(b, 1, n))[:, 0]  # (B, N) distance to the selected set
    for _ in range(1, k):
        nxt = _first_max(min_dist.masked_fill(taken, float("-inf")))  # (B,)
        chosen.append(nxt)
        taken.scatter_(1, nxt[:, None], True)
        min_dist = torch.minimum(min_dist, dist.gather(1, nxt[:, None, None].expand(b, 1, n))[:, 0])
    return torch.stack(chosen, dim=1)  # (B, K) in pick order


def _minmax(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.min(dim=1, keepdim=True).values, x.max(dim=1, keepdim=True).values
    return (x - lo) / (hi - lo).clamp(min=1e-12)


def mmr_selection(importance: torch.Tensor, features: torch.Tensor, n_keep: Sequence[int], lam: float = 0.5) -> torch.Tensor:
    """MMR's kept indices (B, K), ascending, padded with -1; see :func:`mmr_order`."""
    return _as_kept(mmr_order(importance, features, _check(importance.shape[1], n_keep), lam), n_keep)


def mmr_order(importance: torch.Tensor, features: torch.Tensor, k: int, lam: float = 0.5) -> torch.Tensor:
    """IDPruner-style MMR: first the most important token, then ``argmax lam * Imp - (1 - lam) * max cos``
    to the selected set, with ``Imp`` min-max normalised per item.

    >>> imp = torch.tensor([[1.0, 0.9, 0.0]])
    >>> f = torch.tensor([[[1.0, 0.0], [1.0, 0.01], [0.0, 1.0]]])
    >>> mmr_selection(imp, f, [2]).tolist()  # token 1 duplicates token 0: the orthogonal token 2 wins
    [[0, 2]]
    """
    b, n = importance.shape
    imp = _minmax(importance.to(torch.float64))  # (B, N)
    unit = _unit(features)
    sim = torch.bmm(unit, unit.transpose(1, 2)).to(torch.float64)  # (B, N, N)
    first = _first_max(imp)
    chosen = [first]
    taken = torch.zeros(b, n, dtype=torch.bool, device=imp.device).scatter_(1, first[:, None], True)
    max_sim = sim.gather(1, first[:, None, None].expand(b, 1, n))[:, 0]  # (B, N)
    for _ in range(1, k):
        score = lam * imp - (1.0 - lam) * max_sim
        nxt = _first_max(score.masked_fill(taken, float("-inf")))
        chosen.append(nxt)
        taken.scatter_(1, nxt[:, None], True)
        max_sim = torch.maximum(max_sim, sim.gather(1, nxt[:, None, None].expand(b, 1, n))[:, 0])
    return torch.stack(chosen, dim=1)  # (B, K) in pick order


def cdpruner_selection(features: torch.Tensor, relevance: torch.Tensor, n_keep: Sequence[int]) -> torch.Tensor:
    """CDPruner's kept indices (B, K), ascending, padded with -1; see :func:`cdpruner_order`."""
    return _as_kept(cdpruner_order(features, relevance, _check(features.shape[1], n_keep)), n_keep)


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
    q = _minmax(relevance.to(torch.float64))  # (B, N)
    unit = _unit(features).to(torch.float64)
    kernel = q[:, :, None] * torch.bmm(unit, unit.transpose(1, 2)) * q[:, None, :]  # (B, N, N)
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
        j = _first_max(clean.masked_fill(taken, float("-inf")))  # (B,)
        chosen.append(j)
        taken[rows, j] = True
        d_j = residual[rows, j].clamp(min=0).sqrt()  # (B,)
        dot = (factors[:, :step, :] * factors[rows, :step, j][:, :, None]).sum(dim=1)  # (B, N): <c_j, c_i>
        e = (kernel[rows, j] - dot) / d_j.clamp(min=1e-12)[:, None]  # (B, N)
        e = torch.where((d_j * d_j > tol[:, 0])[:, None], e, torch.zeros_like(e))
        factors[:, step] = e
        residual = residual - e * e
    return torch.stack(chosen, dim=1)  # (B, K) in pick order


def dart_selection(features: torch.Tensor, key_norms: torch.Tensor, n_keep: int, text_features: torch.Tensor | None = None,
                   text_key_norms: torch.Tensor | None = None, image_pivots: int = 4, text_pivots: int = 4) -> tuple[list[int], list[int]]:
    """DART for one item (our reading of the published description).

    Pivots: the ``image_pivots`` visual tokens and the ``text_pivots`` text tokens with the largest
    L1 key norms (ties to the lower index). The visual pivots are kept. The rest of the budget is
    split over the pivots in order (visual pivots first, the remainder to the first ones), and each
    pivot in turn claims its share of the not-yet-kept visual tokens least cosine-similar to it.

    Parameters
    ----------
    features : Tensor (N, D) -- visual hidden states; key_norms : Tensor (N,)
    n_keep : int; text_features : Tensor (T, D) or None; text_key_norms : Tensor (T,) or None

    Returns
    -------
    (kept, pivots): kept visual indices ascending, and the visual pivots. With no pivot at all
    (``image_pivots=0`` and no text pivot) the budget is filled in key-norm order.

    >>> f = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    >>> dart_selection(f, torch.tensor([5.0, 1.0, 1.0, 1.0]), 2, image_pivots=1, text_pivots=0)
    ([0, 3], [0])
    """
    n = features.shape[0]
    _check(n, [n_keep])
    img_piv = rank_order(key_norms.double())[: min(image_pivots, n_keep)].tolist()
    pivots = [features[i] for i in img_piv]
    if text_features is not None and text_key_norms is not None and len(text_key_norms) and text_pivots > 0:
        pivots += [text_features[j] for j in rank_order(text_key_norms.double())[:text_pivots].tolist()]
    kept = list(img_piv)
    remaining = n_keep - len(kept)
    if not pivots:  # no pivot at all (none asked for, no text): fall back to the key-norm order
        return sorted(rank_order(key_norms.double())[:n_keep].tolist()), []
    unit = _unit(features[None])[0]  # (N, D)
    taken = torch.zeros(n, dtype=torch.bool, device=features.device)
    taken[kept] = True
    for j, pivot in enumerate(pivots):
        quota = remaining // len(pivots) + (1 if j < remaining % len(pivots) else 0)
        if quota == 0:
            continue
        p = _unit(pivot[None, None])[0, 0].to(unit.dtype)
        sim = (unit @ p).double().masked_fill(taken, float("inf"))  # (N,)
        picks = rank_order(-sim)[:quota]  # least similar first, ties to the lower index
        taken[picks] = True
        kept += picks.tolist()
    return sorted(kept), img_piv
