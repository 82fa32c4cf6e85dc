"""LLaVA-1.5 (``transformers.LlavaForConditionalGeneration``): the model family record.

Each ``<image>`` expands to a 24x24 grid of visual tokens (CLIP ViT-L/14-336, CLS dropped); an item
with several images gets one view per image. The positional prior is one value per grid position
(576 for LLaVA-1.5) and applies to every image of an item. The official prompt is ``vicuna_v1``
with the image padded to a square with the mean colour (122, 116, 104) before the processor (which
would centre-crop). VisionZip reads the [CLS] attention of the projected CLIP layer; CDPruner gets
CLIP's own text tower (``openai/clip-vit-large-patch14-336``, local cache only).

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

import dataclasses
from typing import Any

import torch

from d2pruner.methods.base import Need
from d2pruner.models.family import ModelFamily, register_family
from d2pruner.models.handle import attach as _attach
from d2pruner.spec import TokenLayout

__all__ = ["FAMILY", "LLAVA_PAD_COLOUR", "LLAVA_SYSTEM", "attach", "feature_attention_layer", "find_items", "grid_side"]

LLAVA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                "The assistant gives helpful, detailed, and polite answers to the user's questions.")
LLAVA_PAD_COLOUR = (122, 116, 104)
TINY_PIXELS = 48  # tiny_llava's CLIP input side (patch 2 -> 24x24 tokens)


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


def _pad_to_square(image):
    from PIL import Image

    side = max(image.size)
    canvas = Image.new("RGB", (side, side), LLAVA_PAD_COLOUR)
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


class LlavaFamily(ModelFamily):
    name = "llava"
    title = "LLaVA-1.5"
    model_types = ("llava",)
    checkpoint = "llava-hf/llava-1.5-7b-hf"
    flops_config = "llava-1.5-7b-hf.json"
    prior_per = "grid position"
    row_visual_tokens = 576
    text_tower_checkpoint = "openai/clip-vit-large-patch14-336"  # d2pruner.models.clip_text.CLIP_FOR_LLAVA

    def model_classes(self):
        from transformers import LlavaForConditionalGeneration, LlavaModel

        return LlavaForConditionalGeneration, LlavaModel

    def prior_block(self, model) -> int:
        return grid_side(model) ** 2

    def items(self, model, input_ids, hints, inputs=None) -> list:
        return find_items(input_ids, int(model.config.image_token_id), grid_side(model))

    def prepare_method(self, method, model):
        if Need.TEXT_TOWER in method.needs:
            from d2pruner.models.clip_text import CLIP_FOR_LLAVA, load_clip_text_tower

            method = dataclasses.replace(method, text_tower=load_clip_text_tower(CLIP_FOR_LLAVA, device=model.device))
        return method

    def vision_capture(self, model, method):
        """The projector's input; with ``Need.CLS_ATTENTION`` also the [CLS] attention and keys of the
        projected CLIP layer."""
        from d2pruner.models.probes import VisionCapture

        inner = self.inner(model)
        cls_module = None
        if Need.CLS_ATTENTION in method.needs:
            strategy = model.config.vision_feature_select_strategy
            if strategy != "default":
                raise ValueError(f"vision_feature_select_strategy={strategy!r}: {method.name} expects 'default' (the "
                                 "[CLS] token dropped before the projector)")
            vision_model = getattr(inner.vision_tower, "vision_model", inner.vision_tower)  # transformers 4.x / 5.x
            if not hasattr(getattr(vision_model, "encoder", None), "layers"):
                raise ValueError(f"{method.name} needs a CLIP-style vision tower with a [CLS] token, got "
                                 f"{type(inner.vision_tower).__name__}")
            cls_module = vision_model.encoder.layers[feature_attention_layer(model)].self_attn
        return VisionCapture(inner.vision_tower, inner.multi_modal_projector, cls_module)

    def prompt_text(self, processor, question: str) -> str:
        return f"{LLAVA_SYSTEM} USER: <image>\n{question} ASSISTANT:"

    def build_batch(self, processor, images, questions, max_tiles: int) -> dict:
        prompts = [self.prompt_text(processor, q) for q in questions]
        return processor(images=[_pad_to_square(im.convert("RGB")) for im in images], text=prompts, padding=True,
                         return_tensors="pt")

    latency_budgets = (None, 576, 192, 128, 64)

    def full_size_config(self, attn_implementation: str):
        from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

        cfg = self.shipped_config()
        text = LlamaConfig(**{k: v for k, v in cfg["text_config"].items() if k != "model_type"},
                           attn_implementation=attn_implementation)
        vision = CLIPVisionConfig(**{k: v for k, v in cfg["vision_config"].items() if k != "model_type"})
        return LlavaConfig(vision_config=vision, text_config=text, image_token_id=cfg["image_token_id"],
                           vision_feature_layer=cfg["vision_feature_layer"], attn_implementation=attn_implementation,
                           tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)))

    def synthetic_image(self, model, tiles: int, generator: torch.Generator):
        px = int(model.config.vision_config.image_size)
        return grid_side(model) ** 2, torch.randn(1, 3, px, px, generator=generator), None

    def tiny_model(self, seed: int = 0, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32):
        """A random ``LlavaForConditionalGeneration``: CLIP tower 48 px / patch 2 (24x24 tokens), Llama text
        model with 4 layers, 4 heads, 2 KV heads (GQA)."""
        from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

        from d2pruner.models import tiny_parts as tiny

        vision = CLIPVisionConfig(image_size=TINY_PIXELS, patch_size=2, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=2, projection_dim=32)
        config = LlavaConfig(vision_config=vision, text_config=tiny.text_config(attn_implementation),
                             image_token_id=tiny.IMAGE_TOKEN, vision_feature_layer=-2,
                             vision_feature_select_strategy="default", attn_implementation=attn_implementation)
        return tiny.build(LlavaForConditionalGeneration, config, seed, dtype)

    def tiny_processor(self, max_tiles: int = 6):
        """transformers' ``LlavaProcessor`` with CLIP's image processor around the tiny tokenizer."""
        from transformers import CLIPImageProcessor, LlavaProcessor

        from d2pruner.models.tiny_parts import tiny_tokenizer

        images = CLIPImageProcessor(size={"shortest_edge": TINY_PIXELS},
                                    crop_size={"height": TINY_PIXELS, "width": TINY_PIXELS})
        return LlavaProcessor(image_processor=images, tokenizer=tiny_tokenizer(), patch_size=2,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1)

    def tiny_pixels(self) -> int:
        return TINY_PIXELS


FAMILY = register_family(LlavaFamily())


def attach(model, budget: Any, **options):
    """Prune the visual tokens of a LLaVA model: :func:`d2pruner.models.handle.attach` with this family
    (see there for ``config``, ``prior``, ``method``, ``backend``, ``prune_layer``)."""
    return _attach(model, budget, family=FAMILY, **options)
