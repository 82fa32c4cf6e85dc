"""Loading checkpoints from the local Hugging Face cache and building their official prompts, for any
registered model family (:mod:`d2pruner.models.family`).

Nothing here downloads: a checkpoint that is not in the local cache raises ``OSError`` naming the id
and how to provide it. The prompts follow each family's official evaluation protocol (the family
file says which: LLaVA-1.5's ``vicuna_v1`` with images padded to a square, InternVL-2.5's chat
template with dynamic tiles, ...). ``family`` arguments take a family name or record.
"""

from __future__ import annotations

import os

import torch

from d2pruner.models.family import family_for_config, get_family

__all__ = ["build_batch", "build_inputs", "family_of", "load_model", "missing_checkpoint_message",
           "prompt_text"]


def _family(family):
    return get_family(family) if isinstance(family, str) else family


def family_of(config) -> str:
    """The family name of a transformers config (by its ``model_type``)."""
    return family_for_config(config).name


def missing_checkpoint_message(model_id: str, revision: str | None = None) -> str:
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(os.environ.get("HF_HOME", "~/.cache/huggingface"), "hub")
    rev = f" (revision {revision})" if revision else ""
    return (f"checkpoint {model_id!r}{rev} is not in the local Hugging Face cache ({cache}). On a machine with network "
            f"access run `huggingface-cli download {model_id}` and copy the cache here, or pass a local folder.")


def device_problem(device: str) -> str | None:
    """Why this machine cannot run on ``device`` (CUDA asked for and none available; a GPU index beyond
    the visible ones), naming it; None when it can.

    >>> device_problem("cpu") is None
    True
    >>> torch.cuda.is_available() or "CUDA is not available" in device_problem("cuda")
    True
    """
    device = str(device)
    if not device.startswith("cuda"):
        return None
    if not torch.cuda.is_available():
        build = "built without CUDA" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no GPU visible"
        return (f"device {device!r}: CUDA is not available on this machine (torch {torch.__version__}, {build}); "
                "use device 'cpu'")
    index = device.partition(":")[2]
    if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
        return (f"device {device!r}: this machine has {torch.cuda.device_count()} visible GPU(s), "
                f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return None


def load_model(model_id: str, *, revision: str | None = None, dtype: torch.dtype = torch.float16, device: str = "cpu",
               attn_implementation: str = "sdpa"):
    """``(model, processor, family name)`` from the local cache (or a local folder) only; ``OSError``
    naming what is missing. The processor is the family's (InternVL's without its video part)."""
    from transformers import AutoConfig

    if (why := device_problem(device)) is not None:
        raise ValueError(why)
    try:
        config = AutoConfig.from_pretrained(model_id, revision=revision, local_files_only=True)
        family = family_for_config(config)
        model = family.model_classes()[0].from_pretrained(model_id, revision=revision, dtype=dtype, local_files_only=True,
                                                          attn_implementation=attn_implementation).to(device).eval()
        processor = family.load_processor(model_id, revision)
    except OSError as err:
        raise OSError(missing_checkpoint_message(model_id, revision)) from err
    if getattr(processor, "tokenizer", None) is not None:
        processor.tokenizer.padding_side = "left"  # pruning needs the last token last
    return model, processor, family.name


def prompt_text(processor, family, question: str) -> str:
    """The official prompt around ``question`` (with the model's image placeholder) for one image."""
    return _family(family).prompt_text(processor, question)


def build_inputs(processor, family, image, question: str, max_tiles: int = 12, device: str | torch.device = "cpu") -> dict:
    """Model inputs for one image and one question in the model's official prompt format."""
    return build_batch(processor, family, [image], [question], max_tiles=max_tiles, device=device)


def build_batch(processor, family, images, questions, max_tiles: int = 12, device: str | torch.device = "cpu") -> dict:
    """Model inputs for a batch of (image, question) pairs, one image each, padded on the left, in the
    family's official format (LLaVA-1.5: images padded to a square with the mean colour first;
    InternVL-2.5: cut into at most ``max_tiles`` tiles by the processor)."""
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images for {len(questions)} questions; one image per question is expected")
    batch = _family(family).build_batch(processor, images, questions, max_tiles)
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
