"""Pictures for the walkthrough notebooks: token grids over an image, score maps, kept tokens, graphs,
boxes. A view of several tokens per side (LLaVA's grid, InternVL's tile canvas or thumbnail) spans the
whole image it is drawn over.

Also two input builders for demonstrations without a model: :func:`image_grid_features` (each
token's pixels as its feature vector) and :func:`synthetic_attention` (a content term times a
**synthetic** positional bias, clearly not a model's attention). matplotlib is imported lazily.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from d2pruner.spec import Role

__all__ = ["ROLE_COLOURS", "image_grid_features", "show_box", "show_graph", "show_mis_order", "show_scores",
           "show_tokens", "show_view_tokens", "synthetic_attention", "view_cells"]

ROLE_COLOURS = {Role.PIVOT: "#d62728", Role.MIS: "#1f77b4", Role.TOPUP: "#ff7f0e", Role.KEPT: "#2ca02c"}


def _cells(image: np.ndarray, side: int) -> np.ndarray:
    """``(side, side, ch, cw, 3)`` blocks of an image cropped to a multiple of ``side``."""
    h, w = (image.shape[0] // side) * side, (image.shape[1] // side) * side
    img = np.asarray(image[:h, :w, :3], dtype=np.float64) / 255.0
    return img.reshape(side, h // side, side, w // side, 3).transpose(0, 2, 1, 3, 4)


def image_grid_features(image: np.ndarray, side: int = 24, pool: int = 4) -> np.ndarray:
    """Cut ``image`` (H, W, 3) into ``side x side`` tokens; each token's feature is its pixels
    average-pooled to ``pool x pool x 3`` values, centred on the image mean. Shape ``(side*side, 3*pool^2)``.

    >>> image_grid_features(np.zeros((48, 48, 3), np.uint8), side=4, pool=2).shape
    (16, 12)
    """
    cells = _cells(image, side)
    ch, cw = cells.shape[2] // pool * pool, cells.shape[3] // pool * pool
    c = cells[:, :, :ch, :cw].reshape(side, side, pool, ch // pool, pool, cw // pool, 3).mean(axis=(3, 5))
    feats = c.reshape(side * side, -1)
    return feats - feats.mean(axis=0, keepdims=True)


def synthetic_attention(image: np.ndarray, side: int = 24, bias: float = 4.0, mass: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """A stand-in attention row and its positional prior, for demonstrations only.

    Content term: each token's local contrast (pixel standard deviation). Positional bias: grows
    along the sequence (later rows attract more attention regardless of content, the pattern
    D2Pruner removes) as ``1 + bias * (t / N)^3``. Returns ``(attn, prior)``, ``attn`` summing to ``mass``.
    """
    cells = _cells(image, side)
    content = cells.std(axis=(2, 3, 4)).reshape(-1) + 1e-3
    t = np.arange(side * side) / (side * side)
    prior = 1.0 + bias * t ** 3
    attn = content * prior
    return attn / attn.sum() * mass, prior / prior.mean() * (mass / (side * side))


def _extent(image: np.ndarray) -> tuple[float, float, float, float]:
    return (0, image.shape[1], image.shape[0], 0)


def _centre(i: int, side: int, image: np.ndarray) -> tuple[float, float]:
    r, c = divmod(int(i), side)
    return (c + 0.5) * image.shape[1] / side, (r + 0.5) * image.shape[0] / side


def show_scores(ax, values: np.ndarray, side: int, image: np.ndarray | None = None, title: str = "", cmap: str = "magma"):
    """A per-token value as a heat map, over the image if given."""
    grid = np.asarray(values, dtype=np.float64).reshape(side, side)
    if image is not None:
        ax.imshow(image)
        im = ax.imshow(grid, cmap=cmap, alpha=0.6, extent=_extent(image), interpolation="nearest")
    else:
        im = ax.imshow(grid, cmap=cmap, interpolation="nearest")
    ax.set_title(title)
    ax.axis("off")
    return im


def show_tokens(ax, image: np.ndarray, side: int, kept: Sequence[int], roles: Sequence[int] | None = None,
                title: str = "", dim: float = 0.35):
    """The image with dropped tokens dimmed and kept ones outlined (colour by role if given)."""
    cells = [(j, *divmod(int(i), side)) for j, i in enumerate(kept)]
    _draw_tokens(ax, image, (side, side), cells, roles, title, dim)


def view_cells(layout, kept: Sequence[int], view: int = 0) -> tuple[tuple[int, int], list[tuple[int, int, int]]]:
    """Where the kept tokens of one view of a :class:`~d2pruner.spec.TokenLayout` lie: the view's grid
    ``(rows, cols)`` and, for each kept token in that view, ``(j, row, col)`` with ``j`` its place in ``kept``.

    >>> from d2pruner.spec import TokenLayout
    >>> layout = TokenLayout.internvl(2, 2, tile_side=2)  # 2x2 tiles of 2x2 tokens on a 4x4 canvas, then a thumbnail
    >>> view_cells(layout, [0, 5, 16, 19], view=0)  # token 5: tile (0, 1), its token (0, 1)
    ((4, 4), [(0, 0, 0), (1, 0, 3)])
    >>> view_cells(layout, [0, 5, 16, 19], view=1)
    ((2, 2), [(2, 0, 0), (3, 1, 1)])
    """
    in_view = layout.view == view
    if not in_view.any():
        raise ValueError(f"the layout has no view {view} (views: {sorted(set(layout.view.tolist()))})")
    shape = (int(layout.row[in_view].max()) + 1, int(layout.col[in_view].max()) + 1)
    cells = [(j, int(layout.row[i]), int(layout.col[i])) for j, i in enumerate(np.asarray(kept, dtype=int)) if in_view[i]]
    return shape, cells


def show_view_tokens(ax, image: np.ndarray, layout, kept: Sequence[int], roles: Sequence[int] | None = None,
                     view: int = 0, title: str = "", dim: float = 0.35):
    """Like :func:`show_tokens` for one view of a layout (InternVL: view 0 = the tiles' canvas, view 1 =
    the thumbnail), its grid stretched over the whole image; ``kept`` index the whole layout."""
    shape, cells = view_cells(layout, kept, view)
    _draw_tokens(ax, image, shape, cells, roles, title, dim)


def _draw_tokens(ax, image, shape: tuple[int, int], cells, roles, title: str, dim: float):
    from matplotlib.patches import Rectangle

    rows, cols = shape
    shade = np.full(shape, dim)
    for _, r, c in cells:
        shade[r, c] = 1.0
    cell_h, cell_w = image.shape[0] / rows, image.shape[1] / cols
    ax.imshow(image)
    ax.imshow(shade, cmap="gray", vmin=0, vmax=1, alpha=0.55, extent=_extent(image), interpolation="nearest")
    for j, r, c in cells:
        colour = ROLE_COLOURS[Role(int(roles[j]))] if roles is not None else "#2ca02c"
        ax.add_patch(Rectangle((c * cell_w, r * cell_h), cell_w, cell_h, fill=False, edgecolor=colour, linewidth=1.2))
    ax.set_title(title)
    ax.axis("off")


def show_box(ax, box: Sequence[float], image: np.ndarray, colour: str = "#00ff00", label: str | None = None,
             scale: float = 1000.0, linestyle: str = "-"):
    """Outline a box ``[x1, y1, x2, y2]`` given in a ``scale`` frame over the image (InternVL's boxes:
    [0, 1000] across the image in both axes); ``label`` is written above it."""
    from matplotlib.patches import Rectangle

    sx, sy = image.shape[1] / scale, image.shape[0] / scale
    x1, y1, x2, y2 = (float(v) for v in box)
    ax.add_patch(Rectangle((x1 * sx, y1 * sy), (x2 - x1) * sx, (y2 - y1) * sy, fill=False, edgecolor=colour,
                           linewidth=2, linestyle=linestyle))
    if label:
        ax.text(x1 * sx, y1 * sy - 1, label, color=colour, fontsize=8, va="bottom")


def show_graph(ax, image: np.ndarray, side: int, graph, title: str = "", max_edges: int = 4000):
    """Edges of a hybrid graph over the image: spatial neighbours in one colour, other (semantic) edges in another."""
    ax.imshow(image, alpha=0.5)
    edges = list(graph.edges(data=True))[:max_edges]
    for a, b, data in edges:
        (x0, y0), (x1, y1) = _centre(a, side, image), _centre(b, side, image)
        spatial = data.get("adjacent", False)
        ax.plot([x0, x1], [y0, y1], color="#2ca02c" if spatial else "#9467bd", linewidth=0.6 if spatial else 0.3,
                alpha=0.8 if spatial else 0.35)
    ax.set_title(title)
    ax.axis("off")


def show_mis_order(ax, image: np.ndarray, side: int, taken: Sequence[int], title: str = ""):
    """The MIS picks numbered in the order the greedy walk took them."""
    ax.imshow(image)
    for k, i in enumerate(taken):
        x, y = _centre(i, side, image)
        ax.text(x, y, str(k + 1), color="white", fontsize=6, ha="center", va="center",
                bbox=dict(boxstyle="round,pad=0.1", fc=ROLE_COLOURS[Role.MIS], ec="none", alpha=0.85))
    ax.set_title(title)
    ax.axis("off")
