"""Step 4, batched: the hybrid graph as a dense ``(B, N, N)`` bool adjacency.

Similarities are computed in float32, or float64 if the features are float64; the edge rule is
:func:`d2pruner.spec.is_edge`, the same function the reference calls.
"""

from __future__ import annotations

import torch

from d2pruner.spec import NORM_EPS, D2PrunerConfig, is_edge, spatially_adjacent

__all__ = ["cosine_similarity", "hybrid_graph"]


def cosine_similarity(features: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Pairwise cosine similarity per item, norms clamped at :data:`d2pruner.spec.NORM_EPS`.

    Parameters
    ----------
    features : Tensor, shape (B, N, D)
    valid : Tensor, shape (B, N), bool, optional; rows/columns of padding are 0.

    Returns
    -------
    Tensor, shape (B, N, N), float32 (float64 for float64 input)

    Examples
    --------
    >>> cosine_similarity(torch.tensor([[[1.0, 0.0], [1.0, 1.0]]], dtype=torch.float64)).round(decimals=4).tolist()
    [[[1.0, 0.7071], [0.7071, 1.0]]]
    """
    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    x = features.to(dtype)  # (B, N, D); no copy for float32 input
    if valid is not None:
        x = x * valid[..., None]  # (B, N, D): padding rows become 0
    inv = 1.0 / torch.linalg.vector_norm(x, dim=-1).clamp(min=NORM_EPS)  # (B, N)
    # Gram matrix first, then scale by 1 / (|x_i| |x_j|): one pass over N^2 instead of one over N x D.
    gram = torch.bmm(x, x.transpose(1, 2))  # (B, N, N)
    return gram.mul_(inv[:, :, None]).mul_(inv[:, None, :])  # (B, N, N), in place


def hybrid_graph(features: torch.Tensor, layout: torch.Tensor, config: D2PrunerConfig = D2PrunerConfig(),
                 nodes: torch.Tensor | None = None, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Adjacency of the hybrid graph of every item.

    Parameters
    ----------
    features : Tensor, shape (B, N, D)
    layout : Tensor, shape (B, N, 3), int64 -- ``(view, row, col)`` per token
    config : D2PrunerConfig
    nodes : Tensor, shape (B, N), bool, optional -- graph nodes (default: all valid tokens)
    valid : Tensor, shape (B, N), bool, optional

    Returns
    -------
    Tensor, shape (B, N, N), bool; symmetric, no self-loops, no edge touching a non-node.

    Examples
    --------
    >>> feats = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    >>> lay = torch.tensor([[[0, 0, 0], [0, 0, 1], [0, 0, 2]]])
    >>> hybrid_graph(feats, lay).nonzero().tolist()
    [[0, 0, 1], [0, 1, 0]]
    """
    sem = cosine_similarity(features)  # (B, N, N)
    if config.spatial_weight == 0:
        adjacent = 0.0  # w = 0: the spatial term is 0 * adjacent = 0 exactly, so skip building it
    else:
        v, r, c = layout.to(torch.int32).unbind(-1)  # each (B, N)
        adjacent = spatially_adjacent(v[:, :, None], r[:, :, None], c[:, :, None],
                                      v[:, None, :], r[:, None, :], c[:, None, :], config.spatial_radius)  # (B, N, N)
    edges = is_edge(sem, adjacent, config)  # (B, N, N)
    member = torch.ones_like(edges[:, :, 0]) if nodes is None else nodes.clone()  # (B, N)
    if valid is not None:
        member &= valid
    edges &= member[:, :, None] & member[:, None, :]
    edges.diagonal(dim1=1, dim2=2).fill_(False)
    return edges
