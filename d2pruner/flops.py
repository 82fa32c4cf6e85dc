"""FLOPs of a decoder-only language model with visual tokens pruned along the way.

Dimensions are read from a transformers config (or its dict), never written here: the two paper
models' configs ship as data (:func:`paper_config`). Every count follows an explicit
:class:`Convention`, because papers disagree:

* **attention projections**: q and o at ``heads * head_dim``, k and v at ``kv_heads * head_dim``
  (GQA, ``gqa=True``) or, as in FastV's formula, all four at the hidden width (``gqa=False``);
* **the attention term**: ``QK^T`` and ``AV``, ``2 n^2 d`` multiply-adds for n tokens, halved for a
  causal mask if ``causal=True``, or left out (``attention_term=False``);
* **the MLP**: 3 matrices (SiLU-gated, as LLaVA-1.5 and InternVL-2.5 have) or 2 (FastV's ``2ndm``);
* **units**: multiply-adds (``flops_per_mac=1``, FastV's ``4nd^2 + 2n^2 d + 2ndm``) or FLOPs (2).

Embedding lookups, norms, rotary and softmax are not counted, nor the LM head (``lm_head=True`` adds
it for the positions whose logits are computed), nor biases and elementwise additions (Qwen3-VL's
DeepStack features added to the first decoder layers' outputs). A *schedule* says how many visual tokens each layer
sees: ``[(0, 576), (2, 64)]`` means 576 in layers 0-1 and 64 from layer 2 on (D2Pruner at K=2).

Examples
--------
>>> dims = LMDims(layers=2, hidden=4, intermediate=8, heads=2, kv_heads=1, head_dim=2, vocab=10)
>>> prefill_flops(dims, n_text=3, schedule=[(0, 5)], convention=FASTV)  # 2 layers * (4nd^2 + 2n^2 d + 2ndm), n = 8
3072

Vision towers: :func:`vision_flops` counts a fixed-size ViT with a [CLS] token (CLIP, InternViT), run
once per image or tile; :func:`qwen_vision_flops` counts Qwen2.5-VL's and Qwen3-VL's ViT on the patch
grid of one image of any size (window attention where the config has ``fullatt_block_indexes``, the
2 x 2 patch merger, Qwen3-VL's DeepStack mergers). The pruning methods of this package all act after
the vision tower, so its FLOPs do not change with the budget.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Sequence

__all__ = ["CONVENTIONS", "Convention", "FASTV", "LMDims", "check_schedule", "decode_step_flops", "layer_flops", "paper_config",
           "prefill_flops", "qwen_vision_flops", "qwen_vision_segments", "reduction", "vision_flops"]

DATA = pathlib.Path(__file__).resolve().parent / "data"


@dataclasses.dataclass(frozen=True)
class Convention:
    """How FLOPs are counted (see the module docstring)."""

    name: str
    gqa: bool = True
    attention_term: bool = True
    causal: bool = False
    mlp_matrices: int = 3
    flops_per_mac: int = 2
    lm_head: bool = False

    def __post_init__(self) -> None:
        if self.mlp_matrices not in (2, 3):
            raise ValueError(f"mlp_matrices must be 2 or 3, got {self.mlp_matrices!r}")
        if self.flops_per_mac not in (1, 2):
            raise ValueError(f"flops_per_mac must be 1 (MACs) or 2 (FLOPs), got {self.flops_per_mac!r}")


#: FastV's per-layer formula 4nd^2 + 2n^2 d + 2ndm (multiply-adds, MHA projections, 2-matrix MLP).
FASTV = Convention("fastv", gqa=False, attention_term=True, causal=False, mlp_matrices=2, flops_per_mac=1)
CONVENTIONS = {
    "fastv": FASTV,
    "fastv-gated": Convention("fastv-gated", gqa=False, mlp_matrices=3, flops_per_mac=1),
    "exact": Convention("exact", gqa=True, mlp_matrices=3, flops_per_mac=2),
    "exact-causal": Convention("exact-causal", gqa=True, causal=True, mlp_matrices=3, flops_per_mac=2),
    "linear-only": Convention("linear-only", gqa=True, attention_term=False, mlp_matrices=3, flops_per_mac=2),
}


@dataclasses.dataclass(frozen=True)
class LMDims:
    """The language model's dimensions that FLOPs depend on."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def from_config(cls, config: Any) -> "LMDims":
        """From a transformers config, or a dict, of a multimodal model (its ``text_config``) or an LM."""
        c = config if isinstance(config, dict) else config.to_dict()
        c = c.get("text_config") or c
        try:
            hidden, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
            return cls(layers=int(c["num_hidden_layers"]), hidden=hidden, intermediate=int(c["intermediate_size"]),
                       heads=heads, kv_heads=int(c.get("num_key_value_heads") or heads),
                       head_dim=int(c.get("head_dim") or hidden // heads), vocab=int(c["vocab_size"]))
        except KeyError as err:
            raise ValueError(f"the config lacks {err.args[0]!r}, needed to count FLOPs") from None


def paper_config(model_id: str) -> dict:
    """The shipped full-size config (a dict with its ``_source``) of a model family's checkpoint
    (``ModelFamily.checkpoint``, its file ``ModelFamily.flops_config`` under ``d2pruner/data``).

    >>> paper_config("llava-hf/llava-1.5-7b-hf")["text_config"]["num_hidden_layers"]
    32
    """
    from d2pruner.models.family import family_names, get_family

    known = {get_family(name).checkpoint: get_family(name) for name in family_names()}
    if model_id not in known:
        raise ValueError(f"no shipped config for {model_id!r}; known: {sorted(known)}")
    return known[model_id].shipped_config()


def layer_flops(dims: LMDims, n_tokens: int, kv_len: int | None = None, convention: Convention = CONVENTIONS["exact"]) -> int:
    """One decoder layer processing ``n_tokens`` queries against ``kv_len`` keys (default: the same
    tokens, i.e. a prompt pass)."""
    n = int(n_tokens)
    kv = n if kv_len is None else int(kv_len)
    q_width = dims.heads * dims.head_dim
    kv_width = dims.kv_heads * dims.head_dim if convention.gqa else q_width
    macs = n * dims.hidden * (2 * q_width + 2 * kv_width)  # q, o and k, v projections
    if convention.attention_term:
        if convention.causal and kv_len is None:
            macs += 2 * q_width * (n * (n + 1) // 2)  # QK^T and AV over the causal triangle
        else:
            macs += 2 * q_width * n * kv
    macs += convention.mlp_matrices * n * dims.hidden * dims.intermediate
    return convention.flops_per_mac * macs


def check_schedule(schedule: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """A schedule is ``[(0, n0), (l1, n1), ...]`` with strictly increasing layers and token counts >= 0."""
    sched = [(int(a), int(b)) for a, b in schedule]
    starts = [a for a, _ in sched]
    if not sched or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])) or any(n < 0 for _, n in sched):
        raise ValueError(f"a schedule must start at layer 0 with strictly increasing layers and counts >= 0, got {sched}")
    return sched


def _visual_at(schedule: list[tuple[int, int]], layer: int) -> int:
    return [n for start, n in schedule if start <= layer][-1]


def prefill_flops(dims: LMDims, n_text: int, schedule: Sequence[tuple[int, int]],
                  convention: Convention = CONVENTIONS["exact"], logits_positions: int = 1) -> int:
    """FLOPs of the prompt pass: layer ``l`` sees ``n_text`` text tokens plus the visual tokens the
    ``schedule`` gives it."""
    schedule = check_schedule(schedule)
    total = sum(layer_flops(dims, n_text + _visual_at(schedule, layer), convention=convention)
                for layer in range(dims.layers))
    if convention.lm_head:
        total += convention.flops_per_mac * logits_positions * dims.hidden * dims.vocab
    return total


def decode_step_flops(dims: LMDims, context: Sequence[int] | int, convention: Convention = CONVENTIONS["exact"]) -> int:
    """FLOPs of one decoding step; ``context`` is the number of cached tokens each layer attends to
    (one int for all layers, or one per layer after pruning)."""
    ctx = [int(context)] * dims.layers if isinstance(context, int) else [int(c) for c in context]
    if len(ctx) != dims.layers:
        raise ValueError(f"context has {len(ctx)} entries for {dims.layers} layers")
    total = sum(layer_flops(dims, 1, kv_len=c + 1, convention=convention) for c in ctx)
    if convention.lm_head:
        total += convention.flops_per_mac * dims.hidden * dims.vocab
    return total


def vision_flops(vision_config: dict, n_images: int = 1, convention: Convention = CONVENTIONS["exact"]) -> int:
    """A ViT tower over ``n_images`` images (or tiles): patch embedding plus transformer layers
    (MHA, 2-matrix MLP) on the patch tokens and the CLS token."""
    d, m = int(vision_config["hidden_size"]), int(vision_config["intermediate_size"])
    patches = (int(vision_config["image_size"]) // int(vision_config["patch_size"])) ** 2
    n = patches + 1
    embed = patches * 3 * int(vision_config["patch_size"]) ** 2 * d
    per_layer = 4 * n * d * d + (2 * n * n * d if convention.attention_term else 0) + 2 * n * d * m
    return convention.flops_per_mac * n_images * (embed + int(vision_config["num_hidden_layers"]) * per_layer)


def _qwen_vision_kind(vision_config: dict) -> str:
    kind = str(vision_config.get("model_type", ""))
    if kind.startswith("qwen2_5_vl"):
        return "qwen2_5_vl"
    if kind.startswith("qwen3_vl"):
        return "qwen3_vl"
    raise ValueError(f"qwen_vision_flops counts Qwen2.5-VL and Qwen3-VL vision towers, got model_type {kind!r}")


def _grids(grid_thw) -> list[tuple[int, int, int]]:
    if hasattr(grid_thw, "tolist"):  # a tensor of grids, as the processor's image_grid_thw
        grid_thw = grid_thw.tolist()
    grids = [grid_thw] if len(grid_thw) == 3 and all(isinstance(x, int) for x in grid_thw) else list(grid_thw)
    out = [tuple(int(x) for x in g) for g in grids]
    for t, h, w in out:
        if min(t, h, w) < 1:
            raise ValueError(f"a patch grid (t, h, w) needs positive sides, got {(t, h, w)}")
    return out


def qwen_vision_segments(vision_config: dict, grid_thw) -> tuple[list[int], list[int]]:
    """The attention segments (patches attending to each other) of a Qwen-VL vision tower over the
    patch grids ``grid_thw`` (one ``(t, h, w)`` or a list of them, in patches, as the processor's
    ``image_grid_thw``): ``(full, windowed)``. Full-attention layers attend within each temporal slice
    (``h * w`` patches); Qwen2.5-VL's other layers within windows of ``window_size`` pixels, i.e.
    ``window_size // patch_size // spatial_merge_size`` merged tokens a side, the last row and column
    of windows cut short by the grid's edge (as ``transformers``' ``get_vision_window_index``).
    Qwen3-VL has no windows (``windowed`` is empty).

    >>> vc = {"model_type": "qwen2_5_vl", "patch_size": 14, "spatial_merge_size": 2, "window_size": 112,
    ...       "fullatt_block_indexes": [7, 15, 23, 31]}
    >>> qwen_vision_segments(vc, (1, 12, 10))  # 6 x 5 merged tokens: windows of 4 x 4, 4 x 1, 2 x 4, 2 x 1
    ([120], [64, 16, 32, 8])
    """
    grids = _grids(grid_thw)
    merge = int(vision_config["spatial_merge_size"])
    for _, h, w in grids:
        if h % merge or w % merge:
            raise ValueError(f"a patch grid's sides must be multiples of spatial_merge_size {merge}, got {h} x {w}")
    full = [h * w for t, h, w in grids for _ in range(t)]
    if _qwen_vision_kind(vision_config) != "qwen2_5_vl":
        return full, []
    win = int(vision_config["window_size"]) // merge // int(vision_config["patch_size"])
    windowed = []
    for t, h, w in grids:
        rows = [win] * (h // merge // win) + ([h // merge % win] if h // merge % win else [])
        cols = [win] * (w // merge // win) + ([w // merge % win] if w // merge % win else [])
        windowed += [r * c * merge * merge for _ in range(t) for r in rows for c in cols]
    return full, windowed


def qwen_vision_flops(vision_config: dict, grid_thw, convention: Convention = CONVENTIONS["exact"],
                      parts: bool = False) -> int | dict[str, int]:
    """FLOPs of Qwen2.5-VL's or Qwen3-VL's vision tower (``vision_config`` a dict, e.g. the shipped
    config's ``vision_config``) over the patch grids ``grid_thw`` (see :func:`qwen_vision_segments`).

    With ``n`` patches, width ``d``, MLP width ``m``, merge ``s`` (``s * s`` patches per visual token),
    in multiply-adds: the patch embedding ``n * (in_channels * temporal_patch_size * patch_size^2) * d``;
    per block the projections ``4 n d^2`` (qkv, out), the attention ``2 d * sum(segment^2)`` over the
    block's segments (``fullatt_block_indexes`` attend over whole slices, the others within windows;
    Qwen3-VL: every block over whole slices), the MLP ``3 n d m`` (Qwen2.5-VL: SiLU-gated) or ``2 n d m``
    (Qwen3-VL); the patch merger ``n / s^2 * ((s^2 d)^2 + s^2 d * out_hidden_size)``, once more per
    ``deepstack_visual_indexes`` entry (Qwen3-VL's DeepStack mergers have the same shape). Of the
    convention only ``attention_term`` and ``flops_per_mac`` apply: the ViT's attention is
    bidirectional and its MLP is what the architecture has. ``parts=True`` returns the pieces
    (``patch_embed``, ``projections``, ``attention``, ``mlp``, ``mergers``) and their ``total``.
    """
    kind = _qwen_vision_kind(vision_config)
    full, windowed = qwen_vision_segments(vision_config, grid_thw)
    n = sum(full)
    d, m = int(vision_config["hidden_size"]), int(vision_config["intermediate_size"])
    depth, merge = int(vision_config["depth"]), int(vision_config["spatial_merge_size"])
    per_patch = int(vision_config.get("in_channels", 3)) * int(vision_config["temporal_patch_size"]) * int(vision_config["patch_size"]) ** 2
    if kind == "qwen2_5_vl":
        full_layers = len([i for i in vision_config["fullatt_block_indexes"] if 0 <= int(i) < depth])
        attention = 2 * d * (full_layers * sum(s * s for s in full) + (depth - full_layers) * sum(s * s for s in windowed))
        mlp_matrices, mergers = 3, 1
    else:
        attention = 2 * d * depth * sum(s * s for s in full)
        mlp_matrices, mergers = 2, 1 + len(vision_config.get("deepstack_visual_indexes") or [])
    wide = merge * merge * d
    macs = {"patch_embed": n * per_patch * d, "projections": depth * 4 * n * d * d,
            "attention": attention if convention.attention_term else 0, "mlp": depth * mlp_matrices * n * d * m,
            "mergers": mergers * (n // (merge * merge)) * (wide * wide + wide * int(vision_config["out_hidden_size"]))}
    out = {k: convention.flops_per_mac * v for k, v in macs.items()}
    out["total"] = sum(out.values())
    return out if parts else out["total"]


def reduction(pruned: int, full: int) -> float:
    """Relative FLOPs saved, in percent."""
    return 100.0 * (1.0 - pruned / full)
