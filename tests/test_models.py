"""D2Pruner inside tiny random LLaVA and InternVL models (real architectures, CPU).

Agreement figures are asserted with the tolerances named in each test; ``scripts/model_agreement.py``
prints the measured values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from d2pruner import D2PrunerConfig
from d2pruner.compat import CACHE_ARGUMENT
from d2pruner.models import internvl, llava, tiny
from d2pruner.models.prior import attention_rows
from model_inputs import FAMILIES, dropped_positions, left_padded_batch, masked_reference_hooks


def family_model(family, attn="sdpa"):
    return tiny.tiny_llava(attn_implementation=attn) if family == "llava" else tiny.tiny_internvl(attn_implementation=attn)


def attach(family, model, budget, grids=None, **kw):
    handle = (llava if family == "llava" else internvl).attach(model, budget, **kw)
    if family == "internvl" and grids is not None:
        handle.set_tile_grids(grids)
    return handle


# --- the attention row ------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_attention_row_equals_eager_output_attentions(family):
    model = family_model(family, "eager")
    batch, items = left_padded_batch(family, [(3, 4), (6, 2)])
    with torch.no_grad():
        out = model(**batch, output_attentions=True)
    k = D2PrunerConfig().prune_layer
    want = out.attentions[k - 1][:, :, -1, :].mean(dim=1)  # (B, L): last query, mean over heads
    find = items.find_items(model)
    rows = attention_rows(model, batch, k, find)
    for i, (row, _) in enumerate(rows):
        pos = find(batch["input_ids"])[i][0]
        torch.testing.assert_close(row.float(), want[i, pos], atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_sdpa_and_eager_keep_the_same_tokens(family):
    kept = []
    for attn in ("sdpa", "eager"):
        model = family_model(family, attn)
        batch, items = left_padded_batch(family, [(3, 4), (6, 2)])
        with attach(family, model, [64, 0.25], items.grids) as handle, torch.no_grad():
            model(**batch)
        kept.append([s.kept.tolist() for s in handle.stats])
    assert kept[0] == kept[1]


# --- what pruning does to the model -----------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_keeping_every_token_changes_nothing(family, attn):
    model = family_model(family, attn)
    batch, items = left_padded_batch(family, [(3, 4), (6, 2)])
    with torch.no_grad():
        base = model(**batch).logits[:, -1]
        base_gen = model.generate(**batch, max_new_tokens=6, do_sample=False)
        with attach(family, model, 1.0, items.grids) as handle:
            pruned = model(**batch).logits[:, -1]
            pruned_gen = model.generate(**batch, max_new_tokens=6, do_sample=False)
    assert [s.n_visual_after for s in handle.stats] == [s.n_visual_before for s in handle.stats]
    torch.testing.assert_close(pruned, base, atol=1e-5, rtol=0)
    assert torch.equal(pruned_gen, base_gen)


class _ForceImageTokenFirst:
    """A logits processor that makes the first generated token the image token's id."""

    def __init__(self, prompt_len: int):
        self.prompt_len = prompt_len

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] == self.prompt_len:
            scores = torch.full_like(scores, float("-inf"))
            scores[:, tiny.IMAGE_TOKEN] = 0.0
        return scores


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["d2pruner", "divprune"])
def test_a_generated_image_token_id_is_text_not_an_image(family, method):
    """A decoded token with the image token's id is embedded as text by transformers; the hooks must
    treat it so too (found by a README example whose tiny model generated it), at K and before the LLM."""
    from transformers import LogitsProcessorList

    model = family_model(family, "sdpa")
    batch, items = left_padded_batch(family, [(3, 4), (6, 2)])
    force = LogitsProcessorList([_ForceImageTokenFirst(batch["input_ids"].shape[1])])
    with torch.no_grad():
        base = model.generate(**batch, max_new_tokens=4, do_sample=False, logits_processor=force)
        with attach(family, model, 1.0, items.grids, method=method):
            kept_all = model.generate(**batch, max_new_tokens=4, do_sample=False, logits_processor=force)
        with attach(family, model, 0.25, items.grids, method=method) as handle:
            pruned = model.generate(**batch, max_new_tokens=4, do_sample=False, logits_processor=force)
    prompt = batch["input_ids"].shape[1]
    assert (base[:, prompt] == tiny.IMAGE_TOKEN).all() and (pruned[:, prompt] == tiny.IMAGE_TOKEN).all()
    assert torch.equal(kept_all, base)
    assert len(handle.stats) == 2  # one prompt pass; the decoded image-token id started no new one


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_pruned_run_equals_masking_reference(family, attn):
    """Removing tokens at layer K == keeping them but masking their keys in layers >= K, for the prompt
    pass and for every greedy decoding step."""
    model = family_model(family, attn)
    batch, items = left_padded_batch(family, [(3, 4), (6, 2)])
    k = D2PrunerConfig().prune_layer
    with torch.no_grad():
        with attach(family, model, [64, 0.1], items.grids) as handle:
            pruned = model(**batch).logits[:, -1]
            pruned_gen = model.generate(**batch, max_new_tokens=5, do_sample=False, output_logits=True,
                                        return_dict_in_generate=True)
        dropped = dropped_positions(batch["input_ids"], items.find_items(model), handle.stats)
        with masked_reference_hooks(model, k, dropped):
            masked = model(**batch).logits[:, -1]
            masked_gen = model.generate(**batch, max_new_tokens=5, do_sample=False, output_logits=True,
                                        return_dict_in_generate=True)
    torch.testing.assert_close(pruned, masked, atol=1e-5, rtol=0)
    with torch.no_grad():
        assert (model(**batch).logits[:, -1] - pruned).abs().max() > 1e-3, "pruning changed nothing: nothing was tested"
    assert torch.equal(pruned_gen.sequences, masked_gen.sequences)
    for a, b in zip(pruned_gen.logits, masked_gen.logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_equals_items_alone(family):
    model = family_model(family)
    spec = [(3, 4), (6, 2)]
    budgets = [64, 0.25]
    batch, items = left_padded_batch(family, spec)
    with torch.no_grad(), attach(family, model, budgets, items.grids) as handle:
        together = model(**batch).logits[:, -1]
        together_gen = model.generate(**batch, max_new_tokens=5, do_sample=False)
        kept = [s.kept.tolist() for s in handle.stats]
        for i in range(2):
            one, one_items = left_padded_batch(family, [spec[i]], item_offset=i)
            handle.budget = budgets[i]
            if family == "internvl":
                handle.set_tile_grids(one_items.grids)
            alone = model(**one).logits[:, -1]
            assert handle.stats[0].kept.tolist() == kept[i]
            # 1e-4: the unpruned tiny models already differ by up to ~3.5e-5 between batched and alone (padding)
            torch.testing.assert_close(alone[0], together[i], atol=1e-4, rtol=0)
            alone_gen = model.generate(**one, max_new_tokens=5, do_sample=False)
            assert alone_gen[0, -5:].tolist() == together_gen[i, -5:].tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_exact_budgets_and_statistics(family):
    model = family_model(family)
    batch, items = left_padded_batch(family, [(3, 4), (6, 2)])
    with torch.no_grad(), attach(family, model, [17, 0.3], items.grids) as handle:
        model(**batch)
    n = [s.n_visual_before for s in handle.stats]
    assert n == items.n_visual
    assert [s.n_visual_after for s in handle.stats] == [17, max(1, int(np.floor(0.3 * n[1] + 0.5)))]
    for s in handle.stats:
        assert len(s.kept) == s.n_visual_after and np.all(np.diff(s.kept) > 0) and s.kept.max() < s.n_visual_before
        assert sum(s.counts().values()) == s.n_visual_after
        assert s.selection_ms > 0 and s.debiased is False and s.method == "d2pruner"


@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_generation_runs_with_pruning(family):
    model = family_model(family)
    batch, items = left_padded_batch(family, [(3, 4), (6, 2)])
    torch.manual_seed(0)
    with torch.no_grad(), attach(family, model, [32, 0.2], items.grids):
        out = model.generate(**batch, max_new_tokens=4, do_sample=True, top_k=20)
    assert out.shape == (2, batch["input_ids"].shape[1] + 4)


@pytest.mark.parametrize("family", FAMILIES)
def test_removed_hooks_leave_the_model_as_before(family):
    model = family_model(family)
    batch, items = left_padded_batch(family, [(3, 4), (6, 2)])
    with torch.no_grad():
        before = model(**batch).logits
        handle = attach(family, model, 0.1, items.grids)
        assert model(**batch).logits.shape[1] < before.shape[1]  # pruned: fewer positions
        handle.remove()
        after = model(**batch).logits
    assert torch.equal(before, after)


def test_text_only_item_in_a_batch_is_left_alone():
    model = family_model("llava")
    batch, items = left_padded_batch("llava", [(3, 4), (6, 2)])
    batch["input_ids"][1][batch["input_ids"][1] == tiny.IMAGE_TOKEN] = 5  # item 1 has no image now
    batch["pixel_values"] = batch["pixel_values"][:1]
    with torch.no_grad(), llava.attach(model, 32) as handle:
        model(**batch)
    assert [s.n_visual_before for s in handle.stats] == [576, 0]


# --- refusals ---------------------------------------------------------------------------------------

def test_static_cache_is_refused():
    model = family_model("llava")
    batch, _ = left_padded_batch("llava", [(3, 4)])
    with llava.attach(model, 64), pytest.raises(ValueError, match="static/compileable cache"):
        model.generate(**batch, max_new_tokens=2, cache_implementation="static")


def test_right_padding_is_refused():
    model = family_model("llava")
    batch, _ = left_padded_batch("llava", [(3, 4), (6, 2)])
    batch["attention_mask"] = batch["attention_mask"].flip(1)
    with llava.attach(model, 64), pytest.raises(ValueError, match="right padding is not supported"):
        model(**batch)


def test_internvl_needs_the_tile_grid():
    model = family_model("internvl")
    batch, _ = left_padded_batch("internvl", [(3, 4)], grids=[(1, 2)])
    with internvl.attach(model, 0.1), pytest.raises(ValueError, match="tile grid is unknown"):
        model(**batch)
    with internvl.attach(model, 0.1) as handle, pytest.raises(ValueError, match="a 2x2 tile grid gives 1280"):
        handle.set_tile_grids([(2, 2)])
        model(**batch)


def test_bad_configuration_is_refused():
    model = family_model("llava")
    with pytest.raises(ValueError, match=r"prune_layer=4 must lie in \[0, 3\]"):
        llava.attach(model, 64, config=D2PrunerConfig(prune_layer=4))
    with pytest.raises(ValueError, match="expects a LlavaForConditionalGeneration"):
        llava.attach(family_model("internvl"), 64)
    model.config.text_config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="'flash_attention_2' is not supported"):
        llava.attach(model, 64)
    model = family_model("llava")
    batch, _ = left_padded_batch("llava", [(3, 4)])
    with llava.attach(model, 700), pytest.raises(ValueError, match="n_keep=700 exceeds the 576 visual tokens of item 0"):
        model(**batch)
    with pytest.raises(ValueError, match="the prior has 10 values; this model needs 576"):
        llava.attach(model, 64, prior=np.ones(10))


def test_internvl_tile_grid_rule():
    assert internvl.tile_grid((480, 640)) == (3, 4) and internvl.tile_grid((480, 640), max_tiles=6) == (2, 3)
    assert internvl.tile_grid((100, 100)) == (1, 1)


def test_tiny_models_are_seeded_without_touching_the_global_random_state():
    state = torch.random.get_rng_state()
    a, b = tiny.tiny_llava(seed=3), tiny.tiny_llava(seed=3)
    tiny.tiny_internvl()
    tiny.tiny_clip_text_tower()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(tiny.tiny_llava(seed=4).lm_head.weight, a.lm_head.weight)


@pytest.mark.parametrize("family", FAMILIES)
def test_load_model_reads_a_saved_checkpoint_folder_without_torchvision(family, tmp_path):
    """The real loading path on a checkpoint folder (tiny model and processor saved by transformers):
    InternVL's processor comes without its video part, whose class needs torchvision, and still files
    the chat template, ``image_seq_length`` and the tiles; a video processor's config beside it is ignored."""
    from PIL import Image

    from d2pruner.models import loading, tiny_processor

    model = family_model(family)
    proc = tiny_processor.tiny_processor(family, max_tiles=4)
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    if family == "internvl":  # as the -hf conversion ships it: transformers' class, a video processor beside
        import json

        config = json.loads((tmp_path / "processor_config.json").read_text())
        (tmp_path / "processor_config.json").write_text(json.dumps({**config, "processor_class": "InternVLProcessor"}))
        (tmp_path / "video_preprocessor_config.json").write_text('{"video_processor_type": "InternVLVideoProcessor"}')
    loaded, processor, fam = loading.load_model(str(tmp_path), dtype=torch.float32)
    assert fam == family and processor.tokenizer.padding_side == "left"
    image = Image.new("RGB", (90, 60), (200, 30, 30))
    got = loading.build_inputs(processor, family, image, "Where?", max_tiles=4)
    want = loading.build_inputs(proc, family, image, "Where?", max_tiles=4)
    assert torch.equal(got["input_ids"], want["input_ids"]) and torch.equal(got["pixel_values"], want["pixel_values"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**got).logits, model(**want).logits)
    with pytest.raises(OSError, match="is not in the local Hugging Face cache"):
        loading.load_model(str(tmp_path / "absent"))


@pytest.mark.parametrize("family", FAMILIES)
def test_an_image_after_a_non_empty_cache_is_refused_not_left_unpruned(family):
    """generate() hands the prompt pass pre-encoded images (``mm_encoder_outputs``), not pixel values:
    an image continuing a cached prefix must still be seen, and refused."""
    from transformers import DynamicCache

    model = family_model(family)
    batch, items = left_padded_batch(family, [(3, 4)])
    prefix = batch["input_ids"][:, :2]
    cache = DynamicCache(config=model.config.get_text_config())
    with torch.no_grad():
        model(input_ids=prefix, use_cache=True, **{CACHE_ARGUMENT: cache})
        with attach(family, model, 40, items.grids, method="fastv") as handle, \
                pytest.raises(ValueError, match="image tokens after a non-empty KV cache are not supported"):
            model.generate(**batch, max_new_tokens=2, do_sample=False, **{CACHE_ARGUMENT: cache})
    assert handle.stats == []
