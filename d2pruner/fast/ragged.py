"""Ragged batches: items of different N padded to one tensor with a validity mask.

Legend for shapes in :mod:`d2pruner.fast`: B items, N padded tokens per item, M candidate tokens
(N minus the fewest pivots of the batch), D feature width. Padding sits at the end of each row:
``valid[b] == arange(N) < n_b``.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["check_valid", "lengths", "pack", "size_groups", "unpack"]


def pack(items: Sequence[torch.Tensor], pad_value: float | int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack tensors of shapes ``(n_b, *rest)`` into ``(B, N, *rest)`` plus a ``(B, N)`` bool mask.

    Examples
    --------
    >>> x, valid = pack([torch.tensor([1, 2, 3]), torch.tensor([4])])
    >>> x.tolist(), valid.tolist()
    ([[1, 2, 3], [4, 0, 0]], [[True, True, True], [True, False, False]])
    >>> [t.tolist() for t in unpack(x, valid)]
    [[1, 2, 3], [4]]
    """
    if len(items) == 0:
        raise ValueError("pack needs at least one item, got an empty sequence")
    rest = items[0].shape[1:]
    for b, t in enumerate(items):
        if t.shape[1:] != rest:
            raise ValueError(f"item {b} has trailing shape {tuple(t.shape[1:])}, item 0 has {tuple(rest)}")
    n_max = max(int(t.shape[0]) for t in items)
    out = items[0].new_full((len(items), n_max, *rest), pad_value)
    valid = torch.zeros(len(items), n_max, dtype=torch.bool, device=items[0].device)
    for b, t in enumerate(items):
        out[b, : t.shape[0]] = t  # (n_b, *rest) into row b
        valid[b, : t.shape[0]] = True
    return out, valid


def unpack(padded: torch.Tensor, valid: torch.Tensor) -> list[torch.Tensor]:
    """Inverse of :func:`pack`: the valid prefix of each row. Syncs with the device once."""
    return [padded[b, :n] for b, n in enumerate(lengths(valid).tolist())]


def lengths(valid: torch.Tensor) -> torch.Tensor:
    """``(B,)`` number of valid tokens per item."""
    return valid.sum(dim=1)


def check_valid(valid: torch.Tensor | None, batch: int, n: int, device: torch.device) -> torch.Tensor:
    """Return a ``(B, N)`` bool validity mask (all True if ``None``); it must be a prefix mask."""
    if valid is None:
        return torch.ones(batch, n, dtype=torch.bool, device=device)
    if valid.shape != (batch, n) or valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool tensor of shape ({batch}, {n}), got {valid.dtype} {tuple(valid.shape)}")
    prefix = torch.arange(n, device=valid.device) < lengths(valid)[:, None]  # (B, N)
    bad = (prefix != valid).any(dim=1)  # (B,)
    if bool(bad.any()):  # host sync
        raise ValueError(f"valid of item {int(bad.nonzero()[0])} is not a prefix mask (padding must sit at the end of a row)")
    return valid.to(device)


def size_groups(sizes: Sequence[int], slack: float = 1.25) -> list[list[int]]:
    """Items grouped for padding so that no group costs much more than its items alone.

    A padded group of items holds ``len(group) * max_n**2`` graph entries where its items alone hold
    ``sum(n**2)``. Items are taken largest first (ties by index) and a group grows while its padded
    cost stays within ``slack`` times its items' own (plus 64 entries: tiny items may always share).
    Each group lists item indices ascending.

    Examples
    --------
    >>> size_groups([4, 4000, 4, 4])
    [[1], [0, 2, 3]]
    >>> size_groups([576, 576, 575])
    [[0, 1, 2]]
    """
    order = sorted(range(len(sizes)), key=lambda i: (-int(sizes[i]), i))
    groups: list[list[int]] = []
    own = 0
    for i in order:
        n = int(sizes[i])
        if groups:
            g = groups[-1]
            n_max = int(sizes[g[0]])
            if (len(g) + 1) * n_max * n_max <= slack * (own + n * n) + 64:
                g.append(i)
                own += n * n
                continue
        groups.append([i])
        own = n * n
    return [sorted(g) for g in groups]
