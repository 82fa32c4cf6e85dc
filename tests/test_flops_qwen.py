"""Qwen2.5-VL and Qwen3-VL FLOPs: the shipped full-size configs (parameter counts), the vision tower
by hand and against torch's FLOP counter on the tiny twins, and the efficiency tables' Qwen rows."""

from __future__ import annotations

import pytest
import torch

from d2pruner.flops import (CONVENTIONS, FASTV, Convention, LMDims, paper_config, prefill_flops, qwen_vision_flops,
                            qwen_vision_segments)
from d2pruner.models.family import get_family

#: Parameters of the checkpoints (published 8.29B and 8.77B), as the shipped configs' ``_source`` states.
PARAMETERS = {"qwen2_5_vl": 8_292_166_656, "qwen3_vl": 8_767_123_696}


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_shipped_config_builds_the_published_model(name):
    family = get_family(name)
    config = family.full_size_config("sdpa")
    with torch.device("meta"):
        model = family.model_classes()[0](config)
    count = sum(p.numel() for p in model.parameters())
    assert count == PARAMETERS[name]
    assert f"{count:,}" in family.shipped_config()["_source"]
    assert not config.tie_word_embeddings and config.text_config.rope_parameters["rope_type"] == "default"


def test_text_dimensions_of_the_shipped_configs():
    q25 = LMDims.from_config(paper_config("Qwen/Qwen2.5-VL-7B-Instruct"))
    q3 = LMDims.from_config(get_family("qwen3_vl").full_size_config("sdpa"))  # a transformers config works too
    assert q25 == LMDims(layers=28, hidden=3584, intermediate=18944, heads=28, kv_heads=4, head_dim=128, vocab=152064)
    assert q3 == LMDims(layers=36, hidden=4096, intermediate=12288, heads=32, kv_heads=8, head_dim=128, vocab=151936)


QWEN25_TINY = {"model_type": "qwen2_5_vl", "depth": 2, "hidden_size": 4, "intermediate_size": 6, "patch_size": 2,
               "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3, "window_size": 8,
               "fullatt_block_indexes": [1], "out_hidden_size": 5}
QWEN3_TINY = {"model_type": "qwen3_vl_vision", "depth": 3, "hidden_size": 4, "intermediate_size": 6, "patch_size": 2,
              "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3, "out_hidden_size": 5,
              "deepstack_visual_indexes": [0, 2], "num_position_embeddings": 16}


def test_qwen25_vision_by_hand():
    # grid 1 x 6 x 4 patches: 24 patches, 3 x 2 merged tokens; windows of 8 px = 2 merged tokens a side:
    # rows 2 + 1, one column of 2 -> windows of 4 and 2 merged tokens = 16 and 8 patches
    grid = (1, 6, 4)
    assert qwen_vision_segments(QWEN25_TINY, grid) == ([24], [16, 8])
    n, d, m = 24, 4, 6
    embed = n * (3 * 2 * 2 * 2) * d
    projections = 2 * 4 * n * d * d
    attention = 2 * d * 24 ** 2 + 2 * d * (16 ** 2 + 8 ** 2)  # block 1 full, block 0 windowed
    mlp = 2 * 3 * n * d * m  # SiLU-gated: gate, up, down
    merger = (n // 4) * (16 * 16 + 16 * 5)  # 4 patches of width 4 -> 16 -> 16 -> 5
    parts = qwen_vision_flops(QWEN25_TINY, grid, parts=True)
    assert parts == {"patch_embed": 2 * embed, "projections": 2 * projections, "attention": 2 * attention,
                     "mlp": 2 * mlp, "mergers": 2 * merger, "total": 2 * (embed + projections + attention + mlp + merger)}
    assert parts["total"] == 36032
    assert qwen_vision_flops(QWEN25_TINY, grid, FASTV) == 18016  # multiply-adds
    assert qwen_vision_flops(QWEN25_TINY, grid, CONVENTIONS["linear-only"]) == 2 * (18016 - attention)
    # two images, or one as a tensor like the processor's image_grid_thw, add up
    two = qwen_vision_flops(QWEN25_TINY, [(1, 6, 4), (1, 4, 4)])
    assert two == 36032 + qwen_vision_flops(QWEN25_TINY, torch.tensor([[1, 4, 4]]))


def test_qwen3_vision_by_hand():
    # a 2-frame video slice pair 2 x 4 x 4: 32 patches, full attention within each frame (16 patches)
    grid = (2, 4, 4)
    assert qwen_vision_segments(QWEN3_TINY, grid) == ([16, 16], [])
    n, d, m = 32, 4, 6
    embed = n * 24 * d
    projections = 3 * 4 * n * d * d
    attention = 3 * 2 * d * (16 ** 2 + 16 ** 2)
    mlp = 3 * 2 * n * d * m  # two matrices
    mergers = (1 + 2) * (n // 4) * (16 * 16 + 16 * 5)  # the merger and 2 DeepStack mergers
    assert qwen_vision_flops(QWEN3_TINY, grid) == 2 * (embed + projections + attention + mlp + mergers) == 68352


def test_qwen_vision_refuses_what_it_cannot_count():
    with pytest.raises(ValueError, match="counts Qwen2.5-VL and Qwen3-VL"):
        qwen_vision_flops({**QWEN3_TINY, "model_type": "clip_vision_model"}, (1, 4, 4))
    with pytest.raises(ValueError, match="multiples of spatial_merge_size 2"):
        qwen_vision_flops(QWEN3_TINY, (1, 4, 5))
    with pytest.raises(ValueError, match="positive sides"):
        qwen_vision_flops(QWEN3_TINY, (0, 4, 4))


@pytest.mark.parametrize("name,grids", [("qwen2_5_vl", [(1, 6, 10), (1, 12, 8)]), ("qwen3_vl", [(1, 6, 10), (1, 4, 4)])])
def test_counts_equal_torch_flop_counter_on_the_tiny_twin(name, grids):
    """Every matmul of a real forward (eager attention, so QK^T and AV are counted as matmuls): the
    vision tower equals qwen_vision_flops, the language model prefill_flops ('exact': full n x n
    attention, as eager computes it), the LM head one position's logits."""
    from torch.utils.flop_counter import FlopCounterMode

    from d2pruner.models.qwen_vl import tiny_inputs

    model = get_family(name).tiny_model(attn_implementation="eager").eval()
    inputs = tiny_inputs(model, images=grids)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(**inputs, logits_to_keep=1)
    counts = {k.split(".", 1)[-1]: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    dims = LMDims.from_config(model.config)
    n_visual = sum(t * h * w // 4 for t, h, w in grids)
    n_text = inputs["input_ids"].shape[1] - n_visual
    assert counts["model.visual"] == qwen_vision_flops(model.config.vision_config.to_dict(), grids)
    assert counts["model.language_model"] == prefill_flops(dims, n_text, [(0, n_visual)])
    head = Convention("head", lm_head=True)
    assert counter.get_total_flops() == (qwen_vision_flops(model.config.vision_config.to_dict(), grids)
                                         + prefill_flops(dims, n_text, [(0, n_visual)], head))
