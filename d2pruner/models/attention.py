"""Attention rows computed from a decoder layer's input, so the model itself may run ``sdpa``.

One helper, :func:`queries_and_keys`, applies a layer's input norm, q/k projections and rotary
embedding; every row a method reads is built on it: the last token's row (:func:`last_token_attention`),
rows of chosen queries (:func:`query_attention`, SparseVLM's raters) and key norms
(:func:`key_l1_norms`, DART). The rotary scheme is a parameter (:class:`RotaryScheme`): Llama's
1-D rotary (:func:`llama_rope`) by default; a family whose positions are multimodal (M-RoPE) passes
its own.

:func:`cls_attention_and_keys` is the vision side's counterpart (a ViT's [CLS] row, no rotary).

Shape legend: B items, L positions, nH query heads, nKV key heads, hd head width, Q queries.
"""

from __future__ import annotations

from typing import Protocol

import torch

__all__ = ["RotaryScheme", "cls_attention_and_keys", "key_l1_norms", "last_token_attention", "llama_rope",
           "query_attention", "queries_and_keys", "rotate_half"]


class RotaryScheme(Protocol):
    """``scheme(x, position_embeddings, positions) -> x`` rotated: ``x`` (B, heads, P, hd) float32 holds
    the projections at ``positions`` (a slice or index tensor into the L positions; ``None`` = all),
    ``position_embeddings`` is what the decoder layer receives."""

    def __call__(self, x: torch.Tensor, position_embeddings: tuple, positions=None) -> torch.Tensor: ...


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def llama_rope(x: torch.Tensor, position_embeddings: tuple, positions=None) -> torch.Tensor:
    """Llama's rotary embedding: ``position_embeddings`` = (cos, sin), each (B or 1, L, hd)."""
    cos, sin = (t.float()[:, None] for t in position_embeddings)  # (B|1, 1, L, hd)
    if positions is not None:
        cos, sin = cos[..., positions, :], sin[..., positions, :]
    return x * cos + rotate_half(x) * sin


def queries_and_keys(layer: torch.nn.Module, hidden_states: torch.Tensor, position_embeddings: tuple,
                     queries=None, rotary: RotaryScheme = llama_rope) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Rotated queries at ``queries`` and keys at every position of a Llama-layout decoder layer
    (``input_layernorm``; ``self_attn.{q_proj,k_proj,head_dim}``, and per-head ``q_norm``/``k_norm``
    before the rotary where the layer has them, as Qwen3), in float32.

    Parameters
    ----------
    layer : decoder layer; hidden_states : Tensor (B, L, H) -- its input
    position_embeddings : what the layer receives (Llama: (cos, sin), each (B or 1, L, hd))
    queries : slice or LongTensor (Q,), optional -- query positions (None: keys only)
    rotary : the model's rotary scheme

    Returns
    -------
    (Tensor (B, nH, Q, hd) or None, Tensor (B, nKV, L, hd))
    """
    attn = layer.self_attn
    q_norm, k_norm = (getattr(attn, name, None) or (lambda t: t) for name in ("q_norm", "k_norm"))
    x = layer.input_layernorm(hidden_states)  # (B, L, H)
    b, n, _ = x.shape
    hd = attn.head_dim
    q = None
    if queries is not None:
        xq = x[:, queries]  # (B, Q, H)
        q = q_norm(attn.q_proj(xq).view(b, xq.shape[1], -1, hd)).transpose(1, 2).float()  # (B, nH, Q, hd)
        q = rotary(q, position_embeddings, queries)
    k = k_norm(attn.k_proj(x).view(b, n, -1, hd)).transpose(1, 2).float()  # (B, nKV, L, hd)
    return q, rotary(k, position_embeddings)


def _scores(layer: torch.nn.Module, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # (B, nH, L, hd): GQA
    return (q @ k.transpose(-1, -2)) * layer.self_attn.scaling  # (B, nH, Q, L)


def _apply_mask(scores: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Bool rows (True = attend) or additive float rows, broadcast over heads."""
    return scores.masked_fill(~rows, float("-inf")) if rows.dtype == torch.bool else scores + rows.float()


def last_token_attention(layer: torch.nn.Module, hidden_states: torch.Tensor, position_embeddings: tuple,
                         attention_mask: torch.Tensor | None, rotary: RotaryScheme = llama_rope) -> torch.Tensor:
    """Attention of the last query position to every key, mean over heads.

    Parameters
    ----------
    layer, hidden_states, position_embeddings, rotary : as :func:`queries_and_keys`
    attention_mask : 4-D mask (B, 1, L, L), bool (True = attend) or additive float, or None (causal)

    Returns
    -------
    Tensor (B, L), float32: softmax over the full key length, averaged over heads.
    """
    q, k = queries_and_keys(layer, hidden_states, position_embeddings, slice(-1, None), rotary)
    scores = _scores(layer, q, k)  # (B, nH, 1, L)
    if attention_mask is not None:
        scores = _apply_mask(scores, attention_mask[:, :, -1:, :])  # rows (B, 1, 1, L)
    return scores.softmax(dim=-1).mean(dim=1)[:, 0]  # (B, L)


def query_attention(layer: torch.nn.Module, hidden_states: torch.Tensor, position_embeddings: tuple,
                    attention_mask: torch.Tensor | None, queries: torch.Tensor,
                    rotary: RotaryScheme = llama_rope) -> torch.Tensor:
    """Attention rows of chosen query positions of one item, mean over heads (the computation of
    :func:`last_token_attention` for several queries).

    Parameters
    ----------
    hidden_states : Tensor (1, L, H); position_embeddings : for one item
    attention_mask : (1, 1, L, L) bool or additive float, or None (causal)
    queries : LongTensor (Q,) -- query positions

    Returns
    -------
    Tensor (Q, L), float32
    """
    q, k = queries_and_keys(layer, hidden_states, position_embeddings, queries, rotary)
    scores = _scores(layer, q, k)  # (1, nH, Q, L)
    if attention_mask is None:
        n = hidden_states.shape[1]
        visible = torch.arange(n, device=hidden_states.device)[None, :] <= queries[:, None]  # (Q, L) causal
        scores = scores.masked_fill(~visible, float("-inf"))
    else:
        scores = _apply_mask(scores, attention_mask[:, :, queries, :])  # rows (1, 1, Q, L)
    return scores.softmax(dim=-1).mean(dim=1)[0]  # (Q, L)


def key_l1_norms(layer: torch.nn.Module, hidden_states: torch.Tensor, position_embeddings: tuple,
                 rotary: RotaryScheme = llama_rope) -> torch.Tensor:
    """L1 norm of each position's keys after the rotary embedding (as the KV cache holds them), over
    all key heads and dimensions: Tensor (B, L), float32."""
    _, k = queries_and_keys(layer, hidden_states, position_embeddings, None, rotary)
    return k.abs().sum(dim=(1, 3))  # (B, L)


def cls_attention_and_keys(attn: torch.nn.Module, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The [CLS] query's attention to the patch tokens, summed over heads, and the head-averaged keys
    of the patch tokens, for a ViT self-attention (CLIP layout: ``q_proj``, ``k_proj``, ``head_dim``,
    ``scale``; no mask), computed from the attention's input so that the vision tower may run ``sdpa``.

    Parameters
    ----------
    attn : the self-attention module
    hidden_states : Tensor (B, 1 + N, Dv) -- its input (after the layer's first norm); token 0 is [CLS]

    Returns
    -------
    (Tensor (B, N) float32, Tensor (B, N, head_dim) float32)
        Softmax over all 1 + N keys (as the layer computes it), summed over heads, [CLS] column dropped;
        and the keys (with bias, before any reshaping) averaged over heads, [CLS] dropped.
    """
    b, n, _ = hidden_states.shape
    hd = attn.head_dim
    q = attn.q_proj(hidden_states[:, :1]).view(b, 1, -1, hd).transpose(1, 2).float()  # (B, nH, 1, hd)
    k = attn.k_proj(hidden_states).view(b, n, -1, hd).transpose(1, 2).float()  # (B, nH, 1+N, hd)
    probs = ((q @ k.transpose(-1, -2)) * attn.scale).softmax(dim=-1)  # (B, nH, 1, 1+N)
    return probs.sum(dim=1)[:, 0, 1:], k.mean(dim=1)[:, 1:]  # (B, N), (B, N, hd)
