"""The one place where D2Pruner's defaults and rules are decided.

Every backend (``d2pruner.reference``, ``d2pruner.fast``) and every model hook imports its
defaults, its rounding, its rank order and its edge rule from here; none of them is written down
anywhere else. The normative description is the project's method specification (steps 1-7); this
module states it as code:

* :class:`D2PrunerConfig` -- every hyper-parameter, with its default and where it comes from.
* :class:`TokenLayout` -- the ``(view, row, col)`` position of every visual token.
* :func:`resolve_budget` and :func:`pivot_count` -- the two roundings of the method.
* :func:`rank_order` -- the total order "most important first" (score descending, index ascending).
* :func:`spatially_adjacent` and :func:`is_edge` -- the hybrid-graph edge rule; :func:`decide_edges`
  decides it exactly (:func:`cosine_thresholds`, :func:`cosine_error_bound`, :func:`cosine_exceeds`),
  the one decision both backends take for every pair.
* :func:`validate_item` -- the input checks, with errors that name the offending value.
* :class:`Role` and :class:`Selection` -- the output type.

Marks used in the field docs: **paper** (stated by the D2Pruner paper, arXiv 2512.19443) and
**choice** (a detail the paper leaves open, decided by this project; listed in ``docs/deviations.md``).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from fractions import Fraction
from typing import Any

import numpy as np

__all__ = [
    "NORM_EPS",
    "D2PrunerConfig",
    "Role",
    "Selection",
    "TokenLayout",
    "check_shapes",
    "cosine_error_bound",
    "cosine_exceeds",
    "cosine_thresholds",
    "decide_edges",
    "exact_ratio",
    "is_edge",
    "power_of_two_scale",
    "pivot_count",
    "rank_order",
    "resolve_budget",
    "spatially_adjacent",
    "validate_item",
]

#: Feature norms are clamped at this value before the cosine similarity is taken, so an all-zero
#: feature vector has cosine 0 with every token (choice; the same clamp as ``torch.nn.functional.normalize``).
#: Rows are first scaled by a power of two that brings their largest entry into [0.5, 1)
#: (:func:`power_of_two_scale`), so the clamp never touches a non-zero row and no norm overflows.
NORM_EPS = 1e-12

#: Unit roundoff of float64 (2**-53), for :func:`cosine_error_bound`.
FLOAT64_ROUNDOFF = 2.0 ** -53


def _field(default: Any, source: str, doc: str) -> Any:
    return dataclasses.field(default=default, metadata={"source": source, "doc": doc})


@dataclasses.dataclass(frozen=True)
class D2PrunerConfig:
    """Hyper-parameters of D2Pruner; every default of the method lives here.

    Parameters
    ----------
    prune_layer : int
        K, the decoder layer at whose input tokens are dropped; the attention row is read at layer
        K-1. Default 2 (paper, as reported for InternVL-2.5-8B; the same for LLaVA-1.5 is a choice).
    pivot_ratio : float
        r in [0, 1]: ``floor(r * n_keep)`` top-ranked tokens are kept as pivots. Default 0.7 (paper).
    sim_threshold : float
        theta: an edge joins i and j iff the fused similarity exceeds it (strictly). Default 0.8 (paper).
    spatial_weight : float
        w in [0, 1], the weight of spatial adjacency in the fused similarity
        ``(1 - w) * cos + w * adjacent``. Default 0.0 (general understanding); use 0.5 for
        localization (:meth:`for_localization`). Paper's fusion form; values as in public reproductions.
    spatial_radius : int
        rho >= 0: tokens of one view are adjacent when ``max(|drow|, |dcol|) <= rho``. Default 1, the
        8-neighbourhood (choice).
    eps : float
        Added to the prior before dividing: ``s = attn / (prior + eps)``. Default 1e-7 (paper).
    pivots_block_neighbours : bool
        If True, pivots enter the graph as already-selected nodes so their neighbours are unavailable
        to the MIS. Default False: the MIS runs on the remaining tokens only (choice).

    Raises
    ------
    ValueError
        If a field is outside its range; the message names the field and the value.

    Examples
    --------
    >>> D2PrunerConfig().pivot_ratio
    0.7
    >>> D2PrunerConfig.for_localization().spatial_weight
    0.5
    >>> D2PrunerConfig(sim_threshold=float("nan"))
    Traceback (most recent call last):
    ...
    ValueError: sim_threshold must be a finite number, got nan
    """

    prune_layer: int = _field(2, "paper (InternVL-2.5-8B); choice for LLaVA-1.5", "decoder layer K at whose input tokens are dropped")
    pivot_ratio: float = _field(0.7, "paper", "fraction r of the budget kept as pivots, n_p = floor(r * n_keep)")
    sim_threshold: float = _field(0.8, "paper", "edge iff (1-w)*cos + w*adjacent > theta")
    spatial_weight: float = _field(0.0, "paper's fusion form; 0.0 / 0.5 as in public reproductions", "w: weight of spatial adjacency")
    spatial_radius: int = _field(1, "choice", "Chebyshev radius of spatial adjacency (1 = 8-neighbourhood)")
    eps: float = _field(1e-7, "paper", "s = attn / (prior + eps)")
    pivots_block_neighbours: bool = _field(False, "choice", "pivots are pre-selected graph nodes whose neighbours are unavailable")

    def __post_init__(self) -> None:
        def check_int(name: str, low: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")

        def check_float(name: str, low: float, high: float, open_low: bool = False) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            if value < low or value > high or (open_low and value == low):
                bracket = "(" if open_low else "["
                raise ValueError(f"{name} must lie in {bracket}{low}, {high}], got {value!r}")

        check_int("prune_layer", 1)
        check_int("spatial_radius", 0)
        check_float("pivot_ratio", 0.0, 1.0)
        check_float("sim_threshold", -math.inf, math.inf)
        check_float("spatial_weight", 0.0, 1.0)
        check_float("eps", 0.0, math.inf)
        if not isinstance(self.pivots_block_neighbours, (bool, np.bool_)):
            raise ValueError(f"pivots_block_neighbours must be a bool, got {self.pivots_block_neighbours!r}")

    @classmethod
    def for_localization(cls, **overrides: Any) -> "D2PrunerConfig":
        """The setting for referring-expression localization: ``spatial_weight=0.5``."""
        return cls(**{"spatial_weight": 0.5, **overrides})

    @classmethod
    def field_table(cls) -> list[tuple[str, Any, str, str]]:
        """``(name, default, source, meaning)`` for every field, for docs and notebooks."""
        return [(f.name, f.default, f.metadata["source"], f.metadata["doc"]) for f in dataclasses.fields(cls)]


class Role(enum.IntEnum):
    """Why a token was kept: one of D2Pruner's three steps, or ``KEPT`` for a baseline method."""

    PIVOT = 0
    MIS = 1
    TOPUP = 2
    KEPT = 3


@dataclasses.dataclass(frozen=True, eq=False)
class TokenLayout:
    """The position ``(view, row, col)`` of each of N visual tokens, in sequence order.

    Tokens of different views are never spatial neighbours.

    Parameters
    ----------
    view, row, col : numpy.ndarray of int64, shape (N,)

    Examples
    --------
    >>> TokenLayout.grid(2, 3).as_array().tolist()
    [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0], [0, 1, 1], [0, 1, 2]]
    >>> lay = TokenLayout.internvl(tile_rows=1, tile_cols=2, tile_side=2)
    >>> len(lay), lay.n_views
    (12, 2)
    >>> lay.as_array()[[1, 4, 8]].tolist()  # 2nd token of tile 0, 1st of tile 1, 1st of thumbnail
    [[0, 0, 1], [0, 0, 2], [1, 0, 0]]
    """

    view: np.ndarray
    row: np.ndarray
    col: np.ndarray

    def __post_init__(self) -> None:
        arrays = [np.asarray(a) for a in (self.view, self.row, self.col)]
        for name, a in zip(("view", "row", "col"), arrays):
            if a.ndim != 1:
                raise ValueError(f"TokenLayout.{name} must be 1-D, got shape {a.shape}")
            if a.size and not np.issubdtype(a.dtype, np.integer):
                raise ValueError(f"TokenLayout.{name} must hold integers, got dtype {a.dtype}")
            if a.size and a.min() < 0:
                raise ValueError(f"TokenLayout.{name} must be >= 0, got {int(a.min())} at token {int(a.argmin())}")
        if not arrays[0].shape == arrays[1].shape == arrays[2].shape:
            raise ValueError(f"TokenLayout view/row/col lengths differ: {[a.shape[0] for a in arrays]}")
        positions = np.stack(arrays, axis=1).astype(np.int64) if arrays[0].size else np.zeros((0, 3), np.int64)
        _, first, counts = np.unique(positions, axis=0, return_index=True, return_counts=True)
        if (counts > 1).any():
            dup = positions[first[np.argmax(counts > 1)]].tolist()
            raise ValueError(f"TokenLayout places {int(counts.max())} tokens at the same (view, row, col) {dup}")
        for name, a in zip(("view", "row", "col"), positions.T):
            object.__setattr__(self, name, np.ascontiguousarray(a))

    def __len__(self) -> int:
        return int(self.view.shape[0])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TokenLayout) and np.array_equal(self.as_array(), other.as_array())

    __hash__ = None  # type: ignore[assignment]

    @property
    def n_views(self) -> int:
        return int(np.unique(self.view).size)

    def as_array(self) -> np.ndarray:
        """The layout as an ``(N, 3)`` int64 array of ``(view, row, col)``."""
        return np.stack([self.view, self.row, self.col], axis=1)

    @classmethod
    def from_array(cls, positions: Any) -> "TokenLayout":
        """Build from an ``(N, 3)`` array-like of ``(view, row, col)``."""
        a = np.asarray(positions)
        if a.ndim != 2 or a.shape[1] != 3:
            raise ValueError(f"a layout array must have shape (N, 3), got {a.shape}")
        return cls(a[:, 0], a[:, 1], a[:, 2])

    @classmethod
    def grid(cls, height: int, width: int, view: int = 0) -> "TokenLayout":
        """One view of ``height x width`` tokens in row-major order (LLaVA-1.5: 24 x 24)."""
        for name, v in (("height", height), ("width", width)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"grid {name} must be a positive integer, got {v!r}")
        rows, cols = np.divmod(np.arange(height * width, dtype=np.int64), width)
        return cls(np.full(height * width, view, np.int64), rows, cols)

    @classmethod
    def concat(cls, layouts: "list[TokenLayout]") -> "TokenLayout":
        """Tokens of several layouts in sequence; each layout's views get new, distinct view numbers.

        >>> TokenLayout.concat([TokenLayout.grid(1, 2), TokenLayout.grid(1, 1)]).as_array().tolist()
        [[0, 0, 0], [0, 0, 1], [1, 0, 0]]
        """
        views, offset = [], 0
        for lay in layouts:
            _, renumbered = np.unique(lay.view, return_inverse=True)
            views.append(renumbered.astype(np.int64) + offset)
            offset += lay.n_views
        return cls(np.concatenate(views), np.concatenate([x.row for x in layouts]), np.concatenate([x.col for x in layouts]))

    @classmethod
    def internvl(cls, tile_rows: int, tile_cols: int, tile_side: int = 16, thumbnail: bool | None = None) -> "TokenLayout":
        """InternVL-2.5's dynamic-tiling sequence: tiles row-major on one canvas view, thumbnail last.

        Tile ``(tr, tc)`` puts its token ``(r, c)`` at canvas ``(tr * tile_side + r, tc * tile_side + c)``
        in view 0; the thumbnail is a separate ``tile_side x tile_side`` view 1. InternVL appends the
        thumbnail only when there is more than one tile, which is the default (``thumbnail=None``).
        """
        for name, v in (("tile_rows", tile_rows), ("tile_cols", tile_cols), ("tile_side", tile_side)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if thumbnail is None:
            thumbnail = tile_rows * tile_cols > 1
        per_tile = tile_side * tile_side
        t = np.arange(tile_rows * tile_cols * per_tile, dtype=np.int64)
        tile, within = np.divmod(t, per_tile)
        tr, tc = np.divmod(tile, tile_cols)
        r, c = np.divmod(within, tile_side)
        view, row, col = np.zeros_like(t), tr * tile_side + r, tc * tile_side + c
        if thumbnail:
            thumb = cls.grid(tile_side, tile_side, view=1)
            view, row, col = (np.concatenate(p) for p in ((view, thumb.view), (row, thumb.row), (col, thumb.col)))
        return cls(view, row, col)


def exact_ratio(ratio: float) -> Fraction:
    """The ratio as the exact decimal it was written as (``0.7 -> 7/10``), so that products with token
    counts are not off by one through binary rounding (``0.7 * 90`` is ``62.99999999999999`` in floats)."""
    return Fraction(repr(float(ratio)))


def round_half_up(x: float) -> int:
    """``x`` rounded to the nearest integer, halves up: the package's one rounding of counts (Python's
    ``round`` sends halves to the even neighbour).

    >>> round_half_up(176.5), round_half_up(2.5), round_half_up(2.4999)
    (177, 3, 2)
    """
    return int(np.floor(x + 0.5))


def resolve_budget(budget: int | float, n_tokens: int, item: int = 0) -> int:
    """Turn a budget into a token count ``n_keep`` for an item with ``n_tokens`` visual tokens.

    An ``int`` is a count and must satisfy ``1 <= budget <= n_tokens``. A ``float`` is a ratio in
    (0, 1] and resolves to ``max(1, round(ratio * n_tokens))`` with halves rounded up, computed exactly
    on the ratio's decimal value (choice).

    Parameters
    ----------
    budget : int or float
    n_tokens : int
        N, the number of visual tokens of the item.
    item : int
        Index of the item in its batch; used in error messages only.

    Raises
    ------
    ValueError
        If the count is out of range or the ratio outside (0, 1].

    Examples
    --------
    >>> resolve_budget(64, 576), resolve_budget(0.25, 576), resolve_budget(0.1, 3328)
    (64, 144, 333)
    >>> resolve_budget(0.5, 5), resolve_budget(0.01, 20)
    (3, 1)
    >>> resolve_budget(700, 576, item=1)
    Traceback (most recent call last):
    ...
    ValueError: n_keep=700 exceeds the 576 visual tokens of item 1
    """
    if isinstance(budget, (bool, np.bool_)):
        raise ValueError(f"budget must be an int count or a float ratio, got {budget!r} for item {item}")
    if isinstance(budget, (int, np.integer)):
        n_keep = int(budget)
        if n_keep > n_tokens:
            raise ValueError(f"n_keep={n_keep} exceeds the {n_tokens} visual tokens of item {item}")
        if n_keep < 1:
            raise ValueError(f"n_keep={n_keep} must be at least 1 (item {item})")
        return n_keep
    if isinstance(budget, (float, np.floating)):
        if not (math.isfinite(budget) and 0.0 < budget <= 1.0):
            raise ValueError(f"budget ratio {budget!r} of item {item} must lie in (0, 1]")
        return max(1, math.floor(exact_ratio(budget) * n_tokens + Fraction(1, 2)))
    raise ValueError(f"budget must be an int count or a float ratio, got {budget!r} ({type(budget).__name__}) for item {item}")


def pivot_count(n_keep: int, pivot_ratio: float) -> int:
    """``n_p = floor(r * n_keep)``, exact on the ratio's decimal value (paper r, choice floor).

    Examples
    --------
    >>> pivot_count(64, 0.7), pivot_count(10, 0.7), pivot_count(1, 0.7)
    (44, 7, 0)
    """
    return math.floor(exact_ratio(pivot_ratio) * int(n_keep))


def rank_order(scores: Any) -> Any:
    """Token indices, most important first: ``scores`` descending, ties by index ascending.

    Works on a numpy array (returns int64 indices) and on a torch tensor, sorting along the last
    dimension (returns a LongTensor). ``-0.0`` ranks equal to ``0.0``. Scores must not be NaN.

    Examples
    --------
    >>> rank_order(np.array([0.2, 0.5, 0.2, 0.9])).tolist()
    [3, 1, 0, 2]
    >>> import torch
    >>> rank_order(torch.tensor([[0.2, 0.5, 0.2, 0.9]])).tolist()
    [[3, 1, 0, 2]]
    """
    if isinstance(scores, np.ndarray):
        s = scores + 0.0  # -0.0 + 0.0 == +0.0: one representation of zero
        return np.lexsort((np.arange(s.shape[-1]), -s)).astype(np.int64)
    import torch

    if isinstance(scores, torch.Tensor):
        # A stable sort keeps equal scores in index order; descending=True with stable=True preserves it.
        return torch.sort(scores + 0.0, dim=-1, descending=True, stable=True).indices
    raise TypeError(f"rank_order expects a numpy array or a torch tensor, got {type(scores).__name__}")


def spatially_adjacent(view_a: Any, row_a: Any, col_a: Any, view_b: Any, row_b: Any, col_b: Any, radius: int) -> Any:
    """1 where two positions are in the same view within Chebyshev distance ``radius``, else 0.

    Broadcasts over numpy arrays or torch tensors alike. A token is adjacent to itself here; the
    graph never has self-loops (see :func:`is_edge`'s callers).

    Examples
    --------
    >>> lay = TokenLayout.grid(3, 3)
    >>> v, r, c = lay.view, lay.row, lay.col
    >>> spatially_adjacent(v[4], r[4], c[4], v, r, c, 1).astype(int).tolist()  # centre of 3x3
    [1, 1, 1, 1, 1, 1, 1, 1, 1]
    >>> spatially_adjacent(v[0], r[0], c[0], v, r, c, 1).astype(int).tolist()  # corner
    [1, 1, 0, 1, 1, 0, 0, 0, 0]
    """
    return (view_a == view_b) & (abs(row_a - row_b) <= radius) & (abs(col_a - col_b) <= radius)


def is_edge(cosine: Any, adjacent: Any, config: D2PrunerConfig) -> Any:
    """The hybrid-graph edge rule: ``(1 - w) * cosine + w * adjacent > theta`` (strict).

    ``cosine`` and ``adjacent`` (0/1 or bool) broadcast; numpy or torch. Callers exclude i == j.

    Examples
    --------
    >>> cfg = D2PrunerConfig.for_localization()  # w = 0.5, theta = 0.8
    >>> is_edge(np.array([0.55, 0.65, 0.99]), np.array([1, 1, 0]), cfg).tolist()
    [False, True, False]
    >>> is_edge(np.array([0.79, 0.81]), np.array([1, 1]), D2PrunerConfig()).tolist()  # w = 0
    [False, True]
    """
    w = float(config.spatial_weight)
    if w == 0.0:
        return cosine > float(config.sim_threshold)  # identical to the formula: 1.0 * c + 0.0 * a == c
    if type(adjacent).__module__.startswith("torch") and hasattr(cosine, "dtype"):
        adjacent = adjacent.to(cosine.dtype)  # a bool tensor * 1.0 would be float32 and round w
    else:
        adjacent = adjacent * 1.0
    return (1.0 - w) * cosine + w * adjacent > float(config.sim_threshold)


def cosine_thresholds(config: D2PrunerConfig) -> tuple[Any, Any]:
    """The edge rule as a bound on the cosine: ``(t_apart, t_adjacent)`` such that i and j are joined
    iff ``cos(f_i, f_j) > t`` (the first for pairs that are not spatially adjacent, the second for
    adjacent ones).

    The rule ``(1 - w) * cos + w * adjacent > theta`` is taken in exact arithmetic on the binary values
    of w and theta (choice), so ``t = (theta - w * adjacent) / (1 - w)`` is an exact ``Fraction``; with
    w = 1 the cosine drops out and ``t`` is ``-inf`` (always joined) or ``inf`` (never).

    Examples
    --------
    >>> cosine_thresholds(D2PrunerConfig(sim_threshold=0.5))
    (Fraction(1, 2), Fraction(1, 2))
    >>> [float(t) for t in cosine_thresholds(D2PrunerConfig.for_localization())]  # 0.8 / 0.5, 0.3 / 0.5
    [1.6, 0.6000000000000001]
    >>> cosine_thresholds(D2PrunerConfig(spatial_weight=1.0, sim_threshold=0.5))
    (inf, -inf)
    """
    w, theta = Fraction(config.spatial_weight), Fraction(config.sim_threshold)
    if w == 1:
        return tuple(-math.inf if a > theta else math.inf for a in (0, 1))
    return tuple((theta - w * a) / (1 - w) for a in (0, 1))


def cosine_error_bound(d: int, unit_roundoff: float) -> float:
    """A bound on ``|computed cos - exact cos|`` when rows of width ``d`` are scaled by
    :func:`power_of_two_scale`, normalised and multiplied in an arithmetic of unit roundoff at most
    ``unit_roundoff`` (2**-53 for float64, 2**-24 for float32): ``4 (d + 8) u``, twice the sum of the
    classical bounds of the normalisation (``(d + 4) u``) and of the dot product (``d u / (1 - d u)``).

    Examples
    --------
    >>> cosine_error_bound(3, FLOAT64_ROUNDOFF) < 1e-14, round(cosine_error_bound(4096, 2.0 ** -24), 6)
    (True, 0.000978)
    """
    return 4.0 * (int(d) + 8) * float(unit_roundoff) + 1e-30


def power_of_two_scale(max_abs: Any) -> Any:
    """The exponent ``e`` such that ``x * 2**-e`` has its largest entry in [0.5, 1) (0 for a zero row).

    Works on numpy arrays and torch tensors of row maxima; scaling by a power of two is exact, and a
    cosine does not change when a row is scaled, so norms can neither overflow nor underflow.

    >>> power_of_two_scale(np.array([1e200, 3.0, 0.0])).tolist()
    [665, 2, 0]
    """
    if isinstance(max_abs, np.ndarray):
        return np.frexp(max_abs)[1]
    import torch

    return torch.frexp(max_abs).exponent


def _integer_row(row: np.ndarray) -> list[int]:
    """The row as integers times one power of two (exact): ``row == ints * 2**e`` for some e."""
    mant, exp = np.frexp(np.asarray(row, dtype=np.float64))
    ints = (mant * 2.0 ** 53).astype(np.int64)  # exact: 53-bit mantissas
    nz = ints != 0
    if not nz.any():
        return [0] * len(ints)
    base = int(exp[nz].min())
    return [int(m) << (int(e) - base) if m else 0 for m, e in zip(ints.tolist(), exp.tolist())]


def cosine_exceeds(f_i: Any, f_j: Any, t: Any) -> bool:
    """Exactly whether ``cos(f_i, f_j) > t``, on the exact binary values of two feature rows.

    A zero row has cosine 0. Decided in integer arithmetic without a square root:
    ``cos > t  <=>  p > t * sqrt(a * b)`` with ``p = f_i . f_j``, ``a = |f_i|^2``, ``b = |f_j|^2``.

    Examples
    --------
    >>> cosine_exceeds([1.0, 2.0], [2.0, 1.0], 0.8)  # cos = 4/5 exactly, below the float 0.8
    False
    >>> cosine_exceeds([1.0, 2.0], [2.0, 1.0], Fraction(4, 5)), cosine_exceeds([1.0, 2.0], [2.0, 1.0], Fraction(79, 100))
    (False, True)
    """
    if isinstance(t, float) and math.isinf(t):
        return t < 0
    x, y = _integer_row(f_i), _integer_row(f_j)
    a, b = sum(v * v for v in x), sum(v * v for v in y)
    p = sum(u * v for u, v in zip(x, y)) if a and b else 0
    t = Fraction(t)
    lhs, rhs_sq = p * t.denominator, t.numerator * t.numerator * a * b  # cos > t  <=>  lhs > num * sqrt(a b)
    if t.numerator >= 0:
        return lhs > 0 and lhs * lhs > rhs_sq
    return lhs >= 0 or lhs * lhs < rhs_sq


def decide_edges(cosine: Any, adjacent: Any, config: D2PrunerConfig, bound: float) -> tuple[Any, Any]:
    """The edge decision on computed cosines: ``(edge, unsure)``, numpy or torch, broadcasting.

    ``unsure`` marks the pairs whose computed cosine lies within ``3 * bound`` (``bound`` from
    :func:`cosine_error_bound`, 3 covering the rounding of t) of t (:func:`cosine_thresholds`, t by
    ``adjacent``; ``adjacent=None``: no pair is adjacent): there float arithmetic cannot decide, and
    the caller decides each with :func:`cosine_exceeds` on the features. Elsewhere ``edge`` is the
    decision, ``cosine > t`` (it is False on unsure pairs). Every pair is decided once, for i < j, and the
    graph mirrored: the rule is symmetric by construction.

    Examples
    --------
    >>> edge, unsure = decide_edges(np.array([0.5, 0.8, 0.9]), None, D2PrunerConfig(), 1e-9)
    >>> edge.tolist(), unsure.tolist()  # 0.8 is too close to call: decide it exactly
    ([False, False, True], [False, True, False])
    """
    t_apart, t_adj = (float(t) for t in cosine_thresholds(config))
    if adjacent is None or t_apart == t_adj:
        t = t_apart
    elif isinstance(adjacent, np.ndarray) or not hasattr(adjacent, "dtype"):
        t = np.where(adjacent, t_adj, t_apart)
    else:
        import torch

        t = torch.where(adjacent, torch.tensor(t_adj, dtype=cosine.dtype, device=cosine.device),
                        torch.tensor(t_apart, dtype=cosine.dtype, device=cosine.device))  # t in the cosine's own precision
    # |cos| <= 1 + bound, so only a t with |t| < 2 can be near; 3 * bound covers the ulp of float(t).
    edge = cosine > t + 3.0 * bound  # surely an edge
    unsure = (cosine >= t - 3.0 * bound) ^ edge  # within 3 * bound of t (two comparisons, no float temporary)
    return edge, unsure


def _finite_report(name: str, a: np.ndarray, item: int) -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        where = np.argwhere(bad)[0].tolist()
        raise ValueError(f"{name} of item {item} contains {float(a[tuple(where)])!r} at index {where if len(where) > 1 else where[0]}")


def check_shapes(attn_shape: tuple, prior_shape: tuple | None, features_shape: tuple, n_layout: int, item: int = 0) -> None:
    """Check that one item's shapes agree: attn (N,), prior (N,) or None, features (N, D), N layout tokens.

    Examples
    --------
    >>> check_shapes((4,), None, (4, 8), 3, item=2)
    Traceback (most recent call last):
    ...
    ValueError: layout of item 2 covers 3 tokens, but the item has 4 visual tokens
    """
    attn_shape, features_shape = tuple(attn_shape), tuple(features_shape)
    if len(attn_shape) != 1:
        raise ValueError(f"attn of item {item} must be 1-D (N,), got shape {attn_shape}")
    n = attn_shape[0]
    if n == 0:
        raise ValueError(f"item {item} has no visual tokens (attn has shape {attn_shape})")
    if prior_shape is not None and tuple(prior_shape) != (n,):
        raise ValueError(f"prior of item {item} has shape {tuple(prior_shape)}, expected ({n},) to match attn")
    if len(features_shape) != 2 or features_shape[0] != n or features_shape[1] < 1:
        raise ValueError(f"features of item {item} have shape {features_shape}, expected ({n}, D) with D >= 1")
    if n_layout != n:
        raise ValueError(f"layout of item {item} covers {n_layout} tokens, but the item has {n} visual tokens")


def validate_item(attn: Any, prior: Any, features: Any, layout: TokenLayout, n_keep: int, item: int = 0) -> None:
    """Check one item's inputs; raise ``ValueError`` naming the offending value and the item.

    Parameters
    ----------
    attn : array-like, shape (N,)
        Finite and >= 0.
    prior : array-like, shape (N,), or None
        Finite and > 0.
    features : array-like, shape (N, D)
        Finite, D >= 1.
    layout : TokenLayout
        Must hold exactly N tokens.
    n_keep : int
        1 <= n_keep <= N.
    item : int
        The item's index in its batch, for the messages.

    Examples
    --------
    >>> validate_item(np.array([0.5, -1.0]), None, np.ones((2, 3)), TokenLayout.grid(1, 2), 1, item=3)
    Traceback (most recent call last):
    ...
    ValueError: attn of item 3 is negative (-1.0) at index 1
    """
    attn = np.asarray(attn)
    features = np.asarray(features)
    if not isinstance(layout, TokenLayout):
        raise ValueError(f"layout of item {item} must be a TokenLayout, got {type(layout).__name__}")
    check_shapes(attn.shape, None if prior is None else np.shape(prior), features.shape, len(layout), item)
    n = attn.shape[0]
    _finite_report("attn", attn, item)
    if (attn < 0).any():
        i = int(np.argmax(attn < 0))
        raise ValueError(f"attn of item {item} is negative ({float(attn[i])!r}) at index {i}")
    if prior is not None:
        prior = np.asarray(prior)
        _finite_report("prior", prior, item)
        if (prior <= 0).any():
            i = int(np.argmax(prior <= 0))
            raise ValueError(f"prior of item {item} must be > 0, got {float(prior[i])!r} at index {i}")
    _finite_report("features", features, item)
    if isinstance(n_keep, (bool, np.bool_)) or not isinstance(n_keep, (int, np.integer)):
        raise ValueError(f"n_keep of item {item} must be an int token count, got {n_keep!r}; resolve ratios with resolve_budget")
    resolve_budget(int(n_keep), n, item)


@dataclasses.dataclass(frozen=True, eq=False)
class Selection:
    """The result for one item: kept token indices (ascending) and the role of each.

    Attributes
    ----------
    kept : numpy.ndarray of int64, shape (n_keep,)
        Kept indices into the item's visual tokens, sorted ascending.
    roles : numpy.ndarray of int8, shape (n_keep,)
        ``Role`` code of each kept token (aligned with ``kept``).
    """

    kept: np.ndarray
    roles: np.ndarray

    def __post_init__(self) -> None:
        kept = np.asarray(self.kept, dtype=np.int64)
        roles = np.asarray(self.roles, dtype=np.int8)
        if kept.shape != roles.shape or kept.ndim != 1:
            raise ValueError(f"kept {kept.shape} and roles {roles.shape} must be 1-D of one length")
        order = np.argsort(kept, kind="stable")
        object.__setattr__(self, "kept", kept[order])
        object.__setattr__(self, "roles", roles[order])

    def __len__(self) -> int:
        return int(self.kept.shape[0])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Selection) and np.array_equal(self.kept, other.kept) and np.array_equal(self.roles, other.roles)

    __hash__ = None  # type: ignore[assignment]

    def indices(self, role: Role) -> np.ndarray:
        """Kept indices whose role is ``role``, ascending."""
        return self.kept[self.roles == int(role)]

    def counts(self) -> dict[str, int]:
        """Number of kept tokens per role name (``kept``, the baselines' role, only when present)."""
        counts = {r.name.lower(): int((self.roles == int(r)).sum()) for r in Role}
        if not counts["kept"]:
            del counts["kept"]
        return counts

    def __repr__(self) -> str:
        return f"Selection(kept={self.kept.tolist()}, roles={[Role(int(r)).name.lower() for r in self.roles]})"
