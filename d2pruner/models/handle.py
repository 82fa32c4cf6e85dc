"""Pruning inside a Hugging Face decoder through forward pre-hooks, for any registered model family.

Where a method acts (its cut layers, :meth:`d2pruner.methods.base.Method.cut_layers`):

* a forward pre-hook on the multimodal model reads ``input_ids`` (and the 2-D attention mask) to find
  each item's visual tokens (the family's :meth:`~d2pruner.models.family.ModelFamily.items`), and
  decides whether this forward is a prompt pass with images ("prefill"), a cached decoding step
  after a pruned prefill ("decode"), or neither ("off");
* a pre-hook on the layer before each cut computes the last token's attention row from the layer
  input (:mod:`d2pruner.models.attention`), so the model may run ``sdpa`` or ``eager``, and calls
  the probes of the method's other needs (:mod:`d2pruner.models.probes`);
* pre-hooks on every layer from the first cut on drop tokens (:mod:`d2pruner.models.cutting`): at a
  cut layer the hidden states are cut; on every later layer the rotary cos/sin, the position ids and
  the 4-D attention mask are cut to the kept tokens during the prompt pass; during cached decoding
  only the mask's key columns are cut (the KV cache of those layers holds only kept tokens). Kept
  tokens keep their original position ids, except before the LLM (layer 0), where they are
  renumbered as if the image placeholders had been shortened.

Items of one batch keep different numbers of tokens (per-item budgets, different tile counts): the
cut sequences are left-padded to a common length with masked dummy slots. Nothing in transformers is
patched; :meth:`PruningHandle.remove` detaches every hook.

Shape legend: B items, L prompt length, L_cur current length, L' kept length, H hidden size, N an
item's visual tokens.
"""

from __future__ import annotations

import dataclasses
import time
import weakref
from typing import Any, Sequence

import numpy as np
import torch

from d2pruner import compat
from d2pruner.methods.base import MergedSelection, ItemInputs, Method, Need, get_method
from d2pruner.models import cutting
from d2pruner.models.attention import last_token_attention
from d2pruner.models.probes import StageContext, layer_hidden, probes_for
from d2pruner.spec import D2PrunerConfig, Selection, TokenLayout, resolve_budget

__all__ = ["ItemStats", "PruningHandle", "attach", "resolve_method"]

SUPPORTED_ATTENTION = ("sdpa", "eager")


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


def resolve_method(method: Any, config: D2PrunerConfig | None, backend: str) -> Method:
    """The method object: None (D2Pruner with ``config`` and ``backend``), a registered name, or a
    :class:`~d2pruner.methods.base.Method` instance."""
    if method is None or method == "d2pruner":
        method = get_method("d2pruner", config=config or D2PrunerConfig(), backend=backend)
    elif isinstance(method, str):
        method = get_method(method)
    if not isinstance(method, Method):
        raise ValueError(f"method must be a name or have a select(items, n_keep) method, as a "
                         f"d2pruner.methods.base.Method that declares where it prunes and what it needs; got {method!r}")
    return method


class PruningHandle:
    """Hooks that prune the visual tokens of a multimodal model; ``remove()`` (or leaving a ``with``
    block) detaches them all. Build it with :func:`attach` (or a family's ``attach``)."""

    def __init__(self, model: torch.nn.Module, *, family, budget: Any, method: Method, prune_layer: int | None,
                 prior: torch.Tensor | None) -> None:
        impl = getattr(model.config, "_attn_implementation", None) or "eager"
        text_impl = getattr(getattr(model.config, "text_config", model.config), "_attn_implementation", impl)
        if text_impl not in SUPPORTED_ATTENTION:
            raise ValueError(f"attention implementation {text_impl!r} is not supported; load the model with "
                             f"attn_implementation in {SUPPORTED_ATTENTION}")
        inner = family.inner(model)
        self.model, self.family, self.language_model = model, family, inner.language_model
        self.layers = self.language_model.layers
        self.stage_layers = method.cut_layers(len(self.layers), prune_layer)
        self.prune_layer = self.stage_layers[0]
        self.rotary = family.rotary
        self.budget, self.method = budget, method
        self.prior = prior
        #: How a prior block is fitted to a view of another size (families whose views vary: Qwen-VL).
        self.prior_resampling = "bilinear"
        self.instructions: list | None = None
        self.hints: list | None = None
        self.stage_stats: list[list[np.ndarray]] = []  # per stage, per item: kept original visual indices
        self.stats: list[ItemStats] = []
        self.mode = "off"
        self.items: list | None = None
        self.input_ids: torch.Tensor | None = None
        self.mask2d: torch.Tensor | None = None
        self.stage_state: list = []
        self._row: torch.Tensor | None = None
        self._cut: cutting.Cut | None = None
        self._step: dict = {}
        self._probes = probes_for(method, family, model)
        self._handles = [inner.register_forward_pre_hook(self._on_model, with_kwargs=True)]
        for probe in self._probes:
            if not probe.after_cuts:
                self._handles += probe.register(self)
        if self.prune_layer == 0:  # before the LLM: decoding continues from the shortened prompt
            self._handles.append(self.language_model.register_forward_pre_hook(self._on_language_model, with_kwargs=True))
        for i in range(self.prune_layer, len(self.layers)):
            self._handles.append(self.layers[i].register_forward_pre_hook(self._make_cut_hook(i), with_kwargs=True))
        for probe in self._probes:  # e.g. raters from the LLM's input, before any score hook
            if probe.after_cuts:
                self._handles += probe.register(self)
        # Registered after the cut hooks, so that a score layer inside a pruned span sees the cut inputs.
        # Methods with ``scores_at_stage_layer`` (PyramidDrop) score in the stage layer's own cut hook instead.
        for stage_layer in self.stage_layers:
            if stage_layer > 0 and not method.scores_at_stage_layer:
                self._handles.append(self.layers[stage_layer - 1].register_forward_pre_hook(self._on_score_layer,
                                                                                            with_kwargs=True))
        self._handles += family.extra_hooks(self)

    # -- lifecycle -----------------------------------------------------------------------------------
    def set_instructions(self, instructions: Sequence[str | None]) -> None:
        """Each batch item's instruction text (the question, without the prompt template), for the next
        forward passes; methods that need ``Need.INSTRUCTION`` (CDPruner) read it."""
        if isinstance(instructions, str):
            raise ValueError("set_instructions takes one text per batch item (a list), got a single string")
        self.instructions = [None if t is None else str(t) for t in instructions]

    def probe(self, need: Need):
        """The probe capturing ``need`` for this handle's method (e.g. ``probe(Need.RATER_ATTENTION).raters``,
        each item's rater positions); ``KeyError`` when the method does not need it."""
        for p in self._probes:
            if p.need == need or (need == Need.CLS_ATTENTION and p.need == Need.VISION_FEATURES):
                return p
        raise KeyError(f"{self.method.name} does not need {need.value!r}")

    def set_item_hints(self, hints: Sequence | None) -> None:
        """Per-item layout facts the token ids do not carry (the family's ``item_hints``), for the next
        forward passes."""
        self.hints = None if hints is None else list(hints)

    def remove(self) -> None:
        """Detach every hook; the model behaves exactly as before (and may be attached to again)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._cut = None
        if _attached_handle(self.model) is self:
            del self.model.__dict__[_ATTACHED]

    def __enter__(self) -> "PruningHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    # -- the model-level hook: which kind of forward is this? ------------------------------------------
    def _on_model(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        cache = compat.get_cache(kwargs)
        if cache is not None and getattr(cache, "is_compileable", False):
            raise ValueError(f"{type(cache).__name__} (a static/compileable cache) cannot hold pruned sequences; "
                             "use the default dynamic cache (do not pass cache_implementation='static')")
        mask2d = kwargs.get("attention_mask")
        self._row, self._step = None, {}
        self.mask2d = mask2d if mask2d is not None and mask2d.ndim == 2 else None
        # A decoding step (non-empty cache, no image input: neither pixel values nor the encoder outputs that
        # generate() computes first) holds no image, even if a generated token has the image token's id:
        # transformers embeds it as text then, and so do we.
        pixels = any(kwargs.get(name) is not None for name in self.family.pixel_inputs)
        decoding = (cache is not None and cache.get_seq_length() > 0 and not pixels
                    and not kwargs.get("mm_encoder_outputs"))
        items = (self.family.items(self.model, input_ids, self.hints, kwargs)
                 if input_ids is not None and not decoding else None)
        has_images = items is not None and any(it is not None for it in items)
        if input_ids is None and pixels:
            raise ValueError("pruning needs input_ids to locate the image tokens; inputs_embeds alone are not supported")
        if has_images:
            if cache is not None and cache.get_seq_length() > 0:
                raise ValueError("image tokens after a non-empty KV cache are not supported: prune in the first prompt pass")
            if mask2d is not None and mask2d.ndim == 2 and bool((mask2d[:, -1] == 0).any()):
                raise ValueError("right padding is not supported (the last token must be real): use padding_side='left'")
            self.mode, self.items, self._cut = "prefill", items, None
            self.input_ids = input_ids
        elif self._cut is not None and cache is self._cut.cache and cache is not None:
            q = input_ids.shape[1] if input_ids is not None else kwargs["inputs_embeds"].shape[1]
            if mask2d is not None and mask2d.ndim == 2:
                total = mask2d.shape[-1]
            else:  # in the original numbering: the prompt plus the tokens decoded since
                cached = self._cut.index.shape[1] if self.prune_layer == 0 else self._cut.prompt_len
                total = self._cut.prompt_len + cache.get_seq_length() - cached + q
            self.mode, self._step = "decode", {"q": q, "total": total}
            if self.prune_layer == 0 and kwargs.get("position_ids") is None and not self.family.renumber_before_llm:
                # Without position ids the model would number this step after the shortened cache; the
                # family numbers it after the original prompt (``generate`` passes them itself).
                pos = self.family.decode_position_ids(self.model, total - q, q, self.mask2d)
                if pos is not None:
                    return args, {**kwargs, "position_ids": pos}
        else:  # nothing to prune (a text-only pass): no statistics of an earlier image linger
            self.mode, self._cut = "off", None
            self.stats, self.stage_stats = [], []
        return None

    # -- before the LLM: keep decoding steps consistent with the shortened prompt ------------------------
    def _on_language_model(self, module, args, kwargs):
        if self.mode != "decode":
            return None
        return args, cutting.decode_language_model_inputs(kwargs, self._cut, self._step["total"])

    # -- the layer before a cut: the attention row and the probes ---------------------------------------
    def _on_score_layer(self, module, args, kwargs):
        if self.mode != "prefill":
            return None
        hidden = layer_hidden(args, kwargs)
        if Need.ATTENTION in self.method.needs:
            self._row = last_token_attention(module, hidden, kwargs["position_embeddings"], kwargs.get("attention_mask"),
                                             self.rotary)
        for probe in self._probes:
            probe.at_score_layer(self, module, hidden, kwargs)
        return None

    # -- layers from the first cut on -----------------------------------------------------------------
    def _make_cut_hook(self, layer_idx: int):
        def hook(module, args, kwargs):
            if self.mode == "prefill":
                if layer_idx in self.stage_layers:
                    hidden = layer_hidden(args, kwargs)
                    stage = self.stage_layers.index(layer_idx)
                    if self.method.scores_at_stage_layer:
                        # the stage layer's own q/k on its input, the sequence the previous stage left
                        cur = kwargs if stage == 0 else {**kwargs, **self._step["kwargs"]}
                        self._row = last_token_attention(module, hidden, cur["position_embeddings"],
                                                         cur.get("attention_mask"), self.rotary)
                    self._select_and_build(hidden, kwargs, stage)
                    args, kwargs = _replace_hidden(args, kwargs, self._step["hidden"])
                kwargs = {**kwargs, **self._step["kwargs"]}
            elif self.mode == "decode" and self.prune_layer > 0:
                stage = max(j for j, s in enumerate(self.stage_layers) if s <= layer_idx)
                masks = self._step.setdefault("masks", {})
                if stage not in masks:
                    index, slot_valid = self.stage_state[stage]
                    masks[stage] = cutting.decode_mask(kwargs.get("attention_mask"), index, slot_valid,
                                                       self._cut.prompt_len, self._step["q"], self._step["total"])
                kwargs = {**kwargs, "attention_mask": masks[stage]}
            return args, kwargs

        return hook

    def _budgets(self, sizes: list[int]) -> list[int]:
        budget = self.budget
        if isinstance(budget, (list, tuple)):
            if len(budget) != len(sizes):
                raise ValueError(f"budget lists {len(budget)} entries for a batch of {len(sizes)} items")
            return [resolve_budget(bud, n, i) for i, (bud, n) in enumerate(zip(budget, sizes))]
        return [resolve_budget(budget, n, i) for i, n in enumerate(sizes)]

    def _item_inputs(self, ctx: StageContext, stage: int, n_seq: int) -> list[ItemInputs]:
        """Each present item's method inputs at the current stage (the probes fill their fields)."""
        device = ctx.hidden.device
        ordinals_of = {}
        for i in ctx.present:
            pos, _ = ctx.items[i]
            ordinal = torch.full((n_seq,), -1, dtype=torch.long, device=device)
            ordinal[pos] = torch.arange(len(pos), device=device)  # (L,) index among the item's visual tokens
            cur_ord = torch.where(ctx.cur_valid[i], ordinal[ctx.cur_index[i]], -1)  # (L_cur,)
            slots = (cur_ord >= 0).nonzero()[:, 0]  # (N_cur,) current slots holding visual tokens
            ctx.slots_of[i], ordinals_of[i] = slots, cur_ord[slots]  # and their indices among the visual tokens
        for probe in self._probes:
            probe.prepare(self, ctx)
        inputs = []
        for i in ctx.present:
            _, layout = ctx.items[i]
            ords, slots = ordinals_of[i], ctx.slots_of[i]
            sub = ords.cpu().numpy()
            sub_layout = layout if stage == 0 else TokenLayout(layout.view[sub], layout.row[sub], layout.col[sub])
            prior = (None if self.prior is None else
                     self.family.expand_prior(self.prior, layout, self.prior_resampling).to(device)[ords])
            attn = None if self._row is None else self._row[i, slots]
            extra = {}
            for probe in self._probes:
                extra.update(probe.fields(self, ctx, i))
            inputs.append(ItemInputs(attn, ctx.hidden[i, slots], sub_layout, prior, **extra))
        self._ordinals_of = ordinals_of
        return inputs

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
                          "cache": compat.get_cache(kwargs)}
            self.stage_state, self.stage_stats, self._ms = [], [], 0.0
            cur_index = torch.arange(n_cur, device=device).expand(b, n_cur)  # (B, L_cur) original positions
            cur_valid = torch.ones(b, n_cur, dtype=torch.bool, device=device)
        else:
            cur_index, cur_valid = self.stage_state[-1]
        n_seq = self._orig["len"]
        ctx = StageContext(hidden, cur_index, cur_valid, self.items, [i for i, it in enumerate(self.items) if it is not None])
        inputs = self._item_inputs(ctx, stage, n_seq)
        if stage == 0:
            sizes = [len(it.layout) for it in inputs]
            finals = self._budgets(sizes)
            if self.method.progressive:
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
        sel_of = dict(zip(ctx.present, selections))
        for i in range(b):
            keep = cur_valid[i].clone()  # (L_cur,)
            if i in sel_of:
                slots = ctx.slots_of[i]
                keep[slots] = False
                kept = torch.as_tensor(sel_of[i].kept, device=device)
                keep[slots[kept]] = True
                kept_visual.append(self._ordinals_of[i][kept].cpu().numpy())
            else:
                kept_visual.append(np.zeros(0, np.int64))
            keep_lists.append(cur_index[i, keep.nonzero()[:, 0]])  # original positions, ascending
        self.stage_stats.append(kept_visual)
        self.stats = [ItemStats(len(self.items[i][1]), len(sel_of[i]), kept_visual[i], sel_of[i].roles, self._ms,
                                self.prior is not None, self.method.name) if i in sel_of else
                      ItemStats(0, 0, np.zeros(0, np.int64), np.zeros(0, np.int8), self._ms, self.prior is not None,
                                self.method.name)
                      for i in range(b)]

        index, slot_valid = cutting.kept_index(keep_lists, device)
        self.stage_state.append((index, slot_valid))
        if stage == 0:
            self._cut = cutting.Cut(index, slot_valid, n_seq, self._orig["cache"])
        merged = {}
        for i, sel in sel_of.items():  # merged tokens: new hidden states in their slots
            if isinstance(sel, MergedSelection) and len(sel.replaced):
                # ``replaced`` indexes the method's inputs, i.e. the current visual slots of item i
                orig = cur_index[i, ctx.slots_of[i][torch.as_tensor(sel.replaced, device=device)]]  # (M,) original positions
                merged[i] = (orig, sel.features)
        h = cutting.cut_hidden(hidden, cur_index, cur_valid, index, slot_valid, n_seq, merged)
        renumber = self.prune_layer == 0 and self.family.renumber_before_llm
        new_kwargs, shift = cutting.cut_positions(self._orig, index, slot_valid, renumber,
                                                  self.language_model.rotary_emb, hidden)
        if shift is not None:
            self._cut.shift = shift
        new_kwargs["attention_mask"] = cutting.prefill_mask(self._orig["mask"], index, slot_valid)
        self._step = {"hidden": h, "kwargs": new_kwargs}


def _replace_hidden(args, kwargs, hidden):
    if "hidden_states" in kwargs:
        return args, {**kwargs, "hidden_states": hidden}
    return (hidden, *args[1:]), kwargs


def attach(model, budget: Any, *, family=None, config: D2PrunerConfig | None = None, prior: Any = None,
           method: Any = None, backend: str = "fast", prune_layer: int | None = None, **family_options) -> PruningHandle:
    """Prune the visual tokens of a loaded multimodal model of any registered family.

    Parameters
    ----------
    model : a model of a registered family (``LlavaForConditionalGeneration``, ``InternVLForConditionalGeneration``, ...)
    budget : int, float, or a list with one per batch item
        Visual tokens kept per item (count or ratio of that item's visual tokens).
    family : ModelFamily or name, optional
        Default: the family of ``model``'s class.
    config : D2PrunerConfig, optional
        D2Pruner's settings (``D2PrunerConfig.for_localization()`` for grounding).
    prior : Tensor (one block), a :class:`d2pruner.models.prior.Prior`, a path, or None
        Positional-bias prior; without it D2Pruner runs un-debiased (the statistics say so). Only
        methods that need ``Need.PRIOR`` read it.
    method : str or :class:`~d2pruner.methods.base.Method`, optional
        D2Pruner by default; or a name from :func:`d2pruner.methods.method_names` or a method object.
    backend : D2Pruner's backend (``"fast"`` or ``"reference"``)
    prune_layer : int, optional
        Where to prune; default: the method's own point (``config.prune_layer`` for D2Pruner, 0 =
        before the LLM for DivPrune and Random).
    family_options : options of the family's handle (InternVL: ``max_tiles``)

    Returns
    -------
    PruningHandle
        ``.stats`` after each prompt pass; ``.remove()`` or ``with`` to detach.

    Examples
    --------
    >>> import torch
    >>> from d2pruner.models import tiny
    >>> model = tiny.tiny_llava()
    >>> ids = torch.tensor([[1, 5] + [tiny.IMAGE_TOKEN] * 576 + [7, 9]])
    >>> with attach(model, 64, method="fastv") as handle:
    ...     _ = model(input_ids=ids, pixel_values=torch.randn(1, 3, 48, 48))
    >>> handle.stats[0].n_visual_after, handle.stats[0].method, handle.family.name
    (64, 'fastv', 'llava')
    """
    from d2pruner.api import BACKENDS
    from d2pruner.models.family import family_for_model, get_family
    from d2pruner.models.prior import prior_tensor

    if (other := _attached_handle(model)) is not None:
        raise ValueError(f"{type(model).__name__} already has a pruning handle attached (method "
                         f"{other.method.name!r}, budget {other.budget!r}); call .remove() on that handle (or leave its "
                         "`with` block) before attaching another")
    if config is not None and not isinstance(config, D2PrunerConfig):
        hint = "D2PrunerConfig(**config)" if isinstance(config, dict) else "a D2PrunerConfig"
        raise TypeError(f"config must be a d2pruner.D2PrunerConfig, got {type(config).__name__} {config!r}; pass {hint}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    family = family_for_model(model) if family is None else get_family(family) if isinstance(family, str) else family
    family.check_model(model)
    inner = family.inner(model)
    compat.check_transformers(inner, inner.language_model.layers[0], text_model=inner.language_model,
                              extra=family.hook_arguments)
    method = resolve_method(method, config, backend)
    why = family.refusal(method)
    if why is not None:
        raise ValueError(why)
    method = family.prepare_method(method, model)
    n_layers = len(inner.language_model.layers)
    layer = method.cut_layers(n_layers, prune_layer)[0]
    prior_values = prior_tensor(prior, family.prior_block(model), model, layer) if Need.PRIOR in method.needs else None
    handle_class = getattr(family, "handle_class", PruningHandle)
    handle = handle_class(model, family=family, budget=budget, method=method, prune_layer=prune_layer, prior=prior_values)
    for key, value in family_options.items():
        if not hasattr(handle, key):
            handle.remove()
            raise ValueError(f"unknown option {key!r} for the {family.name} family")
        if key == "prior_resampling" and value not in family.prior_resamplings:
            handle.remove()
            raise ValueError(f"prior_resampling={value!r}: the {family.name} family "
                             + (f"resamples its prior by one of {family.prior_resamplings}" if family.prior_resamplings
                                else "applies its prior blocks as they are (its views do not vary in size)"))
        setattr(handle, key, value)
    model.__dict__[_ATTACHED] = weakref.ref(handle)  # not a module attribute: state_dict and repr ignore it
    return handle


#: Where a model remembers its attached handle (a weak reference: the hooks keep a live handle alive).
_ATTACHED = "_d2pruner_handle"


def _attached_handle(model) -> "PruningHandle | None":
    """The handle attached to ``model`` and not removed since, if any."""
    ref = model.__dict__.get(_ATTACHED)
    handle = ref() if ref is not None else None
    return handle if handle is not None and handle._handles and handle.model is model else None
