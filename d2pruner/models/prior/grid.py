"""Priors kept on one square grid over normalised positions and resampled to views of any size.

Families whose views vary in size (Qwen-VL's images and frame groups, LLaVA-NeXT's unpadded canvas)
keep their prior as a ``side x side`` grid whose cells have centres at ``((r + 0.5) / side, (c + 0.5)
/ side)``: :func:`blocks` resamples each view's attention map onto it (for the prior command's mean),
:func:`spread` resamples it back to each view's ``rows x cols`` (to debias a selection).

>>> import torch
>>> from d2pruner.spec import TokenLayout
>>> lay = TokenLayout.concat([TokenLayout.grid(2, 2), TokenLayout.grid(1, 4)])
>>> spread(torch.tensor([1.0, 3.0, 1.0, 3.0]), 2, lay).tolist()
[1.0, 3.0, 1.0, 3.0, 1.0, 1.5, 2.5, 3.0]
>>> blocks(torch.tensor([1.0, 3.0, 1.0, 3.0, 1.0, 1.0, 3.0, 3.0]), lay, 2).round(3).tolist()
[[0.5, 1.5, 0.5, 1.5], [0.643, 1.357, 0.643, 1.357]]
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

__all__ = ["RESAMPLING", "blocks", "resample_grid", "spread", "views"]

#: How a grid may be resampled to another size.
RESAMPLING = ("bilinear", "nearest")


def resample_grid(values: torch.Tensor, rows: int, cols: int, resampling: str = "bilinear") -> torch.Tensor:
    """A (R, C) map resampled to (rows, cols) over normalised positions (cell centres), float64.

    Same size returns the values unchanged; ``"bilinear"`` interpolates between cell centres (and
    averages, anti-aliased, when shrinking), ``"nearest"`` takes the cell whose centre is nearest.

    >>> m = torch.tensor([[1.0, 3.0]])
    >>> resample_grid(m, 1, 4).tolist()
    [[1.0, 1.5, 2.5, 3.0]]
    >>> resample_grid(m, 1, 4, "nearest").tolist()
    [[1.0, 1.0, 3.0, 3.0]]
    """
    if resampling not in RESAMPLING:
        raise ValueError(f"resampling must be one of {RESAMPLING}, got {resampling!r}")
    values = values.double()
    if tuple(values.shape) == (rows, cols):
        return values.clone()
    x = values[None, None]
    if resampling == "nearest":
        out = torch.nn.functional.interpolate(x, size=(rows, cols), mode="nearest-exact")
    else:
        shrink = rows < values.shape[0] or cols < values.shape[1]
        out = torch.nn.functional.interpolate(x.float(), size=(rows, cols), mode="bilinear", align_corners=False,
                                              antialias=shrink).double()
    return out[0, 0]


def views(layout) -> Iterator[tuple[np.ndarray, int, int]]:
    """``(token indices, rows, cols)`` of each view of ``layout``, in view order."""
    for v in np.unique(layout.view):
        sel = np.nonzero(layout.view == v)[0]
        yield sel, int(layout.row[sel].max()) + 1, int(layout.col[sel].max()) + 1


def spread(prior: torch.Tensor, side: int, layout, resampling: str = "bilinear") -> torch.Tensor:
    """The ``side x side`` prior resampled to each view of ``layout``: one value per token (N,)."""
    square = prior.reshape(side, side)
    out = torch.empty(len(layout), dtype=prior.dtype)
    for sel, rows, cols in views(layout):
        view = resample_grid(square, rows, cols, resampling)
        out[torch.as_tensor(sel)] = view[torch.as_tensor(layout.row[sel]), torch.as_tensor(layout.col[sel])].to(prior.dtype)
    return out


def blocks(row: torch.Tensor, layout, side: int) -> np.ndarray:
    """Each view's attention map (from ``row`` (N,)) resampled onto the ``side x side`` grid and scaled to
    mean 1: (views, side**2). The prior's scale does not change a selection; the scaling keeps large
    views, whose tokens each receive less attention, from weighing less in the mean than small ones."""
    out = []
    for sel, rows, cols in views(layout):
        view = torch.zeros(rows, cols, dtype=torch.float64)
        view[torch.as_tensor(layout.row[sel]), torch.as_tensor(layout.col[sel])] = row[torch.as_tensor(sel)].double()
        block = resample_grid(view, side, side).flatten().numpy()
        out.append(block / block.mean())
    return np.stack(out)
