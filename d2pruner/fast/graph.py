"""Step 4, batched: the hybrid graph as a dense ``(B, N, N)`` bool adjacency, built in row blocks.

Shape legend: B items, N padded tokens, C rows of one block, D feature width, P pairs.

The edge rule is decided exactly, as the reference decides it (:func:`d2pruner.spec.decide_edges`):

1. every row is scaled by a power of two (exact) and normalised to a float32 unit row;
2. similarities of one block of rows against the rows after it come from one float32 matmul
   (only the upper triangle: each unordered pair once, mirrored, so the graph is symmetric by
   construction and the matmul does half the work of ``X @ X^T``);
3. pairs within the float32 error bound of the threshold are recomputed in float64;
4. pairs still within the float64 bound are decided exactly (:func:`d2pruner.spec.cosine_exceeds`).

Memory beyond the graph is one float32 copy of the unit rows and one block of ``BLOCK_ELEMENTS``
similarities, whatever N: there is no ``(B, N, N)`` float matrix.
"""

from __future__ import annotations

import torch

from d2pruner.spec import (FLOAT64_ROUNDOFF, NORM_EPS, D2PrunerConfig, cosine_error_bound, cosine_exceeds,
                           cosine_thresholds, decide_edges, power_of_two_scale, spatially_adjacent)

__all__ = ["BLOCK_ELEMENTS", "cosine_similarity", "hybrid_graph"]

#: Similarities computed per block (B * C * N); bounds the graph builder's working memory (64 MiB in float32).
BLOCK_ELEMENTS = 1 << 24


def _matmul_roundoff() -> float:
    """Unit roundoff of a float32 matmul under torch's precision setting (TF32 / bfloat16 when allowed)."""
    return {"highest": 2.0 ** -24, "high": 2.0 ** -11}.get(torch.get_float32_matmul_precision(), 2.0 ** -8)


def _unit_rows(features: torch.Tensor) -> torch.Tensor:
    """Float32 unit rows (B, N, D), normalised in float32 (float64 for float64 features, whose values may lie
    beyond float32's range). A block of rows at a time: one norm pass and one division where every norm
    lies in [2**-30, 2**60] (its squares neither overflow nor lose a significant bit, and the
    NORM_EPS clamp cannot touch it), else each row is
    first scaled by a power of two (exact). Padding rows are left as they come (the graph never reads them)."""
    b, n, d = features.shape
    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    top = 1022 if dtype == torch.float64 else 126  # largest power of two the dtype holds, with a margin
    rows = max(1, BLOCK_ELEMENTS // max(1, b * d))
    unit = torch.empty(b, n, d, dtype=torch.float32, device=features.device)  # (B, N, D)
    for lo in range(0, n, rows):
        x = features[:, lo:lo + rows].to(dtype)  # (B, C, D); no copy for float32
        nrm = torch.linalg.vector_norm(x, dim=-1)  # (B, C)
        if not bool(((nrm >= 2.0 ** -30) & (nrm <= 2.0 ** 60)).all()):  # host sync; rare (zero rows, padding): rescale
            e = power_of_two_scale(torch.linalg.vector_norm(x, ord=float("inf"), dim=-1))  # (B, C): largest entry
            x = x * torch.exp2((-e).clamp(max=top).to(dtype))[..., None]  # (B, C, D), largest entry in [0.5, 1)
            nrm = torch.linalg.vector_norm(x, dim=-1)
        x = x / nrm.clamp(min=NORM_EPS)[..., None]  # (B, C, D)
        if rows >= n:
            return x.to(torch.float32)  # one block: no copy for float32
        unit[:, lo:lo + rows] = x
    return unit


def _scaled(x: torch.Tensor) -> torch.Tensor:
    """Rows ``x`` (P, D) in float64 times a power of two that brings each largest entry into [0.5, 1), exactly
    (two factors, so that neither half of 2**-e overflows)."""
    x = x.to(torch.float64)
    e = power_of_two_scale(torch.linalg.vector_norm(x, ord=float("inf"), dim=-1)).to(torch.float64)[:, None]  # (P, 1)
    half = torch.floor(e / 2)
    return x * torch.exp2(-half) * torch.exp2(-(e - half))


def cosine_similarity(features: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Pairwise cosine similarity per item, norms clamped at :data:`d2pruner.spec.NORM_EPS` (float32,
    rows scaled by a power of two first, so no norm overflows).

    Parameters
    ----------
    features : Tensor, shape (B, N, D)
    valid : Tensor, shape (B, N), bool, optional; rows/columns of padding are 0.

    Returns
    -------
    Tensor, shape (B, N, N), float32; symmetric.

    Examples
    --------
    >>> cosine_similarity(torch.tensor([[[1.0, 0.0], [1.0, 1.0]]], dtype=torch.float64)).double().round(decimals=4).tolist()
    [[[1.0, 0.7071], [0.7071, 1.0]]]
    """
    unit = _unit_rows(features)  # (B, N, D)
    gram = torch.bmm(unit, unit.transpose(1, 2))  # (B, N, N)
    gram = torch.triu(gram) + torch.triu(gram, diagonal=1).transpose(1, 2)  # the upper triangle, mirrored
    if valid is not None:
        gram = gram.masked_fill(~(valid[:, :, None] & valid[:, None, :]), 0.0)  # (B, N, N)
    return gram


def _settle(features, bi, ii, jj, adjacent, config, bound64) -> torch.Tensor:
    """Edges of the P listed pairs ``(bi, ii, jj)``: float64 cosines, then the exact rule where those are
    within ``bound64`` of the threshold (on the host, pair by pair: rare)."""
    d = features.shape[-1]
    chunk = max(1, BLOCK_ELEMENTS // (4 * d))
    out = torch.empty(bi.shape[0], dtype=torch.bool, device=features.device)  # (P,)
    thresholds = cosine_thresholds(config)
    for lo in range(0, bi.shape[0], chunk):
        b, i, j = bi[lo:lo + chunk], ii[lo:lo + chunk], jj[lo:lo + chunk]  # (P',)
        xi, xj = _scaled(features[b, i]), _scaled(features[b, j])  # (P', D) float64 each
        norms = torch.linalg.vector_norm(xi, dim=-1).clamp(min=NORM_EPS) * torch.linalg.vector_norm(xj, dim=-1).clamp(min=NORM_EPS)
        cos = (xi * xj).sum(dim=-1) / norms  # (P',) float64
        adj = None if adjacent is None else adjacent[lo:lo + chunk]
        edge, unsure = decide_edges(cos, adj, config, bound64)
        for k in unsure.nonzero()[:, 0].tolist():  # host sync; pairs within ~1e-12 of the threshold
            t = thresholds[0 if adj is None else int(adj[k])]
            edge[k] = cosine_exceeds(features[b[k], i[k]].double().cpu().numpy(), features[b[k], j[k]].double().cpu().numpy(), t)
        out[lo:lo + chunk] = edge
    return out


def hybrid_graph(features: torch.Tensor, layout: torch.Tensor, config: D2PrunerConfig = D2PrunerConfig(),
                 nodes: torch.Tensor | None = None, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Adjacency of the hybrid graph of every item, decided exactly (as the reference decides it).

    Parameters
    ----------
    features : Tensor, shape (B, N, D), any float dtype
    layout : Tensor, shape (B, N, 3), int64 -- ``(view, row, col)`` per token
    config : D2PrunerConfig
    nodes : Tensor, shape (B, N), bool, optional -- graph nodes (default: all valid tokens)
    valid : Tensor, shape (B, N), bool, optional

    Returns
    -------
    Tensor, shape (B, N, N), bool; symmetric, no self-loops, no edge touching a non-node.

    Notes
    -----
    Syncs with the device once per block of rows (to find the pairs near the threshold).

    Examples
    --------
    >>> feats = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    >>> lay = torch.tensor([[[0, 0, 0], [0, 0, 1], [0, 0, 2]]])
    >>> hybrid_graph(feats, lay).nonzero().tolist()
    [[0, 0, 1], [0, 1, 0]]
    """
    b, n, d = features.shape
    device = features.device
    member = torch.ones(b, n, dtype=torch.bool, device=device) if nodes is None else nodes.clone()  # (B, N)
    if valid is not None:
        member &= valid
    all_members = bool(member.all())  # host sync
    unit = _unit_rows(features)  # (B, N, D) float32
    bound32 = cosine_error_bound(d, _matmul_roundoff())
    bound64 = cosine_error_bound(d, FLOAT64_ROUNDOFF)
    v, r, c = layout.to(torch.int32).unbind(-1)  # each (B, N)
    graph = torch.zeros(b, n, n, dtype=torch.bool, device=device)  # (B, N, N)
    rows = max(1, BLOCK_ELEMENTS // max(1, b * n))
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        cos = torch.bmm(unit[:, lo:hi], unit[:, lo:].transpose(1, 2))  # (B, C, N - lo): rows lo:hi against columns lo:
        if config.spatial_weight == 0:
            adjacent = None  # w = 0: the spatial term is 0 * adjacent = 0 exactly, so skip building it
        else:
            adjacent = spatially_adjacent(v[:, lo:hi, None], r[:, lo:hi, None], c[:, lo:hi, None],
                                          v[:, None, lo:], r[:, None, lo:], c[:, None, lo:], config.spatial_radius)  # (B, C, N - lo)
        edge, unsure = decide_edges(cos, adjacent, config, bound32)  # (B, C, N - lo) each
        del cos
        edge, unsure = edge.triu_(1), unsure.triu_(1)  # block entry (r, c) is pair (lo + r, lo + c): keep c > r
        if not all_members:
            keep = member[:, lo:hi, None] & member[:, None, lo:]  # (B, C, N - lo)
            edge &= keep
            unsure &= keep
        bi, ii, jj = unsure.nonzero(as_tuple=True)  # host sync; (P,) each, block coordinates
        if bi.numel():
            adj = None if adjacent is None else adjacent[bi, ii, jj]
            edge[bi, ii, jj] = _settle(features, bi, ii + lo, jj + lo, adj, config, bound64)
        graph[:, lo:hi, lo:] = edge
        graph[:, lo:, lo:hi] |= edge.transpose(1, 2)  # the mirror image: one decision per unordered pair
    return graph
