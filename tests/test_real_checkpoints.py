"""The paper's checkpoints, when they are in the local Hugging Face cache (skipped otherwise).

Run on a GPU machine with the weights cached::

    HF_HUB_OFFLINE=1 python -m pytest -m "slow" tests/test_real_checkpoints.py
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from d2pruner.models import attach
from d2pruner.models.family import family_names, get_family
from d2pruner.models.loading import build_inputs, load_model

pytestmark = [pytest.mark.slow, pytest.mark.gpu]


def cached(model_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(model_id, "config.json"), str)


def photo():
    """A deterministic test picture (no file or network needed)."""
    from PIL import Image

    y, x = np.mgrid[0:480, 0:640]
    rgb = np.stack([(x * 255 // 640), (y * 255 // 480), ((x + y) % 256)], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb)


@pytest.fixture(scope="module", params=family_names())
def loaded(request):
    model_id = get_family(request.param).checkpoint
    if not cached(model_id):
        pytest.skip(f"{model_id} is not in the local Hugging Face cache")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, processor, family = load_model(model_id, dtype=torch.float16 if device == "cuda" else torch.float32, device=device)
    return model, processor, family


def test_real_checkpoint_prunes_generates_and_keeps_everything_exactly(loaded):
    model, processor, family = loaded
    image = photo()
    inputs = build_inputs(processor, family, image, "What is in the image?", max_tiles=6, device=model.device)
    fam = get_family(family)
    with torch.no_grad():
        base = model(**inputs).logits[:, -1].float()
        with attach(model, 1.0) as handle:
            handle.set_item_hints(fam.item_hints(processor, [image], 6))
            keep_all = model(**inputs).logits[:, -1].float()
        with attach(model, 0.1) as handle:
            handle.set_item_hints(fam.item_hints(processor, [image], 6))
            out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert (keep_all - base).abs().max().item() < 1e-2
    stats = handle.stats[0]
    want = max(1, int(np.floor(0.1 * stats.n_visual_before + 0.5)))
    assert stats.n_visual_after == want and out.shape[1] == inputs["input_ids"].shape[1] + 8
