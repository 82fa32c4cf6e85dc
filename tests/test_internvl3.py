"""InternVL3 (Qwen2 text model, biases on q/k/v) inside its tiny random twin: the family record is chosen by
the text model, and the same identity checks as the other families (tests/test_models.py) hold on CPU,
sdpa and eager, on a left-padded batch of two images of different tile grids (768 and 1280 tokens)."""

from __future__ import annotations

import pytest
import torch

from d2pruner import D2PrunerConfig
from d2pruner.models import attach as generic_attach
from d2pruner.models import internvl, tiny
from d2pruner.models.family import family_for_config, family_for_model, get_family
from model_inputs import dropped_positions, left_padded_batch, masked_reference_hooks

BATCH = [(3, 4), (6, 2)]  # text before/after each item's image; grids (1, 2) and (2, 2)


def test_the_family_is_chosen_by_the_text_model():
    v3, v25 = tiny.tiny_internvl3(), tiny.tiny_internvl()
    assert type(v3) is type(v25)  # the same transformers class
    assert family_for_model(v3).name == family_for_config(v3.config).name == "internvl3"
    assert family_for_model(v25).name == family_for_config(v25.config).name == "internvl"
    assert v3.config.text_config.model_type == "qwen2"
    assert v3.model.language_model.layers[0].self_attn.q_proj.bias.abs().max() > 0.1  # drawn, not zero
    with internvl.attach(v3, 0.5) as handle:
        assert handle.family.name == "internvl3"
    import copy

    other = copy.deepcopy(v3.config)
    other.text_config.model_type = "mistral"
    with pytest.raises(ValueError, match="'internvl' with a 'mistral' text model is not a supported family"):
        family_for_config(other)


def test_full_size_config_and_flops_dims():
    from d2pruner.flops import LMDims, paper_config

    family = get_family("internvl3")
    config = family.full_size_config("sdpa")
    assert config.text_config.model_type == "qwen2" and config.image_token_id == 151667
    dims = LMDims.from_config(paper_config(family.checkpoint))
    assert (dims.layers, dims.hidden, dims.intermediate, dims.heads, dims.kv_heads, dims.vocab) == \
        (28, 3584, 18944, 28, 4, 151674)
    assert LMDims.from_config(config) == dims


def test_prompt_is_internvl_2_5s_chat_layout_with_its_system_message():
    family = get_family("internvl3")
    processor = family.tiny_processor()
    text = family.prompt_text(processor, "What?")
    assert text == (f"<|im_start|>system\n{internvl.INTERNVL_SYSTEM}<|im_end|>\n<|im_start|>user\n<image>\nWhat?"
                    "<|im_end|>\n<|im_start|>assistant\n")
    assert text == get_family("internvl").prompt_text(processor, "What?")
    assert family.chat_turn_end == "<|im_end|>"


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_keeping_every_token_changes_nothing(attn):
    model = tiny.tiny_internvl3(attn_implementation=attn)
    batch, items = left_padded_batch("internvl", BATCH)
    with torch.no_grad():
        base = model(**batch).logits[:, -1]
        base_gen = model.generate(**batch, max_new_tokens=6, do_sample=False)
        with generic_attach(model, 1.0) as handle:
            handle.set_tile_grids(items.grids)
            pruned = model(**batch).logits[:, -1]
            pruned_gen = model.generate(**batch, max_new_tokens=6, do_sample=False)
    assert handle.family.name == "internvl3"
    assert [s.n_visual_after for s in handle.stats] == [s.n_visual_before for s in handle.stats] == items.n_visual
    torch.testing.assert_close(pruned, base, atol=1e-5, rtol=0)
    assert torch.equal(pruned_gen, base_gen)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_pruned_run_equals_masking_reference(attn):
    """Removing tokens at layer K == keeping them and masking their keys in layers >= K: prompt pass and
    every greedy decoding step, per-item budgets on a padded batch of different image sizes."""
    model = tiny.tiny_internvl3(attn_implementation=attn)
    batch, items = left_padded_batch("internvl", BATCH)
    k = D2PrunerConfig().prune_layer
    with torch.no_grad():
        with internvl.attach(model, [64, 0.1]) as handle:
            handle.set_tile_grids(items.grids)
            pruned = model(**batch).logits[:, -1]
            pruned_gen = model.generate(**batch, max_new_tokens=5, do_sample=False, output_logits=True,
                                        return_dict_in_generate=True)
        dropped = dropped_positions(batch["input_ids"], items.find_items(model), handle.stats)
        with masked_reference_hooks(model, k, dropped):
            masked = model(**batch).logits[:, -1]
            masked_gen = model.generate(**batch, max_new_tokens=5, do_sample=False, output_logits=True,
                                        return_dict_in_generate=True)
        unpruned = model(**batch).logits[:, -1]
    assert [s.n_visual_after for s in handle.stats] == [64, 128]
    torch.testing.assert_close(pruned, masked, atol=1e-5, rtol=0)
    assert (unpruned - pruned).abs().max() > 1e-3, "pruning changed nothing: nothing was tested"
    assert torch.equal(pruned_gen.sequences, masked_gen.sequences)
    for a, b in zip(pruned_gen.logits, masked_gen.logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_attention_row_equals_eager_output_attentions():
    """The row D2Pruner scores is computed from q/k with Qwen2's biases; eager attention weights agree."""
    from d2pruner.models.prior import attention_rows

    model = tiny.tiny_internvl3(attn_implementation="eager")
    batch, items = left_padded_batch("internvl", BATCH)
    with torch.no_grad():
        out = model(**batch, output_attentions=True)
    k = D2PrunerConfig().prune_layer
    want = out.attentions[k - 1][:, :, -1, :].mean(dim=1)
    find = items.find_items(model)
    for i, (row, _) in enumerate(attention_rows(model, batch, k, find)):
        torch.testing.assert_close(row.float(), want[i, find(batch["input_ids"])[i][0]], atol=1e-6, rtol=0)


def test_sdpa_and_eager_keep_the_same_tokens():
    kept = []
    for attn in ("sdpa", "eager"):
        model = tiny.tiny_internvl3(attn_implementation=attn)
        batch, items = left_padded_batch("internvl", BATCH)
        with internvl.attach(model, [64, 0.25]) as handle, torch.no_grad():
            handle.set_tile_grids(items.grids)
            model(**batch)
        kept.append([s.kept.tolist() for s in handle.stats])
    assert kept[0] == kept[1]


def test_load_model_reads_a_saved_internvl3_folder(tmp_path):
    from PIL import Image

    from d2pruner.models import loading

    family = get_family("internvl3")
    model, proc = family.tiny_model(), family.tiny_processor(max_tiles=4)
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    loaded, processor, name = loading.load_model(str(tmp_path), dtype=torch.float32)
    assert name == "internvl3"
    got = loading.build_inputs(processor, name, Image.new("RGB", (90, 60), (200, 30, 30)), "Where?", max_tiles=4)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**got).logits, model(**got).logits)
