"""Cutting a prompt to its kept tokens: hidden states, positions, rotary tables and attention masks.

Everything here works on an ``index`` (B, L') of *original* prompt positions, left-padded with masked
"dummy" slots (``slot_valid`` False) so the last token stays last, whatever the stage. The handle
(:mod:`d2pruner.models.handle`) decides what to keep; these functions only build the cut inputs:

* :func:`kept_index` -- the (B, L') index and its validity from each item's kept positions;
* :func:`cut_hidden` -- the hidden states at the kept slots, merged tokens written into theirs;
* :func:`cut_positions` -- position ids and rotary tables at the kept positions (kept tokens keep
  their original ids inside the LLM; before the LLM they are renumbered past the dropped ones);
* :func:`prefill_mask` / :func:`decode_mask` -- the 4-D masks of the cut prompt pass and of the
  cached decoding steps after it (the KV cache of the cut layers holds only kept tokens);
* :func:`decode_language_model_inputs` -- a decoding step after pruning before the LLM: positions
  shifted back (when the family renumbers them) and the 2-D mask over the shortened prompt.

Shape legend: B items, L prompt length, L' kept length, H hidden size, q query length of a decoding
step, T tokens after the prompt.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

__all__ = ["Cut", "cut_hidden", "cut_positions", "decode_language_model_inputs", "decode_mask", "kept_index",
           "prefill_mask"]


@dataclasses.dataclass
class Cut:
    """State of a pruned prompt pass, kept for the decoding steps that follow."""

    index: torch.Tensor  # (B, L') original position of each kept slot
    slot_valid: torch.Tensor  # (B, L') False for left-padding dummies
    prompt_len: int
    cache: Any
    shift: torch.Tensor | None = None  # (B,) position shift of later tokens when pruned before the LLM


def kept_index(keep_lists: list[torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L') original positions, left-padded, and (B, L') validity, from each item's kept positions."""
    b = len(keep_lists)
    new_len = max(len(k) for k in keep_lists)
    index = torch.zeros(b, new_len, dtype=torch.long, device=device)  # (B, L') original positions
    slot_valid = torch.zeros(b, new_len, dtype=torch.bool, device=device)  # (B, L')
    for i, k in enumerate(keep_lists):
        index[i, new_len - len(k):] = k  # left-pad: the last token stays last
        slot_valid[i, new_len - len(k):] = True
    return index, slot_valid


def cut_hidden(hidden: torch.Tensor, cur_index: torch.Tensor, cur_valid: torch.Tensor, index: torch.Tensor,
               slot_valid: torch.Tensor, n_seq: int, merged: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Hidden states (B, L', H) at the kept original positions ``index``, from the current sequence
    ``hidden`` (B, L_cur, H) whose slots hold the original positions ``cur_index`` (valid where
    ``cur_valid``). ``merged[i] = (orig, features)``: item i's kept positions ``orig`` (M,) take the new
    hidden states ``features`` (M, H) instead of their own."""
    b, n_cur, _ = hidden.shape
    new_len = index.shape[1]
    device = hidden.device
    slot_of = torch.zeros(b, n_seq, dtype=torch.long, device=device)  # (B, L): current slot of each original position
    slot_of.scatter_(1, torch.where(cur_valid, cur_index, 0), torch.arange(n_cur, device=device).expand(b, n_cur) * cur_valid)
    src = slot_of.gather(1, index)  # (B, L') current slot of each kept position
    h = hidden.gather(1, src[..., None].expand(b, new_len, hidden.shape[-1]))  # (B, L', H)
    for i, (orig, features) in merged.items():
        valid = slot_valid[i]
        new_slot = torch.full((n_seq,), -1, dtype=torch.long, device=device)
        new_slot[index[i][valid]] = torch.arange(new_len, device=device)[valid]  # (L,) new slot of each kept position
        h[i, new_slot[orig]] = features.to(device=device, dtype=h.dtype)  # (M, H)
    return h


def cut_positions(orig: dict, index: torch.Tensor, slot_valid: torch.Tensor, before_llm: bool,
                  rotary_embedding: Callable | None, hidden: torch.Tensor) -> tuple[dict, torch.Tensor | None]:
    """``position_embeddings`` and ``position_ids`` of the kept tokens, and the shift (B,) of later
    positions when pruning before the LLM (else None).

    ``orig`` holds the prompt pass's originals: ``cos``, ``sin`` (B|1, L, hd), ``pos_ids`` (B, L),
    ``len``. Inside the LLM kept tokens keep their original ids; before it (``before_llm``) they are
    renumbered as if the dropped placeholders had never been there, and the rotary tables recomputed
    with ``rotary_embedding(hidden, position_ids=...)``.
    """
    b, new_len = index.shape
    n_seq = orig["len"]

    def gather3(t):  # (B|1, L, X) -> (B, L', X) at the kept original positions
        return t.expand(b, n_seq, t.shape[-1]).gather(1, index[..., None].expand(b, new_len, t.shape[-1]))

    pos_ids = orig["pos_ids"]
    out = {"position_embeddings": (gather3(orig["cos"]), gather3(orig["sin"])),  # each (B, L', hd)
           "position_ids": pos_ids.gather(1, index)}  # (B, L'): kept tokens keep their ids ...
    if not before_llm:
        return out, None
    # ... unless pruned before the LLM: then renumber past the dropped ones
    keep_mask = torch.zeros(b, n_seq, dtype=torch.long, device=index.device).scatter_(1, index, slot_valid.long())
    dropped_before = torch.cumsum(1 - keep_mask, dim=1)  # (B, L): dropped tokens at or before each position
    new_pos = (pos_ids - dropped_before).clamp(min=0).gather(1, index)  # (B, L')
    out["position_ids"] = new_pos
    out["position_embeddings"] = rotary_embedding(hidden, position_ids=new_pos)
    return out, (1 - keep_mask).sum(dim=1)  # (B,) how far later positions move back


def _format(visible: torch.Tensor, like: torch.Tensor | None) -> torch.Tensor:
    """A bool visibility mask (B, 1, q, k) in the format of ``like`` (bool, or additive float)."""
    if like is None or like.dtype == torch.bool:
        return visible
    out = torch.zeros(visible.shape, dtype=like.dtype, device=visible.device)
    return out.masked_fill(~visible, torch.finfo(like.dtype).min)


def prefill_mask(mask: torch.Tensor | None, index: torch.Tensor, slot_valid: torch.Tensor) -> torch.Tensor:
    """The 4-D mask (B, 1, L', L') of the cut prompt pass, from the original 4-D ``mask`` (or causal)."""
    b, new_len = index.shape
    if mask is None:  # pure causal over the original positions
        visible = index[:, None, :] <= index[:, :, None]  # (B, L', L')
    else:
        m = mask.expand(b, 1, mask.shape[-2], mask.shape[-1])[:, 0]  # (B, L, L)
        m = m.gather(1, index[:, :, None].expand(b, new_len, m.shape[-1]))  # (B, L', L): rows
        m = m.gather(2, index[:, None, :].expand(b, new_len, new_len))  # (B, L', L'): columns
        visible = m if m.dtype == torch.bool else m == 0
    visible = visible & slot_valid[:, None, :]
    eye = torch.eye(new_len, dtype=torch.bool, device=index.device)
    visible = torch.where(slot_valid[:, :, None], visible, eye)  # a dummy row sees itself only (no NaN)
    return _format(visible[:, None], mask)


def decode_mask(mask: torch.Tensor | None, index: torch.Tensor, slot_valid: torch.Tensor, prompt_len: int,
                q: int, total: int) -> torch.Tensor:
    """The 4-D mask (B, 1, q, L' + T) of a decoding step over a cut prompt: the kept prompt columns
    then every position after the prompt, from the step's original ``mask`` (B, 1, q, total) or causal."""
    b, _ = index.shape
    new_cols = torch.arange(prompt_len, total, device=index.device)  # (T,) positions after the prompt
    cols = torch.cat([index, new_cols.expand(b, -1)], dim=1)  # (B, L' + T)
    col_valid = torch.cat([slot_valid, torch.ones(b, len(new_cols), dtype=torch.bool, device=cols.device)], dim=1)
    if mask is None:
        rows = torch.arange(total - q, total, device=cols.device)  # (q,)
        visible = cols[:, None, :] <= rows[None, :, None]  # (B, q, L' + T)
    else:
        m = mask.expand(b, 1, mask.shape[-2], mask.shape[-1])[:, 0]  # (B, q, total)
        if m.shape[-1] != total:
            raise ValueError(f"decoding mask has {m.shape[-1]} key columns, expected {total}")
        m = m.gather(2, cols[:, None, :].expand(b, m.shape[1], cols.shape[1]))  # (B, q, L' + T)
        visible = m if m.dtype == torch.bool else m == 0
    visible = visible & col_valid[:, None, :]
    return _format(visible[:, None], mask)


def decode_language_model_inputs(kwargs: dict, cut: Cut, total: int) -> dict:
    """The language model's inputs of a decoding step after pruning before the LLM: position ids
    moved back by the dropped count, and the 2-D mask over the shortened prompt (dummies as padding)."""
    kwargs = dict(kwargs)
    if kwargs.get("position_ids") is not None and cut.shift is not None:  # None: positions were kept
        kwargs["position_ids"] = kwargs["position_ids"] - cut.shift[:, None]  # (B, q)
    mask = kwargs.get("attention_mask")
    b = cut.index.shape[0]
    new_cols = torch.arange(cut.prompt_len, total, device=cut.index.device).expand(b, -1)  # (B, T)
    if mask is not None and mask.ndim == 2:
        kept = mask.gather(1, cut.index) * cut.slot_valid.to(mask.dtype)  # (B, L'): dummies are padding
        kwargs["attention_mask"] = torch.cat([kept, mask.gather(1, new_cols)], dim=1)  # (B, L' + T)
    elif mask is None:
        ones = torch.ones(b, total - cut.prompt_len, dtype=torch.long, device=cut.index.device)
        kwargs["attention_mask"] = torch.cat([cut.slot_valid.long(), ones], dim=1)
    else:
        raise ValueError("pruning before the LLM needs a 2-D attention mask (or none) while decoding")
    return kwargs
