"""Tiny random LLaVA and InternVL models built in code, for tests, notebooks and smoke runs.

They have the real architectures and token geometry (LLaVA: a 24x24 = 576-token grid; InternVL: 256
tokens per tile after pixel shuffle) with widths small enough to run in milliseconds on a CPU.

>>> tiny_llava().model.language_model.config.num_hidden_layers
4
"""

from __future__ import annotations

import torch

__all__ = ["IMAGE_TOKEN", "PAD_TOKEN", "VOCAB", "CharTokenizer", "tiny_clip_text_tower", "tiny_internvl", "tiny_llava"]

VOCAB = 128
IMAGE_TOKEN = 127
PAD_TOKEN = 0


def _seeded(seed: int):
    """Weights drawn from ``seed`` without touching the caller's global random state."""
    import contextlib

    @contextlib.contextmanager
    def scope():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    return scope()


def _text_config(attn_implementation: str):
    from transformers import LlamaConfig

    # initializer_range 0.2: large enough that greedy generations are not degenerate
    return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=VOCAB, initializer_range=0.2, pad_token_id=PAD_TOKEN,
                       bos_token_id=1, eos_token_id=2, max_position_embeddings=8192,
                       attn_implementation=attn_implementation)


def tiny_llava(seed: int = 0, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32):
    """A random ``LlavaForConditionalGeneration``: CLIP tower 48 px / patch 2 (24x24 tokens), Llama text
    model with 4 layers, 4 heads, 2 KV heads (GQA)."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(image_size=48, patch_size=2, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, projection_dim=32)
    config = LlavaConfig(vision_config=vision, text_config=_text_config(attn_implementation), image_token_id=IMAGE_TOKEN,
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         attn_implementation=attn_implementation)
    with _seeded(seed):
        return LlavaForConditionalGeneration(config).to(dtype).eval()


def tiny_internvl(seed: int = 0, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32):
    """A random ``InternVLForConditionalGeneration``: 64 px tiles, patch 2, pixel shuffle 0.5 (256 tokens
    per tile), Llama text model as in the InternVL-2.5 -hf conversion."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLVisionConfig

    vision = InternVLVisionConfig(image_size=64, patch_size=2, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=2)
    config = InternVLConfig(vision_config=vision, text_config=_text_config(attn_implementation), image_token_id=IMAGE_TOKEN,
                            downsample_ratio=0.5, attn_implementation=attn_implementation)
    with _seeded(seed):
        return InternVLForConditionalGeneration(config).to(dtype).eval()


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
    with _seeded(seed):
        text = CLIPTextModelWithProjection(config).eval()
        norm = torch.nn.LayerNorm(vision_width)
        projection = torch.nn.Linear(vision_width, 16, bias=False)
    return CLIPTextTower(text, CharTokenizer(vocab), norm, projection, model_id="tiny")
