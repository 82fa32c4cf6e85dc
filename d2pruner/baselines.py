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
* :func:`visionzip_selection` / :func:`visionzip_merge` -- VisionZip: dominant tokens by [CLS]
  attention, contextual tokens by merging the rest into uniform-stride targets by key similarity.
* :func:`sparsevlm_raters`, :func:`sparsevlm_counts`, :func:`dpc_knn_clusters`,
  :func:`sparsevlm_selection` -- SparseVLM: text raters, ranking by the raters' attention, and the
  recycling of dropped tokens by density-peak clustering and merging.

Shape legend: B items, N tokens, D feature width, K kept.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from d2pruner.spec import NORM_EPS, rank_order

__all__ = ["SparseVLMStage", "VisionZipPlan", "cdpruner_order", "dpc_knn_clusters", "cdpruner_selection", "dart_selection", "divprune_order", "divprune_selection", "fastv_selection",
           "mmr_order", "mmr_selection", "random_selection", "sparsevlm_counts", "sparsevlm_raters",
           "sparsevlm_selection", "visionzip_merge", "visionzip_selection",
           "visionzip_split"]


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


def _cosine(features: torch.Tensor) -> torch.Tensor:
    """Cosine similarities (B, N, N), exactly symmetric: a matmul rounds ``cos(i, j)`` and ``cos(j, i)``
    differently at times, and which of a mutual-nearest pair wins a tie would then depend on the
    kernel (so on the batch); averaging with the transpose makes the two entries bitwise equal."""
    unit = _unit(features)  # (B, N, D)
    sim = torch.bmm(unit, unit.transpose(1, 2))  # (B, N, N)
    return (sim + sim.transpose(1, 2)) / 2


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
    dist = 1.0 - _cosine(features)  # (B, N, N)
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
    sim = _cosine(features).to(torch.float64)  # (B, N, N)
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
    kernel = q[:, :, None] * _cosine(features.to(torch.float64)) * q[:, None, :]  # (B, N, N)
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
    _check(n, [n_keep])
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
        unit = _unit(keys[None])[0].to(torch.float64)  # (N, d)
        sim = unit[others] @ unit[targets].T  # (R - C, C)
        assignment[others] = targets[_first_max(sim)]
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


def sparsevlm_raters(visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """SparseVLM's text raters: which text tokens are relevant to the image.

    Each visual token spreads a softmax over the text tokens (``softmax_T(V T^T)``, on the LLM's input
    embeddings); a text token's relevance is that softmax averaged over the visual tokens, and the
    raters are the text tokens whose relevance is strictly above the mean relevance. When none is
    (all relevances equal, e.g. a single text token), every text token rates.

    Parameters
    ----------
    visual : Tensor (N, D); text : Tensor (T, D), T >= 1

    Returns
    -------
    Tensor (T,) bool

    >>> v = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    >>> sparsevlm_raters(v, torch.tensor([[3.0, 0.0], [0.0, 1.0], [1.0, 1.0]])).tolist()
    [True, False, False]
    """
    if text.shape[0] == 0:
        raise ValueError("sparsevlm_raters needs at least one text token")
    rel = (visual.double() @ text.double().T).softmax(dim=1).mean(dim=0)  # (T,)
    raters = rel > rel.mean()
    return raters if bool(raters.any()) else torch.ones_like(raters)


def sparsevlm_counts(n_current: int, n_keep: int) -> tuple[int, int]:
    """``(selected, recycled)`` tokens of one SparseVLM stage that keeps ``n_keep`` of ``n_current``.

    SparseVLM recycles ``m = floor(0.3 d) + 1`` of the ``d`` dropped tokens into ``floor(m / 10) + 1``
    merged tokens (none when nothing is dropped). We count the merged tokens in the budget: the
    selection is the largest ``s <= n_keep`` with ``s + clusters(n_current - s) == n_keep`` (one always
    exists when ``clusters(n_current) <= n_keep``, since the left side grows by 0 or 1 per step);
    otherwise (tiny budgets) nothing is recycled.

    >>> sparsevlm_counts(576, 353), sparsevlm_counts(576, 576), sparsevlm_counts(576, 2), sparsevlm_counts(10, 1)
    ((345, 8), (576, 0), (2, 0), (0, 1))
    """
    _check(n_current, [n_keep])
    for sel in range(n_keep, -1, -1):
        recycled = _clusters(n_current - sel)
        if sel + recycled == n_keep:
            return sel, recycled
    return n_keep, 0


def _candidates(dropped: int) -> int:
    return (3 * dropped) // 10 + 1 if dropped > 0 else 0  # floor(0.3 d) + 1, exactly


def _clusters(dropped: int) -> int:
    return _candidates(dropped) // 10 + 1 if dropped > 0 else 0


def dpc_knn_clusters(features: torch.Tensor, n_clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Density-peak clustering with k-nearest-neighbour density (DPC-kNN), as SparseVLM recycles with.

    Distances are Euclidean divided by sqrt(D). A token's density is ``exp(-mean of its squared
    distances to its k = n_clusters nearest tokens, itself included)``; its separation is the distance
    to the nearest token of strictly higher density (the largest distance overall when there is none).
    The ``n_clusters`` tokens with the largest density x separation are the centres (ties to the lower
    index); every token joins its nearest centre (ties to the lower centre), a centre itself.

    Parameters
    ----------
    features : Tensor (M, D); n_clusters : int, 1 <= n_clusters <= M

    Returns
    -------
    (centres (C,) ascending, assignment (M,) the centre index of each token)

    >>> f = torch.tensor([[0.0], [1.0], [1.5], [7.0], [7.25], [9.0]])
    >>> centres, assignment = dpc_knn_clusters(f, 3)  # 1 is densest; 4 is dense and far from anything denser
    >>> centres.tolist(), assignment.tolist()
    ([0, 1, 4], [0, 1, 1, 4, 4, 4])
    """
    m, d = features.shape
    if not 1 <= n_clusters <= m:
        raise ValueError(f"n_clusters={n_clusters} must lie in [1, {m}]")
    x = features.double()
    dist = torch.cdist(x, x) / d ** 0.5  # (M, M)
    nearest = torch.sort(dist, dim=1).values[:, :n_clusters]  # (M, k), itself first
    density = torch.exp(-(nearest ** 2).mean(dim=1))  # (M,)
    higher = density[None, :] > density[:, None]  # (M, M): j denser than i
    separation = torch.where(higher, dist, torch.full_like(dist, float(dist.max()))).min(dim=1).values  # (M,)
    centres = torch.sort(rank_order(separation * density)[:n_clusters]).values  # (C,)
    assignment = centres[_first_max(-dist[:, centres])]  # (M,) nearest centre, lower on ties
    assignment[centres] = centres
    return centres, assignment


@dataclasses.dataclass(frozen=True, eq=False)
class SparseVLMStage:
    """One SparseVLM stage of one item: ``selected`` (by the raters' attention), ``centres`` (recycled
    tokens whose slots carry the merged features) and ``merged`` (C, D), aligned with ``centres``;
    ``candidates`` the dropped tokens that were clustered and ``assignment`` their centres."""

    selected: torch.Tensor
    centres: torch.Tensor
    merged: torch.Tensor
    candidates: torch.Tensor
    assignment: torch.Tensor

    @property
    def kept(self) -> torch.Tensor:
        return torch.sort(torch.cat([self.selected, self.centres])).values


def sparsevlm_selection(score: torch.Tensor, features: torch.Tensor, n_keep: int) -> SparseVLMStage:
    """One SparseVLM stage for one item: keep exactly ``n_keep`` of the N current visual tokens.

    1. ``(s, c) = sparsevlm_counts(N, n_keep)``; the ``s`` tokens with the highest ``score`` (the
       raters' mean attention) are selected, ties to the lower index.
    2. Of the dropped tokens, the ``floor(0.3 d) + 1`` with the highest score are recycled: clustered
       into ``c`` groups (:func:`dpc_knn_clusters` on ``features``) and each group averaged; the merged
       token takes its centre's slot.

    >>> score = torch.tensor([0.9, 0.8, 0.1, 0.3, 0.2, 0.0])
    >>> st = sparsevlm_selection(score, torch.arange(6.0)[:, None], 3)
    >>> st.selected.tolist(), st.centres.tolist(), st.kept.tolist(), st.merged.tolist()
    ([0, 1], [3], [0, 1, 3], [[3.5]])
    """
    n = score.shape[0]
    n_sel, n_rec = sparsevlm_counts(n, n_keep)
    order = rank_order(score.double())  # (N,) best first
    selected = torch.sort(order[:n_sel]).values
    empty = order[:0]
    if n_rec == 0:
        return SparseVLMStage(selected, empty, features[:0], empty, empty)
    dropped = order[n_sel:]  # (d,) in score order
    candidates = dropped[:_candidates(len(dropped))]  # (m,)
    centres_local, assign_local = dpc_knn_clusters(features[candidates], n_rec)
    merged = torch.stack([features[candidates[assign_local == c]].mean(dim=0) for c in centres_local.tolist()])  # (C, D)
    centres = candidates[centres_local]
    order_c = torch.argsort(centres)
    return SparseVLMStage(selected, centres[order_c], merged[order_c], candidates, candidates[assign_local])
