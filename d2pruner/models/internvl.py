"""InternVL-2.5 (``transformers.InternVLForConditionalGeneration``): D2Pruner inside the language model.

An image is cut into a grid of tiles (rows x cols, 1 to ``max_tiles``) plus, when there is more than
one tile, a thumbnail that comes **last**; each tile gives 16x16 = 256 ``<IMG_CONTEXT>`` tokens after
pixel shuffle. The layout puts the tiles on one canvas (neighbours across tile borders are
neighbours) and the thumbnail in its own view (:meth:`d2pruner.spec.TokenLayout.internvl`).

The processor does not report the tile grid, so the handle must be told it for items with more than
one tile: ``handle.set_image_sizes([(height, width), ...])`` recomputes it with the processor's own
rule (:func:`tile_grid`), or ``handle.set_tile_grids([(rows, cols), ...])`` gives it directly.

The positional prior has one value per tile position (256) and applies to every tile and to the
thumbnail.

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

from d2pruner.models.hooks import PruningHandle, VisionCapture, resolve_method
from d2pruner.models.prior import prior_tensor
from d2pruner.spec import D2PrunerConfig, TokenLayout

__all__ = ["InternVLHandle", "attach", "tile_grid", "tile_side", "unsupported"]


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


class InternVLHandle(PruningHandle):
    """A :class:`~d2pruner.models.hooks.PruningHandle` that also knows each item's tile grid."""

    max_tiles: int = 12
    tile_grids: list | None = None

    def set_tile_grids(self, grids: Sequence[tuple[int, int] | None]) -> None:
        """The ``(rows, cols)`` tile grid of each batch item's image, for the next forward passes."""
        self.tile_grids = [None if g is None else (int(g[0]), int(g[1])) for g in grids]

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


def _expand_prior(prior: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    return prior.repeat(len(layout) // prior.numel())  # the same per-position prior on every tile and the thumbnail


def unsupported(method: Any) -> str | None:
    """Why ``method`` (a method object) cannot run on InternVL, or None if it can.

    >>> from d2pruner.methods import get_method
    >>> unsupported(get_method("fastv")) is None
    True
    >>> unsupported(get_method("visionzip"))[:60]
    'visionzip needs the [CLS] attention of the vision tower, whi'
    """
    name = getattr(method, "name", method)
    if getattr(method, "needs_cls_attention", False):
        return (f"{name} needs the [CLS] attention of the vision tower, which InternVL does not have: "
                "its [CLS] token is dropped before the pixel shuffle, so no [CLS] query scores the 256 "
                "merged tokens of a tile")
    if getattr(method, "needs_instruction", False) and getattr(method, "text_tower", "absent") is None:
        return (f"{name} needs a CLIP text tower for the instruction relevance, and InternVL has no CLIP "
                f"(InternViT is not aligned with a text encoder): pass method=get_method({name!r}, "
                "text_tower=...) explicitly, whose image side maps InternVL's pixel-shuffled features")
    return None


def attach(model, budget: Any, *, config: D2PrunerConfig | None = None, prior: Any = None, method: Any = None,
           backend: str = "fast", max_tiles: int = 12, prune_layer: int | None = None) -> InternVLHandle:
    """Prune the visual tokens of an InternVL model at decoder layer ``config.prune_layer``.

    Parameters are those of :func:`d2pruner.models.llava.attach`, plus ``max_tiles`` (the processor's
    tile limit, used by :meth:`InternVLHandle.set_image_sizes`). For localization use
    ``config=D2PrunerConfig.for_localization()``.
    """
    from transformers import InternVLForConditionalGeneration, InternVLModel

    if not isinstance(model, (InternVLForConditionalGeneration, InternVLModel)):
        raise ValueError(f"internvl.attach expects an InternVLForConditionalGeneration, got {type(model).__name__}")
    config = config or D2PrunerConfig()
    method, layer = resolve_method(method, config, backend, prune_layer)
    why = unsupported(method)
    if why is not None:
        raise ValueError(why)
    inner = model.model if isinstance(model, InternVLForConditionalGeneration) else model
    vision = VisionCapture(inner.vision_tower, inner.multi_modal_projector) if getattr(method, "needs_vision", False) else None
    side = tile_side(model)
    token_id = int(model.config.image_token_id)
    handle: InternVLHandle
    handle = InternVLHandle(inner, language_model=inner.language_model,
                            find_items=lambda ids: find_items(ids, token_id, side, handle.tile_grids), budget=budget,
                            method=method, prune_layer=layer,
                            prior=prior_tensor(prior, side * side, model, layer), expand_prior=_expand_prior,
                            vision=vision)
    handle.max_tiles = int(max_tiles)
    return handle
