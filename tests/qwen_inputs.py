"""Seeded prompts for the tiny Qwen-VL twins: images, several images, videos, left-padded batches."""

from __future__ import annotations

import torch

from d2pruner.models import qwen_vl, tiny

QWEN_FAMILIES = ["qwen2_5_vl", "qwen3_vl"]
#: Prompts by name: (image grids, video grids), each (t, h, w) in patches (merged tokens: t * h/2 * w/2).
PROMPTS = {
    "image": ([(1, 8, 12)], []),  # 24 tokens
    "two_images": ([(1, 8, 12), (1, 12, 8)], []),  # 24 + 24, one view each
    "video": ([], [(3, 8, 8)]),  # 3 frame groups of 16 tokens
    "image_and_video": ([(1, 12, 16)], [(2, 8, 12)]),  # 48 + 2 x 24
}


def qwen_model(family: str, attn: str = "sdpa"):
    return tiny.tiny_model(family, attn_implementation=attn)


def prompt(model, name: str, seed: int = 0, before: int = 3, after: int = 4) -> dict:
    images, videos = PROMPTS[name]
    g = torch.Generator().manual_seed(1000 + seed)
    text = lambda n: torch.randint(7, 100, (n,), generator=g).tolist()  # noqa: E731 (plain characters)
    return qwen_vl.tiny_inputs(model, images, videos, before=[1] + text(before), after=text(after), seed=seed)


def left_padded(parts: list[dict]) -> dict:
    """One batch of single prompts, padded on the left; pixels and grids concatenated in item order."""
    width = max(p["input_ids"].shape[1] for p in parts)
    out = {"input_ids": [], "attention_mask": [], "mm_token_type_ids": []}
    for p in parts:
        pad = width - p["input_ids"].shape[1]
        out["input_ids"].append(torch.cat([torch.full((1, pad), tiny.PAD_TOKEN), p["input_ids"]], dim=1))
        out["attention_mask"].append(torch.cat([torch.zeros(1, pad, dtype=torch.long), p["attention_mask"]], dim=1))
        out["mm_token_type_ids"].append(torch.cat([torch.zeros(1, pad, dtype=torch.int32), p["mm_token_type_ids"]], dim=1))
    batch = {k: torch.cat(v) for k, v in out.items()}
    for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"):
        present = [p[key] for p in parts if key in p]
        if present:
            batch[key] = torch.cat(present)
    return batch


def find_items(model, batch):
    family = qwen_vl.QWEN3_VL if model.config.model_type == "qwen3_vl" else qwen_vl.QWEN2_5_VL
    return lambda ids: family.items(model, ids, None, batch)
