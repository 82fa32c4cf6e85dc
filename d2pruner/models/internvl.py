"""InternVL-2.5 and InternVL3 (``transformers.InternVLForConditionalGeneration``): the model family records.

An image is cut into a grid of tiles (rows x cols, 1 to ``max_tiles``) plus, when there is more than
one tile, a thumbnail that comes **last**; each tile gives 16x16 = 256 ``<IMG_CONTEXT>`` tokens after
pixel shuffle. The layout puts the tiles on one canvas (neighbours across tile borders are
neighbours) and the thumbnail in its own view (:meth:`d2pruner.spec.TokenLayout.internvl`).

The processor does not report the tile grid, so the handle must be told it for items with more than
one tile: ``handle.set_image_sizes([(height, width), ...])`` recomputes it with the processor's own
rule (:func:`tile_grid`), or ``handle.set_tile_grids([(rows, cols), ...])`` gives it directly (the
family's ``item_hints`` does the former from a batch's images).

The positional prior has one value per tile position (256) and applies to every tile and to the
thumbnail. InternVL refuses VisionZip (no [CLS] attention after pixel shuffle) and CDPruner without
an explicit text tower (no CLIP). Prompts follow InternVL-2.5's chat template with its own system
message; answers end at the chat turn's end ``<|im_end|>``.

InternVL3 (``OpenGVLab/InternVL3-8B-hf``) is the same transformers class with the same vision tower,
tiling, pixel shuffle, chat template and system message around a Qwen2 text model (biases on q/k/v)
instead of InternVL-2.5's Llama (InternLM2 rewritten). It is its own record, ``internvl3``, a subclass
of InternVL-2.5's that differs in its checkpoint, its full-size config (FLOPs) and its tiny twin; the
two are told apart by ``text_config.model_type`` (:attr:`ModelFamily.text_model_types`), so
``family_for_config`` and ``family_for_model`` pick the right one and nothing else branches on it.
The base (not preference-tuned) InternVL-2.5 weights exist only as remote code:
:mod:`d2pruner.models.convert_internvl` converts a local copy into this class's layout.

Examples
--------
>>> import torch
>>> from d2pruner.models import tiny
>>> model = tiny.tiny_internvl()
>>> ids = torch.tensor([[1, 5] + [tiny.IMAGE_TOKEN] * 256 * 3 + [7, 9]])  # 2 tiles + thumbnail
>>> with attach(model, budget=0.1) as handle:
...     handle.set_tile_grids([(1, 2)])
...     out = model(input_ids=ids, pixel_values=torch.randn(3, 3, 64, 64))
>>> handle.stats[0].n_visual_before, handle.stats[0].n_visual_after
(768, 77)
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from d2pruner.methods.base import Need
from d2pruner.models.family import ModelFamily, family_for_model, register_family
from d2pruner.models.handle import PruningHandle, attach as _attach
from d2pruner.spec import TokenLayout

__all__ = ["FAMILY", "FAMILY3", "INTERNVL_SYSTEM", "InternVLHandle", "attach", "find_items", "image_only_internvl_processor",
           "tile_grid", "tile_pixels", "tile_side", "unsupported"]

INTERNVL_SYSTEM = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
TINY_PIXELS = 64  # tiny_internvl's tile side (patch 2, pixel shuffle 0.5 -> 16x16 tokens)
# InternVL-2.5's chat layout (system, user turn with the image first, open assistant turn) as a template
_TINY_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tile_side(model) -> int:
    """Visual tokens per tile side: ``image_size / patch_size * downsample_ratio`` (16 for InternVL-2.5)."""
    vc = model.config.vision_config
    size = vc.image_size[0] if isinstance(vc.image_size, (list, tuple)) else vc.image_size
    patch = vc.patch_size[0] if isinstance(vc.patch_size, (list, tuple)) else vc.patch_size
    return int(round(int(size) // int(patch) * float(model.config.downsample_ratio)))


def tile_grid(image_size: tuple[int, int], max_tiles: int = 12, min_tiles: int = 1, tile_pixels: int = 448) -> tuple[int, int]:
    """``(rows, cols)`` of InternVL's dynamic tiling for an image of ``(height, width)`` pixels, by the
    processor's own rule (transformers' ``get_optimal_tiled_canvas``).

    >>> tile_grid((480, 640)), tile_grid((480, 640), max_tiles=6)
    ((3, 4), (2, 3))
    """
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

    cols, rows = get_optimal_tiled_canvas(tuple(image_size), (tile_pixels, tile_pixels), min_tiles, max_tiles)
    return int(rows), int(cols)


def tile_pixels(processor) -> int:
    """The side of one tile in pixels, as the processor cuts them."""
    size = processor.image_processor.size
    return int(size["height"] if isinstance(size, dict) else size.height)


class InternVLHandle(PruningHandle):
    """A :class:`~d2pruner.models.handle.PruningHandle` that also knows each item's tile grid."""

    max_tiles: int = 12

    @property
    def tile_grids(self) -> list | None:
        return self.hints

    def set_tile_grids(self, grids: Sequence[tuple[int, int] | None]) -> None:
        """The ``(rows, cols)`` tile grid of each batch item's image, for the next forward passes."""
        self.set_item_hints([None if g is None else (int(g[0]), int(g[1])) for g in grids])

    def set_image_sizes(self, sizes: Sequence[tuple[int, int] | None]) -> None:
        """Each item's image ``(height, width)``; the tile grids follow by the processor's rule."""
        self.set_tile_grids([None if s is None else tile_grid(s, self.max_tiles) for s in sizes])


def find_items(input_ids: torch.Tensor, image_token_id: int, side: int, grids: list | None) -> list:
    per_tile = side * side
    items = []
    for i, row in enumerate(input_ids):
        pos = (row == image_token_id).nonzero()[:, 0]  # (N,)
        n = len(pos)
        if n == 0:
            items.append(None)
            continue
        grid = grids[i] if grids is not None and i < len(grids) else None
        if grid is None:
            if n != per_tile:
                raise ValueError(f"item {i} has {n} image tokens ({n // per_tile - 1} tiles + thumbnail?); its tile grid is "
                                 "unknown: call handle.set_image_sizes([...]) or handle.set_tile_grids([...]) first")
            grid = (1, 1)
        layout = TokenLayout.internvl(grid[0], grid[1], tile_side=side)
        if len(layout) != n:
            raise ValueError(f"item {i} has {n} image tokens, but a {grid[0]}x{grid[1]} tile grid gives {len(layout)} "
                             f"({per_tile} per tile{', plus a thumbnail' if grid[0] * grid[1] > 1 else ''})")
        items.append((pos, layout))
    return items


_IMAGE_ONLY_INTERNVL = None


def image_only_internvl_processor():
    """``InternVLProcessor`` without its video processor: the class (built on first use).

    transformers' InternVL processor also loads a video processor whose class needs torchvision,
    which this project does not install (see docs/evaluation.md); the image path is the same.
    ``from_pretrained`` on it reads a checkpoint's tokenizer, image processor, ``image_seq_length``
    and chat template, and ignores the video processor's files.
    """
    global _IMAGE_ONLY_INTERNVL
    if _IMAGE_ONLY_INTERNVL is None:
        from transformers import InternVLProcessor

        class ImageOnlyInternVLProcessor(InternVLProcessor):
            """``InternVLProcessor`` without its video processor (whose class check needs torchvision)."""

            @classmethod
            def get_attributes(cls):
                return ["image_processor", "tokenizer"]

            def __init__(self, image_processor, tokenizer, image_seq_length: int = 256, chat_template=None, **kwargs):
                super().__init__(image_processor, tokenizer, image_seq_length=image_seq_length,
                                 chat_template=chat_template, **kwargs)

        _IMAGE_ONLY_INTERNVL = ImageOnlyInternVLProcessor
    return _IMAGE_ONLY_INTERNVL


class InternVLFamily(ModelFamily):
    name = "internvl"
    title = "InternVL-2.5"
    model_types = ("internvl",)
    text_model_types = ("llama",)  # InternLM2 as Llama (the -hf conversions and d2pruner.models.convert_internvl)
    checkpoint = "OpenGVLab/InternVL2_5-8B-MPO-hf"  # the transformers-native (MPO) conversion
    flops_config = "internvl2_5-8b-mpo-hf.json"
    prior_per = "tile position (every tile and the thumbnail)"
    uses_max_tiles = True
    row_visual_tokens = 256 * (6 + 1)  # 6 tiles + thumbnail: a typical 4:3 image
    row_visual_note = "6 tiles + thumbnail; a real image has 256 to 3328"
    chat_turn_end = "<|im_end|>"
    handle_class = InternVLHandle
    refuses = {
        Need.CLS_ATTENTION: ("{name} needs the [CLS] attention of the vision tower, which InternVL does not have: its "
                             "[CLS] token is dropped before the pixel shuffle, so no [CLS] query scores the 256 merged "
                             "tokens of a tile"),
        Need.TEXT_TOWER: ("{name} needs a CLIP text tower for the instruction relevance, and InternVL has no CLIP "
                          "(InternViT is not aligned with a text encoder): pass method=get_method('{name}', "
                          "text_tower=...) explicitly, whose image side maps InternVL's pixel-shuffled features"),
    }

    def model_classes(self):
        from transformers import InternVLForConditionalGeneration, InternVLModel

        return InternVLForConditionalGeneration, InternVLModel

    def prior_block(self, model) -> int:
        return tile_side(model) ** 2

    def items(self, model, input_ids, hints, inputs=None) -> list:
        return find_items(input_ids, int(model.config.image_token_id), tile_side(model), hints)

    def item_hints(self, processor, images, max_tiles: int) -> list:
        return [tile_grid((im.height, im.width), max_tiles, tile_pixels=tile_pixels(processor)) for im in images]

    def load_processor(self, model_id: str, revision: str | None):
        return image_only_internvl_processor().from_pretrained(model_id, revision=revision, local_files_only=True)

    def prompt_text(self, processor, question: str) -> str:
        messages = [{"role": "system", "content": [{"type": "text", "text": INTERNVL_SYSTEM}]},
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def build_batch(self, processor, images, questions, max_tiles: int) -> dict:
        prompts = [self.prompt_text(processor, q) for q in questions]
        return processor(text=prompts, images=[im.convert("RGB") for im in images], padding=True, return_tensors="pt",
                         images_kwargs={"max_patches": max_tiles})

    latency_budgets = (None, 1.0, 0.25, 0.1)
    latency_tiles = ((1, 6, 12), (1, 2))

    def text_config_class(self):
        """The transformers config class of the text model (Llama for InternVL-2.5-8B)."""
        from transformers import LlamaConfig

        return LlamaConfig

    def full_size_config(self, attn_implementation: str):
        from transformers import InternVLConfig, InternVLVisionConfig

        cfg = self.shipped_config()
        text = self.text_config_class()(**{k: v for k, v in cfg["text_config"].items() if k != "model_type"},
                                        attn_implementation=attn_implementation)
        vision = InternVLVisionConfig(**{k: v for k, v in cfg["vision_config"].items() if k != "model_type"})
        return InternVLConfig(vision_config=vision, text_config=text, image_token_id=cfg["image_token_id"],
                              downsample_ratio=cfg["downsample_ratio"], attn_implementation=attn_implementation,
                              tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)))

    def synthetic_image(self, model, tiles: int, generator: torch.Generator):
        """A ``tiles``-tile image (the grid the processor gives a 1 x ``tiles`` wide image) plus, past one
        tile, its thumbnail."""
        vc = model.config.vision_config
        px = int(vc.image_size[0] if isinstance(vc.image_size, (list, tuple)) else vc.image_size)
        grid = tile_grid((px, px * tiles), max_tiles=tiles, tile_pixels=px) if tiles > 1 else (1, 1)
        n_images = grid[0] * grid[1] + (grid[0] * grid[1] > 1)
        return tile_side(model) ** 2 * n_images, torch.randn(n_images, 3, px, px, generator=generator), grid

    def tiny_model(self, seed: int = 0, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32):
        """A random ``InternVLForConditionalGeneration``: 64 px tiles, patch 2, pixel shuffle 0.5 (256 tokens
        per tile), the family's tiny text model (:meth:`tiny_text_config`)."""
        from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLVisionConfig

        from d2pruner.models import tiny_parts as tiny

        vision = InternVLVisionConfig(image_size=TINY_PIXELS, patch_size=2, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=2)
        config = InternVLConfig(vision_config=vision, text_config=self.tiny_text_config(attn_implementation),
                                image_token_id=tiny.IMAGE_TOKEN, downsample_ratio=0.5,
                                attn_implementation=attn_implementation)
        model = tiny.build(InternVLForConditionalGeneration, config, seed, dtype)
        self.randomize_tiny_biases(model, seed)
        return model

    def tiny_text_config(self, attn_implementation: str):
        """The shared tiny Llama text model, as in the InternVL-2.5 -hf conversion."""
        from d2pruner.models import tiny_parts as tiny

        return tiny.text_config(attn_implementation)

    def randomize_tiny_biases(self, model, seed: int) -> None:
        """Nothing: the Llama text model has no biases."""

    def tiny_processor(self, max_tiles: int = 6):
        """transformers' ``InternVLProcessor`` (image part) with GOT-OCR2's dynamic tiles around the tiny
        tokenizer; ``max_tiles`` is the tiling limit (the real checkpoints use 12; 6 keeps smoke runs fast)."""
        from transformers import GotOcr2ImageProcessor

        from d2pruner.models.tiny_parts import tiny_tokenizer

        images = GotOcr2ImageProcessor(size={"height": TINY_PIXELS, "width": TINY_PIXELS}, crop_to_patches=True,
                                       min_patches=1, max_patches=int(max_tiles), image_mean=[0.485, 0.456, 0.406],
                                       image_std=[0.229, 0.224, 0.225])
        return image_only_internvl_processor()(images, tiny_tokenizer(), image_seq_length=256,
                                               chat_template=_TINY_TEMPLATE)

    def tiny_pixels(self) -> int:
        return TINY_PIXELS


FAMILY = register_family(InternVLFamily())


class InternVL3Family(InternVLFamily):
    """InternVL3: InternVL-2.5's record with a Qwen2 text model (checkpoint, FLOPs config, tiny twin)."""

    name = "internvl3"
    title = "InternVL3"
    text_model_types = ("qwen2",)
    checkpoint = "OpenGVLab/InternVL3-8B-hf"
    flops_config = "internvl3-8b-hf.json"

    def text_config_class(self):
        from transformers import Qwen2Config

        return Qwen2Config

    def tiny_text_config(self, attn_implementation: str):
        """The shared tiny text model's sizes (4 layers, width 64, 4 heads, 2 KV heads) as Qwen2."""
        from transformers import Qwen2Config

        from d2pruner.models import tiny_parts as tiny

        llama = tiny.text_config(attn_implementation)
        keep = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "vocab_size", "initializer_range", "pad_token_id", "bos_token_id", "eos_token_id",
                "max_position_embeddings")
        return Qwen2Config(**{k: getattr(llama, k) for k in keep}, use_sliding_window=False,
                           attn_implementation=attn_implementation)

    def randomize_tiny_biases(self, model, seed: int) -> None:
        """Qwen2's q/k/v biases start at zero; draw them (seeded) so that the tiny twin exercises them."""
        from d2pruner.models.tiny_parts import seeded

        with seeded(seed + 1), torch.no_grad():
            for layer in self.inner(model).language_model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0.0, 0.2)


FAMILY3 = register_family(InternVL3Family())


def unsupported(method: Any) -> str | None:
    """Why ``method`` (a method object) cannot run on InternVL, or None if it can (``FAMILY.refusal``).

    >>> from d2pruner.methods import get_method
    >>> unsupported(get_method("fastv")) is None
    True
    >>> unsupported(get_method("visionzip"))[:60]
    'visionzip needs the [CLS] attention of the vision tower, whi'
    """
    return FAMILY.refusal(method)


def attach(model, budget: Any, *, max_tiles: int = 12, **options) -> InternVLHandle:
    """Prune the visual tokens of an InternVL model (InternVL-2.5 or InternVL3, by its text model):
    :func:`d2pruner.models.handle.attach` with that family, plus ``max_tiles`` (the processor's tile
    limit, used by :meth:`InternVLHandle.set_image_sizes`). For localization use
    ``config=D2PrunerConfig.for_localization()``."""
    family = family_for_model(model) if isinstance(model, FAMILY.model_classes()) else FAMILY  # FAMILY refuses others
    return _attach(model, budget, family=family, max_tiles=int(max_tiles), **options)
