"""Qwen2.5-VL and Qwen3-VL (``Qwen2_5_VLForConditionalGeneration``, ``Qwen3VLForConditionalGeneration``):
the model family records, images and video.

**Visual tokens.** The vision tower cuts an image into 14 px (Qwen2.5-VL) or 16 px (Qwen3-VL) patches
at its own resolution (between ``min_pixels`` and ``max_pixels``) and merges 2 x 2 patches into one
LLM token. The processor reports each image's patch grid in ``image_grid_thw`` (t, h, w) and each
video's in ``video_grid_thw``; after the merge an image is one view of ``h/2 x w/2`` tokens and a video
is ``t`` frame groups (two frames each) of ``h/2 x w/2`` tokens. :meth:`QwenVLFamily.items` walks an
item's image and video tokens in sequence order and gives each image, and each frame group of a video,
its own view (:class:`d2pruner.spec.TokenLayout`): spatial edges join neighbours inside one image or one
frame group only, never across frames or images; semantic edges join similar tokens anywhere. A prompt
with two images has two views; a video of 8 frame groups has 8.

**Positions (M-RoPE).** Every token has a 3-D position (time, row, column); transformers composes the
multimodal rotary into the ``(cos, sin)`` tables every decoder layer receives, so the last token's
attention row is computed from the layer's own q/k and those tables (Qwen3-VL's q/k norms included) by
:func:`d2pruner.models.attention.queries_and_keys`. Kept tokens keep their original 3-D positions,
inside the LLM and before it alike (``renumber_before_llm = False``): nothing is renumbered, and
decoding continues from the unpruned prompt's positions, which transformers derives from the full
2-D attention mask and its rope deltas.

**DeepStack (Qwen3-VL).** Qwen3-VL adds features of three vision layers to the visual tokens' hidden
states after decoder layers 0, 1 and 2. When a cut comes before or at one of those layers, the
handle takes the additions over (:class:`DeepStackFollower`): after layers before the cut they go to
every visual token, as in transformers; after the cut layer and later ones only to the kept tokens,
each its own row. Pruning at K = 2 (D2Pruner's default) therefore keeps the third addition for the
kept tokens; merged tokens (methods that merge) receive the addition of the token whose slot they hold.

**Prior.** Qwen's grids vary per image, so the prior is kept on a fixed ``prior_side x prior_side``
grid over normalised positions (cell centres at ``((r + 0.5) / rows, (c + 0.5) / cols)``): the prior
command resamples each view's attention map onto it before averaging, and applying it resamples the
grid to each view's ``rows x cols`` (``resampling``: ``"bilinear"``, the default, or ``"nearest"``;
a handle option, ``attach(..., prior_resampling="nearest")``). The same prior serves video frame groups.

**Refused.** Methods that need a [CLS] attention (VisionZip: Qwen's ViT has no [CLS] token), a CLIP
text tower (CDPruner: Qwen's ViT is not aligned with a text encoder) or fixed-size per-image
projector inputs (Qwen's merger takes 2 x 2 patch groups of images of any size).

Examples
--------
>>> import torch
>>> from d2pruner.models import tiny
>>> model = tiny.tiny_qwen2_5_vl()
>>> inputs = tiny_inputs(model, [(1, 8, 12)])  # one image of 8 x 12 patches: 4 x 6 = 24 tokens
>>> with attach(model, budget=8) as handle:
...     _ = model(**inputs)
>>> handle.stats[0].n_visual_before, handle.stats[0].n_visual_after
(24, 8)
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from d2pruner.methods.base import Need
from d2pruner.models.family import ModelFamily, register_family
from d2pruner.models.handle import attach as _attach
from d2pruner.models.prior import grid
from d2pruner.models.prior.grid import RESAMPLING, resample_grid
from d2pruner.spec import TokenLayout

__all__ = ["DeepStackFollower", "GridCapture", "image_only_processor", "QWEN2_5_VL", "QWEN3_VL", "QwenVLFamily", "attach", "find_items", "resample_grid",
           "tiny_inputs"]

TINY_PATCH = 2  # tiny twins: 2 px patches, 2 x 2 merge
TINY_VIDEO_TOKEN = 6  # "<video>" in the tiny vocabulary
TINY_VISION_START, TINY_VISION_END = 4, 5  # "<img>", "</img>"
_QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<img><image></img>{% elif c['type'] == 'video' %}"
    "<img><video></img>{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def find_items(input_ids: torch.Tensor, image_token_id: int, video_token_id: int, image_grid_thw, video_grid_thw,
               merge: int, frames_per_run: bool) -> list:
    """``(positions (N,), TokenLayout)`` of each item's visual tokens, or None (no image or video).

    Grids are consumed in batch order (item 0's images first), images from ``image_grid_thw`` and
    videos from ``video_grid_thw``, each grid ``(t, h, w)`` in patches; a run of tokens takes
    ``t * h * w / merge**2`` of them. Each image and each frame group of a video is one view.
    ``frames_per_run``: the processor puts each frame group of a video in its own run (Qwen3-VL, with a
    timestamp between them) instead of the whole video in one run (Qwen2.5-VL).
    """
    def queue(grids, split_frames):
        out = []
        for g in ([] if grids is None else grids.tolist()):
            t, h, w = (int(v) for v in g)
            if h % merge or w % merge:
                raise ValueError(f"a grid of {h} x {w} patches does not divide into {merge} x {merge} merges")
            out += [(1, h // merge, w // merge)] * t if split_frames else [(t, h // merge, w // merge)]
        return out

    images, videos = queue(image_grid_thw, False), queue(video_grid_thw, frames_per_run)
    items = []
    for i, row in enumerate(input_ids):
        is_image, is_video = row == image_token_id, row == video_token_id
        pos = (is_image | is_video).nonzero()[:, 0]  # (N,)
        if len(pos) == 0:
            items.append(None)
            continue
        kinds = is_video[pos].tolist()
        layouts, k = [], 0
        while k < len(pos):
            source, what = (videos, "video") if kinds[k] else (images, "image")
            if not source:
                raise ValueError(f"item {i} has more {what} tokens than the {what} grids describe "
                                 f"({what}_grid_thw missing or too short)")
            t, h, w = source.pop(0)
            n = t * h * w
            runs = [h * w] * t if frames_per_run and what == "video" else [n]
            starts = np.cumsum([0] + runs[:-1]) + k
            if (k + n > len(pos) or any(kd != kinds[k] for kd in kinds[k:k + n])
                    or any(int(pos[a + r - 1] - pos[a]) != r - 1 for a, r in zip(starts, runs))):
                raise ValueError(f"item {i}: a {what} grid of {t} x {h} x {w} tokens does not match the run of {what} "
                                 f"tokens at position {int(pos[k])}")
            layouts += [TokenLayout.grid(h, w)] * t  # one view per image / frame group
            k += n
        items.append((pos, TokenLayout.concat(layouts)))
    left = [name for name, q in (("image", images), ("video", videos)) if q]
    if left:
        raise ValueError(f"the batch has fewer {' and '.join(left)} tokens than its grids describe")
    return items


class GridCapture:
    """Records the patch grids and outputs of every vision-tower call: ``generate`` encodes the images
    and videos before the prompt pass and hands that pass the encoder outputs (``mm_encoder_outputs``)
    without the grids. :meth:`grids` finds each encoded image's or video's grid by its features (the
    same tensor values the tower produced for it), so images and videos of equal token counts, and the
    copies ``generate`` makes for beams or several returned sequences, all get their own grid."""

    def __init__(self, handle) -> None:
        self.handle = handle
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # (grid (3,), features (n, D)) per image/video

    def register(self) -> list:
        visual = self.handle.family.inner(self.handle.model).visual
        return [visual.register_forward_hook(self._on_tower, with_kwargs=True)]

    def _on_tower(self, module, args, kwargs, output):
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        features = getattr(output, "pooler_output", None)
        if grid is not None and isinstance(features, torch.Tensor):
            merge = int(module.spatial_merge_size)
            chunks = torch.split(features.detach(), (grid.prod(-1) // merge ** 2).tolist())
            self.seen = (self.seen + list(zip(grid.detach().cpu(), chunks)))[-256:]
        self.handle.hints = self
        return None

    def grids(self, encoded: dict | None, merge: int) -> dict:
        """``{"image_grid_thw": ..., "video_grid_thw": ...}`` of the encoded images and videos."""
        out = {}
        for kind in ("image", "video"):
            enc = (encoded or {}).get(kind)
            if enc is None:
                continue
            rows = []
            for j, features in enumerate(enc.pooler_output):
                grid = next((g for g, seen in reversed(self.seen)
                             if seen.shape == features.shape and seen.device == features.device
                             and torch.equal(seen, features)), None)
                if grid is None:
                    raise ValueError(f"pre-encoded {kind} {j} ({features.shape[0]} tokens) was not produced by this "
                                     f"model's vision tower while the handle was attached, so its patch grid is "
                                     f"unknown: pass {kind}_grid_thw with the encoder outputs")
                rows.append(grid)
            out[f"{kind}_grid_thw"] = torch.stack(rows)
        return out


class DeepStackFollower:
    """Qwen3-VL's DeepStack additions, taken over by the handle when a cut comes before the last one.

    A pre-hook on the text model takes ``visual_pos_masks`` and ``deepstack_visual_embeds`` out of its
    arguments during a pruning prompt pass; forward hooks on the first decoder layers add each
    layer's features to the visual tokens the sequence still holds after that layer (the handle's
    stage index maps slots to original positions).
    """

    def __init__(self, handle) -> None:
        self.handle = handle
        self.masks: torch.Tensor | None = None
        self.embeds: list | None = None

    def register(self) -> list:
        text = self.handle.language_model
        hooks = [text.register_forward_pre_hook(self._take, with_kwargs=True)]
        n = getattr(self.handle.model.config.vision_config, "deepstack_visual_indexes", None) or []
        for j in range(min(len(n), len(text.layers))):
            hooks.append(text.layers[j].register_forward_hook(self._adder(j)))
        return hooks

    def _take(self, module, args, kwargs):
        self.masks = self.embeds = None
        handle = self.handle
        embeds = kwargs.get("deepstack_visual_embeds")
        if handle.mode != "prefill" or embeds is None or handle.prune_layer >= len(embeds):
            return None  # nothing to follow: the model adds them itself
        self.masks, self.embeds = kwargs["visual_pos_masks"], list(embeds)
        return args, {**kwargs, "visual_pos_masks": None, "deepstack_visual_embeds": None}

    def _adder(self, layer_idx: int):
        def hook(module, args, output):
            if self.embeds is None or layer_idx >= len(self.embeds):
                return None
            hidden = output[0] if isinstance(output, tuple) else output
            masks = self.masks.to(hidden.device)
            embeds = self.embeds[layer_idx].to(hidden.device, hidden.dtype)  # (V, H) in (item, position) order
            stages = [s for s, layer in enumerate(self.handle.stage_layers) if layer <= layer_idx]
            hidden = hidden.clone()
            if not stages:  # before any cut: as transformers does it
                hidden[masks, :] = hidden[masks, :] + embeds
            else:
                index, slot_valid = self.handle.stage_state[stages[-1]]  # (B, L') original positions
                rank = masks.flatten().long().cumsum(0).view(masks.shape) - 1  # (B, L) row in embeds
                visual = masks.gather(1, index) & slot_valid  # (B, L') slots holding a visual token
                rows = rank.gather(1, index)[visual]
                hidden[visual, :] = hidden[visual, :] + embeds[rows]
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        return hook


class QwenVLFamily(ModelFamily):
    """What the two Qwen-VL generations share; each subclass names its classes and checkpoint."""

    prior_per = "normalised image position (a 24 x 24 grid resampled to each image or frame group, each scaled to mean 1)"
    renumber_before_llm = False
    pixel_inputs = ("pixel_values", "pixel_values_videos")
    prior_resamplings = RESAMPLING
    hook_arguments = {"model": ("pixel_values_videos", "image_grid_thw", "video_grid_thw", "position_ids")}
    row_visual_tokens = 576  # a 24 x 24-token reference image (672 px for Qwen2.5-VL, 768 px for Qwen3-VL)
    row_visual_note = "a 24 x 24-token reference image; a real image's count follows its size"
    chat_turn_end = "<|im_end|>"
    #: Side of the fixed grid the prior is kept on.
    prior_side: ClassVar[int] = 24
    #: The processor's pixel limits (None: the checkpoint's own); the image is resized to fit them.
    min_pixels: ClassVar[int | None] = None
    max_pixels: ClassVar[int | None] = None
    #: Whether each frame group of a video is its own run of tokens (timestamps between them).
    frames_per_run: ClassVar[bool] = False
    refuses = {
        Need.CLS_ATTENTION: "{name} needs the [CLS] attention of the vision tower, and Qwen's ViT has no [CLS] token",
        Need.TEXT_TOWER: ("{name} needs a CLIP text tower for the instruction relevance, and Qwen's ViT is not aligned "
                          "with a text encoder"),
        Need.VISION_FEATURES: ("{name} reads each image's projector input as one fixed-size block; Qwen's merger takes "
                               "2 x 2 patch groups of images of any size, so there is no such block"),
    }

    def merge(self, model) -> int:
        return int(model.config.vision_config.spatial_merge_size)

    def prior_block(self, model) -> int:
        return self.prior_side ** 2

    def items(self, model, input_ids, hints, inputs=None) -> list:
        """The grids come from the forward's inputs or, when ``generate`` passed pre-encoded images, from
        what the vision tower was given (``hints``: the handle's :class:`GridCapture`)."""
        inputs = dict(inputs or {})
        if inputs.get("image_grid_thw") is None and inputs.get("video_grid_thw") is None and isinstance(hints, GridCapture):
            inputs.update(hints.grids(inputs.get("mm_encoder_outputs"), self.merge(model)))
        return find_items(input_ids, int(model.config.image_token_id), int(model.config.video_token_id),
                          inputs.get("image_grid_thw"), inputs.get("video_grid_thw"), self.merge(model),
                          self.frames_per_run)

    def expand_prior(self, prior: torch.Tensor, layout, resampling: str = "bilinear") -> torch.Tensor:
        """The prior grid resampled to each view of ``layout`` (N,)."""
        return grid.spread(prior, self.prior_side, layout, resampling)

    def prior_blocks(self, model, row: torch.Tensor, layout) -> np.ndarray:
        """Each view's attention map on the prior grid, scaled to mean 1 (:func:`d2pruner.models.prior.grid.blocks`)."""
        return grid.blocks(row, layout, self.prior_side)

    def decode_position_ids(self, model, start: int, q: int, mask2d: torch.Tensor | None = None) -> torch.Tensor | None:
        """The step's text positions plus the prompt's M-RoPE delta, in all three rows: with a 2-D mask
        each item counts its real tokens (``cumsum - 1``, as ``generate`` numbers them), without one
        ``start + arange(q)``. The deltas were computed over each item's real tokens."""
        deltas = self.inner(model).rope_deltas  # (B, 1), set by the prompt pass
        if deltas is None:
            return None
        if mask2d is not None:
            text = (mask2d.long().cumsum(-1) - 1)[:, -q:].to(deltas.device)  # (B, q)
        else:
            text = torch.arange(start, start + q, device=deltas.device)[None]
        return (text + deltas)[None].expand(3, -1, -1)

    def extra_hooks(self, handle) -> list:
        capture = GridCapture(handle)
        handle.hints = capture
        return capture.register() + (DeepStackFollower(handle).register() if self.deepstack else [])

    deepstack: ClassVar[bool] = False

    # -- grounding: the model's own box format, read back into [0, 1000] of the image ---------------------
    grounding_template = 'Locate "{}" in the image and output its bbox coordinates in JSON format.'

    def grounding_box(self, model, text: str, inputs, item: int) -> list[float] | None:
        """The first ``bbox_2d`` (or first four numbers in brackets) of the answer, in [0, 1000].
        Qwen2.5-VL writes absolute pixels of the image as the processor resized it (its patch grid times
        the model's patch size); Qwen3-VL writes [0, 1000] already (``box_scale`` 1000)."""
        import re

        number = r"\s*(-?\d+(?:\.\d+)?)\s*"
        four = rf"\[{number},{number},{number},{number}\]"
        match = re.search(r'"bbox_2d"\s*:\s*' + four, text) or re.search(four, text)
        if match is None:
            return None
        box = [float(v) for v in match.groups()]
        if self.box_scale is not None:
            return [v * 1000.0 / self.box_scale for v in box]
        grid = inputs["image_grid_thw"][item]  # (t, h, w) patches of the resized image
        patch = int(model.config.vision_config.patch_size)
        height, width = float(grid[1]) * patch, float(grid[2]) * patch
        return [box[0] * 1000 / width, box[1] * 1000 / height, box[2] * 1000 / width, box[3] * 1000 / height]

    #: The side of the box coordinate frame (None: absolute pixels of the resized image).
    box_scale: ClassVar[float | None] = None

    # -- processor and prompts -------------------------------------------------------------------------
    def processor_class(self):
        raise NotImplementedError

    def load_processor(self, model_id: str, revision: str | None):
        """The checkpoint's processor; without torchvision (which transformers' video processors need)
        its image-only variant (:func:`image_only_processor`): images work, videos need torchvision."""
        import importlib.util

        if importlib.util.find_spec("torchvision") is not None:
            return super().load_processor(model_id, revision)
        return image_only_processor(self.processor_class()).from_pretrained(model_id, revision=revision,
                                                                              local_files_only=True)

    def prompt_text(self, processor, question: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def build_batch(self, processor, images, questions, max_tiles: int) -> dict:
        prompts = [self.prompt_text(processor, q) for q in questions]
        kwargs = {}
        if self.min_pixels is not None or self.max_pixels is not None:
            size = dict(processor.image_processor.size)
            if self.min_pixels is not None:
                size["shortest_edge"] = int(self.min_pixels)
            if self.max_pixels is not None:
                size["longest_edge"] = int(self.max_pixels)
            kwargs["images_kwargs"] = {"size": size}
        return processor(text=prompts, images=[im.convert("RGB") for im in images], padding=True, return_tensors="pt",
                         return_mm_token_type_ids=True, **kwargs)

    latency_budgets = (None, 1.0, 0.25, 0.1)
    latency_tiles = ((1, 2, 4), (1,))  # image sides of 32, 64, 128 patches: 256, 1024, 4096 tokens

    def synthetic_image(self, model, tiles: int, generator: torch.Generator):
        """A square image of 32 x 32 patches (16 x 16 = 256 merged tokens; a 448 x 448 px image for
        Qwen2.5-VL); ``tiles`` scales its side. The hint is its grid (t, h, w)."""
        vc = model.config.vision_config
        side = 32 * max(1, int(tiles))  # patches per side (merged: side / 2)
        per_patch = int(vc.in_channels) * int(vc.temporal_patch_size) * int(vc.patch_size) ** 2
        pixels = torch.randn(side * side, per_patch, generator=generator)
        return (side // self.merge(model)) ** 2, pixels, (1, side, side)

    def synthetic_inputs(self, model, tiles: int, generator: torch.Generator, words: torch.Tensor):
        """The prompt with vision start/end tokens, the image grid and the token types; no hint (the
        grids travel with the inputs)."""
        _, pixels, grid = self.synthetic_image(model, tiles, generator)
        half = len(words) // 2
        batch = tiny_inputs(model, [grid], before=[1] + words[:half].tolist(), after=words[half:].tolist())
        return {**batch, "pixel_values": pixels}, None

    # -- tiny twin -------------------------------------------------------------------------------------
    def tiny_pixels(self) -> int:
        return TINY_PATCH

    def tiny_processor(self, max_tiles: int = 6):
        """The family's transformers processor (image part) with Qwen2-VL's image processor at the tiny
        twin's 2 px patches and 2 x 2 merge (images resized to between 16 x 16 and 48 x 48 px, so at most
        144 tokens), around the tiny tokenizer; ``max_tiles`` is ignored (no tiles)."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        from d2pruner.models.tiny_parts import tiny_tokenizer

        images = Qwen2VLImageProcessorPil(patch_size=TINY_PATCH, temporal_patch_size=2, merge_size=2,
                                          size={"shortest_edge": 16 * 16, "longest_edge": 48 * 48})
        return image_only_processor(self.processor_class())(image_processor=images, tokenizer=tiny_tokenizer(),
                                                            chat_template=_QWEN_TEMPLATE)


_IMAGE_ONLY: dict = {}


def image_only_processor(base: type) -> type:
    """``base`` (a Qwen-VL processor class) without its video processor, whose class check needs
    torchvision (not installed on CPU machines, see docs/evaluation.md); the image path is the same."""
    if base not in _IMAGE_ONLY:
        class ImageOnly(base):
            @classmethod
            def get_attributes(cls):
                return ["image_processor", "tokenizer"]

        ImageOnly.__name__ = ImageOnly.__qualname__ = f"ImageOnly{base.__name__}"
        _IMAGE_ONLY[base] = ImageOnly
    return _IMAGE_ONLY[base]


class Qwen25VLFamily(QwenVLFamily):
    name = "qwen2_5_vl"
    title = "Qwen2.5-VL"
    model_types = ("qwen2_5_vl",)
    checkpoint = "Qwen/Qwen2.5-VL-7B-Instruct"
    flops_config = "qwen2.5-vl-7b-instruct.json"

    def model_classes(self):
        from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLModel

        return Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLModel

    def processor_class(self):
        from transformers import Qwen2_5_VLProcessor

        return Qwen2_5_VLProcessor

    def full_size_config(self, attn_implementation: str):
        from transformers import Qwen2_5_VLConfig

        cfg = {k: v for k, v in self.shipped_config().items() if not k.startswith("_")}
        return Qwen2_5_VLConfig(**cfg, attn_implementation=attn_implementation)

    def tiny_model(self, seed: int = 0, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32):
        """A random ``Qwen2_5_VLForConditionalGeneration``: 2 px patches, 2 x 2 merge, window attention in
        the ViT, a 4-layer Qwen2 text model (width 64, 4 heads, 2 KV heads, M-RoPE sections 2/3/3)."""
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        from d2pruner.models import tiny_parts as tiny

        config = Qwen2_5_VLConfig(
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=TINY_PATCH,
                               spatial_merge_size=2, temporal_patch_size=2, window_size=8, out_hidden_size=64,
                               fullatt_block_indexes=[1], tokens_per_second=2),
            text_config=_tiny_text(tiny), image_token_id=tiny.IMAGE_TOKEN, video_token_id=TINY_VIDEO_TOKEN,
            vision_start_token_id=TINY_VISION_START, vision_end_token_id=TINY_VISION_END,
            attn_implementation=attn_implementation)
        return tiny.build(Qwen2_5_VLForConditionalGeneration, config, seed, dtype)


class Qwen3VLFamily(QwenVLFamily):
    name = "qwen3_vl"
    title = "Qwen3-VL"
    model_types = ("qwen3_vl",)
    checkpoint = "Qwen/Qwen3-VL-8B-Instruct"
    flops_config = "qwen3-vl-8b-instruct.json"
    frames_per_run = True
    deepstack = True
    box_scale = 1000.0  # Qwen3-VL grounds in [0, 1000] relative coordinates
    hook_arguments = {**QwenVLFamily.hook_arguments, "text_model": ("visual_pos_masks", "deepstack_visual_embeds")}

    def model_classes(self):
        from transformers import Qwen3VLForConditionalGeneration, Qwen3VLModel

        return Qwen3VLForConditionalGeneration, Qwen3VLModel

    def processor_class(self):
        from transformers import Qwen3VLProcessor

        return Qwen3VLProcessor

    def full_size_config(self, attn_implementation: str):
        from transformers import Qwen3VLConfig

        cfg = {k: v for k, v in self.shipped_config().items() if not k.startswith("_")}
        return Qwen3VLConfig(**cfg, attn_implementation=attn_implementation)

    def tiny_model(self, seed: int = 0, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32):
        """A random ``Qwen3VLForConditionalGeneration``: 2 px patches, 2 x 2 merge, DeepStack features from
        vision layers 0, 1, 2 added after decoder layers 0, 1, 2 (three, as the real checkpoint), a 4-layer
        Qwen3 text model with q/k norms
        (width 64, 4 heads, 2 KV heads, head width 16, interleaved M-RoPE sections 2/3/3)."""
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

        from d2pruner.models import tiny_parts as tiny

        config = Qwen3VLConfig(
            vision_config=dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=TINY_PATCH,
                               spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=64,
                               num_position_embeddings=64, deepstack_visual_indexes=[0, 1, 2]),
            text_config={**_tiny_text(tiny), "head_dim": 16}, image_token_id=tiny.IMAGE_TOKEN,
            video_token_id=TINY_VIDEO_TOKEN, vision_start_token_id=TINY_VISION_START,
            vision_end_token_id=TINY_VISION_END, attn_implementation=attn_implementation)
        return tiny.build(Qwen3VLForConditionalGeneration, config, seed, dtype)


def _tiny_text(tiny) -> dict:
    return dict(vocab_size=tiny.VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192, initializer_range=0.2,
                pad_token_id=tiny.PAD_TOKEN, bos_token_id=1, eos_token_id=2,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})


QWEN2_5_VL = register_family(Qwen25VLFamily())
QWEN3_VL = register_family(Qwen3VLFamily())


def tiny_inputs(model, images: Sequence[tuple[int, int, int]] = (), videos: Sequence[tuple[int, int, int]] = (),
                before: Sequence[int] = (1, 10, 11), after: Sequence[int] = (12, 13), seed: int = 0) -> dict:
    """Inputs of one prompt for a tiny Qwen twin: ``images`` then ``videos`` (grids ``(t, h, w)`` in
    patches), each between vision start/end tokens, with random pixels, ``mm_token_type_ids`` and grids.
    Qwen3-VL's videos get one run per frame group, as its processor writes them."""
    family = QWEN3_VL if "qwen3" in model.config.model_type else QWEN2_5_VL
    vc = model.config.vision_config
    g = torch.Generator().manual_seed(seed)
    per_patch = int(vc.in_channels) * int(vc.temporal_patch_size) * int(vc.patch_size) ** 2
    merge = int(vc.spatial_merge_size) ** 2
    ids, out = list(before), {}
    for key, grids, token in (("pixel_values", images, int(model.config.image_token_id)),
                              ("pixel_values_videos", videos, int(model.config.video_token_id))):
        if not grids:
            continue
        for t, h, w in grids:
            runs = [h * w // merge] * t if (family.frames_per_run and token != int(model.config.image_token_id)) \
                else [t * h * w // merge]
            for n in runs:
                ids += [int(model.config.vision_start_token_id)] + [token] * n + [int(model.config.vision_end_token_id)]
        out[key] = torch.randn(sum(t * h * w for t, h, w in grids), per_patch, generator=g)
        out["image_grid_thw" if key == "pixel_values" else "video_grid_thw"] = torch.tensor([list(x) for x in grids])
    ids += list(after)
    input_ids = torch.tensor([ids])
    types = torch.zeros_like(input_ids, dtype=torch.int32)
    types[input_ids == int(model.config.image_token_id)] = 1
    types[input_ids == int(model.config.video_token_id)] = 2
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "mm_token_type_ids": types, **out}


def attach(model, budget: Any, **options):
    """Prune the visual tokens of a Qwen2.5-VL or Qwen3-VL model: :func:`d2pruner.models.handle.attach`
    with the model's family (``prior_resampling="bilinear" | "nearest"`` fits the prior grid to each view)."""
    return _attach(model, budget, **options)
