"""LLaVA-1.5 (``transformers.LlavaForConditionalGeneration``): D2Pruner inside the language model.

Each ``<image>`` expands to a 24x24 grid of visual tokens (CLIP ViT-L/14-336, CLS dropped); an item
with several images gets one view per image. The positional prior is one value per grid position
(576 for LLaVA-1.5) and applies to every image of an item.

Examples
--------
>>> import torch
>>> from d2pruner.models import tiny
>>> model, image_token = tiny.tiny_llava(), tiny.IMAGE_TOKEN
>>> ids = torch.tensor([[1, 5] + [image_token] * 576 + [7, 9]])
>>> with attach(model, budget=64) as handle:
...     out = model(input_ids=ids, pixel_values=torch.randn(1, 3, 48, 48))
>>> handle.stats[0].n_visual_before, handle.stats[0].n_visual_after, handle.stats[0].counts()
(576, 64, {'pivot': 44, 'mis': 20, 'topup': 0})
"""

from __future__ import annotations

from typing import Any

import torch

from d2pruner.models.hooks import PruningHandle, VisionCapture, resolve_method
from d2pruner.models.prior import prior_tensor
from d2pruner.spec import D2PrunerConfig, TokenLayout

__all__ = ["attach", "find_items", "grid_side"]


def grid_side(model) -> int:
    """Visual tokens per image side: vision ``image_size // patch_size`` (24 for LLaVA-1.5)."""
    vc = model.config.vision_config
    return int(vc.image_size) // int(vc.patch_size)


def find_items(input_ids: torch.Tensor, image_token_id: int, side: int) -> list:
    """For each item, the positions of its image tokens and their layout (``None`` for a text-only item)."""
    per_image = side * side
    items = []
    for i, row in enumerate(input_ids):
        pos = (row == image_token_id).nonzero()[:, 0]  # (N,)
        if len(pos) == 0:
            items.append(None)
            continue
        if len(pos) % per_image:
            raise ValueError(f"item {i} has {len(pos)} image tokens (id {image_token_id}), not a multiple of the "
                             f"{side}x{side}={per_image} tokens of one image")
        layout = TokenLayout.concat([TokenLayout.grid(side, side)] * (len(pos) // per_image))
        items.append((pos, layout))
    return items


def _expand_prior(prior: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    return prior.repeat(layout.n_views)  # one copy per image


def feature_attention_layer(model) -> int:
    """Index of the vision encoder layer whose output LLaVA projects: ``hidden_states[vision_feature_layer]``
    is the output of layer ``vision_feature_layer mod (n_layers + 1) - 1`` (layer 22 of 24 for
    LLaVA-1.5's ``-2``, its penultimate layer)."""
    cfg = model.config
    layer = cfg.vision_feature_layer
    n = int(cfg.vision_config.num_hidden_layers)
    if not isinstance(layer, int):
        raise ValueError(f"vision_feature_layer={layer!r}: methods reading the vision attention need a single layer")
    index = layer % (n + 1) - 1
    if index < 0:
        raise ValueError(f"vision_feature_layer={layer} selects the patch embeddings, which have no attention layer")
    return index


def vision_capture(model, inner, method) -> VisionCapture | None:
    """The vision-side records a pre-LLM method needs (projector input; [CLS] attention and keys of the
    projected layer for ``needs_cls_attention``), or None."""
    if not getattr(method, "needs_vision", False):
        return None
    cls_module = None
    if getattr(method, "needs_cls_attention", False):
        strategy = model.config.vision_feature_select_strategy
        if strategy != "default":
            raise ValueError(f"vision_feature_select_strategy={strategy!r}: {method.name} expects 'default' (the [CLS] "
                             "token dropped before the projector)")
        vision_model = getattr(inner.vision_tower, "vision_model", inner.vision_tower)  # transformers 4.x / 5.x
        if not hasattr(getattr(vision_model, "encoder", None), "layers"):
            raise ValueError(f"{method.name} needs a CLIP-style vision tower with a [CLS] token, got "
                             f"{type(inner.vision_tower).__name__}")
        cls_module = vision_model.encoder.layers[feature_attention_layer(model)].self_attn
    return VisionCapture(inner.vision_tower, inner.multi_modal_projector, cls_module)


def attach(model, budget: Any, *, config: D2PrunerConfig | None = None, prior: Any = None, method: Any = None,
           backend: str = "fast", prune_layer: int | None = None) -> PruningHandle:
    """Prune the visual tokens of a LLaVA model at decoder layer ``config.prune_layer``.

    Parameters
    ----------
    model : LlavaForConditionalGeneration
    budget : int, float, or a list with one per batch item
        Visual tokens kept per item (count or ratio of that item's visual tokens).
    config : D2PrunerConfig, optional
    prior : Tensor (side*side,), a :class:`d2pruner.models.prior.Prior`, or None
        Positional-bias prior; without it D2Pruner runs un-debiased (the statistics say so).
    method : str or selection method, optional
        D2Pruner by default; or a name from :data:`d2pruner.methods.METHODS` (``"fastv"``,
        ``"divprune"``, ...) or an object with ``select(items, n_keep)``.
    prune_layer : int, optional
        Where to prune; default: the method's own point (``config.prune_layer`` for D2Pruner, 0 =
        before the LLM for DivPrune and Random).

    Returns
    -------
    PruningHandle
        ``.stats`` after each prompt pass; ``.remove()`` or ``with`` to detach.
    """
    from transformers import LlavaForConditionalGeneration, LlavaModel

    if not isinstance(model, (LlavaForConditionalGeneration, LlavaModel)):
        raise ValueError(f"llava.attach expects a LlavaForConditionalGeneration, got {type(model).__name__}")
    config = config or D2PrunerConfig()
    method, layer = resolve_method(method, config, backend, prune_layer)
    if getattr(method, "needs_instruction", False) and getattr(method, "text_tower", "absent") is None:
        import dataclasses

        from d2pruner.models.clip_text import CLIP_FOR_LLAVA, load_clip_text_tower

        method = dataclasses.replace(method, text_tower=load_clip_text_tower(CLIP_FOR_LLAVA, device=model.device))
    inner = model.model if isinstance(model, LlavaForConditionalGeneration) else model
    side = grid_side(model)
    token_id = int(model.config.image_token_id)
    prior_values = prior_tensor(prior, side * side, model, layer)
    return PruningHandle(inner, language_model=inner.language_model,
                         find_items=lambda ids: find_items(ids, token_id, side), budget=budget,
                         method=method, prune_layer=layer,
                         prior=prior_values, expand_prior=_expand_prior, vision=vision_capture(model, inner, method))

