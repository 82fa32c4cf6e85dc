"""Step 5 of the method: the greedy maximal independent set in importance order.

Walk the candidate tokens in rank order; take a token if it is still available and make all of its
neighbours unavailable; stop after ``n_take`` tokens. The taken tokens are the first ``n_take``
members, in rank order, of the lexicographically-first maximal independent set (LFMIS).
"""

from __future__ import annotations

import networkx as nx

__all__ = ["greedy_mis"]


def greedy_mis(graph: nx.Graph, order, n_take, selected=()):
    """Greedy MIS of ``graph`` visiting nodes in ``order``, stopping after ``n_take`` are taken.

    Parameters
    ----------
    graph : networkx.Graph
        The hybrid graph.
    order : sequence of int
        The candidate nodes, most important first; nodes of ``graph`` not in ``order`` are never taken.
    n_take : int or None
        Stop after this many; ``None`` computes the whole LFMIS.
    selected : iterable of int
        Nodes that count as already taken: their neighbours start out unavailable
        (pivots when ``pivots_block_neighbours``).

    Returns
    -------
    list of int
        Taken nodes in rank order.

    Examples
    --------
    A path 0-1-2-3 visited in index order takes 0 and 2:

    >>> greedy_mis(nx.path_graph(4), order=[0, 1, 2, 3], n_take=None)
    [0, 2]
    >>> greedy_mis(nx.path_graph(4), order=[1, 0, 2, 3], n_take=None)
    [1, 3]
    >>> greedy_mis(nx.path_graph(4), order=[0, 1, 2, 3], n_take=1)
    [0]
    """
    unavailable = set()
    for s in selected:
        if s in graph:
            unavailable.update(graph.neighbors(s))
    taken = []
    for node in order:
        if n_take is not None and len(taken) >= n_take:
            break
        if node in unavailable:
            continue
        taken.append(node)
        unavailable.add(node)
        unavailable.update(graph.neighbors(node))
    return taken
