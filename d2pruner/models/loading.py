"""Loading the paper's checkpoints from the local Hugging Face cache and building their official prompts.

Nothing here downloads: a checkpoint that is not in the local cache raises ``OSError`` naming the id
and how to provide it. The prompts follow the models' official evaluation protocols:

* LLaVA-1.5 (``vicuna_v1``): ``"{system} USER: <image>\\n{question} ASSISTANT:"``, the image padded to a
  square with the mean colour (122, 116, 104) before the processor (which would centre-crop);
* InternVL-2.5: the chat template with InternVL's own system message and dynamic tiles.
"""

from __future__ import annotations

import os

import torch

__all__ = ["CHECKPOINTS", "build_batch", "build_inputs", "prompt_text", "family_of", "image_only_internvl_processor",
           "load_model", "missing_checkpoint_message"]

#: The checkpoints of the paper's two models (InternVL: the transformers-native MPO conversion).
CHECKPOINTS = {"llava": "llava-hf/llava-1.5-7b-hf", "internvl": "OpenGVLab/InternVL2_5-8B-MPO-hf"}
LLAVA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                "The assistant gives helpful, detailed, and polite answers to the user's questions.")
LLAVA_PAD_COLOUR = (122, 116, 104)
INTERNVL_SYSTEM = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"


def family_of(config) -> str:
    """``"llava"`` or ``"internvl"`` from a transformers config."""
    kind = getattr(config, "model_type", "")
    if kind == "llava":
        return "llava"
    if kind == "internvl":
        return "internvl"
    raise ValueError(f"model_type {kind!r} is neither llava nor internvl")


def missing_checkpoint_message(model_id: str, revision: str | None = None) -> str:
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(os.environ.get("HF_HOME", "~/.cache/huggingface"), "hub")
    rev = f" (revision {revision})" if revision else ""
    return (f"checkpoint {model_id!r}{rev} is not in the local Hugging Face cache ({cache}). On a machine with network "
            f"access run `huggingface-cli download {model_id}` and copy the cache here, or pass a local folder.")


_IMAGE_ONLY_INTERNVL = None


def image_only_internvl_processor():
    """``InternVLProcessor`` without its video processor: the class (built on first use).

    transformers' InternVL processor also loads a video processor whose class needs torchvision,
    which this project does not install (see docs/evaluation.md); the image path is the same.
    ``from_pretrained`` on it reads a checkpoint's tokenizer, image processor, ``image_seq_length``
    and chat template, and ignores the video processor's files.
    """
    global _IMAGE_ONLY_INTERNVL
    if _IMAGE_ONLY_INTERNVL is None:
        from transformers import InternVLProcessor

        class ImageOnlyInternVLProcessor(InternVLProcessor):
            """``InternVLProcessor`` without its video processor (whose class check needs torchvision)."""

            @classmethod
            def get_attributes(cls):
                return ["image_processor", "tokenizer"]

            def __init__(self, image_processor, tokenizer, image_seq_length: int = 256, chat_template=None, **kwargs):
                super().__init__(image_processor, tokenizer, image_seq_length=image_seq_length,
                                 chat_template=chat_template, **kwargs)

        _IMAGE_ONLY_INTERNVL = ImageOnlyInternVLProcessor
    return _IMAGE_ONLY_INTERNVL


def load_model(model_id: str, *, revision: str | None = None, dtype: torch.dtype = torch.float16, device: str = "cpu",
               attn_implementation: str = "sdpa"):
    """``(model, processor, family)`` from the local cache (or a local folder) only; ``OSError`` naming
    what is missing. InternVL's processor is loaded without its video part
    (:func:`image_only_internvl_processor`)."""
    from transformers import AutoConfig, AutoProcessor, InternVLForConditionalGeneration, LlavaForConditionalGeneration

    try:
        config = AutoConfig.from_pretrained(model_id, revision=revision, local_files_only=True)
        family = family_of(config)
        cls = LlavaForConditionalGeneration if family == "llava" else InternVLForConditionalGeneration
        model = cls.from_pretrained(model_id, revision=revision, dtype=dtype, local_files_only=True,
                                    attn_implementation=attn_implementation).to(device).eval()
        loader = AutoProcessor if family == "llava" else image_only_internvl_processor()
        processor = loader.from_pretrained(model_id, revision=revision, local_files_only=True)
    except OSError as err:
        raise OSError(missing_checkpoint_message(model_id, revision)) from err
    if getattr(processor, "tokenizer", None) is not None:
        processor.tokenizer.padding_side = "left"  # pruning needs the last token last
    return model, processor, family


def _pad_to_square(image):
    from PIL import Image

    side = max(image.size)
    canvas = Image.new("RGB", (side, side), LLAVA_PAD_COLOUR)
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


def build_inputs(processor, family: str, image, question: str, max_tiles: int = 12, device: str | torch.device = "cpu") -> dict:
    """Model inputs for one image and one question in the model's official prompt format."""
    return build_batch(processor, family, [image], [question], max_tiles=max_tiles, device=device)


def prompt_text(processor, family: str, question: str) -> str:
    """The official prompt around ``question`` (with the model's image placeholder) for one image."""
    if family == "llava":
        return f"{LLAVA_SYSTEM} USER: <image>\n{question} ASSISTANT:"
    if family == "internvl":
        messages = [{"role": "system", "content": [{"type": "text", "text": INTERNVL_SYSTEM}]},
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    raise ValueError(f"unknown model family {family!r}")


def build_batch(processor, family: str, images, questions, max_tiles: int = 12, device: str | torch.device = "cpu") -> dict:
    """Model inputs for a batch of (image, question) pairs, one image each, padded on the left.

    LLaVA-1.5 images are padded to a square with the mean colour first (its official protocol);
    InternVL-2.5 images are cut into at most ``max_tiles`` tiles by the processor.
    """
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images for {len(questions)} questions; one image per question is expected")
    prompts = [prompt_text(processor, family, q) for q in questions]
    if family == "llava":
        batch = processor(images=[_pad_to_square(im.convert("RGB")) for im in images], text=prompts, padding=True,
                          return_tensors="pt")
    else:
        batch = processor(text=prompts, images=[im.convert("RGB") for im in images], padding=True, return_tensors="pt",
                          images_kwargs={"max_patches": max_tiles})
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
