"""LLaVA-NeXT (``transformers.LlavaNextForConditionalGeneration``): the model family record.

**Visual tokens (anyres).** The processor picks, among the checkpoint's ``image_grid_pinpoints``, the
resolution that fits the image best, resizes the image into it (aspect kept, zero padding) and cuts it
into ``rows x cols`` CLIP crops; a squashed copy of the whole image is crop 0. Every crop gives
``s x s`` features (s = 24 for CLIP ViT-L/14-336). The model then lays an image out as

* the **base view**: crop 0's ``s x s`` grid, row-major;
* the **high-resolution view**: the crops' features put together on one ``rows*s x cols*s`` canvas,
  the padded margin cut away again (transformers' ``unpad_image``), row-major, with one
  **image-newline** token (the learned ``image_newline`` vector) after each canvas row.

All of them are image placeholder tokens in ``input_ids``. :meth:`LlavaNextFamily.items` works the
layout out per image with transformers' own helpers (``get_anyres_image_grid_shape``,
``unpad_image``) from the image size -- the ``image_sizes`` the processor returns, the per-item image
sizes given as hints (:meth:`LlavaNextFamily.item_hints`), or, in a ``generate`` prompt pass whose
images were encoded beforehand, from the packed features themselves (the newline tokens are the rows
equal to ``image_newline``). An image is two views (:class:`d2pruner.spec.TokenLayout`): the base grid
and the unpadded canvas; spatial edges stay inside a view. A 672 x 672 image on the real checkpoint:
576 + 48 x 48 = 2880 visual tokens and 48 newline tokens.

**Newline tokens are structure, not visual tokens.** They carry no image content (the same learned
vector in every row), so they are not offered to any method: every method keeps them all, they are
not counted in the visual tokens (``n_visual_before``) nor in the budget, and a pruned sequence keeps
each of them in its place, so the kept tokens of a canvas row are still followed by that row's
newline. This is the convention of the budgets used on LLaVA-NeXT in this line of work (640 / 320 /
160 of "2880" visual tokens: the five crops' 5 x 576, newlines not counted).

**Prior.** One block is the base view's ``s x s`` grid (576 values on the real checkpoint), one value
per normalised image position (cell centres ``((r + 0.5) / s, (c + 0.5) / s)``). The base view takes it
as it is; the high-resolution view takes it resampled to its ``rows x cols`` canvas (bilinear by
default, ``attach(..., prior_resampling="nearest")`` otherwise), as one picture -- not repeated per
crop: the bias the prior measures comes from the order in which the LLM reads the tokens, and the
canvas is read row by row across all crops. The prior command resamples each view's attention map
onto the ``s x s`` grid and scales it to mean 1 before averaging (:meth:`LlavaNextFamily.prior_blocks`).

**Methods.** Nothing is refused. Vision-side methods read the projector's input and the [CLS]
attention of the projected CLIP layer of each crop, gathered to the visual tokens by the same layout
(:class:`AnyresCapture`); VisionZip then chooses among all of an image's tokens at once (its public
LLaVA-NeXT code splits the budget per crop). CDPruner gets CLIP's own text tower
(``openai/clip-vit-large-patch14-336``, local cache only), as on LLaVA-1.5.

**Prompt.** The official evaluation of the Vicuna checkpoints uses ``vicuna_v1``:
``"{system} USER: <image>\\n{question} ASSISTANT:"`` with LLaVA's system text; the processor's anyres
preprocessing is the official one, so images go to it as they are.

Examples
--------
>>> import torch
>>> from d2pruner.models import tiny
>>> model = tiny.tiny_llava_next()
>>> inputs = tiny_inputs(model, [(30, 48)])  # a 30 x 48 px image: 144 + 16 x 24 visual tokens, 16 newlines
>>> with attach(model, budget=64) as handle:
...     _ = model(**inputs)
>>> handle.stats[0].n_visual_before, handle.stats[0].n_visual_after
(528, 64)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import torch

from d2pruner.methods.base import Need
from d2pruner.models.family import register_family
from d2pruner.models.handle import attach as _attach
from d2pruner.models.llava import LLAVA_SYSTEM, LlavaFamily, feature_attention_layer, grid_side
from d2pruner.models.probes import VisionCapture
from d2pruner.models.prior import grid
from d2pruner.models.prior.grid import RESAMPLING
from d2pruner.spec import TokenLayout

__all__ = ["FAMILY", "AnyresCapture", "AnyresImage", "LlavaNextFamily", "attach", "find_items", "image_from_packed",
           "image_from_size", "tiny_inputs"]

TINY_CROP = 24  # tiny_llava_next's CLIP input side (patch 2 -> 12 x 12 tokens per crop)
#: The tiny twin's pinpoints: the real checkpoint's (336 px crops: 1x2, 2x1, 2x2, 3x1, 1x3) at 24 px crops.
TINY_PINPOINTS = [[24, 48], [48, 24], [48, 48], [72, 24], [24, 72]]


@dataclasses.dataclass(frozen=True)
class AnyresImage:
    """The token geometry of one image: ``side`` (tokens per crop side), the crop grid ``crop_rows x
    crop_cols`` (None when unknown: only the layout was read from packed features), and the unpadded
    canvas ``rows x cols`` of the high-resolution view (one newline token after each of its rows)."""

    side: int
    crop_rows: int | None
    crop_cols: int | None
    rows: int
    cols: int

    @property
    def n_visual(self) -> int:
        """Visual tokens: the base view and the canvas, newlines not counted."""
        return self.side ** 2 + self.rows * self.cols

    @property
    def n_tokens(self) -> int:
        """Placeholder tokens in ``input_ids``: the visual tokens and one newline per canvas row."""
        return self.n_visual + self.rows

    @property
    def n_crops(self) -> int:
        return 1 + self.crop_rows * self.crop_cols

    def layout(self) -> TokenLayout:
        """Base view (view 0) then the unpadded canvas (view 1), in sequence order."""
        return TokenLayout.concat([TokenLayout.grid(self.side, self.side), TokenLayout.grid(self.rows, self.cols)])

    def visual_offsets(self) -> np.ndarray:
        """(n_visual,) offsets of the visual tokens among the image's ``n_tokens`` placeholders (the
        newline after each canvas row is skipped)."""
        base = np.arange(self.side ** 2, dtype=np.int64)
        r, c = np.divmod(np.arange(self.rows * self.cols, dtype=np.int64), self.cols)
        return np.concatenate([base, self.side ** 2 + r * (self.cols + 1) + c])

    def sources(self) -> np.ndarray:
        """(n_visual,) row of each visual token in the image's projector input flattened over its crops
        ((n_crops * side**2,) rows: crop 0 the base view, crops 1.. the canvas, row-major)."""
        if self.crop_rows is None:
            raise ValueError("the crop grid of this image is unknown (only its packed features were seen): pass "
                             "image_sizes with the prompt or handle.set_item_hints(family.item_hints(processor, images))")
        s = self.side
        top, left = (self.crop_rows * s - self.rows) // 2, (self.crop_cols * s - self.cols) // 2  # unpadded margins
        r, c = np.divmod(np.arange(self.rows * self.cols, dtype=np.int64), self.cols)
        big_r, big_c = r + top, c + left  # position on the padded canvas
        crop = 1 + (big_r // s) * self.crop_cols + big_c // s
        return np.concatenate([np.arange(s * s, dtype=np.int64), crop * s * s + (big_r % s) * s + big_c % s])


def image_from_size(model, image_size: Sequence[int]) -> AnyresImage:
    """The geometry of an image of ``image_size = (height, width)`` pixels on ``model``, by transformers'
    own helpers: the crop grid (``get_anyres_image_grid_shape``) and the canvas left by ``unpad_image``."""
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

    side = grid_side(model)
    size = [int(v) for v in (image_size.tolist() if hasattr(image_size, "tolist") else image_size)]
    crop_rows, crop_cols = get_anyres_image_grid_shape(size, model.config.image_grid_pinpoints,
                                                       int(model.config.vision_config.image_size))
    canvas = unpad_image(torch.empty(0, crop_rows * side, crop_cols * side), size)  # (0, rows, cols)
    return AnyresImage(side, int(crop_rows), int(crop_cols), int(canvas.shape[1]), int(canvas.shape[2]))


def image_from_packed(model, packed: torch.Tensor, newline: torch.Tensor) -> AnyresImage:
    """The geometry of an image from its packed features ``packed`` (n_tokens, D), as the model hands
    them to the LLM: the newline tokens are the rows equal to ``newline`` (D,). The crop grid is the
    one pinpoint consistent with the canvas (None when several are)."""
    side = grid_side(model)
    n = int(packed.shape[0])
    is_newline = (packed[side * side:] == newline.to(packed.device, packed.dtype)).all(dim=-1)  # (n - side**2,)
    rows = int(is_newline.sum())
    if rows == 0 or (n - side * side) % rows:
        raise ValueError(f"packed image features of {n} tokens do not end in whole canvas rows with a newline each "
                         f"({rows} newline tokens after the {side}x{side} base view)")
    cols = (n - side * side) // rows - 1
    want = torch.zeros(rows, cols + 1, dtype=torch.bool, device=is_newline.device)
    want[:, -1] = True
    if not torch.equal(is_newline, want.flatten()):
        raise ValueError(f"the newline tokens of packed image features of {n} tokens are not one after each of "
                         f"{rows} rows of {cols}")
    crop = int(model.config.vision_config.image_size)
    fits = set()
    for h, w in model.config.image_grid_pinpoints:
        height, width = int(h) // crop * side, int(w) // crop * side  # the padded canvas in tokens
        cut_rows = cols == width and rows <= height and (height - rows) % 2 == 0  # unpad_image cuts equal margins
        cut_cols = rows == height and cols <= width and (width - cols) % 2 == 0
        if cut_rows or cut_cols:
            fits.add((int(h) // crop, int(w) // crop))
    grid = fits.pop() if len(fits) == 1 else (None, None)
    return AnyresImage(side, grid[0], grid[1], rows, cols)


def image_geometries(model, hints: Sequence | None, inputs: dict | None) -> list[AnyresImage] | None:
    """Each image's geometry in batch order, from ``image_sizes`` in the forward inputs, else the
    per-item hints (lists of ``(height, width)``), else the packed features of a pre-encoded prompt pass;
    None when none of them is there."""
    inputs = inputs or {}
    sizes = inputs.get("image_sizes")
    if sizes is not None:
        return [image_from_size(model, s) for s in sizes]
    if hints is not None and any(h is not None for h in hints):
        return [image_from_size(model, s) for h in hints if h is not None for s in h]
    encoded = (inputs.get("mm_encoder_outputs") or {}).get("image")
    if encoded is not None:
        newline = FAMILY.inner(model).image_newline
        return [image_from_packed(model, f, newline) for f in encoded.pooler_output]
    return None


def find_items(input_ids: torch.Tensor, image_token_id: int, images: list[AnyresImage] | None) -> list:
    """``(positions (N,), TokenLayout)`` of each item's visual tokens (newline tokens left out), or None
    (no image). Images are consumed in batch order; each takes ``n_tokens`` placeholders."""
    queue = list(images or [])
    items = []
    for i, row in enumerate(input_ids):
        pos = (row == image_token_id).nonzero()[:, 0]  # (P,) every placeholder, newlines included
        if len(pos) == 0:
            items.append(None)
            continue
        if images is None:
            raise ValueError(f"item {i} has {len(pos)} image tokens but their anyres layout is unknown: pass image_sizes "
                             "(the processor's output) with the prompt")
        keep, layouts, k = [], [], 0
        while k < len(pos):
            if not queue:
                raise ValueError(f"item {i} has {len(pos)} image tokens, more than the images' layouts describe "
                                 f"({k} used)")
            image = queue.pop(0)
            if k + image.n_tokens > len(pos):
                raise ValueError(f"item {i}: an image of {image.n_tokens} tokens ({image.side}x{image.side} base view, "
                                 f"{image.rows}x{image.cols} canvas, {image.rows} newlines) does not fit its "
                                 f"{len(pos) - k} remaining image tokens")
            keep.append(pos[k + torch.as_tensor(image.visual_offsets(), device=pos.device)])
            layouts.append(image.layout())
            k += image.n_tokens
        items.append((torch.cat(keep), TokenLayout.concat(layouts)))
    if queue:
        raise ValueError(f"the batch has fewer image tokens than its {len(images)} images describe")
    return items


class AnyresCapture(VisionCapture):
    """:class:`~d2pruner.models.probes.VisionCapture` for anyres images: the projector's input holds
    each image's crops (crops, s*s, Dv); each visual token takes its own crop row (base view: crop 0;
    canvas: the crop and patch under it, the unpadded margin skipped), so the records line up with the
    visual tokens the handle offers. A pre-hook on the model reads each image's geometry."""

    def __init__(self, model, vision_tower, projector, cls_attention_module=None) -> None:
        super().__init__(vision_tower, projector, cls_attention_module)
        self.model = model
        self.images: list[AnyresImage] | None = None

    def register(self, handle=None) -> list:
        inner = FAMILY.inner(self.model)

        def on_model(module, args, kwargs):
            images = image_geometries(self.model, None if handle is None else handle.hints, kwargs)
            if images is not None:
                self.images = images
            return None

        return super().register(handle) + [inner.register_forward_pre_hook(on_model, with_kwargs=True)]

    def per_item(self, sizes: Sequence[int | None]) -> list[dict | None]:
        if not self.features:
            raise ValueError("no projector input was recorded for this prompt pass: the images must be encoded by the "
                             "model (pixel_values), not passed as precomputed features")
        feats = torch.cat(self.features)  # (crops, s*s, Dv)
        cls = torch.cat(self.cls) if self.cls else None  # (crops, s*s)
        keys = torch.cat(self.keys) if self.keys else None  # (crops, s*s, Dk)
        queue, start, out = list(self.images or []), 0, []
        for i, n in enumerate(sizes):
            if n is None:
                out.append(None)
                continue
            rows, got = [], 0
            while got < n:
                if not queue:
                    raise ValueError(f"item {i} has {n} visual tokens, more than the recorded images' layouts give")
                image = queue.pop(0)
                src = torch.as_tensor(image.sources(), device=feats.device) + start * feats.shape[1]  # (n_visual,)
                rows.append(src)
                start += image.n_crops
                got += image.n_visual
            if start > feats.shape[0]:
                raise ValueError(f"item {i} needs {start} crops, but only {feats.shape[0]} were encoded")
            idx = torch.cat(rows)  # (N,) rows of the flattened (crops * s*s) records
            extra = {"vision_features": feats.flatten(0, 1)[idx], "project": self.project}  # (N, Dv)
            if cls is not None:
                extra.update(cls_attention=cls.flatten()[idx], vision_keys=keys.flatten(0, 1)[idx])
            out.append(extra)
        self.reset()
        return out


class LlavaNextFamily(LlavaFamily):
    name = "llava_next"
    title = "LLaVA-NeXT"
    model_types = ("llava_next",)
    checkpoint = "llava-hf/llava-v1.6-vicuna-7b-hf"
    flops_config = "llava-v1.6-vicuna-7b-hf.json"
    prior_per = ("normalised image position (the base view's grid as it is; resampled to the high-resolution "
                 "canvas, as one picture)")
    prior_resamplings = RESAMPLING
    hook_arguments = {"model": ("image_sizes",)}
    row_visual_tokens = 2880
    row_visual_note = ("a 672 x 672 px image: a 24 x 24 base view and a 48 x 48 canvas; the 48 image-newline tokens "
                       "are kept as structure and not counted")

    def model_classes(self):
        from transformers import LlavaNextForConditionalGeneration, LlavaNextModel

        return LlavaNextForConditionalGeneration, LlavaNextModel

    def prior_block(self, model) -> int:
        return grid_side(model) ** 2

    def items(self, model, input_ids, hints, inputs=None) -> list:
        return find_items(input_ids, int(model.config.image_token_id), image_geometries(model, hints, dict(inputs or {})))

    def item_hints(self, processor, images, max_tiles: int) -> list | None:
        """Each item's image size ``[(height, width)]``: the layout of a ``generate`` prompt pass (whose
        images were encoded beforehand, without their sizes) then comes from it."""
        return [[(int(im.height), int(im.width))] for im in images]

    # -- the prior over normalised positions ---------------------------------------------------------
    def expand_prior(self, prior: torch.Tensor, layout, resampling: str = "bilinear") -> torch.Tensor:
        """The prior grid resampled to each view of ``layout`` (N,): the base view's grid takes it as it is."""
        return grid.spread(prior, int(round(prior.numel() ** 0.5)), layout, resampling)

    def prior_blocks(self, model, row: torch.Tensor, layout) -> np.ndarray:
        """Each view's attention map on the base grid, scaled to mean 1 (the canvas's tokens each receive
        less attention than the base view's; :func:`d2pruner.models.prior.grid.blocks`)."""
        return grid.blocks(row, layout, grid_side(model))

    # -- vision-side records -------------------------------------------------------------------------
    def vision_capture(self, model, method):
        """The projector's input and, with ``Need.CLS_ATTENTION``, the [CLS] attention and keys of the
        projected CLIP layer, per crop, gathered to the visual tokens (:class:`AnyresCapture`)."""
        inner = self.inner(model)
        cls_module = None
        if Need.CLS_ATTENTION in method.needs:
            if model.config.vision_feature_select_strategy != "default":
                raise ValueError(f"vision_feature_select_strategy={model.config.vision_feature_select_strategy!r}: "
                                 f"{method.name} expects 'default' (the [CLS] token dropped before the projector)")
            vision_model = getattr(inner.vision_tower, "vision_model", inner.vision_tower)
            cls_module = vision_model.encoder.layers[feature_attention_layer(model)].self_attn
        return AnyresCapture(model, inner.vision_tower, inner.multi_modal_projector, cls_module)

    # -- processor and prompts -----------------------------------------------------------------------
    def prompt_text(self, processor, question: str) -> str:
        return f"{LLAVA_SYSTEM} USER: <image>\n{question} ASSISTANT:"

    def build_batch(self, processor, images, questions, max_tiles: int) -> dict:
        prompts = [self.prompt_text(processor, q) for q in questions]
        return processor(images=[im.convert("RGB") for im in images], text=prompts, padding=True, return_tensors="pt")

    def load_processor(self, model_id: str, revision: str | None):
        """The checkpoint's ``LlavaNextProcessor`` with the PIL image processor (the default one needs
        torchvision, which CPU installs here lack; the preprocessing is the same)."""
        from transformers import AutoTokenizer, LlavaNextProcessor
        from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

        images = LlavaNextImageProcessorPil.from_pretrained(model_id, revision=revision, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(model_id, revision=revision, local_files_only=True)
        return LlavaNextProcessor.from_pretrained(model_id, revision=revision, local_files_only=True,
                                                  image_processor=images, tokenizer=tokenizer)

    # -- full size -----------------------------------------------------------------------------------
    latency_budgets = (None, 1.0, 640 / 2880, 320 / 2880, 160 / 2880)  # of 2880 on the full-size model

    def full_size_config(self, attn_implementation: str):
        from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig

        cfg = self.shipped_config()
        text = LlamaConfig(**{k: v for k, v in cfg["text_config"].items() if k != "model_type"},
                           attn_implementation=attn_implementation)
        vision = CLIPVisionConfig(**{k: v for k, v in cfg["vision_config"].items() if k != "model_type"})
        return LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=cfg["image_token_id"],
                               image_grid_pinpoints=cfg["image_grid_pinpoints"],
                               vision_feature_layer=cfg["vision_feature_layer"],
                               vision_feature_select_strategy=cfg["vision_feature_select_strategy"],
                               image_seq_length=cfg["image_seq_length"], attn_implementation=attn_implementation,
                               tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)))

    def synthetic_image(self, model, tiles: int, generator: torch.Generator):
        """A square image of the largest square pinpoint (672 x 672 px on the real checkpoint: 2 x 2 crops
        and the base view, 2880 visual tokens, 48 newlines); ``tiles`` is ignored. The hint is its size."""
        px = max(min(h, w) for h, w in model.config.image_grid_pinpoints if h == w)
        image = image_from_size(model, (px, px))
        crop = int(model.config.vision_config.image_size)
        return image.n_tokens, torch.randn(1, image.n_crops, 3, crop, crop, generator=generator), (px, px)

    def synthetic_inputs(self, model, tiles: int, generator: torch.Generator, words: torch.Tensor):
        batch, size = super().synthetic_inputs(model, tiles, generator, words)
        return {**batch, "image_sizes": torch.tensor([size])}, None

    # -- tiny twin -------------------------------------------------------------------------------------
    def tiny_model(self, seed: int = 0, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32):
        """A random ``LlavaNextForConditionalGeneration``: CLIP tower 24 px / patch 2 (12 x 12 tokens per
        crop), the real checkpoint's five pinpoints scaled to 24 px crops (up to 2 x 2 or 3 x 1 crops:
        144 + 576 visual tokens and 24 newlines at most), the 4-layer tiny Llama text model."""
        from transformers import CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration

        from d2pruner.models import tiny_parts as tiny

        vision = CLIPVisionConfig(image_size=TINY_CROP, patch_size=2, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=2, projection_dim=32)
        config = LlavaNextConfig(vision_config=vision, text_config=tiny.text_config(attn_implementation),
                                 image_token_index=tiny.IMAGE_TOKEN, vision_feature_layer=-2,
                                 vision_feature_select_strategy="default", image_grid_pinpoints=TINY_PINPOINTS,
                                 image_seq_length=(TINY_CROP // 2) ** 2, attn_implementation=attn_implementation)
        return tiny.build(LlavaNextForConditionalGeneration, config, seed, dtype)

    def tiny_processor(self, max_tiles: int = 6):
        """transformers' ``LlavaNextProcessor`` with its (PIL) image processor at 24 px crops and the tiny
        pinpoints, around the tiny tokenizer; ``max_tiles`` is ignored (the pinpoints bound the crops)."""
        from transformers import LlavaNextProcessor
        from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

        from d2pruner.models.tiny_parts import tiny_tokenizer

        images = LlavaNextImageProcessorPil(size={"shortest_edge": TINY_CROP},
                                            crop_size={"height": TINY_CROP, "width": TINY_CROP},
                                            image_grid_pinpoints=TINY_PINPOINTS)
        return LlavaNextProcessor(image_processor=images, tokenizer=tiny_tokenizer(), patch_size=2,
                                  vision_feature_select_strategy="default", num_additional_image_tokens=1)

    def tiny_pixels(self) -> int:
        return TINY_CROP


FAMILY = register_family(LlavaNextFamily())


def tiny_inputs(model, sizes: Sequence[tuple[int, int]], before: Sequence[int] = (1, 10, 11),
                after: Sequence[int] = (12, 13), seed: int = 0) -> dict:
    """Inputs of one prompt for the tiny twin: one image of each ``(height, width)`` in ``sizes``, as
    many placeholders as the model packs for it, random crop pixels (``pixel_values`` (1 item, crops,
    3, px, px) per image, padded to the most crops), ``image_sizes``."""
    g = torch.Generator().manual_seed(seed)
    crop = int(model.config.vision_config.image_size)
    images = [image_from_size(model, s) for s in sizes]
    ids = list(before)
    for image in images:
        ids += [int(model.config.image_token_id)] * image.n_tokens
    ids += list(after)
    most = max(im.n_crops for im in images)
    pixels = torch.zeros(len(images), most, 3, crop, crop)
    for j, image in enumerate(images):
        pixels[j, :image.n_crops] = torch.randn(image.n_crops, 3, crop, crop, generator=g)
    input_ids = torch.tensor([ids])
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "pixel_values": pixels,
            "image_sizes": torch.tensor([list(s) for s in sizes])}


def attach(model, budget: Any, **options):
    """Prune the visual tokens of a LLaVA-NeXT model: :func:`d2pruner.models.handle.attach` with this
    family (newline tokens are always kept; ``prior_resampling="bilinear" | "nearest"``)."""
    return _attach(model, budget, family=FAMILY, **options)
