"""Seeded prompts for the tiny LLaVA-NeXT twin: images of several sizes (different anyres grids) and
left-padded batches of them."""

from __future__ import annotations

import contextlib

import torch

from d2pruner.models import llava_next, tiny
from model_inputs import masked_reference_hooks

#: Image sizes (height, width) in pixels and what the tiny twin makes of them (24 px crops, 12 x 12
#: tokens each): crop grid, unpadded canvas (rows x cols, one newline per row), visual tokens.
SIZES = {
    "wide": (30, 48),  # 2 x 2 crops, canvas 16 x 24: 144 + 384 = 528 visual, 16 newlines
    "tall": (70, 20),  # 3 x 1 crops, canvas 36 x 10: 144 + 360 = 504 visual, 36 newlines
    "small": (24, 24),  # 1 x 2 crops, canvas 12 x 12: 144 + 144 = 288 visual, 12 newlines
}
GEOMETRY = {"wide": ((2, 2), (16, 24), 528), "tall": ((3, 1), (36, 10), 504), "small": ((1, 2), (12, 12), 288)}


def model(attn: str = "sdpa"):
    return tiny.tiny_llava_next(attn_implementation=attn)


def prompt(m, names, seed: int = 0, before: int = 3, after: int = 4) -> dict:
    """One prompt: random text, the images ``names`` (keys of :data:`SIZES`), random text."""
    g = torch.Generator().manual_seed(2000 + seed)
    text = lambda n: torch.randint(7, 100, (n,), generator=g).tolist()  # noqa: E731 (plain characters)
    return llava_next.tiny_inputs(m, [SIZES[n] for n in names], before=[1] + text(before), after=text(after), seed=seed)


def left_padded(parts: list[dict]) -> dict:
    """One batch of single prompts, padded on the left; images (crops padded to the most) and their
    sizes concatenated in item order, as the processor batches them."""
    width = max(p["input_ids"].shape[1] for p in parts)
    crops = max(p["pixel_values"].shape[1] for p in parts)
    ids, mask, pixels = [], [], []
    for p in parts:
        pad = width - p["input_ids"].shape[1]
        ids.append(torch.cat([torch.full((1, pad), tiny.PAD_TOKEN), p["input_ids"]], dim=1))
        mask.append(torch.cat([torch.zeros(1, pad, dtype=torch.long), p["attention_mask"]], dim=1))
        pv = p["pixel_values"]
        pixels.append(torch.cat([pv, pv.new_zeros(pv.shape[0], crops - pv.shape[1], *pv.shape[2:])], dim=1))
    return {"input_ids": torch.cat(ids), "attention_mask": torch.cat(mask), "pixel_values": torch.cat(pixels),
            "image_sizes": torch.cat([p["image_sizes"] for p in parts])}


def batch(m, names_per_item, seed: int = 0) -> dict:
    return left_padded([prompt(m, names, seed=seed + i, before=3 + 2 * i) for i, names in enumerate(names_per_item)])


def find_items(m, inputs):
    return lambda ids: llava_next.FAMILY.items(m, ids, None, inputs)


@contextlib.contextmanager
def masked_reference(m, prune_layer, dropped):
    """:func:`model_inputs.masked_reference_hooks` for LLaVA-NeXT, whose outer model hands ``input_ids``
    to the inner one positionally: a pre-hook, registered first, passes them as the keyword the
    reference counts decoding steps from (it matters where the layers get no mask: one unpadded item)."""
    def by_keyword(module, args, kwargs):
        if args and "input_ids" not in kwargs:
            return args[1:], {**kwargs, "input_ids": args[0]}
        return None

    hook = m.model.register_forward_pre_hook(by_keyword, with_kwargs=True)
    try:
        with masked_reference_hooks(m, prune_layer, dropped):
            yield
    finally:
        hook.remove()


def llm_inputs(m, inputs) -> torch.Tensor:
    """(B, L, D) the LLM's input embeddings of an unpruned prompt pass (the model's own packing:
    visual tokens and newline vectors in their placeholders)."""
    seen = {}

    def grab(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"].detach().clone()

    hook = m.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            m(**inputs)
    finally:
        hook.remove()
    return seen["embeds"]


def shortened(m, inputs, dropped) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference of pruning before the LLM: the LLM's input with the dropped rows removed, padded on
    the left again: ``(inputs_embeds (B, L', D), attention_mask (B, L'))``. Written independently of
    d2pruner.models.handle and cutting."""
    embeds = llm_inputs(m, inputs)
    mask = inputs.get("attention_mask", torch.ones(inputs["input_ids"].shape, dtype=torch.long))
    rows = [embeds[i][~dropped[i]] for i in range(len(embeds))]
    masks = [mask[i][~dropped[i]] for i in range(len(embeds))]
    width = max(len(r) for r in rows)
    out = torch.zeros(len(rows), width, embeds.shape[-1])
    out_mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (r, mk) in enumerate(zip(rows, masks)):
        out[i, width - len(r):], out_mask[i, width - len(mk):] = r, mk
    return out, out_mask
