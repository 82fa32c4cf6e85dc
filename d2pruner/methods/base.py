"""The method interface: where a method prunes, what it reads, and how it selects.

A method is a frozen dataclass deriving from :class:`Method`. It declares

* where it prunes: ``default_layer`` -- 0 = before the LLM (the kept tokens are renumbered as if the
  image placeholders had been shortened), K > 0 = at the input of decoder layer K -- or, for a
  ``progressive`` method, its own ``stage_layers(n_layers)`` and ``stage_budgets(...)``;
* what it reads beyond the hidden states entering the cut (:attr:`Method.needs`, a set of
  :class:`Need`); the model layer captures exactly those (one probe per need) and fills the matching
  fields of :class:`ItemInputs`;
* ``select(items, n_keep) -> list[Selection]``, one :class:`~d2pruner.spec.Selection` (or
  :class:`MergedSelection`) per item, keeping exactly ``n_keep[i]`` of item ``i``'s tokens.

Each method module also exports its rule as a public batched function on plain tensors
(``fastv_selection``, ``dart_selection``, ...). A method joins the registry by the :func:`register`
decorator in its own module; the modules of :mod:`d2pruner.methods` are discovered on first use, so a
new method is one file (plus its tests and docs).

>>> m = get_method("fastv")
>>> m.default_layer, sorted(n.value for n in m.needs), m.schedule(32, 576, 64)
(2, ['attention'], [(0, 576), (2, 64)])
>>> get_method("divprune").schedule(32, 576, 64)
[(0, 64)]
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch

from d2pruner.spec import Role, Selection

__all__ = ["ItemInputs", "MergedSelection", "Method", "Need", "get_method", "kept_selection", "method_names",
           "method_class", "register"]


class Need(str, enum.Enum):
    """What a method reads besides the hidden states entering its cut (``ItemInputs.features``).

    Each value names the :class:`ItemInputs` fields it fills:

    * ``ATTENTION`` -- ``attn``: the last token's attention row at the layer before the cut (or at the
      stage layer itself for ``scores_at_stage_layer``), softmax over the full causal key length, mean
      over heads; exists only inside the LLM.
    * ``PRIOR`` -- ``prior``: the positional-bias prior, one value per visual token (``None`` when the
      user gives none; the method then runs un-debiased).
    * ``KEYS`` -- ``key_norms``, ``text_key_norms``, ``normed_features``, ``text_features``,
      ``positions``, ``text_positions``: L1 norms of the keys of the layer before the cut (after RoPE),
      the hidden states after the LLM's final norm, and the sequence positions (counted over the
      item's real tokens, 0 = its first), of the visual tokens and of the real text tokens after the
      item's image.
    * ``VISION_FEATURES`` -- ``vision_features`` and ``project``: the visual tokens as the projector
      receives them, and the projector; before the LLM only.
    * ``CLS_ATTENTION`` -- ``cls_attention``, ``vision_keys``: the [CLS] attention and head-averaged keys
      of the vision layer the model projects.
    * ``INSTRUCTION`` -- ``instruction``: the item's instruction text (``handle.set_instructions``).
    * ``TEXT_TOWER`` -- not a field: the method has a ``text_tower`` attribute still unset, which the
      model family must supply (CLIP's for LLaVA) or refuse.
    * ``TOKEN_KEY`` -- ``token_key``: a CRC-32 of the item's real token ids.
    * ``RATER_ATTENTION`` -- ``rater_attention``: the attention rows of the item's text raters at the
      layer before each cut (SparseVLM); the method chooses its raters with a method
      ``raters(visual (N, H), text (T, H)) -> indices into text``, called on the LLM's input embeddings.
    """

    ATTENTION = "attention"
    PRIOR = "prior"
    KEYS = "keys"
    VISION_FEATURES = "vision_features"
    CLS_ATTENTION = "cls_attention"
    INSTRUCTION = "instruction"
    TEXT_TOWER = "text_tower"
    TOKEN_KEY = "token_key"
    RATER_ATTENTION = "rater_attention"


#: Needs that exist only inside the LLM (a method with one of them cannot prune at layer 0).
INSIDE_LLM = frozenset({Need.ATTENTION, Need.KEYS, Need.RATER_ATTENTION})
#: Needs that exist only before the LLM (the vision side is consumed when the LLM starts).
BEFORE_LLM = frozenset({Need.VISION_FEATURES, Need.CLS_ATTENTION})


@dataclasses.dataclass(frozen=True, eq=False)
class ItemInputs:
    """What a method sees for one item (tensors on the model's device). ``attn`` (N,), ``features``
    (N, D) -- the hidden states entering the cut -- the layout and ``prior`` (N,) or None are always
    present; every other field is filled only for a method that declares the :class:`Need` naming it
    (shapes: N visual tokens, T text tokens after the image, R raters, Dv vision width)."""

    attn: torch.Tensor | None
    features: torch.Tensor
    layout: Any
    prior: torch.Tensor | None
    key_norms: torch.Tensor | None = None  # (N,)  Need.KEYS
    text_key_norms: torch.Tensor | None = None  # (T,)  Need.KEYS
    text_features: torch.Tensor | None = None  # (T, D)  Need.KEYS
    normed_features: torch.Tensor | None = None  # (N, D)  Need.KEYS
    vision_features: torch.Tensor | None = None  # (N, Dv)  Need.VISION_FEATURES
    project: Callable[[torch.Tensor], torch.Tensor] | None = None  # (M, Dv) -> (M, D)  Need.VISION_FEATURES
    cls_attention: torch.Tensor | None = None  # (N,)  Need.CLS_ATTENTION
    vision_keys: torch.Tensor | None = None  # (N, d)  Need.CLS_ATTENTION
    instruction: str | None = None  # Need.INSTRUCTION
    rater_attention: torch.Tensor | None = None  # (R, N)  Need.RATER_ATTENTION
    token_key: int | None = None  # Need.TOKEN_KEY
    positions: torch.Tensor | None = None  # (N,) int64  Need.KEYS
    text_positions: torch.Tensor | None = None  # (T,) int64  Need.KEYS


@dataclasses.dataclass(frozen=True, eq=False)
class MergedSelection(Selection):
    """A selection whose kept tokens ``replaced`` (indices into the item's visual tokens, a subset of
    ``kept``) enter the next layer with new hidden states ``features`` (M, D) instead of their own:
    merging methods (VisionZip's contextual tokens) keep one slot per merged group."""

    replaced: np.ndarray | None = None
    features: torch.Tensor | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        replaced = np.zeros(0, np.int64) if self.replaced is None else np.asarray(self.replaced, dtype=np.int64)
        object.__setattr__(self, "replaced", replaced)
        n_feat = 0 if self.features is None else int(self.features.shape[0])
        if replaced.ndim != 1 or n_feat != len(replaced):
            raise ValueError(f"{len(replaced)} replaced tokens but {n_feat} replacement features")
        if not np.isin(replaced, self.kept).all():
            raise ValueError(f"replaced tokens {sorted(set(replaced.tolist()) - set(self.kept.tolist()))} are not kept")


def kept_selection(kept_row: torch.Tensor) -> Selection:
    """A baseline's :class:`Selection` from one row of kept indices padded with -1: every kept token
    has the role :attr:`~d2pruner.spec.Role.KEPT` (baselines have no pivots or MIS).

    >>> kept_selection(torch.tensor([1, 4, -1])).counts()
    {'pivot': 0, 'mis': 0, 'topup': 0, 'kept': 2}
    """
    kept = kept_row[kept_row >= 0].cpu().numpy()
    return Selection(kept, np.full(len(kept), int(Role.KEPT), np.int8))


class Method:
    """Base of every selection method (see the module docstring). Subclasses are frozen dataclasses
    with a ``name`` field and set the class attributes below."""

    name: ClassVar[str] = "method"
    #: What the method reads (a property where it depends on the instance's options).
    needs: ClassVar[frozenset[Need]] = frozenset()
    #: Pruning layer when the caller gives none: 0 = before the LLM; None for progressive methods.
    default_layer: ClassVar[int | None] = None
    #: Whether the method prunes in several stages of its own (``stage_layers`` / ``stage_budgets``).
    progressive: ClassVar[bool] = False
    #: Progressive methods only: score with the stage layer's own q/k on its input (PyramidDrop),
    #: instead of with the layer before the cut.
    scores_at_stage_layer: ClassVar[bool] = False

    def select(self, items: Sequence[ItemInputs], n_keep: Sequence[int]) -> list[Selection]:
        raise NotImplementedError

    def stage_layers(self, n_layers: int) -> list[int]:
        """Progressive methods: the decoder layers at whose input the stages cut."""
        raise NotImplementedError(f"{self.name} is not progressive")

    def stage_budgets(self, n_visual: int, n_keep: int, n_layers: int) -> list[int]:
        """Tokens kept after each cut, for a final budget ``n_keep`` of ``n_visual`` (one cut: ``[n_keep]``)."""
        return [int(n_keep)]

    def cut_layers(self, n_layers: int, prune_layer: int | None = None) -> list[int]:
        """The decoder layers at whose input this method cuts on an ``n_layers``-layer model, pruning at
        ``prune_layer`` (default: :attr:`default_layer`); ``ValueError`` naming the value where the
        method cannot prune there.

        >>> get_method("fastv").cut_layers(32), get_method("sparsevlm").cut_layers(32)
        ([2], [3, 7, 16])
        >>> get_method("fastv").cut_layers(32, prune_layer=0)
        Traceback (most recent call last):
        ...
        ValueError: method 'fastv' reads the attention row of layer K-1, so it cannot prune before the LLM (prune_layer=0)
        """
        if self.progressive:
            if prune_layer is not None:
                raise ValueError(f"{self.name!r} prunes at its own stages; do not pass prune_layer "
                                 f"(got prune_layer={prune_layer})")
            layers = list(self.stage_layers(n_layers))
        else:
            layers = [int(self.default_layer if prune_layer is None else prune_layer)]
        if layers != sorted(set(layers)) or not all(0 <= s < n_layers for s in layers):
            bad = layers[0] if len(layers) == 1 else layers
            raise ValueError(f"prune_layer={bad} must lie in [0, {n_layers - 1}] for a {n_layers}-layer model")
        needs = self.needs
        if layers[0] == 0 and (needs & INSIDE_LLM or len(layers) > 1):
            what = {Need.ATTENTION: "the attention row of layer K-1", Need.KEYS: "the keys of layer K-1",
                    Need.RATER_ATTENTION: "its raters' attention rows at layer K-1"}
            read = next((what[n] for n in (Need.ATTENTION, Need.KEYS, Need.RATER_ATTENTION) if n in needs), what[Need.ATTENTION])
            raise ValueError(f"method {self.name!r} reads {read}, so it cannot prune before the LLM (prune_layer=0)")
        if needs & BEFORE_LLM and layers != [0]:
            raise ValueError(f"method {self.name!r} merges or scores vision-tower features, so it prunes before the LLM "
                             f"only (prune_layer=0), not at {layers}")
        return layers

    def schedule(self, n_layers: int, n_visual: int, n_keep: int, prune_layer: int | None = None) -> list[tuple[int, int]]:
        """``[(layer, visual tokens from that layer on), ...]`` on an ``n_layers``-layer model with
        ``n_visual`` tokens and a final budget of ``n_keep``; ``ValueError`` where the method cannot
        prune so (a progressive method whose average cannot be reached, a layer it cannot use).

        >>> get_method("pyramiddrop").schedule(32, 576, 192)
        [(0, 576), (8, 110), (16, 55), (24, 28)]
        """
        layers = self.cut_layers(n_layers, prune_layer)
        budgets = self.stage_budgets(n_visual, n_keep, n_layers) if self.progressive else [int(n_keep)]
        cuts = list(zip(layers, budgets))
        return cuts if layers[0] == 0 else [(0, int(n_visual))] + cuts


_REGISTRY: dict[str, type] = {}
_DISCOVERED = False


def register(cls: type) -> type:
    """Class decorator: add a :class:`Method` subclass to the registry under its ``name``."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"register expects a Method subclass, got {cls!r}")
    name = cls.name
    if not isinstance(name, str) or cls.__dict__.get("name", None) != name:
        raise TypeError(f"{cls.__qualname__} must set its own name (a str field default), got {name!r}")
    if name in _REGISTRY and _qualified(_REGISTRY[name]) != _qualified(cls):  # the same class reloaded replaces itself
        raise ValueError(f"method name {name!r} is registered twice ({_qualified(_REGISTRY[name])}, {_qualified(cls)})")
    _REGISTRY[name] = cls
    return cls


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _discover() -> None:
    global _DISCOVERED
    if not _DISCOVERED:
        importlib.import_module("d2pruner.methods")  # its __init__ imports every method module
        _DISCOVERED = True


def method_names() -> list[str]:
    """Every registered method name, sorted.

    >>> method_names()
    ['cdpruner', 'd2pruner', 'dart', 'divprune', 'fastv', 'mmr-d2score', 'pyramiddrop', 'random', 'sparsevlm', 'visionzip']
    """
    _discover()
    return sorted(_REGISTRY)


def method_class(name: str) -> type:
    """The method class registered under ``name``; ``ValueError`` naming the known ones."""
    _discover()
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def get_method(name: str, **options) -> Method:
    """A method by name, with its options (e.g. ``get_method("random", seed=3)``)."""
    return method_class(name)(**options)
