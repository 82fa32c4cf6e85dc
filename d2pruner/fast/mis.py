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
    selected = torch.zeros(b, n, dtype=torch.bool, device=device) if selected is None else selected
    adj = graph.to(torch.float32)  # (B, N, N)
    blocked = torch.bmm(adj, selected.to(torch.float32)[..., None])[..., 0] > 0  # (B, N): next to a selected node
    if order is None:
        rank_adj = adj  # (B, M, M), M = N: already in rank order
        candidate = valid & ~selected  # (B, M)
        available = candidate & ~blocked
    else:
        m = order.shape[1]
        present = order >= 0  # (B, M)
        idx = order.clamp(min=0)  # (B, M)
        rank_adj = adj.gather(1, idx[:, :, None].expand(b, m, n))  # (B, M, N): rows in rank order
        rank_adj = rank_adj.gather(2, idx[:, None, :].expand(b, m, m))  # (B, M, M): columns too
        rank_adj = rank_adj * (present[:, :, None] & present[:, None, :])  # (B, M, M)
        candidate = present & valid.gather(1, idx) & ~selected.gather(1, idx)  # (B, M)
        available = candidate & ~blocked.gather(1, idx)  # (B, M)
    m = rank_adj.shape[1]
    outranking = torch.tril(rank_adj, diagonal=-1)  # (B, M, M): [v, u] = edge and u ranks before v
    pos = torch.arange(m, device=device)
    n_take = n_take.to(device)
    limit = torch.where(n_take < 0, torch.full_like(n_take, m), n_take)  # (B,)

    undecided = available.clone()  # (B, M)
    joined = torch.zeros_like(undecided)
    rounds = 0
    while True:
        first_open = torch.where(undecided, pos, m).min(dim=1).values  # (B,) first undecided rank position
        settled = (joined & (pos < first_open[:, None])).sum(dim=1)  # (B,) members in the decided prefix
        active = (first_open < m) & (settled < limit)  # (B,)
        if not bool(active.any()):  # host sync
            break
        undecided &= active[:, None]
        u = undecided.to(torch.float32)[..., None]  # (B, M, 1)
        outranked = torch.bmm(outranking, u)[..., 0] > 0  # (B, M): an undecided neighbour ranks higher
        joins = undecided & ~outranked  # (B, M)
        dropped = torch.bmm(rank_adj, joins.to(torch.float32)[..., None])[..., 0] > 0  # (B, M): neighbour joined
        joined |= joins
        undecided &= ~joins & ~dropped
        rounds += 1
    joined &= torch.cumsum(joined.to(torch.int64), dim=1) <= limit[:, None]  # (B, M): first n_take in rank order

    if order is None:
        return MISResult(joined, rounds)
    taken = torch.zeros(b, n + 1, dtype=torch.bool, device=device)  # (B, N + 1): column n absorbs padding
    taken.scatter_(1, torch.where(present, order, n), joined)  # (B, M) -> (B, N + 1)
    return MISResult(taken[:, :n], rounds)
