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
it for the positions whose logits are computed). A *schedule* says how many visual tokens each layer
sees: ``[(0, 576), (2, 64)]`` means 576 in layers 0-1 and 64 from layer 2 on (D2Pruner at K=2).

Examples
--------
>>> dims = LMDims(layers=2, hidden=4, intermediate=8, heads=2, kv_heads=1, head_dim=2, vocab=10)
>>> prefill_flops(dims, n_text=3, schedule=[(0, 5)], convention=FASTV)  # 2 layers * (4nd^2 + 2n^2 d + 2ndm), n = 8
3072
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Sequence

__all__ = ["CONVENTIONS", "Convention", "FASTV", "LMDims", "check_schedule", "decode_step_flops", "layer_flops", "paper_config",
           "prefill_flops", "reduction", "vision_flops"]

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


def reduction(pruned: int, full: int) -> float:
    """Relative FLOPs saved, in percent."""
    return 100.0 * (1.0 - pruned / full)
