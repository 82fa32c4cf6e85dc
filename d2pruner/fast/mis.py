"""Step 5, batched: the greedy MIS in rank order, computed in parallel rounds.

The sequential greedy walk of the reference takes exactly the lexicographically-first maximal
independent set (LFMIS) under the rank order. The LFMIS can be built in rounds (Blelloch, Fineman &
Shun, SPAA 2012): in every round, each undecided node none of whose undecided neighbours outranks it
joins the set, and the neighbours of the joiners drop out. Each round, the best-ranked undecided
node joins, so after ``t`` rounds the decided rank prefix holds at least ``t`` members: an item is
finished as soon as that prefix holds ``n_take`` members (or nothing is undecided), which bounds the
rounds by ``n_take`` and in practice ends far sooner.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["MISResult", "greedy_mis"]


class MISResult(NamedTuple):
    """``taken``: (B, N) bool mask of the MIS tokens; ``rounds``: number of parallel rounds run."""

    taken: torch.Tensor
    rounds: int


def greedy_mis(graph: torch.Tensor, order: torch.Tensor | None, n_take: torch.Tensor,
               selected: torch.Tensor | None = None, valid: torch.Tensor | None = None) -> MISResult:
    """First ``n_take`` LFMIS members of every item, exactly as the sequential greedy walk takes them.

    Parameters
    ----------
    graph : Tensor, shape (B, N, N), bool -- symmetric adjacency, no self-loops
    order : Tensor, shape (B, N), int64, or None
        Candidates most important first, padded with -1; tokens absent from it are never taken.
        ``None`` means the nodes are already in rank order and every valid, unselected node is a candidate.
    n_take : Tensor, shape (B,), int64 -- how many to take per item (``-1`` or more than exist: the whole LFMIS)
    selected : Tensor, shape (B, N), bool, optional -- already-taken nodes whose neighbours start unavailable
    valid : Tensor, shape (B, N), bool, optional

    Returns
    -------
    MISResult
        ``taken`` in token order (the same index space as ``graph``) and the number of rounds.

    Notes
    -----
    One host-device sync per round (the loop condition).

    Examples
    --------
    A path 0-1-2-3 visited in index order takes 0 and 2; visited as 1, 0, 2, 3 it takes 1 and 3:

    >>> path = torch.zeros(1, 4, 4, dtype=torch.bool)
    >>> for i in range(3): path[0, i, i + 1] = path[0, i + 1, i] = True
    >>> greedy_mis(path, torch.tensor([[0, 1, 2, 3]]), torch.tensor([-1])).taken.nonzero()[:, 1].tolist()
    [0, 2]
    >>> greedy_mis(path, torch.tensor([[1, 0, 2, 3]]), torch.tensor([-1])).taken.nonzero()[:, 1].tolist()
    [1, 3]
    """
    b, n, _ = graph.shape
    device = graph.device
    valid = torch.ones(b, n, dtype=torch.bool, device=device) if valid is None else valid
    if order is None:
        order = torch.arange(n, device=device).expand(b, n).masked_fill(~valid, -1)  # (B, N)
    m = order.shape[1]
    present = order >= 0  # (B, M)
    # rank[b, t]: position of token t in the candidate order, m for tokens that are not candidates.
    rank = torch.full((b, n + 1), m, dtype=torch.int64, device=device)  # (B, N + 1): column n absorbs padding
    rank.scatter_(1, torch.where(present, order, n), torch.arange(m, device=device).expand(b, m))
    rank = rank[:, :n]  # (B, N)
    candidate = (rank < m) & valid  # (B, N)
    if selected is not None:
        candidate &= ~selected
        candidate &= ~_any_neighbour(graph, selected)  # next to an already-taken node
    outranking = (rank[:, None, :] < rank[:, :, None])  # (B, N, N): [v, u] = u ranks before v
    outranking &= graph  # in place: and an edge joins them (one (B, N, N) bool besides the graph)
    n_take = n_take.to(device)
    limit = torch.where(n_take < 0, torch.full_like(n_take, m), n_take)  # (B,)

    undecided = candidate.clone()  # (B, N)
    joined = torch.zeros_like(undecided)
    rounds = 0
    while True:
        first_open = torch.where(undecided, rank, m).min(dim=1).values  # (B,) best rank still undecided
        settled = (joined & (rank < first_open[:, None])).sum(dim=1)  # (B,) members in the decided prefix
        active = (first_open < m) & (settled < limit)  # (B,)
        if not bool(active.any()):  # host sync
            break
        undecided &= active[:, None]
        joins = undecided & ~_any_neighbour(outranking, undecided)  # (B, N): no undecided neighbour ranks higher
        joined |= joins
        undecided &= ~joins & ~_any_neighbour(graph, joins)
        rounds += 1
    # Keep the first n_take members in rank order.
    joined_by_rank = joined.gather(1, order.clamp(min=0)) & present  # (B, M)
    keep = joined_by_rank & (torch.cumsum(joined_by_rank.to(torch.int64), dim=1) <= limit[:, None])  # (B, M)
    taken = torch.zeros(b, n + 1, dtype=torch.bool, device=device)  # (B, N + 1)
    taken.scatter_(1, torch.where(present, order, n), keep)  # (B, M) -> (B, N + 1)
    return MISResult(taken[:, :n], rounds)


#: Adjacency entries read per step of :func:`_any_neighbour` (bounds its temporary to 16 MiB of bools).
ROW_ELEMENTS = 1 << 24


def _any_neighbour(adj: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` bool: whether each node has a neighbour in ``mask``, for a bool ``(B, N, N)`` adjacency.

    Reads the adjacency a block of rows at a time, so the temporary stays small whatever N."""
    b, n, _ = adj.shape
    rows = max(1, ROW_ELEMENTS // max(1, b * n))
    return torch.cat([(adj[:, lo:lo + rows] & mask[:, None, :]).any(dim=2)  # (B, C, N) -> (B, C); bool ops
                      for lo in range(0, n, rows)], dim=1) if n else mask.clone()
