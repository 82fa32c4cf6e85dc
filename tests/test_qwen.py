"""Qwen2.5-VL and Qwen3-VL on their tiny twins: identity when keeping everything, equality with an
independent masking reference (prompt pass and greedy decoding) for images, two images, video and
left-padded batches of different image sizes, M-RoPE attention rows, DeepStack following the kept
tokens, exact budgets, every baseline run or refused, and the resampled prior."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from d2pruner import D2PrunerConfig
from d2pruner.methods import get_method, method_names
from d2pruner.models import qwen_vl
from d2pruner.models.prior import attention_rows
from model_inputs import dropped_positions, masked_reference_hooks
from qwen_inputs import PROMPTS, QWEN_FAMILIES, find_items, left_padded, prompt, qwen_model

K = D2PrunerConfig().prune_layer


def _batch(model, names, seed=0):
    return left_padded([prompt(model, n, seed=seed + i, before=3 + 2 * i) for i, n in enumerate(names)])


# --- layout -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", QWEN_FAMILIES)
@pytest.mark.parametrize("name, views, n", [("image", 1, 24), ("two_images", 2, 48), ("video", 3, 48),
                                            ("image_and_video", 3, 96)])
def test_each_image_and_frame_group_is_one_view(family, name, views, n):
    model = qwen_model(family)
    batch = prompt(model, name)
    (pos, layout), = find_items(model, batch)(batch["input_ids"])
    assert len(pos) == len(layout) == n and layout.n_views == views
    ids = batch["input_ids"][0, pos]
    assert bool(((ids == model.config.image_token_id) | (ids == model.config.video_token_id)).all())
    images, videos = PROMPTS[name]
    sizes = [(h // 2, w // 2) for _, h, w in images] + [(h // 2, w // 2) for t, h, w in videos for _ in range(t)]
    for v, (rows, cols) in enumerate(sizes):
        sel = layout.view == v
        assert (int(layout.row[sel].max()) + 1, int(layout.col[sel].max()) + 1, int(sel.sum())) == (rows, cols, rows * cols)


def test_grids_that_do_not_match_the_tokens_are_refused_by_name():
    model = qwen_model("qwen2_5_vl")
    batch = prompt(model, "image")
    with pytest.raises(ValueError, match=r"grid of 1 x 6 x 6 tokens does not match the run of image tokens"):
        qwen_vl.QWEN2_5_VL.items(model, batch["input_ids"], None, {"image_grid_thw": torch.tensor([[1, 12, 12]])})
    with pytest.raises(ValueError, match="image_grid_thw missing"):
        qwen_vl.QWEN2_5_VL.items(model, batch["input_ids"], None, {})


# --- the attention row (M-RoPE through the layer's own rotary tables) -------------------------------

@pytest.mark.parametrize("family", QWEN_FAMILIES)
def test_attention_row_equals_eager_output_attentions(family):
    model = qwen_model(family, "eager")
    batch = _batch(model, ["image_and_video", "two_images"])
    with torch.no_grad():
        out = model(**batch, output_attentions=True)
    want = out.attentions[K - 1][:, :, -1, :].mean(dim=1)  # (B, L)
    find = find_items(model, batch)
    rows = attention_rows(model, batch, K, lambda ids: find(ids))
    for i, (row, _) in enumerate(rows):
        pos = find(batch["input_ids"])[i][0]
        torch.testing.assert_close(row.float(), want[i, pos], atol=1e-6, rtol=0)


# --- identity and the masking reference -------------------------------------------------------------

@pytest.mark.parametrize("family", QWEN_FAMILIES)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("method", ["d2pruner", "divprune"])
def test_keeping_every_token_changes_nothing(family, attn, method):
    model = qwen_model(family, attn)
    batch = _batch(model, ["image_and_video", "two_images"])
    with torch.no_grad():
        base = model(**batch).logits
        base_gen = model.generate(**batch, max_new_tokens=5, do_sample=False)
        with qwen_vl.attach(model, 1.0, method=method) as handle:
            kept = model(**batch).logits
            kept_gen = model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert [s.n_visual_after for s in handle.stats] == [96, 48]
    assert (kept - base).abs().max().item() == 0.0
    assert torch.equal(kept_gen, base_gen)


@pytest.mark.parametrize("family", QWEN_FAMILIES)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("names", [["image"], ["two_images"], ["video"], ["image_and_video", "two_images"],
                                   ["image", "video"]])
@pytest.mark.parametrize("method, layer", [("d2pruner", K), ("divprune", 0)])
def test_pruned_run_equals_masking_reference(family, attn, names, method, layer):
    """Removing tokens at layer K (or before the LLM) == keeping them but masking their keys from that
    layer on, for the prompt pass and five greedy decoding steps; positions stay the originals."""
    if attn == "eager" and len(names) == 1 and names[0] != "video":
        pytest.skip("eager is covered by the batches and the video")
    model = qwen_model(family, attn)
    batch = _batch(model, names)
    with torch.no_grad():
        with qwen_vl.attach(model, 0.25, method=method) as handle:
            pruned = model(**batch).logits[:, -1]
            pruned_gen = model.generate(**batch, max_new_tokens=5, do_sample=False, output_logits=True,
                                        return_dict_in_generate=True)
        dropped = dropped_positions(batch["input_ids"], find_items(model, batch), handle.stats)
        with masked_reference_hooks(model, layer, dropped):
            masked = model(**batch).logits[:, -1]
            masked_gen = model.generate(**batch, max_new_tokens=5, do_sample=False, output_logits=True,
                                        return_dict_in_generate=True)
        full = model(**batch).logits[:, -1]
    assert handle.prune_layer == layer
    torch.testing.assert_close(pruned, masked, atol=1e-4, rtol=0)
    assert (full - pruned).abs().max() > 1e-3, "pruning changed nothing: nothing was tested"
    assert torch.equal(pruned_gen.sequences, masked_gen.sequences)
    for a, b in zip(pruned_gen.logits, masked_gen.logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", QWEN_FAMILIES)
def test_decoding_without_a_mask_after_pruning_before_the_llm_continues_from_the_original_positions(family):
    """Step by step without an attention mask: the model would count the shortened cache; the handle
    hands it the original length, so the steps equal the masking reference's."""
    from transformers import DynamicCache

    model = qwen_model(family)
    batch = prompt(model, "image_and_video")
    batch.pop("attention_mask")

    def run(ctx):
        cache, ids, logits = DynamicCache(config=model.config.get_text_config()), batch["input_ids"], []
        with ctx, torch.no_grad():
            out = model(**batch, past_key_values=cache, use_cache=True)
            for _ in range(3):
                logits.append(out.logits[:, -1])
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                ids = torch.cat([ids, nxt], dim=1)
                out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
        return logits

    handle = qwen_vl.attach(model, 0.3, method="divprune")
    pruned = run(handle)
    dropped = dropped_positions(batch["input_ids"], find_items(model, batch), handle.stats)
    masked = run(masked_reference_hooks(model, 0, dropped))
    for a, b in zip(pruned, masked):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", QWEN_FAMILIES)
def test_decoding_a_padded_batch_with_a_mask_after_pruning_before_the_llm_counts_each_items_real_tokens(family):
    """Step by step with a 2-D mask and no position ids on a left-padded batch: each item's step is
    numbered after its own real tokens plus its rope delta (``generate``'s numbering), as the masking
    reference given those positions explicitly."""
    from transformers import DynamicCache

    model = qwen_model(family)
    batch = _batch(model, ["image_and_video", "image"])
    assert bool((batch["attention_mask"] == 0).any())  # item 1 is padded

    def run(ctx, explicit):
        cache, mask, logits = DynamicCache(config=model.config.get_text_config()), batch["attention_mask"], []
        with ctx, torch.no_grad():
            out = model(**batch, past_key_values=cache, use_cache=True)
            for _ in range(3):
                logits.append(out.logits[:, -1])
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
                extra = {}
                if explicit:
                    text = (mask.cumsum(-1) - 1)[:, -1:] + model.model.rope_deltas
                    extra["position_ids"] = text[None].expand(3, -1, -1)
                out = model(input_ids=nxt, attention_mask=mask, past_key_values=cache, use_cache=True, **extra)
        return logits

    handle = qwen_vl.attach(model, 0.3, method="divprune")
    pruned = run(handle, explicit=False)
    dropped = dropped_positions(batch["input_ids"], find_items(model, batch), handle.stats)
    masked = run(masked_reference_hooks(model, 0, dropped), explicit=True)
    for a, b in zip(pruned, masked):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", QWEN_FAMILIES)
def test_generate_finds_each_encoded_image_and_video_by_its_features_even_at_equal_token_counts(family):
    """``generate`` drops the grids from the prompt pass; an image and a video of 24 tokens each must
    still get their own grids (4 x 6 image; 2 frame groups of 4 x 3), also with beams (copies)."""
    model = qwen_model(family)
    batch = qwen_vl.tiny_inputs(model, [(1, 8, 12)], [(2, 8, 6)])
    fam = qwen_vl.QWEN3_VL if family == "qwen3_vl" else qwen_vl.QWEN2_5_VL
    (_, want), = fam.items(model, batch["input_ids"], None, batch)
    assert want.n_views == 3
    with torch.no_grad():
        with qwen_vl.attach(model, 0.5) as handle:
            model.generate(**batch, max_new_tokens=2, do_sample=False)
            assert handle.items[0][1] == want
        with qwen_vl.attach(model, 0.5) as handle:
            out = model.generate(**batch, max_new_tokens=2, do_sample=False, num_beams=2, num_return_sequences=2)
            assert len(handle.items) == 2 and all(it[1] == want for it in handle.items)
    assert out.shape[0] == 2


def test_deepstack_additions_follow_the_kept_tokens():
    """Qwen3-VL adds vision features after decoder layers 0-2; pruning at K = 2 must add the third one to
    the kept tokens (the masking reference adds it to every token, the dropped ones being invisible).
    Without the additions the logits differ, so the test sees them."""
    model = qwen_model("qwen3_vl")
    batch = _batch(model, ["image_and_video", "two_images"])
    assert len(model.config.vision_config.deepstack_visual_indexes) == 3
    with torch.no_grad():
        with qwen_vl.attach(model, 0.25) as handle:
            pruned = model(**batch).logits[:, -1]
        dropped = dropped_positions(batch["input_ids"], find_items(model, batch), handle.stats)
        with masked_reference_hooks(model, K, dropped):
            masked = model(**batch).logits[:, -1]
        text = model.model.language_model
        hook = text.register_forward_pre_hook(
            lambda m, a, kw: (a, {**kw, "deepstack_visual_embeds": [e * 0 for e in kw["deepstack_visual_embeds"]]}),
            with_kwargs=True)
        try:
            with masked_reference_hooks(model, K, dropped):
                without = model(**batch).logits[:, -1]
        finally:
            hook.remove()
    torch.testing.assert_close(pruned, masked, atol=1e-4, rtol=0)
    assert (without - masked).abs().max() > 1e-3


# --- budgets, batches, every method -----------------------------------------------------------------

@pytest.mark.parametrize("family", QWEN_FAMILIES)
def test_exact_budgets_per_item_and_batch_equals_items_alone(family):
    model = qwen_model(family)
    names, budgets = ["image_and_video", "two_images"], [10, 0.5]
    batch = _batch(model, names)
    with torch.no_grad():
        with qwen_vl.attach(model, budgets) as handle:
            together = model(**batch).logits[:, -1]
        stats = list(handle.stats)
        alone = []
        for i, (n, b) in enumerate(zip(names, budgets)):
            with qwen_vl.attach(model, b) as single:
                alone.append(model(**left_padded([prompt(model, n, seed=i, before=3 + 2 * i)])).logits[0, -1])
            assert single.stats[0].kept.tolist() == stats[i].kept.tolist()
    assert [s.n_visual_after for s in stats] == [10, 24]
    assert [s.n_visual_before for s in stats] == [96, 48]
    for i in range(2):
        torch.testing.assert_close(together[i], alone[i], atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", QWEN_FAMILIES)
@pytest.mark.parametrize("method", method_names())
def test_every_method_runs_or_is_refused_with_its_reason(family, method):
    model = qwen_model(family)
    batch = _batch(model, ["image_and_video"])
    m = get_method(method)
    why = qwen_vl.QWEN3_VL.refusal(m) if family == "qwen3_vl" else qwen_vl.QWEN2_5_VL.refusal(m)
    if why is not None:
        assert method in ("visionzip", "cdpruner")
        with pytest.raises(ValueError, match="Qwen"):
            qwen_vl.attach(model, 0.5, method=method)
        return
    budget = 0.5 if not m.progressive else 0.4  # progressive: an average the 4 tiny layers can reach
    with torch.no_grad(), qwen_vl.attach(model, budget, method=method) as handle:
        handle.set_instructions(["what is shown?"])
        model.generate(**batch, max_new_tokens=2, do_sample=False)
    assert handle.stats[0].n_visual_before == 96 and 0 < handle.stats[0].n_visual_after < 96


# --- the prior over normalised positions ------------------------------------------------------------

def test_resample_grid_is_the_identity_at_the_same_size_and_keeps_values_positive():
    g = torch.rand(24, 24, generator=torch.Generator().manual_seed(0)) + 0.5
    assert torch.equal(qwen_vl.resample_grid(g, 24, 24), g.double())
    for rows, cols in [(4, 6), (17, 23), (40, 30)]:
        for mode in qwen_vl.RESAMPLING:
            out = qwen_vl.resample_grid(g, rows, cols, mode)
            assert out.shape == (rows, cols) and float(out.min()) > 0
            assert float(out.min()) >= float(g.min()) - 1e-6 and float(out.max()) <= float(g.max()) + 1e-6
    with pytest.raises(ValueError, match="'cubic'"):
        qwen_vl.resample_grid(g, 4, 4, "cubic")


def test_prior_blocks_and_expand_prior_round_trip_on_the_prior_grid():
    fam = qwen_vl.QWEN2_5_VL
    from d2pruner.spec import TokenLayout

    values = torch.rand(576, generator=torch.Generator().manual_seed(1)).double() + 0.5
    layout = TokenLayout.concat([TokenLayout.grid(24, 24), TokenLayout.grid(6, 9)])
    spread = fam.expand_prior(values, layout)
    assert torch.equal(spread[:576], values)  # a 24 x 24 view takes the prior as it is
    blocks = fam.prior_blocks(None, spread, layout)
    assert blocks.shape == (2, 576)
    np.testing.assert_allclose(blocks[0], (values / values.mean()).numpy(), rtol=1e-12)  # each view scaled to mean 1
    assert abs(blocks[1].mean() - 1) < 1e-12
    # a smooth map survives the trip to a small grid and back within a few percent
    yy, xx = np.meshgrid(np.linspace(0, 1, 24), np.linspace(0, 1, 24), indexing="ij")
    smooth = torch.as_tensor(1 + 0.5 * xx + 0.25 * yy).flatten()
    back = fam.prior_blocks(None, fam.expand_prior(smooth, TokenLayout.grid(12, 12)), TokenLayout.grid(12, 12))[0]
    assert np.abs(back - (smooth / smooth.mean()).numpy()).max() < 0.05


@pytest.mark.parametrize("family", QWEN_FAMILIES)
def test_a_prior_measured_on_one_grid_debiases_others_and_the_resampling_is_a_choice(family):
    model = qwen_model(family)
    batch = _batch(model, ["image_and_video", "two_images"])
    prior = torch.rand(576, generator=torch.Generator().manual_seed(2)) ** 4 + 0.01  # strongly uneven
    kept = {}
    with torch.no_grad():
        for name, options in [("none", {}), ("bilinear", {"prior": prior}),
                              ("nearest", {"prior": prior, "prior_resampling": "nearest"})]:
            with qwen_vl.attach(model, 0.25, **options) as handle:
                model(**batch)
            kept[name] = [s.kept.tolist() for s in handle.stats]
            assert all(s.debiased == (name != "none") for s in handle.stats)
    assert kept["bilinear"] != kept["none"] and kept["nearest"] != kept["bilinear"]
    with pytest.raises(ValueError, match="576"):
        qwen_vl.attach(model, 0.25, prior=torch.ones(100))


@pytest.mark.parametrize("family", QWEN_FAMILIES)
def test_prior_command_measures_a_resampled_grid_over_images_of_different_sizes(family, tmp_path):
    """The prior command on a saved tiny checkpoint: images of different sizes give views of different
    grids; each view's map is resampled onto the 24 x 24 grid, and the file's prior debiases later runs."""
    from PIL import Image

    from d2pruner.models.loading import build_inputs
    from d2pruner.models.prior import Prior
    from d2pruner.models.prior.__main__ import main
    from d2pruner.models.tiny_processor import tiny_processor

    model, processor = qwen_model(family), tiny_processor(family)
    folder = tmp_path / "ckpt"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    sizes = [(40, 60), (48, 32), (36, 36)]
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "prior.json"
    assert main(["--model", str(folder), "--images", str(images), "--out", str(out), "--dtype", "float32"]) == 0
    prior = Prior.load(out)
    assert prior.values.shape == (576,) and bool((prior.values > 0).all())
    assert prior.meta["n_images"] == 3 and prior.meta["n_blocks"] == 3 and "24 x 24" in prior.meta["per"]
    # the same mean by hand: each image's layer-(K-1) row, resampled with the family's own rule
    fam = qwen_vl.QWEN3_VL if family == "qwen3_vl" else qwen_vl.QWEN2_5_VL
    grids, blocks = set(), []
    for i in range(3):
        inputs = build_inputs(processor, family, Image.open(images / f"{i}.png"), "Describe the image.")
        (row, layout), = attention_rows(model, inputs, K, find_items(model, inputs))
        grids.add((int(layout.row.max()) + 1, int(layout.col.max()) + 1))
        blocks.append(fam.prior_blocks(model, row, layout))
    assert len(grids) == 3  # three different grids went into one prior
    np.testing.assert_allclose(prior.values, np.concatenate(blocks).mean(0), rtol=1e-6)
    with torch.no_grad(), qwen_vl.attach(model, 0.25, prior=out) as handle:
        model(**build_inputs(processor, family, Image.open(images / "0.png"), "what?"))
    assert handle.stats[0].debiased


# --- grounding in the model's own format, read back for the REC tasks ---------------------------------

def test_grounding_answers_are_read_back_into_the_tasks_box_frame():
    from reproduce.adapter import grounding_answer, grounding_question
    from reproduce.tasks.utils import REC_PROMPT, internvl_box_to_unit, parse_internvl_box

    q25, q3 = qwen_model("qwen2_5_vl"), qwen_model("qwen3_vl")
    asked = grounding_question(qwen_vl.QWEN2_5_VL, REC_PROMPT.format("the dog on the left"))
    assert '"the dog on the left"' in asked and "JSON" in asked
    assert grounding_question(qwen_vl.QWEN2_5_VL, "What colour is the car?") == "What colour is the car?"
    # Qwen2.5-VL: absolute pixels of the resized image; the tiny twin's patches are 2 px, so a grid of
    # 20 x 40 patches is a 40 x 80 px image
    inputs = {"image_grid_thw": torch.tensor([[1, 8, 8], [1, 20, 40]])}
    answer = '```json\n[{"bbox_2d": [8, 4, 40, 40], "label": "dog"}]\n```'
    read = grounding_answer(qwen_vl.QWEN2_5_VL, q25, answer, inputs, 1)
    assert internvl_box_to_unit(parse_internvl_box(read)) == [0.1, 0.1, 0.5, 1.0]
    # Qwen3-VL: already [0, 1000]
    read = grounding_answer(qwen_vl.QWEN3_VL, q3, '{"bbox_2d": [100, 250, 600, 1000]}', inputs, 0)
    assert internvl_box_to_unit(parse_internvl_box(read)) == [0.1, 0.25, 0.6, 1.0]
    # no box: the answer as written (it scores 0)
    assert grounding_answer(qwen_vl.QWEN2_5_VL, q25, "a dog", inputs, 0) == "a dog"


@pytest.mark.parametrize("family", QWEN_FAMILIES)
def test_a_video_after_a_non_empty_cache_is_refused_not_taken_for_a_decoding_step(family):
    from transformers import DynamicCache

    model = qwen_model(family)
    batch = prompt(model, "video")
    cache = DynamicCache(config=model.config.get_text_config())
    with torch.no_grad():
        model(input_ids=batch["input_ids"][:, :2], use_cache=True, past_key_values=cache)
        rest = {k: v for k, v in batch.items() if k != "attention_mask"}
        with qwen_vl.attach(model, 0.5) as handle, pytest.raises(ValueError, match="after a non-empty KV cache"):
            model(**rest, past_key_values=cache, use_cache=True)
    assert handle.stats == []


def test_prior_resampling_is_checked_at_attach():
    with pytest.raises(ValueError, match=r"prior_resampling='cubic': the qwen2_5_vl family resamples its prior by one of"):
        qwen_vl.attach(qwen_model("qwen2_5_vl"), 8, prior_resampling="cubic")
    from d2pruner.models import llava, tiny

    with pytest.raises(ValueError, match="applies its prior blocks as they are"):
        llava.attach(tiny.tiny_llava(), 8, prior_resampling="nearest")
