"""Hypothesis strategies for D2Pruner inputs, public so that users can property-test their own code.

The strategies draw small but adversarial items: tied importance scores (from a small palette),
duplicated and zero feature vectors, several views, every config switch. Two backends may compute
cosine similarities in different precisions, so the strategies keep every fused similarity at
least :data:`MARGIN` away from the edge threshold: the threshold is moved into the nearest gap of
the item's fused-similarity values when the requested one is too close. Every value is exactly
representable in float32, so float32 and float64 backends see the same numbers.

:func:`near_threshold_batches` does the opposite on purpose: it puts the threshold exactly on one
pair's fused similarity (as float64 or float32 arithmetic computes it) or a few ulps beside it, with
features exactly representable in a drawn dtype (float16, bfloat16, float32 or float64), so that
the backends' exact edge rule (:func:`d2pruner.spec.decide_edges`) is exercised where float
arithmetic alone would disagree.

Examples
--------
>>> from hypothesis import given, settings
>>> @settings(max_examples=5, database=None)
... @given(selection_cases())
... def check(case):
...     assert 1 <= case.n_keep <= len(case.layout) == case.attn.shape[0]
>>> check()
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from hypothesis import strategies as st

from d2pruner.reference.graph import cosine_similarity
from d2pruner.spec import D2PrunerConfig, TokenLayout, spatially_adjacent

__all__ = ["FEATURE_DTYPES", "MARGIN", "SelectionCase", "batches", "configs", "fused_similarity", "layouts",
           "near_threshold_batches", "safe_threshold", "selection_cases"]

#: Minimum distance between any fused similarity and the edge threshold in generated cases.
MARGIN = 1e-4

# Score palettes: few distinct values so that ties are common; all exact in float32.
_ATTN_PALETTE = [0.0, 0.0625, 0.125, 0.25, 0.375, 0.5, 1.0, 3.0]
_PRIOR_PALETTE = [0.03125, 0.125, 0.25, 0.5, 1.0, 2.0]


@dataclasses.dataclass(frozen=True, eq=False)
class SelectionCase:
    """One item's inputs: ``attn`` (N,), ``prior`` (N,) or None, ``features`` (N, D), a layout, a budget
    and the config (all arrays float64 holding float32-exact values)."""

    attn: np.ndarray
    prior: np.ndarray | None
    features: np.ndarray
    layout: TokenLayout
    n_keep: int
    config: D2PrunerConfig

    @property
    def n_tokens(self) -> int:
        return int(self.attn.shape[0])


@st.composite
def layouts(draw, max_tokens: int = 48) -> TokenLayout:
    """A single grid (LLaVA-like) or an InternVL-like tile canvas with its thumbnail, at most
    ``max_tokens`` tokens."""
    if draw(st.booleans()):
        h = draw(st.integers(1, max(1, min(8, max_tokens))))
        w = draw(st.integers(1, max(1, min(8, max_tokens // h))))
        return TokenLayout.grid(h, w)
    side = draw(st.integers(1, 3))
    per = side * side
    max_tiles = max(1, max_tokens // per - 1)
    rows = draw(st.integers(1, max(1, min(3, max_tiles))))
    cols = draw(st.integers(1, max(1, min(3, max_tiles // rows))))
    return TokenLayout.internvl(rows, cols, tile_side=side)


def fused_similarity(features: np.ndarray, layout: TokenLayout, spatial_weight: float, spatial_radius: int) -> np.ndarray:
    """``(1 - w) * cos + w * adjacent`` for all pairs i < j, float64 (what the edge rule compares to theta)."""
    sem = cosine_similarity(features)
    v, r, c = layout.view, layout.row, layout.col
    adj = spatially_adjacent(v[:, None], r[:, None], c[:, None], v[None], r[None], c[None], spatial_radius)
    fused = (1.0 - spatial_weight) * sem + spatial_weight * adj
    return fused[np.triu_indices(len(layout), k=1)]


def safe_threshold(values: np.ndarray, preferred: float, margin: float = MARGIN) -> float:
    """The threshold closest to ``preferred`` that is at least ``margin`` away from every value.

    Examples
    --------
    >>> round(safe_threshold(np.array([0.5, 0.80001]), 0.8), 6)
    0.79981
    >>> safe_threshold(np.array([0.5]), 0.8)
    0.8
    """
    vals = np.unique(values)
    if vals.size == 0 or np.abs(vals - preferred).min() >= margin:
        return float(preferred)
    # Feasible open intervals between consecutive values (and beyond both ends).
    edges = np.concatenate([[-math.inf], vals, [math.inf]])
    best = None
    for lo, hi in zip(edges[:-1], edges[1:]):
        a, b = lo + 2 * margin, hi - 2 * margin  # 2x: room for the float32 rounding below
        if a > b:
            continue
        t = min(max(preferred, a), b)
        t = float(np.float32(t))  # keep it representable, then re-check the margin
        if np.abs(vals - t).min() < margin:
            continue
        if best is None or abs(t - preferred) < abs(best - preferred):
            best = t
    assert best is not None  # beyond the largest value there is always room
    return best


@st.composite
def configs(draw) -> D2PrunerConfig:
    """A config with every switch drawn (the threshold is provisional: cases move it off the data)."""
    w = draw(st.sampled_from([0.0, 0.5, 0.25, 1.0]) | st.floats(0.0, 1.0, width=32))
    return D2PrunerConfig(
        pivot_ratio=draw(st.sampled_from([0.7, 0.0, 0.5, 1.0]) | st.floats(0.0, 1.0, width=32)),
        sim_threshold=draw(st.sampled_from([0.8, 0.5, 0.0, 0.95]) | st.floats(-1.0, 1.5, width=32)),
        spatial_weight=w,
        spatial_radius=draw(st.sampled_from([1, 0, 2])),
        eps=draw(st.sampled_from([1e-7, 0.0, 0.5])),
        pivots_block_neighbours=draw(st.booleans()),
    )


@st.composite
def _item(draw, n: int, d: int, prior_kind: str):
    # Features: small integers (many exact duplicates, zero rows, opposite vectors) or float32 values.
    if draw(st.booleans()):
        palette = draw(st.lists(st.lists(st.integers(-2, 2), min_size=d, max_size=d), min_size=1, max_size=6))
        features = np.array([draw(st.sampled_from(palette)) for _ in range(n)], dtype=np.float64)
    else:
        flat = draw(st.lists(st.floats(-4.0, 4.0, width=32), min_size=n * d, max_size=n * d))
        features = np.array(flat, dtype=np.float64).reshape(n, d)
    attn_kind = draw(st.sampled_from(["palette", "near-ties", "free"]))
    if attn_kind == "palette":
        attn = np.array(draw(st.lists(st.sampled_from(_ATTN_PALETTE), min_size=n, max_size=n)), dtype=np.float64)
    elif attn_kind == "near-ties":  # values a few float32 ulps apart: ties in float32 arithmetic, not in float64
        base = np.float32(draw(st.floats(0.0009765625, 1.0, width=32)))
        ulps = np.array(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)), dtype=np.int32)
        attn = (base.view(np.int32) + ulps).view(np.float32).astype(np.float64)
    else:
        attn = np.array(draw(st.lists(st.floats(0.0, 1.0, width=32), min_size=n, max_size=n)), dtype=np.float64)
    if prior_kind == "none":
        prior = None
    elif prior_kind == "uniform":
        prior = np.full(n, draw(st.sampled_from(_PRIOR_PALETTE)), dtype=np.float64)
    else:
        prior = np.array(draw(st.lists(st.sampled_from(_PRIOR_PALETTE) | st.floats(0.0009765625, 4.0, width=32),
                                       min_size=n, max_size=n)), dtype=np.float64)
    return attn, prior, features


@st.composite
def batches(draw, min_items: int = 1, max_items: int = 4, max_tokens: int = 48) -> list[SelectionCase]:
    """Items of different sizes sharing one config and feature width (as in one model batch)."""
    config = draw(configs())
    d = draw(st.integers(1, 6))
    prior_kind = draw(st.sampled_from(["none", "uniform", "varied"]))
    raw = []
    for _ in range(draw(st.integers(min_items, max_items))):
        layout = draw(layouts(max_tokens))
        n = len(layout)
        attn, prior, features = draw(_item(n, d, prior_kind))
        n_keep = draw(st.integers(1, n) | st.sampled_from([1, n]))
        raw.append((attn, prior, features, layout, n_keep))
    values = np.concatenate([fused_similarity(f, lay, config.spatial_weight, config.spatial_radius)
                             for _, _, f, lay, _ in raw] + [np.zeros(0)])
    config = dataclasses.replace(config, sim_threshold=safe_threshold(values, config.sim_threshold))
    return [SelectionCase(a, p, f, lay, k, config) for a, p, f, lay, k in raw]


def selection_cases(max_tokens: int = 48) -> st.SearchStrategy[SelectionCase]:
    """One item (a batch of one)."""
    return batches(1, 1, max_tokens).map(lambda b: b[0])


#: The feature dtypes :func:`near_threshold_batches` draws, by torch name.
FEATURE_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _float32_fused(features: np.ndarray, layout: TokenLayout, w: float, radius: int) -> np.ndarray:
    """The fused similarities as a float32 Gram matrix scaled by row then column norms computes them."""
    x = features.astype(np.float32)
    inv = (1.0 / np.maximum(np.linalg.norm(x, axis=1), np.float32(1e-12))).astype(np.float32)
    cos = (x @ x.T) * inv[:, None] * inv[None, :]
    v, r, c = layout.view, layout.row, layout.col
    adj = spatially_adjacent(v[:, None], r[:, None], c[:, None], v[None], r[None], c[None], radius)
    fused = np.float32(1.0 - w) * cos + np.float32(w) * adj.astype(np.float32)
    return np.concatenate([fused[np.triu_indices(len(layout), k=1)], fused[np.tril_indices(len(layout), k=-1)]])


@st.composite
def _exact_features(draw, n: int, d: int, dtype: str) -> np.ndarray:
    """(n, d) float64 features whose values are exact in ``dtype``: duplicated small-integer rows (cosines
    such as exactly 4/5) or free values of that precision."""
    kind = draw(st.sampled_from(["palette", "free"]))
    if kind == "palette":
        palette = draw(st.lists(st.lists(st.integers(-3, 3), min_size=d, max_size=d), min_size=1, max_size=6))
        return np.array([draw(st.sampled_from(palette)) for _ in range(n)], dtype=np.float64)
    if dtype in ("float16", "bfloat16"):  # k / 8 with |k| <= 64: 7 significant bits, exact in both
        flat = draw(st.lists(st.integers(-64, 64), min_size=n * d, max_size=n * d))
        return np.array(flat, dtype=np.float64).reshape(n, d) / 8.0
    width = 32 if dtype == "float32" else 64
    flat = draw(st.lists(st.floats(-4.0, 4.0, width=width), min_size=n * d, max_size=n * d))
    return np.array(flat, dtype=np.float64).reshape(n, d)


@st.composite
def near_threshold_batches(draw, min_items: int = 1, max_items: int = 3, max_tokens: int = 24):
    """``(cases, dtype)``: a batch whose threshold sits on, or up to 2 ulps (float64 or float32) beside,
    the fused similarity of one of its pairs, and the feature dtype (one of :data:`FEATURE_DTYPES`) in
    which every feature value is exact.

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> @settings(max_examples=5, database=None)
    ... @given(near_threshold_batches())
    ... def check(drawn):
    ...     cases, dtype = drawn
    ...     assert dtype in FEATURE_DTYPES and len({c.config for c in cases}) == 1
    >>> check()
    """
    config = draw(configs())
    dtype = draw(st.sampled_from(FEATURE_DTYPES))
    d = draw(st.integers(1, 4))
    prior_kind = draw(st.sampled_from(["none", "uniform", "varied"]))
    raw = []
    for _ in range(draw(st.integers(min_items, max_items))):
        layout = draw(layouts(max_tokens))
        n = len(layout)
        attn, prior, _ = draw(_item(n, 1, prior_kind))
        features = draw(_exact_features(n, d, dtype))
        n_keep = draw(st.integers(1, n) | st.sampled_from([1, n]))
        raw.append((attn, prior, features, layout, n_keep))
    w, rho = config.spatial_weight, config.spatial_radius
    values = np.concatenate([np.concatenate([fused_similarity(f, lay, w, rho), _float32_fused(f, lay, w, rho)])
                             for _, _, f, lay, _ in raw] + [np.zeros(0)])
    if values.size:
        theta = float(draw(st.sampled_from(sorted(set(values.tolist())))))
        steps = draw(st.integers(-2, 2))
        if draw(st.booleans()):  # float32 ulps
            t32 = np.float32(theta)
            for _ in range(abs(steps)):
                t32 = np.nextafter(t32, np.float32(np.sign(steps) * np.inf))
            theta = float(t32)
        else:
            for _ in range(abs(steps)):
                theta = float(np.nextafter(theta, np.sign(steps) * np.inf))
        config = dataclasses.replace(config, sim_threshold=theta)
    return [SelectionCase(a, p, f, lay, k, config) for a, p, f, lay, k in raw], dtype
