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

from d2pruner.models.tiny_parts import IMAGE_TOKEN, tiny_tokenizer

__all__ = ["tiny_processor", "tiny_tokenizer"]


def tiny_processor(family: str, max_tiles: int = 6):
    """The processor of ``tiny_<family>`` (:meth:`d2pruner.models.family.ModelFamily.tiny_processor`):
    the family's own transformers processor around :func:`tiny_tokenizer`. ``max_tiles`` is a tiling
    limit for families that tile (InternVL; the real checkpoints use 12, 6 keeps smoke runs fast)."""
    from d2pruner.models.family import get_family

    return get_family(family).tiny_processor(max_tiles=max_tiles)
