"""Tiny random models of every registered family, built in code, for tests, notebooks and smoke runs.

``tiny_<family>()`` (``tiny_llava()``, ``tiny_internvl()``, ...) builds the family's own tiny twin
(:meth:`d2pruner.models.family.ModelFamily.tiny_model`): the real architecture and token geometry
(LLaVA: a 24x24 = 576-token grid; InternVL: 256 tokens per tile after pixel shuffle) with widths small
enough to run in milliseconds on a CPU (their shared parts: :mod:`d2pruner.models.tiny_parts`). This
module also builds a tiny CLIP text tower for CDPruner.

>>> from d2pruner.models import tiny
>>> tiny.tiny_llava().model.language_model.config.num_hidden_layers
4
"""

from __future__ import annotations

import torch

from d2pruner.models.tiny_parts import IMAGE_TOKEN, PAD_TOKEN, VOCAB, seeded

__all__ = ["IMAGE_TOKEN", "PAD_TOKEN", "VOCAB", "CharTokenizer", "tiny_clip_text_tower", "tiny_model"]


def tiny_model(family: str, seed: int = 0, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32):
    """The tiny random model of a registered family (``tiny_model("llava")`` = ``tiny_llava()``)."""
    from d2pruner.models.family import get_family

    return get_family(family).tiny_model(seed=seed, attn_implementation=attn_implementation, dtype=dtype)


def __getattr__(name: str):
    """``tiny_<family>(seed=0, attn_implementation="sdpa", dtype=torch.float32)`` for every registered family."""
    from d2pruner.models.family import family_names

    if name.startswith("tiny_") and name[5:] in family_names():
        return lambda seed=0, attn_implementation="sdpa", dtype=torch.float32: tiny_model(name[5:], seed,
                                                                                          attn_implementation, dtype)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class CharTokenizer:
    """A toy stand-in for CLIP's tokenizer (no vocabulary files): one id per character, in
    ``3 .. vocab - 2``, between a begin id 1 and an end id ``vocab - 1``.

    >>> CharTokenizer(100)(text=["ab"], return_tensors="pt")["input_ids"].tolist()
    [[1, 3, 4, 99]]
    """

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab

    def __call__(self, text, return_tensors="pt"):
        ids = [[1] + [3 + (ord(ch) - ord("a")) % (self.vocab - 4) for ch in t] + [self.vocab - 1] for t in text]
        ids = torch.tensor(ids)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def tiny_clip_text_tower(vision_width: int = 32, seed: int = 0, context: int = 16):
    """A random CLIP text tower for CDPruner in tests (:class:`d2pruner.models.clip_text.CLIPTextTower`):
    text width 32, 2 layers, projection 16, a ``context``-token window (so long instructions are cut
    into segments), and an image-side norm + projection for ``vision_width``-wide features."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from d2pruner.models.clip_text import CLIPTextTower

    vocab = 100
    config = CLIPTextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=context, projection_dim=16,
                            bos_token_id=1, eos_token_id=vocab - 1, pad_token_id=0)
    with seeded(seed):
        text = CLIPTextModelWithProjection(config).eval()
        norm = torch.nn.LayerNorm(vision_width)
        projection = torch.nn.Linear(vision_width, 16, bias=False)
    return CLIPTextTower(text, CharTokenizer(vocab), norm, projection, model_id="tiny")
