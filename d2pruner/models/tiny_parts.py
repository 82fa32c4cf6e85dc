"""The building blocks every tiny random model shares (family files build their twins from these).

The vocabulary (128 ids: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, ``<unk>`` 3, a few chat specials,
printable ASCII and newline, the image token 127), the 4-layer Llama text model, seeded construction,
and the character-level tokenizer. Users reach the tiny models through :mod:`d2pruner.models.tiny`
and :mod:`d2pruner.models.tiny_processor`.

>>> tok = tiny_tokenizer()
>>> ids = tok("Hi <image>").input_ids
>>> ids[-1] == IMAGE_TOKEN, tok.decode(ids)
(True, 'Hi <image>')
"""

from __future__ import annotations

import torch

__all__ = ["IMAGE_TOKEN", "PAD_TOKEN", "VOCAB", "build", "seeded", "text_config", "tiny_tokenizer"]

VOCAB = 128
IMAGE_TOKEN = 127
PAD_TOKEN = 0


def seeded(seed: int):
    """Weights drawn from ``seed`` without touching the caller's global random state."""
    import contextlib

    @contextlib.contextmanager
    def scope():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    return scope()


def text_config(attn_implementation: str):
    """The tiny Llama text model every tiny family shares: 4 layers, width 64, 4 heads, 2 KV heads (GQA)."""
    from transformers import LlamaConfig

    # initializer_range 0.2: large enough that greedy generations are not degenerate
    return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=VOCAB, initializer_range=0.2, pad_token_id=PAD_TOKEN,
                       bos_token_id=1, eos_token_id=2, max_position_embeddings=8192,
                       attn_implementation=attn_implementation)


def build(model_class, config, seed: int, dtype: torch.dtype):
    """``model_class(config)`` with weights drawn from ``seed``, in ``dtype``, in eval mode."""
    with seeded(seed):
        return model_class(config).to(dtype).eval()


_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<img>", "</img>", "<video>", "<|im_start|>", "<|im_end|>"]


def tiny_tokenizer():
    """A character-level ``PreTrainedTokenizerFast`` over the tiny models' 128-id vocabulary, padding left."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = _SPECIALS + [chr(c) for c in range(32, 127)] + ["\n"]
    assert tokens[PAD_TOKEN] == "<pad>" and len(tokens) < IMAGE_TOKEN < VOCAB
    vocab = {t: i for i, t in enumerate(tokens)}
    vocab["<image>"] = IMAGE_TOKEN
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        padding_side="left",
        extra_special_tokens={"image_token": "<image>", "start_image_token": "<img>", "end_image_token": "</img>",
                              "context_image_token": "<image>", "video_token": "<video>"})
