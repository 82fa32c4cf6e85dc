"""Seeded inputs for the tiny models and an independent masking-based reference of token dropping."""

from __future__ import annotations

import contextlib
import dataclasses

import torch

from d2pruner.models import internvl, llava, tiny

FAMILIES = ["llava", "internvl"]
GRIDS = [(1, 2), (2, 2)]  # InternVL tile grids of items 0 and 1: 768 and 1280 visual tokens


@dataclasses.dataclass
class Items:
    family: str
    grids: list | None
    n_visual: list

    def find_items(self, model):
        if self.family == "llava":
            return lambda ids: llava.find_items(ids, tiny.IMAGE_TOKEN, llava.grid_side(model))
        return lambda ids: internvl.find_items(ids, tiny.IMAGE_TOKEN, internvl.tile_side(model), self.grids)


def left_padded_batch(family: str, spec: list[tuple[int, int]], grids: list | None = None, item_offset: int = 0):
    """A left-padded batch: item i has ``spec[i] = (text before, text after)`` random tokens around its
    image. Item contents depend only on ``item_offset + i``, so an item alone equals it in a batch."""
    rows, pixels, n_visual, used_grids = [], [], [], []
    for i, (before, after) in enumerate(spec):
        g = torch.Generator().manual_seed(100 + item_offset + i)
        text = lambda n: torch.randint(3, tiny.IMAGE_TOKEN, (n,), generator=g).tolist()  # noqa: E731
        if family == "llava":
            n_img, images = 576, torch.randn(1, 3, 48, 48, generator=g)
        else:
            grid = (grids or GRIDS)[i] if grids else GRIDS[(item_offset + i) % len(GRIDS)]
            used_grids.append(grid)
            tiles = grid[0] * grid[1] + (grid[0] * grid[1] > 1)
            n_img, images = 256 * tiles, torch.randn(tiles, 3, 64, 64, generator=g)
        rows.append([1] + text(before) + [tiny.IMAGE_TOKEN] * n_img + text(after))
        pixels.append(images)
        n_visual.append(n_img)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tiny.PAD_TOKEN)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.cat(pixels)}
    return batch, Items(family, used_grids or None, n_visual)


def dropped_positions(input_ids, find_items, stats) -> torch.Tensor:
    """(B, L) bool: visual tokens the pruned run dropped, from its statistics."""
    dropped = torch.zeros(input_ids.shape, dtype=torch.bool)
    for i, (item, s) in enumerate(zip(find_items(input_ids), stats)):
        if item is None:
            continue
        pos = item[0]
        keep = torch.zeros(len(pos), dtype=torch.bool)
        keep[torch.as_tensor(s.kept)] = True
        dropped[i, pos[~keep]] = True
    return dropped


def stage_dropped(input_ids, find_items, stage_stats) -> list[torch.Tensor]:
    """Per pruning stage, (B, L) bool: visual tokens dropped by then (from the handle's stage_stats)."""
    return [dropped_positions(input_ids, find_items, [_Kept(k) for k in kept]) for kept in stage_stats]


@dataclasses.dataclass
class _Kept:
    kept: object


@contextlib.contextmanager
def masked_reference_hooks(model, prune_layer, dropped):
    """Keep every token but hide the dropped ones as keys from layer ``prune_layer`` on (a dropped
    query row sees only itself). For progressive pruning pass lists: stage layers and, per stage,
    the tokens dropped by then. Written independently of d2pruner.models.handle and cutting."""
    layers = model.model.language_model.layers
    stages = list(zip(prune_layer, dropped)) if isinstance(prune_layer, (list, tuple)) else [(prune_layer, dropped)]

    def make_hook(dropped):
        return lambda module, args, kwargs: hook(module, args, kwargs, dropped)

    def hook(module, args, kwargs, dropped):
        mask = kwargs.get("attention_mask")
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        q, b, dev = hidden.shape[1], hidden.shape[0], hidden.device
        drop = dropped.to(dev)
        if mask is None:
            k = q if q > 1 else dropped.shape[1] + _steps[0]
            visible = torch.ones(b, q, k, dtype=torch.bool, device=dev).tril(diagonal=k - q)
        else:
            m = mask[:, 0]
            visible = m if m.dtype == torch.bool else m == 0
            visible = visible.expand(b, q, visible.shape[-1]).clone()
        k = visible.shape[-1]
        cols = torch.zeros(b, k, dtype=torch.bool, device=dev)
        cols[:, : drop.shape[1]] = drop
        visible &= ~cols[:, None, :]
        if q > 1:  # prompt pass: dropped rows see themselves
            eye = torch.eye(q, k, dtype=torch.bool, device=dev)
            visible = torch.where(drop[:, :, None], eye, visible)
        if mask is None or mask.dtype == torch.bool:
            new = visible[:, None]
        else:
            new = torch.zeros(b, 1, q, k, dtype=mask.dtype, device=dev).masked_fill(~visible[:, None], torch.finfo(mask.dtype).min)
        return args, {**kwargs, "attention_mask": new}

    _steps = [0]

    def count(module, args, kwargs):
        ids = kwargs.get("input_ids")
        _steps[0] = 0 if ids is None or ids.shape[1] > 1 else _steps[0] + 1
        return None

    handles = [model.model.register_forward_pre_hook(count, with_kwargs=True)]
    for i in range(stages[0][0], len(layers)):
        current = [d for s, d in stages if s <= i][-1]
        handles.append(layers[i].register_forward_pre_hook(make_hook(current), with_kwargs=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
