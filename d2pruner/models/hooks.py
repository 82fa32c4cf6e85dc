"""Pruning inside a Hugging Face decoder through forward pre-hooks (shared by every model family).

Where D2Pruner acts (method spec, "prune_layer" K):

* a forward pre-hook on the multimodal model reads ``input_ids`` (and the 2-D attention mask) to find
  each item's visual tokens, and decides whether this forward is a prompt pass with images
  ("prefill"), a cached decoding step after a pruned prefill ("decode"), or neither ("off");
* a pre-hook on decoder layer K-1 computes the last token's attention row from the layer input
  (input norm -> q/k projections -> RoPE -> GQA repeat -> scaled softmax over the full causal key
  length -> mean over heads), so the model may run ``sdpa`` or ``eager``;
* pre-hooks on every layer >= K drop tokens: at layer K the hidden states are cut; on every layer
  >= K the rotary cos/sin, the position ids and the 4-D attention mask are cut to the kept tokens
  during the prompt pass; during cached decoding only the mask's key columns are cut (the KV cache
  of layers >= K holds only kept tokens). Kept tokens keep their original position ids.

Methods that read more than the attention row get it through the same hooks: pre-LLM methods with
``needs_vision`` read the projector's input and the [CLS] attention/keys of a vision layer
(:class:`VisionCapture`, recorded whenever the images are encoded); SparseVLM's text raters and their
attention rows are computed from q/k like the last token's row (:func:`query_attention`). A method
may return a :class:`MergedSelection`: some kept slots then carry new hidden states (VisionZip's
contextual tokens, SparseVLM's recycled tokens) instead of their own.

Items of one batch keep different numbers of tokens (per-item budgets, different tile counts): the
cut sequences are left-padded to a common length with masked "dummy" slots, so the last token stays
last. Nothing in transformers is patched; :meth:`PruningHandle.remove` detaches every hook.

Shape legend: B items, L prompt length, L' kept length (after left-padding), H hidden size, N visual
tokens of an item, q query length of a decoding step.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from typing import Any, Callable, Sequence

import numpy as np
import torch

from d2pruner.spec import D2PrunerConfig, Role, Selection, TokenLayout, resolve_budget

__all__ = ["D2PrunerMethod", "ItemInputs", "ItemStats", "MergedSelection", "PruningHandle", "VisionCapture",
           "cls_attention_and_keys", "last_token_attention", "query_attention", "resolve_method"]

SUPPORTED_ATTENTION = ("sdpa", "eager")


@dataclasses.dataclass(frozen=True, eq=False)
class ItemInputs:
    """What a selection method sees for one item: ``attn`` (N,), ``features`` (N, D), the layout and
    the prior (N,) or None (tensors on the model's device). Methods with ``needs_keys`` (DART) also get
    the L1 norms of layer K-1's keys (after RoPE, :func:`key_l1_norms`) of the visual tokens (N,) and of
    the text tokens after the item's image (T,), and the hidden states entering layer K after the
    language model's final norm, of the visual tokens (``normed_features``, (N, D)) and of those text
    tokens (``text_features``, (T, D)).

    Methods that prune before the LLM with ``needs_vision`` also get ``vision_features`` (N, Dv), the
    visual tokens as the projector receives them, and ``project``, the model's projector
    ((M, Dv) -> (M, D)); with ``needs_cls_attention`` the [CLS] attention (N,) and the head-averaged
    keys (N, d) of the vision layer whose output the model takes (:class:`VisionCapture`); with
    ``needs_instruction`` the item's instruction text (:meth:`PruningHandle.set_instructions`).

    Methods with ``needs_token_key`` (Random) get ``token_key``, a CRC-32 of the item's real token ids:
    the same prompt gives the same key alone or in any batch, another prompt another key.

    Methods with ``needs_rater_attention`` (SparseVLM) get ``rater_attention`` (R, N): the attention of
    each of the item's R text raters (chosen once per prompt pass on the LLM's input embeddings,
    :func:`d2pruner.baselines.sparsevlm_raters`) to the current visual tokens, at layer K-1, mean over
    heads, softmax over the full causal key length."""

    attn: torch.Tensor | None
    features: torch.Tensor
    layout: TokenLayout
    prior: torch.Tensor | None
    key_norms: torch.Tensor | None = None
    text_key_norms: torch.Tensor | None = None
    text_features: torch.Tensor | None = None
    normed_features: torch.Tensor | None = None
    vision_features: torch.Tensor | None = None
    project: Callable[[torch.Tensor], torch.Tensor] | None = None
    cls_attention: torch.Tensor | None = None
    vision_keys: torch.Tensor | None = None
    instruction: str | None = None
    rater_attention: torch.Tensor | None = None
    token_key: int | None = None


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

@dataclasses.dataclass(frozen=True)
class D2PrunerMethod:
    """D2Pruner as a selection method for the model hooks (batched fast backend by default)."""

    config: D2PrunerConfig = D2PrunerConfig()
    backend: str = "fast"
    name: str = "d2pruner"
    needs_attention: bool = True

    @property
    def default_layer(self) -> int:
        return self.config.prune_layer

    def select(self, items: Sequence[ItemInputs], n_keep: Sequence[int]) -> list[Selection]:
        from d2pruner.api import select_tokens

        priors = [it.prior for it in items]
        if any(p is None for p in priors):
            priors = None
        return select_tokens([it.attn for it in items], [it.features for it in items], [it.layout for it in items],
                             list(n_keep), prior=priors, config=self.config, backend=self.backend)


@dataclasses.dataclass(frozen=True, eq=False)
class ItemStats:
    """Per-item statistics of the last prompt pass.

    ``kept`` indexes the item's visual tokens (0..N-1, ascending); ``roles`` aligns with it;
    ``selection_ms`` is the wall time of the whole batch's selection (shared by its items);
    ``debiased`` says whether a positional prior was applied.
    """

    n_visual_before: int
    n_visual_after: int
    kept: np.ndarray
    roles: np.ndarray
    selection_ms: float
    debiased: bool
    method: str

    def counts(self) -> dict[str, int]:
        return Selection(self.kept, self.roles).counts()


def resolve_method(method: Any, config: D2PrunerConfig | None, backend: str, prune_layer: int | None) -> tuple[Any, int]:
    """The selection method object and its pruning layer.

    ``method`` is None (D2Pruner with ``config``), a name from :data:`d2pruner.methods.METHODS`, or an
    object with ``select``; the layer is ``prune_layer`` if given, else the method's default
    (``config.prune_layer`` for D2Pruner).
    """
    config = config or D2PrunerConfig()
    if method is None or method == "d2pruner":
        method = D2PrunerMethod(config, backend)
    elif isinstance(method, str):
        from d2pruner.methods import get_method

        method = get_method(method)
    if not callable(getattr(method, "select", None)):
        raise ValueError(f"method must be a name or have a select(items, n_keep) method, got {method!r}")
    if hasattr(method, "stage_layers"):  # progressive: the method decides its stages
        if prune_layer is not None:
            raise ValueError(f"{getattr(method, 'name', method)!r} prunes at its own stages; do not pass prune_layer")
        return method, -1
    layer = prune_layer if prune_layer is not None else getattr(method, "default_layer", config.prune_layer)
    return method, int(layer)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def last_token_attention(layer: torch.nn.Module, hidden_states: torch.Tensor, position_embeddings: tuple,
                         attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Attention of the last query position to every key, mean over heads, for a Llama-layout layer.

    Parameters
    ----------
    layer : decoder layer with ``input_layernorm`` and ``self_attn.{q_proj,k_proj,head_dim,scaling}``
    hidden_states : Tensor (B, L, H) -- the layer's input
    position_embeddings : (cos, sin), each (B or 1, L, head_dim)
    attention_mask : 4-D mask (B, 1, L, L), bool (True = attend) or additive float, or None (causal)

    Returns
    -------
    Tensor (B, L), float32: softmax over the full key length, averaged over heads.
    """
    attn = layer.self_attn
    for name in ("q_norm", "k_norm"):
        if getattr(attn, name, None) is not None:
            raise NotImplementedError(f"attention with {name} is not supported by last_token_attention")
    x = layer.input_layernorm(hidden_states)  # (B, L, H)
    b, n, _ = x.shape
    hd = attn.head_dim
    q = attn.q_proj(x[:, -1:]).view(b, 1, -1, hd).transpose(1, 2).float()  # (B, nH, 1, hd)
    k = attn.k_proj(x).view(b, n, -1, hd).transpose(1, 2).float()  # (B, nKV, L, hd)
    cos, sin = (t.float()[:, None] for t in position_embeddings)  # (B|1, 1, L, hd)
    q = q * cos[..., -1:, :] + _rotate_half(q) * sin[..., -1:, :]
    k = k * cos + _rotate_half(k) * sin
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # (B, nH, L, hd): GQA
    scores = (q @ k.transpose(-1, -2)) * attn.scaling  # (B, nH, 1, L)
    if attention_mask is not None:
        row = attention_mask[:, :, -1:, :]  # (B, 1, 1, L)
        scores = scores.masked_fill(~row, float("-inf")) if row.dtype == torch.bool else scores + row.float()
    return scores.softmax(dim=-1).mean(dim=1)[:, 0]  # (B, L)


def key_l1_norms(layer: torch.nn.Module, hidden_states: torch.Tensor, position_embeddings: tuple) -> torch.Tensor:
    """L1 norm of each position's keys in a Llama-layout layer, after RoPE (as its KV cache holds them),
    over all key heads and dimensions.

    Parameters
    ----------
    layer : decoder layer with ``input_layernorm`` and ``self_attn.{k_proj,head_dim}``
    hidden_states : Tensor (B, L, H) -- the layer's input
    position_embeddings : (cos, sin), each (B or 1, L, head_dim)

    Returns
    -------
    Tensor (B, L), float32.
    """
    attn = layer.self_attn
    x = layer.input_layernorm(hidden_states)  # (B, L, H)
    b, n, _ = x.shape
    k = attn.k_proj(x).view(b, n, -1, attn.head_dim).transpose(1, 2).float()  # (B, nKV, L, hd)
    cos, sin = (t.float()[:, None] for t in position_embeddings)  # (B|1, 1, L, hd)
    k = k * cos + _rotate_half(k) * sin
    return k.abs().sum(dim=(1, 3))  # (B, L)


def query_attention(layer: torch.nn.Module, hidden_states: torch.Tensor, position_embeddings: tuple,
                    attention_mask: torch.Tensor | None, queries: torch.Tensor) -> torch.Tensor:
    """Attention rows of chosen query positions of one item, mean over heads, for a Llama-layout layer
    (the computation of :func:`last_token_attention` for several queries).

    Parameters
    ----------
    layer : decoder layer; hidden_states : Tensor (1, L, H) -- its input
    position_embeddings : (cos, sin), each (1, L, head_dim)
    attention_mask : (1, 1, L, L) bool or additive float, or None (causal)
    queries : LongTensor (Q,) -- query positions

    Returns
    -------
    Tensor (Q, L), float32
    """
    attn = layer.self_attn
    x = layer.input_layernorm(hidden_states)  # (1, L, H)
    n, hd = x.shape[1], attn.head_dim
    q = attn.q_proj(x[:, queries]).view(1, len(queries), -1, hd).transpose(1, 2).float()  # (1, nH, Q, hd)
    k = attn.k_proj(x).view(1, n, -1, hd).transpose(1, 2).float()  # (1, nKV, L, hd)
    cos, sin = (t.float()[:, None] for t in position_embeddings)  # (1, 1, L, hd)
    q = q * cos[..., queries, :] + _rotate_half(q) * sin[..., queries, :]
    k = k * cos + _rotate_half(k) * sin
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # (1, nH, L, hd): GQA
    scores = (q @ k.transpose(-1, -2)) * attn.scaling  # (1, nH, Q, L)
    if attention_mask is None:
        visible = torch.arange(n, device=x.device)[None, :] <= queries[:, None]  # (Q, L) causal
        scores = scores.masked_fill(~visible, float("-inf"))
    else:
        rows = attention_mask[:, :, queries, :]  # (1, 1, Q, L)
        scores = scores.masked_fill(~rows, float("-inf")) if rows.dtype == torch.bool else scores + rows.float()
    return scores.softmax(dim=-1).mean(dim=1)[0]  # (Q, L)


def cls_attention_and_keys(attn: torch.nn.Module, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The [CLS] query's attention to the patch tokens, summed over heads, and the head-averaged keys
    of the patch tokens, for a ViT self-attention (CLIP layout: ``q_proj``, ``k_proj``, ``num_heads``,
    ``head_dim``, ``scale``; no mask), computed from the attention's input so that the vision tower
    may run ``sdpa``.

    Parameters
    ----------
    attn : the self-attention module
    hidden_states : Tensor (B, 1 + N, Dv) -- its input (after the layer's first norm); token 0 is [CLS]

    Returns
    -------
    (Tensor (B, N) float32, Tensor (B, N, head_dim) float32)
        Softmax over all 1 + N keys (as the layer computes it), summed over heads, [CLS] column dropped;
        and the keys (with bias, before any reshaping) averaged over heads, [CLS] dropped.
    """
    b, n, _ = hidden_states.shape
    hd = attn.head_dim
    q = attn.q_proj(hidden_states[:, :1]).view(b, 1, -1, hd).transpose(1, 2).float()  # (B, nH, 1, hd)
    k = attn.k_proj(hidden_states).view(b, n, -1, hd).transpose(1, 2).float()  # (B, nH, 1+N, hd)
    probs = ((q @ k.transpose(-1, -2)) * attn.scale).softmax(dim=-1)  # (B, nH, 1, 1+N)
    return probs.sum(dim=1)[:, 0, 1:], k.mean(dim=1)[:, 1:]  # (B, N), (B, N, hd)


class VisionCapture:
    """Forward pre-hooks that record what a pre-LLM method reads from the vision side each time the
    images are encoded: the projector's input (images, T, Dv) and, optionally, the [CLS] attention and
    keys of one vision self-attention (:func:`cls_attention_and_keys`).

    Recording starts afresh whenever the vision tower runs (``generate`` encodes the images before
    the prompt pass, a plain forward inside it), and :meth:`per_item` consumes it: it cuts the rows, in
    placeholder order, into one block per batch item (an item with ``N`` visual tokens takes the next
    ``N / T`` images).
    """

    def __init__(self, vision_tower: torch.nn.Module, projector: torch.nn.Module,
                 cls_attention_module: torch.nn.Module | None = None) -> None:
        self.vision_tower, self.projector, self.cls_module = vision_tower, projector, cls_attention_module
        self._projecting = False
        self.reset()

    def reset(self) -> None:
        self.features: list[torch.Tensor] = []
        self.cls: list[torch.Tensor] = []
        self.keys: list[torch.Tensor] = []

    def register(self) -> list:
        handles = [self.vision_tower.register_forward_pre_hook(lambda *_: self.reset()),
                   self.projector.register_forward_pre_hook(self._on_projector, with_kwargs=True)]
        if self.cls_module is not None:
            handles.append(self.cls_module.register_forward_pre_hook(self._on_attention, with_kwargs=True))
        return handles

    def _on_projector(self, module, args, kwargs):
        if not self._projecting:  # not the method's own projection of merged tokens
            x = args[0] if args else next(iter(kwargs.values()))
            self.features.append(x)  # (images, T, Dv)
        return None

    def _on_attention(self, module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        if kwargs.get("attention_mask") is not None:
            raise ValueError("the [CLS] attention is computed without a mask, but the vision layer got one")
        cls, keys = cls_attention_and_keys(module, hidden)
        self.cls.append(cls)
        self.keys.append(keys)
        return None

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The model's projector on (M, Dv) vision features -> (M, D)."""
        self._projecting = True
        try:
            return self.projector(x[None])[0]
        finally:
            self._projecting = False

    def per_item(self, sizes: Sequence[int | None]) -> list[dict | None]:
        """For each item with ``sizes[i]`` visual tokens (None: no image), its slice of the records."""
        if not self.features:
            raise ValueError("no projector input was recorded for this prompt pass: the images must be encoded by the "
                             "model (pixel_values), not passed as precomputed features")
        feats = torch.cat(self.features)  # (images, T, Dv)
        per_image = feats.shape[1]
        cls = torch.cat(self.cls) if self.cls else None  # (images, T or T+1)
        keys = torch.cat(self.keys) if self.keys else None
        if cls is not None and cls.shape[1] != per_image:
            raise ValueError(f"the vision layer has {cls.shape[1]} patch tokens per image but the projector "
                             f"receives {per_image}")
        out, start = [], 0
        for i, n in enumerate(sizes):
            if n is None:
                out.append(None)
                continue
            if n % per_image:
                raise ValueError(f"item {i} has {n} visual tokens, not a multiple of the {per_image} per image")
            stop = start + n // per_image
            if stop > feats.shape[0]:
                raise ValueError(f"item {i} needs images {start}..{stop - 1}, but only {feats.shape[0]} were encoded")
            extra = {"vision_features": feats[start:stop].reshape(n, -1), "project": self.project}  # (N, Dv)
            if cls is not None:
                extra.update(cls_attention=cls[start:stop].reshape(n), vision_keys=keys[start:stop].reshape(n, -1))
            out.append(extra)
            start = stop
        self.reset()  # consumed: a later prompt pass must encode its own images
        return out


@dataclasses.dataclass
class _Pruned:
    """State of a pruned prompt pass, kept for the decoding steps that follow."""

    index: torch.Tensor  # (B, L') original position of each kept slot
    slot_valid: torch.Tensor  # (B, L') False for left-padding dummies
    prompt_len: int
    cache: Any
    shift: torch.Tensor | None = None  # (B,) position shift of later tokens when pruned before the LLM


class PruningHandle:
    """Hooks that prune the visual tokens of a multimodal model; ``remove()`` (or leaving a ``with``
    block) detaches them all.

    Model families provide ``find_items(input_ids) -> list[(positions (N,), layout) | None]`` and
    ``expand_prior(prior, layout) -> (N,)``; see :mod:`d2pruner.models.llava` and
    :mod:`d2pruner.models.internvl`.
    """

    def __init__(self, model: torch.nn.Module, *, language_model: torch.nn.Module, find_items: Callable,
                 budget: Any, method: Any, prune_layer: int, prior: torch.Tensor | None,
                 expand_prior: Callable[[torch.Tensor, TokenLayout], torch.Tensor],
                 vision: VisionCapture | None = None) -> None:
        impl = getattr(model.config, "_attn_implementation", None) or "eager"
        text_impl = getattr(getattr(model.config, "text_config", model.config), "_attn_implementation", impl)
        if text_impl not in SUPPORTED_ATTENTION:
            raise ValueError(f"attention implementation {text_impl!r} is not supported; load the model with "
                             f"attn_implementation in {SUPPORTED_ATTENTION}")
        layers = language_model.layers
        stage_layers = method.stage_layers(len(layers)) if hasattr(method, "stage_layers") else [prune_layer]
        if stage_layers != sorted(set(stage_layers)) or not all(0 <= s < len(layers) for s in stage_layers):
            bad = prune_layer if len(stage_layers) == 1 else stage_layers
            raise ValueError(f"prune_layer={bad} must lie in [0, {len(layers) - 1}] for a {len(layers)}-layer model")
        prune_layer = stage_layers[0]
        if prune_layer == 0 and (getattr(method, "needs_attention", False) or len(stage_layers) > 1):
            raise ValueError(f"method {getattr(method, 'name', method)!r} reads the attention row of layer K-1, so it "
                             "cannot prune before the LLM (prune_layer=0)")
        if prune_layer == 0 and getattr(method, "needs_keys", False):
            raise ValueError(f"method {getattr(method, 'name', method)!r} reads the keys of layer K-1, so it cannot "
                             "prune before the LLM (prune_layer=0)")
        if getattr(method, "needs_vision", False) and stage_layers != [0]:
            raise ValueError(f"method {getattr(method, 'name', method)!r} merges or scores vision-tower features, so it "
                             f"prunes before the LLM only (prune_layer=0), not at {stage_layers}")
        if getattr(method, "needs_vision", False) and vision is None:
            raise ValueError(f"method {getattr(method, 'name', method)!r} needs the vision tower's features; this model "
                             "family does not provide them")
        self.model, self.layers, self.find_items = model, layers, find_items
        self.vision = vision if getattr(method, "needs_vision", False) else None
        self.instructions: list | None = None
        self.language_model = language_model
        self.budget, self.method, self.prune_layer = budget, method, prune_layer
        self.stage_layers = list(stage_layers)
        self.stage_stats: list[list[np.ndarray]] = []  # per stage, per item: kept original visual indices
        self.prior, self.expand_prior = prior, expand_prior
        self.stats: list[ItemStats] = []
        self._mode = "off"
        self._items: list | None = None
        self._row: torch.Tensor | None = None
        self._pruned: _Pruned | None = None
        self._step: dict = {}
        self._handles = [model.register_forward_pre_hook(self._on_model, with_kwargs=True)]
        if self.vision is not None:
            self._handles += self.vision.register()
        if prune_layer == 0:  # before the LLM: the kept tokens are renumbered as if the placeholders had been shortened
            self._handles.append(language_model.register_forward_pre_hook(self._on_language_model, with_kwargs=True))
        for i in range(prune_layer, len(layers)):
            self._handles.append(layers[i].register_forward_pre_hook(self._make_cut_hook(i), with_kwargs=True))
        if getattr(method, "needs_rater_attention", False):  # raters from the LLM's input, before any score hook
            self._handles.append(layers[0].register_forward_pre_hook(self._on_first_layer, with_kwargs=True))
        # Registered after the cut hooks, so that a score layer inside a pruned span sees the cut inputs.
        # Methods with ``scores_at_stage_layer`` (PyramidDrop) score in the stage layer's own cut hook instead.
        for stage_layer in self.stage_layers:
            if stage_layer > 0 and not getattr(method, "scores_at_stage_layer", False):
                self._handles.append(layers[stage_layer - 1].register_forward_pre_hook(self._on_score_layer, with_kwargs=True))

    # -- lifecycle -----------------------------------------------------------------------------------
    def set_instructions(self, instructions: Sequence[str | None]) -> None:
        """Each batch item's instruction text (the question, without the prompt template), for the next
        forward passes; methods with ``needs_instruction`` (CDPruner) read it."""
        if isinstance(instructions, str):
            raise ValueError("set_instructions takes one text per batch item (a list), got a single string")
        self.instructions = [None if t is None else str(t) for t in instructions]

    def remove(self) -> None:
        """Detach every hook; the model behaves exactly as before."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._pruned = None

    def __enter__(self) -> "PruningHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    # -- the model-level hook: which kind of forward is this? ------------------------------------------
    def _on_model(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("past_key_values")
        if cache is not None and getattr(cache, "is_compileable", False):
            raise ValueError(f"{type(cache).__name__} (a static/compileable cache) cannot hold pruned sequences; "
                             "use the default dynamic cache (do not pass cache_implementation='static')")
        mask2d = kwargs.get("attention_mask")
        self._row, self._key_norms, self._step = None, None, {}
        self._mask2d = mask2d if mask2d is not None and mask2d.ndim == 2 else None
        # A decoding step (non-empty cache, no image input: neither pixel values nor the encoder outputs that
        # generate() computes first) holds no image, even if a generated token has the image token's id:
        # transformers embeds it as text then, and so do we.
        decoding = (cache is not None and cache.get_seq_length() > 0 and kwargs.get("pixel_values") is None
                    and not kwargs.get("mm_encoder_outputs"))
        items = self.find_items(input_ids) if input_ids is not None and not decoding else None
        has_images = items is not None and any(it is not None for it in items)
        if input_ids is None and kwargs.get("pixel_values") is not None:
            raise ValueError("pruning needs input_ids to locate the image tokens; inputs_embeds alone are not supported")
        if has_images:
            if cache is not None and cache.get_seq_length() > 0:
                raise ValueError("image tokens after a non-empty KV cache are not supported: prune in the first prompt pass")
            if mask2d is not None and mask2d.ndim == 2 and bool((mask2d[:, -1] == 0).any()):
                raise ValueError("right padding is not supported (the last token must be real): use padding_side='left'")
            self._mode, self._items, self._pruned = "prefill", items, None
            self._input_ids = input_ids

        elif self._pruned is not None and cache is self._pruned.cache and cache is not None:
            q = input_ids.shape[1] if input_ids is not None else kwargs["inputs_embeds"].shape[1]
            if mask2d is not None and mask2d.ndim == 2:
                total = mask2d.shape[-1]
            else:  # in the original numbering: the prompt plus the tokens decoded since
                cached = self._pruned.index.shape[1] if self.prune_layer == 0 else self._pruned.prompt_len
                total = self._pruned.prompt_len + cache.get_seq_length() - cached + q
            self._mode, self._step = "decode", {"q": q, "total": total}
        else:
            self._mode, self._pruned = "off", None
        return None

    # -- before the LLM: keep decoding steps consistent with the shortened prompt ------------------------
    def _on_language_model(self, module, args, kwargs):
        if self._mode != "decode":
            return None
        p = self._pruned
        kwargs = dict(kwargs)
        if kwargs.get("position_ids") is not None:
            kwargs["position_ids"] = kwargs["position_ids"] - p.shift[:, None]  # (B, q)
        mask = kwargs.get("attention_mask")
        b = p.index.shape[0]
        total = self._step["total"]
        new_cols = torch.arange(p.prompt_len, total, device=p.index.device).expand(b, -1)  # (B, T)
        if mask is not None and mask.ndim == 2:
            kept = mask.gather(1, p.index) * p.slot_valid.to(mask.dtype)  # (B, L'): dummies are padding
            kwargs["attention_mask"] = torch.cat([kept, mask.gather(1, new_cols)], dim=1)  # (B, L' + T)
        elif mask is None:
            ones = torch.ones(b, total - p.prompt_len, dtype=torch.long, device=p.index.device)
            kwargs["attention_mask"] = torch.cat([p.slot_valid.long(), ones], dim=1)
        else:
            raise ValueError("pruning before the LLM needs a 2-D attention mask (or none) while decoding")
        return args, kwargs

    # -- layer 0: text raters (SparseVLM) ---------------------------------------------------------------
    def _on_first_layer(self, module, args, kwargs):
        """Choose each item's text raters on the LLM's input embeddings: its real tokens after its last
        visual token (the question), rated by :func:`d2pruner.baselines.sparsevlm_raters`; an item whose
        image ends the prompt uses its last token."""
        if self._mode != "prefill":
            return None
        from d2pruner.baselines import sparsevlm_raters

        hidden = kwargs.get("hidden_states", args[0] if args else None)  # (B, L, H)
        self._stage_state = []
        self._raters = {}
        for i, item in enumerate(self._items):
            if item is None:
                continue
            pos = item[0]
            after = torch.arange(int(pos.max()) + 1, hidden.shape[1], device=hidden.device)  # (T,)
            if self._mask2d is not None:
                after = after[self._mask2d[i, after].bool()]
            if len(after) == 0:
                after = torch.tensor([hidden.shape[1] - 1], device=hidden.device)
            self._raters[i] = after[sparsevlm_raters(hidden[i, pos], hidden[i, after]).to(hidden.device)]  # (R,) positions
        return None

    # -- layer K-1: the attention row ----------------------------------------------------------------
    def _on_score_layer(self, module, args, kwargs):
        if self._mode == "prefill" and getattr(self.method, "needs_rater_attention", False):
            hidden = kwargs.get("hidden_states", args[0] if args else None)  # (B, L_cur, H)
            cos, sin = kwargs["position_embeddings"]
            mask = kwargs.get("attention_mask")
            b, n_cur = hidden.shape[:2]
            cur_index = self._stage_state[-1][0] if self._stage_state else torch.arange(n_cur, device=hidden.device).expand(b, n_cur)
            self._rater_rows = {}
            for i, raters in self._raters.items():
                slots = (cur_index[i][:, None] == raters[None, :]).any(dim=1).nonzero()[:, 0]  # (R,) current slots
                pe = (cos[i:i + 1] if cos.shape[0] > 1 else cos, sin[i:i + 1] if sin.shape[0] > 1 else sin)
                self._rater_rows[i] = query_attention(module, hidden[i:i + 1], pe, None if mask is None else mask[i:i + 1], slots)
        elif self._mode == "prefill" and getattr(self.method, "needs_attention", True):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            self._row = last_token_attention(module, hidden, kwargs["position_embeddings"], kwargs.get("attention_mask"))
        if self._mode == "prefill" and getattr(self.method, "needs_keys", False):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            self._key_norms = key_l1_norms(module, hidden, kwargs["position_embeddings"])  # (B, L_cur)
        return None

    # -- layers >= K: cut -------------------------------------------------------------------------------
    def _make_cut_hook(self, layer_idx: int):
        def hook(module, args, kwargs):
            if self._mode == "prefill":
                if layer_idx in self.stage_layers:
                    hidden = kwargs.get("hidden_states", args[0] if args else None)
                    stage = self.stage_layers.index(layer_idx)
                    if getattr(self.method, "scores_at_stage_layer", False):
                        # the stage layer's own q/k on its input, the sequence the previous stage left
                        cur = kwargs if stage == 0 else {**kwargs, **self._step["kwargs"]}
                        self._row = last_token_attention(module, hidden, cur["position_embeddings"],
                                                         cur.get("attention_mask"))
                    self._select_and_build(hidden, kwargs, stage)
                    args, kwargs = self._replace_hidden(args, kwargs, self._step["hidden"])
                kwargs = {**kwargs, **self._step["kwargs"]}
            elif self._mode == "decode" and self.prune_layer > 0:
                stage = max(j for j, s in enumerate(self.stage_layers) if s <= layer_idx)
                masks = self._step.setdefault("masks", {})
                if stage not in masks:
                    index, slot_valid = self._stage_state[stage]
                    masks[stage] = self._decode_mask(kwargs.get("attention_mask"), index, slot_valid)
                kwargs = {**kwargs, "attention_mask": masks[stage]}
            return args, kwargs

        return hook

    @staticmethod
    def _replace_hidden(args, kwargs, hidden):
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": hidden}
        return (hidden, *args[1:]), kwargs

    def _budgets(self, sizes: list[int]) -> list[int]:
        budget = self.budget
        if isinstance(budget, (list, tuple)):
            if len(budget) != len(sizes):
                raise ValueError(f"budget lists {len(budget)} entries for a batch of {len(sizes)} items")
            return [resolve_budget(bud, n, i) for i, (bud, n) in enumerate(zip(budget, sizes))]
        return [resolve_budget(budget, n, i) for i, n in enumerate(sizes)]

    def _select_and_build(self, hidden: torch.Tensor, kwargs: dict, stage: int = 0) -> None:
        """Select at one stage and prepare the cut inputs of the layers that follow.

        ``index`` always holds *original* positions, so masks, rotary tables and position ids are
        gathered from the prompt's originals whatever the stage.
        """
        b, n_cur, _ = hidden.shape
        device = hidden.device
        if stage == 0:
            cos, sin = kwargs["position_embeddings"]
            pos_ids = kwargs.get("position_ids")
            pos_ids = (torch.arange(n_cur, device=device)[None] if pos_ids is None else pos_ids).expand(b, n_cur)
            self._orig = {"cos": cos, "sin": sin, "pos_ids": pos_ids, "mask": kwargs.get("attention_mask"), "len": n_cur,
                          "cache": kwargs.get("past_key_values")}
            self._stage_state, self.stage_stats, self._ms = [], [], 0.0
            cur_index = torch.arange(n_cur, device=device).expand(b, n_cur)  # (B, L_cur) original positions
            cur_valid = torch.ones(b, n_cur, dtype=torch.bool, device=device)
        else:
            cur_index, cur_valid = self._stage_state[-1]
        n_seq = self._orig["len"]

        key_norms = features = None
        if getattr(self.method, "needs_keys", False):
            key_norms = self._key_norms  # (B, L_cur), layer K-1's keys (see _on_score_layer)
            # DART compares hidden states after the language model's final norm, as its public code does
            norm = getattr(self.language_model, "norm", None)
            features = hidden if norm is None else norm(hidden)  # (B, L_cur, H)
        present = [i for i, it in enumerate(self._items) if it is not None]
        vision_extra = None
        if self.vision is not None:
            vision_extra = self.vision.per_item([None if it is None else len(it[1]) for it in self._items])
        if getattr(self.method, "needs_instruction", False):
            name = getattr(self.method, "name", self.method)
            if self.instructions is None:
                raise ValueError(f"{name} needs each item's instruction text: call handle.set_instructions([...]) "
                                 "before the forward pass")
            if len(self.instructions) != b:
                raise ValueError(f"set_instructions gave {len(self.instructions)} texts for a batch of {b} items")
            missing = [i for i in present if self.instructions[i] is None]
            if missing:
                raise ValueError(f"{name} needs the instruction text of item {missing[0]}, which is None")
        inputs, slots_of, ordinals_of = [], {}, {}
        for i in present:
            pos, layout = self._items[i]
            ordinal = torch.full((n_seq,), -1, dtype=torch.long, device=device)
            ordinal[pos] = torch.arange(len(pos), device=device)  # (L,) index among the item's visual tokens
            cur_ord = torch.where(cur_valid[i], ordinal[cur_index[i]], -1)  # (L_cur,)
            slots = (cur_ord >= 0).nonzero()[:, 0]  # (N_cur,) current slots holding visual tokens
            ords = cur_ord[slots]  # (N_cur,) their indices among the original visual tokens
            slots_of[i], ordinals_of[i] = slots, ords
            sub = ords.cpu().numpy()
            sub_layout = layout if stage == 0 else TokenLayout(layout.view[sub], layout.row[sub], layout.col[sub])
            prior = None if self.prior is None else self.expand_prior(self.prior, layout).to(device)[ords]
            attn = None if self._row is None else self._row[i, slots]
            extra = {}
            if key_norms is not None:
                text = cur_valid[i] & (cur_index[i] > pos.max())  # (L_cur,) the tokens after the item's image
                if self._mask2d is not None:
                    text &= self._mask2d[i, cur_index[i]].bool()
                text_slots = text.nonzero()[:, 0]  # (T,) real tokens after the image: the question
                extra = dict(key_norms=key_norms[i, slots], text_key_norms=key_norms[i, text_slots],
                             text_features=features[i, text_slots], normed_features=features[i, slots])
            if vision_extra is not None:
                extra.update(vision_extra[i])
            if getattr(self.method, "needs_instruction", False):
                extra["instruction"] = self.instructions[i]
            if getattr(self.method, "needs_token_key", False):
                real = self._input_ids[i] if self._mask2d is None else self._input_ids[i][self._mask2d[i].bool()]
                extra["token_key"] = zlib.crc32(real.cpu().numpy().astype(np.int64).tobytes())
            if getattr(self.method, "needs_rater_attention", False):
                extra["rater_attention"] = self._rater_rows[i][:, slots]  # (R, N_cur)
            inputs.append(ItemInputs(attn, hidden[i, slots], sub_layout, prior, **extra))
        if stage == 0:
            sizes = [len(it.layout) for it in inputs]
            finals = self._budgets(sizes)
            if len(self.stage_layers) > 1:
                self._stage_budgets = [self.method.stage_budgets(n, k, len(self.layers)) for n, k in zip(sizes, finals)]
            else:
                self._stage_budgets = [[k] for k in finals]
        budgets = [sb[stage] for sb in self._stage_budgets]
        t0 = time.perf_counter()
        selections = self.method.select(inputs, budgets)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self._ms += 1e3 * (time.perf_counter() - t0)

        keep_lists, kept_visual = [], []
        sel_of = dict(zip(present, selections))
        for i in range(b):
            keep = cur_valid[i].clone()  # (L_cur,)
            if i in sel_of:
                slots = slots_of[i]
                keep[slots] = False
                kept = torch.as_tensor(sel_of[i].kept, device=device)
                keep[slots[kept]] = True
                kept_visual.append(ordinals_of[i][kept].cpu().numpy())
            else:
                kept_visual.append(np.zeros(0, np.int64))
            keep_lists.append(cur_index[i, keep.nonzero()[:, 0]])  # original positions, ascending
        self.stage_stats.append(kept_visual)
        name = getattr(self.method, "name", type(self.method).__name__)
        self.stats = [ItemStats(len(self._items[i][1]), len(sel_of[i]), kept_visual[i], sel_of[i].roles, self._ms,
                                self.prior is not None, name) if i in sel_of else
                      ItemStats(0, 0, np.zeros(0, np.int64), np.zeros(0, np.int8), self._ms, self.prior is not None, name)
                      for i in range(b)]

        new_len = max(len(k) for k in keep_lists)
        index = torch.zeros(b, new_len, dtype=torch.long, device=device)  # (B, L') original positions
        slot_valid = torch.zeros(b, new_len, dtype=torch.bool, device=device)  # (B, L')
        for i, k in enumerate(keep_lists):
            index[i, new_len - len(k):] = k  # left-pad: the last token stays last
            slot_valid[i, new_len - len(k):] = True
        self._stage_state.append((index, slot_valid))
        if stage == 0:
            self._pruned = _Pruned(index, slot_valid, n_seq, self._orig["cache"])

        slot_of = torch.zeros(b, n_seq, dtype=torch.long, device=device)  # (B, L): current slot of each original position
        slot_of.scatter_(1, torch.where(cur_valid, cur_index, 0), torch.arange(n_cur, device=device).expand(b, n_cur) * cur_valid)
        src = slot_of.gather(1, index)  # (B, L') current slot of each kept position
        h = hidden.gather(1, src[..., None].expand(b, new_len, hidden.shape[-1]))  # (B, L', H)
        for i, sel in sel_of.items():  # merged tokens: new hidden states in their slots
            if isinstance(sel, MergedSelection) and len(sel.replaced):
                # ``replaced`` indexes the method's inputs, i.e. the current visual slots of item i
                orig = cur_index[i, slots_of[i][torch.as_tensor(sel.replaced, device=device)]]  # (M,) original positions
                valid = slot_valid[i]
                new_slot = torch.full((n_seq,), -1, dtype=torch.long, device=device)
                new_slot[index[i][valid]] = torch.arange(new_len, device=device)[valid]  # (L,) new slot of each kept position
                h[i, new_slot[orig]] = sel.features.to(device=device, dtype=h.dtype)  # (M, H)

        def gather3(t):  # (B|1, L, X) -> (B, L', X) at the kept original positions
            return t.expand(b, n_seq, t.shape[-1]).gather(1, index[..., None].expand(b, new_len, t.shape[-1]))

        pos_ids = self._orig["pos_ids"]
        new_kwargs = {"position_embeddings": (gather3(self._orig["cos"]), gather3(self._orig["sin"])),  # each (B, L', hd)
                      "position_ids": pos_ids.gather(1, index)}  # (B, L'): kept tokens keep their ids ...
        if self.prune_layer == 0:  # ... unless pruned before the LLM: then renumber past the dropped ones
            keep_mask = torch.zeros(b, n_seq, dtype=torch.long, device=device).scatter_(1, index, slot_valid.long())
            dropped_before = torch.cumsum(1 - keep_mask, dim=1)  # (B, L): dropped tokens at or before each position
            new_pos = (pos_ids - dropped_before).clamp(min=0).gather(1, index)  # (B, L')
            new_kwargs["position_ids"] = new_pos
            new_kwargs["position_embeddings"] = self.language_model.rotary_emb(hidden, position_ids=new_pos)
            self._pruned.shift = (1 - keep_mask).sum(dim=1)  # (B,) how far later positions move back
        new_kwargs["attention_mask"] = self._prefill_mask(self._orig["mask"], index, slot_valid, hidden.dtype)
        self._step = {"hidden": h, "kwargs": new_kwargs}

    @staticmethod
    def _format(visible: torch.Tensor, like: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """A bool visibility mask (B, 1, q, k) in the format of ``like`` (bool, or additive float)."""
        if like is None or like.dtype == torch.bool:
            return visible
        out = torch.zeros(visible.shape, dtype=like.dtype, device=visible.device)
        return out.masked_fill(~visible, torch.finfo(like.dtype).min)

    def _prefill_mask(self, mask, index, slot_valid, dtype):
        b, new_len = index.shape
        if mask is None:  # pure causal over the original positions
            visible = index[:, None, :] <= index[:, :, None]  # (B, L', L')
        else:
            m = mask.expand(b, 1, mask.shape[-2], mask.shape[-1])[:, 0]  # (B, L, L)
            m = m.gather(1, index[:, :, None].expand(b, new_len, m.shape[-1]))  # (B, L', L): rows
            m = m.gather(2, index[:, None, :].expand(b, new_len, new_len))  # (B, L', L'): columns
            visible = m if m.dtype == torch.bool else m == 0
        visible = visible & slot_valid[:, None, :]
        eye = torch.eye(new_len, dtype=torch.bool, device=index.device)
        visible = torch.where(slot_valid[:, :, None], visible, eye)  # a dummy row sees itself only (no NaN)
        return self._format(visible[:, None], mask, dtype)

    def _decode_mask(self, mask, index, slot_valid):
        p = self._pruned
        b, kept = index.shape
        q, total = self._step["q"], self._step["total"]
        new_cols = torch.arange(p.prompt_len, total, device=index.device)  # (T,) positions after the prompt
        cols = torch.cat([index, new_cols.expand(b, -1)], dim=1)  # (B, L' + T)
        col_valid = torch.cat([slot_valid, torch.ones(b, len(new_cols), dtype=torch.bool, device=cols.device)], dim=1)
        if mask is None:
            rows = torch.arange(total - q, total, device=cols.device)  # (q,)
            visible = cols[:, None, :] <= rows[None, :, None]  # (B, q, L' + T)
        else:
            m = mask.expand(b, 1, mask.shape[-2], mask.shape[-1])[:, 0]  # (B, q, total)
            if m.shape[-1] != total:
                raise ValueError(f"decoding mask has {m.shape[-1]} key columns, expected {total}")
            m = m.gather(2, cols[:, None, :].expand(b, m.shape[1], cols.shape[1]))  # (B, q, L' + T)
            visible = m if m.dtype == torch.bool else m == 0
        visible = visible & col_valid[:, None, :]
        return self._format(visible[:, None], mask, torch.float32)
