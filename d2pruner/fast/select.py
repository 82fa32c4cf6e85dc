"""Steps 1-7, batched: D2Pruner's selection for B items of possibly different N on any device.

Tokens are ranked once; pivots are a prefix of the ranking and the MIS candidates the rest of it
(per item, as budgets differ). The hybrid graph is built over all tokens in token order (one Gram
matrix) and the greedy MIS reads it in the candidates' rank order.

Shape legend: B items, N padded tokens, M candidates (rank positions after the pivots), D features.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch

from d2pruner.fast.debias import debiased_importance
from d2pruner.fast.graph import hybrid_graph
from d2pruner.fast.mis import greedy_mis
from d2pruner.fast.ragged import check_valid
from d2pruner.spec import D2PrunerConfig, Role, Selection, TokenLayout, pivot_count, rank_order, resolve_budget, validate_item

__all__ = ["BatchSelection", "select_padded", "select_tokens", "validate_batch"]


@dataclasses.dataclass(frozen=True)
class BatchSelection:
    """Result of a batched selection.

    Attributes
    ----------
    kept : Tensor, shape (B, K), int64 -- kept indices ascending, padded with -1 (K = largest budget)
    roles : Tensor, shape (B, K), int8 -- :class:`~d2pruner.spec.Role` codes, padded with -1
    rounds : int -- parallel MIS rounds the batch needed
    """

    kept: torch.Tensor
    roles: torch.Tensor
    rounds: int

    def to_list(self) -> list[Selection]:
        """One :class:`~d2pruner.spec.Selection` per item (copies to the host)."""
        kept, roles = self.kept.cpu().numpy(), self.roles.cpu().numpy()
        return [Selection(k[k >= 0], r[k >= 0]) for k, r in zip(kept, roles)]


def validate_batch(attn, prior, features, layout, n_keep, valid, item_ids: Sequence[int] | None = None) -> list[int]:
    """Check a padded batch; raise ``ValueError`` naming the value and the item. Returns the lengths.

    Value checks run on the device and sync once; the first failing item is then re-checked on the
    host by :func:`d2pruner.spec.validate_item`, which writes the message. ``item_ids`` are the
    items' numbers in the messages (default 0..B-1; the public API passes their place in its list).
    """
    if attn.ndim != 2:
        raise ValueError(f"attn must have shape (B, N), got {tuple(attn.shape)}")
    b, n = attn.shape
    if features.ndim != 3 or features.shape[:2] != (b, n) or features.shape[2] < 1:
        raise ValueError(f"features must have shape ({b}, {n}, D) with D >= 1 to match attn, got {tuple(features.shape)}")
    if layout.shape != (b, n, 3) or layout.is_floating_point() or layout.dtype == torch.bool:
        raise ValueError(f"layout must be an integer tensor of shape ({b}, {n}, 3), got {layout.dtype} {tuple(layout.shape)}")
    if prior is not None and prior.shape not in ((b, n), (n,)):
        raise ValueError(f"prior must have shape ({b}, {n}) or ({n},), got {tuple(prior.shape)}")
    if len(n_keep) != b:
        raise ValueError(f"n_keep has {len(n_keep)} entries for a batch of {b} items")
    bad = ((~torch.isfinite(attn) | (attn < 0)) & valid).any(dim=1)  # (B,)
    if prior is not None:
        p = prior.expand(b, n).to(attn.device)  # (B, N)
        bad |= ((~torch.isfinite(p) | (p <= 0)) & valid).any(dim=1)
    # A non-finite entry makes its row's norm non-finite: one reduction. A finite row whose norm overflows
    # (entries near 1e19 in float32) is then told apart by its largest entry, on those rows only.
    norms = torch.linalg.vector_norm(features, dim=2)  # (B, N)
    suspect = ~torch.isfinite(norms) & valid  # (B, N)
    if bool(suspect.any()):  # host sync
        rows = features[suspect]  # (S, D)
        big = torch.zeros_like(suspect)
        big[suspect] = ~torch.isfinite(torch.linalg.vector_norm(rows, ord=float("inf"), dim=1))
        suspect = big
    bad |= suspect.any(dim=1)
    bad |= ((layout < 0).any(dim=2) & valid).any(dim=1)
    lengths = valid.sum(dim=1).tolist()  # host sync
    bad_items = bad.nonzero()[:, 0].tolist()  # host sync
    ids = list(range(b)) if item_ids is None else list(item_ids)
    for i, k in enumerate(n_keep):
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
            raise ValueError(f"n_keep of item {ids[i]} must be an int token count, got {k!r}")
        resolve_budget(int(k), lengths[i], ids[i])
    if bad_items:
        i, m = bad_items[0], lengths[bad_items[0]]
        validate_item(attn[i, :m].cpu().double().numpy(),
                      None if prior is None else prior.expand(b, n)[i, :m].cpu().double().numpy(),
                      features[i, :m].cpu().double().numpy(),
                      TokenLayout.from_array(layout[i, :m].cpu().numpy()), int(n_keep[i]), item=ids[i])
    return lengths


def select_tokens(attn: torch.Tensor, prior: torch.Tensor | None, features: torch.Tensor, layout: torch.Tensor,
                  n_keep: Sequence[int] | torch.Tensor, config: D2PrunerConfig | None = None,
                  valid: torch.Tensor | None = None) -> BatchSelection:
    """D2Pruner's selection for a padded batch, exactly equal to the reference item by item.

    Parameters
    ----------
    attn : Tensor, shape (B, N), float
    prior : Tensor, shape (B, N) or (N,), float, or None
    features : Tensor, shape (B, N, D), any float dtype (edges decided exactly: see :mod:`d2pruner.fast.graph`)
    layout : Tensor, shape (B, N, 3), integer -- ``(view, row, col)`` per token
    n_keep : sequence of B ints (or an int64 tensor)
    config : D2PrunerConfig, optional
    valid : Tensor, shape (B, N), bool prefix mask, optional (default: all valid)

    Returns
    -------
    BatchSelection

    Notes
    -----
    Syncs with the device during validation, once per block of graph rows, once per MIS round, and
    never per token. A padded batch costs B graphs of N x N bools: :func:`d2pruner.select_tokens`
    groups items of similar size (:func:`d2pruner.fast.ragged.size_groups`) before padding.

    Examples
    --------
    The reference's 3x3 example, twice, the second copy with only 4 valid tokens:

    >>> feats = torch.eye(9).repeat(2, 1, 1); feats[:, 1] = feats[:, 0]; feats[:, 3] = feats[:, 2]
    >>> attn = torch.linspace(0.9, 0.1, 9).repeat(2, 1)
    >>> lay = torch.tensor(TokenLayout.grid(3, 3).as_array()).repeat(2, 1, 1)
    >>> valid = torch.arange(9) < torch.tensor([[9], [4]])
    >>> out = select_tokens(attn, None, feats, lay, [4, 3], valid=valid)
    >>> out.to_list()
    [Selection(kept=[0, 1, 2, 4], roles=['pivot', 'pivot', 'mis', 'mis']), Selection(kept=[0, 1, 2], roles=['pivot', 'pivot', 'mis'])]
    """
    return select_padded(attn, prior, features, layout, n_keep, config, valid)


def select_padded(attn: torch.Tensor, prior: torch.Tensor | None, features: torch.Tensor, layout: torch.Tensor,
                  n_keep: Sequence[int] | torch.Tensor, config: D2PrunerConfig | None = None,
                  valid: torch.Tensor | None = None, item_ids: Sequence[int] | None = None) -> BatchSelection:
    """:func:`select_tokens`, with ``item_ids`` naming the items in error messages (for the public API)."""
    config = config or D2PrunerConfig()
    if attn.ndim != 2:
        raise ValueError(f"attn must have shape (B, N), got {tuple(attn.shape)}")
    b, n = attn.shape
    device = attn.device
    valid = check_valid(valid, b, n, device)
    n_keep = n_keep.tolist() if isinstance(n_keep, torch.Tensor) else list(n_keep)
    lengths = validate_batch(attn, prior, features, layout, n_keep, valid, item_ids)

    n_p_list = [pivot_count(k, config.pivot_ratio) for k in n_keep]
    n_p = torch.tensor(n_p_list, device=device)  # (B,)
    n_take = torch.tensor(n_keep, device=device) - n_p  # (B,)
    length = torch.tensor(lengths, device=device)  # (B,)
    scores = debiased_importance(attn, prior, config.eps, valid)  # (B, N) float64
    order = rank_order(scores)  # (B, N) token indices, most important first; padding last

    block = config.pivots_block_neighbours
    start = torch.zeros_like(n_p) if block else n_p  # (B,) first rank position that is an MIS candidate
    m = max(max(lb - s for lb, s in zip(lengths, start.tolist())), 1)
    pos = torch.arange(m, device=device)  # (M,)
    node_valid = pos < (length - start)[:, None]  # (B, M)
    cand = order.gather(1, (start[:, None] + pos).clamp(max=n - 1))  # (B, M) token index at each rank position
    selected = None
    if block:  # pivots are graph nodes that are already taken
        selected = torch.zeros(b, n, dtype=torch.bool, device=device).scatter_(
            1, order, torch.arange(n, device=device).expand(b, n) < n_p[:, None])  # (B, N) pivot mask
    graph = hybrid_graph(features, layout, config, valid=valid)  # (B, N, N) over all tokens
    mis = greedy_mis(graph, cand.masked_fill(~node_valid, -1), n_take, selected=selected, valid=valid)  # (B, N)
    taken = mis.taken.gather(1, cand) & node_valid  # (B, M): MIS members at each rank position

    rest = node_valid & ~taken if selected is None else node_valid & ~taken & ~selected.gather(1, cand)  # (B, M)
    deficit = n_take - taken.sum(dim=1)  # (B,)
    topup = rest & (torch.cumsum(rest.to(torch.int64), dim=1) <= deficit[:, None])  # (B, M): best-ranked leftovers

    roles = torch.full((b, n + 1), -1, dtype=torch.int8, device=device)  # (B, N + 1): column n absorbs padding
    is_pivot = torch.arange(n, device=device) < n_p[:, None]  # (B, N) over rank positions
    roles.scatter_(1, torch.where(is_pivot, order, n), torch.full_like(order, int(Role.PIVOT), dtype=torch.int8))
    for mask, role in ((taken, Role.MIS), (topup, Role.TOPUP)):
        roles.scatter_(1, torch.where(mask, cand, n), torch.where(mask, int(role), -1).to(torch.int8))  # (B, M) -> (B, N + 1)
    roles = roles[:, :n]  # (B, N)

    k = max(n_keep)
    key = torch.where(roles >= 0, torch.arange(n, device=device), n)  # (B, N): kept tokens sort first, by index
    kept = torch.sort(key, dim=1).values[:, :k]  # (B, K)
    kept_roles = roles.gather(1, kept.clamp(max=n - 1))  # (B, K)
    pad = kept >= n
    return BatchSelection(kept.masked_fill(pad, -1), kept_roles.masked_fill(pad, -1), mis.rounds)
