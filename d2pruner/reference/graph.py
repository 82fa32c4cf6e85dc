"""Step 4 of the method: the hybrid graph over the non-pivot tokens.

Two tokens i != j are joined iff ``(1 - w) * S_sem(i, j) + w * S_spat(i, j) > theta``, where
``S_sem`` is the cosine similarity of their features and ``S_spat`` is 1 when they lie in the same
view within Chebyshev distance ``rho`` (:func:`d2pruner.spec.is_edge`,
:func:`d2pruner.spec.spatially_adjacent`). With ``w = 0`` the graph is purely semantic.

The rule is decided exactly (:func:`d2pruner.spec.decide_edges`): the float64 cosine decides every
pair farther than its error bound from the threshold, and the few pairs closer than that are
decided by :func:`d2pruner.spec.cosine_exceeds` in exact arithmetic on the features.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from d2pruner.spec import (FLOAT64_ROUNDOFF, NORM_EPS, D2PrunerConfig, TokenLayout, cosine_error_bound, cosine_exceeds,
                           cosine_thresholds, decide_edges, power_of_two_scale, spatially_adjacent)

__all__ = ["cosine_similarity", "hybrid_graph"]


def cosine_similarity(features):
    """Pairwise cosine similarity of the rows of ``features`` in float64.

    Each row is first scaled by a power of two (:func:`d2pruner.spec.power_of_two_scale`, exact), so
    no norm overflows; norms are clamped at :data:`d2pruner.spec.NORM_EPS`, so a zero row has
    similarity 0 with all.

    Parameters
    ----------
    features : array-like of float, shape (N, D)

    Returns
    -------
    numpy.ndarray of float64, shape (N, N)

    Examples
    --------
    >>> cosine_similarity([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]).round(4).tolist()
    [[1.0, 0.7071, 0.0], [0.7071, 1.0, 0.0], [0.0, 0.0, 0.0]]
    """
    f = np.asarray(features, dtype=np.float64)
    f = np.ldexp(f, -power_of_two_scale(np.abs(f).max(axis=1, initial=0.0))[:, None])  # largest entry in [0.5, 1)
    norms = np.maximum(np.linalg.norm(f, axis=1, keepdims=True), NORM_EPS)
    unit = f / norms
    return unit @ unit.T


def hybrid_graph(features, layout: TokenLayout, config: D2PrunerConfig = D2PrunerConfig(), nodes=None):
    """The hybrid similarity graph of one item as a networkx graph.

    Parameters
    ----------
    features : array-like of float, shape (N, D)
        Visual hidden states entering layer K.
    layout : TokenLayout
        Position of each of the N tokens.
    config : D2PrunerConfig
        Supplies ``sim_threshold``, ``spatial_weight`` and ``spatial_radius``.
    nodes : iterable of int, optional
        The tokens that are graph nodes (default: all N). Edges join nodes only.

    Returns
    -------
    networkx.Graph
        Nodes are token indices; each edge carries ``cosine`` and ``adjacent`` attributes.

    Examples
    --------
    Three tokens in a row, the first two identical, the third orthogonal:

    >>> feats = [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
    >>> sorted(hybrid_graph(feats, TokenLayout.grid(1, 3)).edges())
    [(0, 1)]
    >>> cfg = D2PrunerConfig(spatial_weight=0.5, sim_threshold=0.4)  # neighbours with cos > -0.2
    >>> sorted(hybrid_graph(feats, TokenLayout.grid(1, 3), cfg).edges())
    [(0, 1), (1, 2)]
    """
    sem = cosine_similarity(features)  # S_sem(i, j)
    v, r, c = layout.view, layout.row, layout.col
    spat = spatially_adjacent(v[:, None], r[:, None], c[:, None], v[None, :], r[None, :], c[None, :],
                              config.spatial_radius)  # S_spat(i, j)
    edge, unsure = decide_edges(sem, spat, config, cosine_error_bound(np.shape(features)[1], FLOAT64_ROUNDOFF))
    thresholds = cosine_thresholds(config)  # (t for pairs apart, t for adjacent pairs), exact
    f = np.asarray(features, dtype=np.float64)
    for i, j in np.argwhere(np.triu(unsure | unsure.T, k=1)):  # too close to call in float64: decide exactly
        edge[i, j] = edge[j, i] = cosine_exceeds(f[i], f[j], thresholds[int(spat[i, j])])
    nodes = list(range(sem.shape[0])) if nodes is None else [int(i) for i in nodes]
    graph = nx.Graph()
    graph.add_nodes_from(nodes)
    among_nodes = np.triu(edge[np.ix_(nodes, nodes)], k=1)  # each unordered pair once, no self-loops
    for a, b in np.argwhere(among_nodes):
        i, j = nodes[a], nodes[b]
        graph.add_edge(i, j, cosine=float(sem[i, j]), adjacent=bool(spat[i, j]))
    return graph
