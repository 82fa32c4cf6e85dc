"""Probes: each captures one thing a method declares it needs (:class:`d2pruner.methods.base.Need`).

The handle (:mod:`d2pruner.models.handle`) builds one probe per need of its method
(:func:`probes_for`), lets each register hooks of its own, calls it at the layer before each cut, and
asks it for its :class:`~d2pruner.methods.base.ItemInputs` fields when the method selects. The
attention row (``Need.ATTENTION``) and the prior (``Need.PRIOR``) are the handle's own; every other
need is a probe here:

* :class:`KeyNormProbe` (``KEYS``, DART): key L1 norms of the layer before the cut, the hidden states
  after the LLM's final norm, the question's tokens;
* :class:`VisionCapture` (``VISION_FEATURES`` / ``CLS_ATTENTION``): the projector's input and a vision
  layer's [CLS] attention and keys, recorded whenever the images are encoded;
* :class:`InstructionProbe` (``INSTRUCTION``): the instruction texts given to the handle;
* :class:`TokenKeyProbe` (``TOKEN_KEY``): a CRC-32 of each item's real token ids;
* :class:`RaterProbe` (``RATER_ATTENTION``, SparseVLM): text raters chosen on the LLM's input, and
  their attention rows at the layer before each cut.

Shape legend: B items, L_cur current sequence length, N_cur an item's current visual tokens.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Sequence

import numpy as np
import torch

from d2pruner.methods.base import Need
from d2pruner.models.attention import cls_attention_and_keys, key_l1_norms, query_attention

__all__ = ["InstructionProbe", "KeyNormProbe", "Probe", "RaterProbe", "StageContext", "TokenKeyProbe", "VisionCapture",
           "probes_for"]


def layer_hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states a decoder layer's forward pre-hook receives."""
    return kwargs.get("hidden_states", args[0] if args else None)


@dataclasses.dataclass
class StageContext:
    """One selection: the current sequence and where each item's visual tokens are in it."""

    hidden: torch.Tensor  # (B, L_cur, H) entering the cut
    cur_index: torch.Tensor  # (B, L_cur) original position of each current slot
    cur_valid: torch.Tensor  # (B, L_cur)
    items: list  # per item (positions (N,), layout) or None
    present: list[int]  # items with visual tokens
    slots_of: dict = dataclasses.field(default_factory=dict)  # item -> (N_cur,) current visual slots


class Probe:
    """Captures one need. Every method is optional; :meth:`fields` gives one item's ItemInputs fields."""

    #: The need it captures.
    need: Need
    #: Register this probe's hooks after the cut hooks (so a hook on a cut layer runs after the cut).
    after_cuts: bool = False

    def register(self, handle) -> list:
        """Hooks of its own (removed with the handle's)."""
        return []

    def at_score_layer(self, handle, layer: torch.nn.Module, hidden: torch.Tensor, kwargs: dict) -> None:
        """Called in the prompt pass at the layer before each cut, after the cut inputs are in place."""

    def prepare(self, handle, ctx: StageContext) -> None:
        """Called once per selection before :meth:`fields`."""

    def fields(self, handle, ctx: StageContext, i: int) -> dict:
        return {}


class KeyNormProbe(Probe):
    """DART's inputs: layer K-1's key L1 norms (after the rotary embedding, as its KV cache holds them)
    and the hidden states entering layer K after the LLM's final norm (as DART's public code compares
    them), of the visual tokens and of the real text tokens after the item's image (the question), with
    their sequence positions counted over the item's real tokens (DART's pivots take turns by them)."""

    need = Need.KEYS

    def __init__(self) -> None:
        self.norms: torch.Tensor | None = None

    def at_score_layer(self, handle, layer, hidden, kwargs) -> None:
        self.norms = key_l1_norms(layer, hidden, kwargs["position_embeddings"], handle.rotary)  # (B, L_cur)

    def prepare(self, handle, ctx) -> None:
        norm = getattr(handle.language_model, "norm", None)
        self._features = ctx.hidden if norm is None else norm(ctx.hidden)  # (B, L_cur, H)

    def fields(self, handle, ctx, i) -> dict:
        pos = ctx.items[i][0]
        slots = ctx.slots_of[i]
        text = ctx.cur_valid[i] & (ctx.cur_index[i] > pos.max())  # (L_cur,) the tokens after the item's image
        if handle.mask2d is not None:
            text &= handle.mask2d[i, ctx.cur_index[i]].bool()
        text_slots = text.nonzero()[:, 0]  # (T,) real tokens after the image: the question
        index = ctx.cur_index[i]  # (L_cur,) original positions, left padding included
        real = index if handle.mask2d is None else handle.mask2d[i].long().cumsum(0)[index] - 1  # among real tokens
        return dict(key_norms=self.norms[i, slots], text_key_norms=self.norms[i, text_slots],
                    text_features=self._features[i, text_slots], normed_features=self._features[i, slots],
                    positions=real[slots], text_positions=real[text_slots])


class InstructionProbe(Probe):
    """Each item's instruction text, from :meth:`PruningHandle.set_instructions`; a missing one raises."""

    need = Need.INSTRUCTION

    def prepare(self, handle, ctx) -> None:
        name = handle.method.name
        if handle.instructions is None:
            raise ValueError(f"{name} needs each item's instruction text: call handle.set_instructions([...]) "
                             "before the forward pass")
        b = ctx.hidden.shape[0]
        if len(handle.instructions) != b:
            raise ValueError(f"set_instructions gave {len(handle.instructions)} texts for a batch of {b} items")
        missing = [i for i in ctx.present if handle.instructions[i] is None]
        if missing:
            raise ValueError(f"{name} needs the instruction text of item {missing[0]}, which is None")

    def fields(self, handle, ctx, i) -> dict:
        return {"instruction": handle.instructions[i]}


class TokenKeyProbe(Probe):
    """A CRC-32 of the item's real token ids: the same prompt gives the same key alone or in any batch."""

    need = Need.TOKEN_KEY

    def fields(self, handle, ctx, i) -> dict:
        ids = handle.input_ids[i]
        real = ids if handle.mask2d is None else ids[handle.mask2d[i].bool()]
        return {"token_key": zlib.crc32(real.cpu().numpy().astype(np.int64).tobytes())}


class RaterProbe(Probe):
    """SparseVLM's raters and their attention rows.

    Raters are chosen once per prompt pass on the LLM's input embeddings: the item's real tokens after
    its last visual token (the question), rated by the method's ``raters(visual, text)``; an item
    whose image ends the prompt uses its last token. At the layer before each cut, each rater's
    attention row is computed from q/k (softmax over the full causal key length, mean over heads)."""

    need = Need.RATER_ATTENTION
    after_cuts = True

    def __init__(self, rate) -> None:
        self.rate = rate  # (visual (N, H), text (T, H)) -> rater indices into text
        self.raters: dict = {}
        self.rows: dict = {}

    def register(self, handle) -> list:
        return [handle.layers[0].register_forward_pre_hook(self._on_first_layer(handle), with_kwargs=True)]

    def _on_first_layer(self, handle):
        def hook(module, args, kwargs):
            if handle.mode != "prefill":
                return None
            hidden = layer_hidden(args, kwargs)  # (B, L, H)
            handle.stage_state = []
            self.raters = {}
            for i, item in enumerate(handle.items):
                if item is None:
                    continue
                pos = item[0]
                after = torch.arange(int(pos.max()) + 1, hidden.shape[1], device=hidden.device)  # (T,)
                if handle.mask2d is not None:
                    after = after[handle.mask2d[i, after].bool()]
                if len(after) == 0:
                    after = torch.tensor([hidden.shape[1] - 1], device=hidden.device)
                self.raters[i] = after[self.rate(hidden[i, pos], hidden[i, after]).to(hidden.device)]  # (R,) positions
            return None
        return hook

    def at_score_layer(self, handle, layer, hidden, kwargs) -> None:
        cos, sin = kwargs["position_embeddings"]
        mask = kwargs.get("attention_mask")
        b, n_cur = hidden.shape[:2]
        cur_index = handle.stage_state[-1][0] if handle.stage_state else torch.arange(n_cur, device=hidden.device).expand(b, n_cur)
        self.rows = {}
        for i, raters in self.raters.items():
            slots = (cur_index[i][:, None] == raters[None, :]).any(dim=1).nonzero()[:, 0]  # (R,) current slots
            pe = (cos[i:i + 1] if cos.shape[0] > 1 else cos, sin[i:i + 1] if sin.shape[0] > 1 else sin)
            self.rows[i] = query_attention(layer, hidden[i:i + 1], pe, None if mask is None else mask[i:i + 1], slots,
                                           handle.rotary)

    def fields(self, handle, ctx, i) -> dict:
        return {"rater_attention": self.rows[i][:, ctx.slots_of[i]]}  # (R, N_cur)


class VisionCapture(Probe):
    """Forward pre-hooks that record what a pre-LLM method reads from the vision side each time the
    images are encoded: the projector's input (images, T, Dv) and, optionally, the [CLS] attention and
    keys of one vision self-attention (:func:`d2pruner.models.attention.cls_attention_and_keys`).

    Recording starts afresh whenever the vision tower runs (``generate`` encodes the images before
    the prompt pass, a plain forward inside it), and :meth:`per_item` consumes it: it cuts the rows, in
    placeholder order, into one block per batch item (an item with ``N`` visual tokens takes the next
    ``N / T`` images).
    """

    need = Need.VISION_FEATURES

    def __init__(self, vision_tower: torch.nn.Module, projector: torch.nn.Module,
                 cls_attention_module: torch.nn.Module | None = None) -> None:
        self.vision_tower, self.projector, self.cls_module = vision_tower, projector, cls_attention_module
        self._projecting = False
        self.reset()

    def reset(self) -> None:
        self.features: list[torch.Tensor] = []
        self.cls: list[torch.Tensor] = []
        self.keys: list[torch.Tensor] = []

    def register(self, handle=None) -> list:
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
        hidden = layer_hidden(args, kwargs)
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

    def prepare(self, handle, ctx) -> None:
        self._per_item = self.per_item([None if it is None else len(it[1]) for it in ctx.items])

    def fields(self, handle, ctx, i) -> dict:
        return self._per_item[i]


def probes_for(method: Any, family: Any, model: torch.nn.Module) -> list[Probe]:
    """One probe per need of ``method`` beyond the attention row and the prior, in the order the hooks
    must run; the vision probe comes from the model family (it knows the vision tower's layout)."""
    needs = method.needs
    probes: list[Probe] = []
    if needs & {Need.VISION_FEATURES, Need.CLS_ATTENTION}:
        probes.append(family.vision_capture(model, method))
    if Need.KEYS in needs:
        probes.append(KeyNormProbe())
    if Need.INSTRUCTION in needs:
        probes.append(InstructionProbe())
    if Need.TOKEN_KEY in needs:
        probes.append(TokenKeyProbe())
    if Need.RATER_ATTENTION in needs:
        probes.append(RaterProbe(method.raters))
    return probes
