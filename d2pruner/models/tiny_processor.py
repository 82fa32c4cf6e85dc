"""Processors for the tiny random models of :mod:`d2pruner.models.tiny`, built in code (no download).

They are transformers' own ``LlavaProcessor`` and ``InternVLProcessor`` (with the real image
processors: CLIP's resize/crop for LLaVA, GOT-OCR2's dynamic tiles for InternVL) around a
character-level tokenizer whose 128 ids match the tiny models' vocabulary: ``<pad>`` 0, ``<s>`` 1,
``</s>`` 2, ``<unk>`` 3, a few chat specials, printable ASCII and newline, and the image token 127
(:data:`d2pruner.models.tiny.IMAGE_TOKEN`). So the smoke runs of ``python -m reproduce`` go through
the same prompt building, padding and tiling code as real checkpoints.

>>> tok = tiny_tokenizer()
>>> ids = tok("Hi <image>").input_ids
>>> ids[-1] == IMAGE_TOKEN, tok.decode(ids)
(True, 'Hi <image>')
>>> proc = tiny_processor("llava")
>>> from PIL import Image
>>> batch = proc(images=[Image.new("RGB", (60, 40))], text=["USER: <image>\\nhi ASSISTANT:"], return_tensors="pt")
>>> int((batch["input_ids"] == IMAGE_TOKEN).sum()), tuple(batch["pixel_values"].shape)
(576, (1, 3, 48, 48))
"""

from __future__ import annotations

from d2pruner.models.tiny import IMAGE_TOKEN, PAD_TOKEN, VOCAB

__all__ = ["INTERNVL_TILE_PIXELS", "LLAVA_IMAGE_PIXELS", "tiny_processor", "tiny_tokenizer"]

LLAVA_IMAGE_PIXELS = 48   # tiny_llava's CLIP input side (patch 2 -> 24x24 tokens)
INTERNVL_TILE_PIXELS = 64  # tiny_internvl's tile side (patch 2, pixel shuffle 0.5 -> 16x16 tokens)
_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<img>", "</img>", "<video>", "<|im_start|>", "<|im_end|>"]
# InternVL-2.5's chat layout (system, user turn with the image first, open assistant turn) as a template
_INTERNVL_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


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


def tiny_processor(family: str, max_tiles: int = 6):
    """The processor of ``tiny_llava`` (``family="llava"``) or ``tiny_internvl`` (``"internvl"``).

    ``max_tiles`` is InternVL's dynamic-tiling limit (the real checkpoints use 12; 6 keeps smoke runs fast).
    """
    from transformers import CLIPImageProcessor, GotOcr2ImageProcessor, InternVLProcessor, LlavaProcessor

    tokenizer = tiny_tokenizer()
    if family == "llava":
        side = LLAVA_IMAGE_PIXELS
        images = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
        return LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=2,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1)
    if family == "internvl":
        side = INTERNVL_TILE_PIXELS
        images = GotOcr2ImageProcessor(size={"height": side, "width": side}, crop_to_patches=True, min_patches=1,
                                       max_patches=int(max_tiles), image_mean=[0.485, 0.456, 0.406],
                                       image_std=[0.229, 0.224, 0.225])
        from d2pruner.models.loading import image_only_internvl_processor

        return image_only_internvl_processor()(images, tokenizer, image_seq_length=256, chat_template=_INTERNVL_TEMPLATE)
    raise ValueError(f"unknown model family {family!r}; expected 'llava' or 'internvl'")
