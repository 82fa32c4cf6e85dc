"""LLaVA-NeXT on its tiny twin: the anyres layout against transformers' own packing, newline tokens kept
as structure, identity when keeping everything, equality with an independent masking reference
(prompt pass and greedy decoding) for a left-padded batch of images with different crop grids, exact
budgets, vision-side records lined up with the visual tokens, every method run, the resampled prior,
the official prompt, the shipped full-size config."""

from __future__ import annotations

import contextlib
import types

import numpy as np
import pytest
import torch

from d2pruner import D2PrunerConfig
from d2pruner.methods import get_method, method_names
from d2pruner.models import llava_next, tiny
from d2pruner.models.prior import attention_rows
from llava_next_inputs import (GEOMETRY, SIZES, batch, find_items, left_padded, masked_reference, model, prompt,
                               shortened)
from model_inputs import dropped_positions

K = D2PrunerConfig().prune_layer
FAMILY = llava_next.FAMILY
PAIR = [["wide"], ["tall"]]  # two items, different crop grids (2 x 2 and 3 x 1)


def newline_positions(m, inputs) -> list[torch.Tensor]:
    """Per item, the image placeholders that are not visual tokens (the newline tokens)."""
    out = []
    for i, item in enumerate(find_items(m, inputs)(inputs["input_ids"])):
        placeholders = (inputs["input_ids"][i] == m.config.image_token_id).nonzero()[:, 0]
        out.append(placeholders[~torch.isin(placeholders, item[0])])
    return out


# --- the layout -------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(30, 48), (48, 30), (24, 24), (20, 70), (70, 20), (48, 48), (100, 37), (37, 100)])
def test_geometry_matches_transformers_packing(size):
    """Pack an index tensor through the model's own pack_image_features (newline = -1): the sequence
    length, where the newlines fall and which crop row each visual token comes from all agree."""
    m = model()
    image = llava_next.image_from_size(m, size)
    idx = torch.arange(image.n_crops * 144, dtype=torch.float64).view(image.n_crops, 144, 1)
    packed, _ = m.model.pack_image_features([idx], torch.tensor([size]), "default",
                                            image_newline=torch.tensor([-1.0], dtype=torch.float64))
    seq = packed[0][:, 0]  # (n_tokens,) source row, or -1 for a newline
    assert seq.numel() == image.n_tokens
    visual = torch.as_tensor(image.visual_offsets())
    assert bool((seq[visual] >= 0).all()) and int((seq < 0).sum()) == image.rows
    np.testing.assert_array_equal(seq[visual].long().numpy(), image.sources())
    assert image.layout().n_views == 2 and len(image.layout()) == image.n_visual


@pytest.mark.parametrize("name", sorted(SIZES))
def test_items_skip_the_newline_tokens_and_give_two_views_per_image(name):
    m = model()
    inputs = prompt(m, [name])
    (pos, layout), = find_items(m, inputs)(inputs["input_ids"])
    (grid, (rows, cols), n_visual) = GEOMETRY[name]
    assert llava_next.image_from_size(m, SIZES[name]).crop_rows * llava_next.image_from_size(m, SIZES[name]).crop_cols \
        == grid[0] * grid[1]
    assert len(pos) == len(layout) == n_visual and layout.n_views == 2
    assert (int(layout.row[layout.view == 1].max()) + 1, int(layout.col[layout.view == 1].max()) + 1) == (rows, cols)
    newlines, = newline_positions(m, inputs)
    assert len(newlines) == rows
    # one newline after each canvas row: the last placeholder, and every (cols + 1)-th after the base view
    first = int((inputs["input_ids"][0] == m.config.image_token_id).nonzero()[0, 0])
    assert (newlines - first - 144).tolist() == [r * (cols + 1) + cols for r in range(rows)]


def test_two_images_in_one_prompt_and_wrong_sizes_are_refused_by_name():
    m = model()
    inputs = prompt(m, ["wide", "small"])
    (pos, layout), = find_items(m, inputs)(inputs["input_ids"])
    assert len(pos) == 528 + 288 and layout.n_views == 4
    with pytest.raises(ValueError, match=r"does not fit its"):
        FAMILY.items(m, inputs["input_ids"], None, {"image_sizes": torch.tensor([[48, 48], [48, 48]])})
    with pytest.raises(ValueError, match="anyres layout is unknown"):
        FAMILY.items(m, inputs["input_ids"], None, {})


def test_generate_reads_the_layout_from_the_packed_features():
    """generate() encodes the images first and hands the prompt pass their packed features without the
    sizes: the newline rows in them give the same layout (and, here, the same crop grid)."""
    m = model()
    inputs = batch(m, PAIR)
    with torch.no_grad():
        encoded = m.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"], return_dict=True)
    from_features = llava_next.image_geometries(m, None, {"mm_encoder_outputs": {"image": encoded}})
    from_sizes = llava_next.image_geometries(m, None, inputs)
    assert from_features == from_sizes
    assert FAMILY.items(m, inputs["input_ids"], None, {"mm_encoder_outputs": {"image": encoded}})[1][0].tolist() == \
        find_items(m, inputs)(inputs["input_ids"])[1][0].tolist()
    # hints (per-item image sizes, what item_hints gives the adapter) work as well
    hints = [[SIZES["wide"]], [SIZES["tall"]]]
    assert llava_next.image_geometries(m, hints, {}) == from_sizes


def test_processor_places_as_many_placeholders_as_the_model_packs():
    """The tiny processor (transformers' LlavaNextProcessor) and the official vicuna_v1 prompt: each
    image's placeholder count is the layout's, and items() reads the processor's outputs."""
    from PIL import Image

    from d2pruner.models.loading import build_batch
    from d2pruner.models.tiny_processor import tiny_processor

    m, processor = model(), tiny_processor("llava_next")
    rng = np.random.default_rng(0)
    sizes = [(30, 48), (70, 20), (125, 200)]
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    text = FAMILY.prompt_text(processor, "What is it?")
    assert text.startswith("A chat between a curious user and an artificial intelligence assistant.")
    assert text.endswith(" USER: <image>\nWhat is it? ASSISTANT:")
    inputs = build_batch(processor, "llava_next", images, ["What is it?", "Why?", "Where?"])
    assert inputs["image_sizes"].tolist() == [list(s) for s in sizes]
    items = FAMILY.items(m, inputs["input_ids"], None, inputs)
    for i, s in enumerate(sizes):
        image = llava_next.image_from_size(m, s)
        assert int((inputs["input_ids"][i] == m.config.image_token_id).sum()) == image.n_tokens
        assert len(items[i][0]) == image.n_visual
    assert FAMILY.item_hints(processor, images, 6) == [[s] for s in sizes]
    with torch.no_grad(), llava_next.attach(m, 100) as handle:
        m(**inputs)
    assert [s.n_visual_after for s in handle.stats] == [100, 100, 100]


# --- the attention row --------------------------------------------------------------------------------

def test_attention_row_equals_eager_output_attentions():
    m = model("eager")
    inputs = batch(m, PAIR)
    with torch.no_grad():
        out = m(**inputs, output_attentions=True)
    want = out.attentions[K - 1][:, :, -1, :].mean(dim=1)  # (B, L)
    find = find_items(m, inputs)
    for i, (row, _) in enumerate(attention_rows(m, inputs, K, find)):
        torch.testing.assert_close(row.float(), want[i, find(inputs["input_ids"])[i][0]], atol=1e-6, rtol=0)


# --- identity and the masking reference ------------------------------------------------------------------

@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("method", ["d2pruner", "divprune"])
def test_keeping_every_token_changes_nothing(attn, method):
    m = model(attn)
    inputs = batch(m, PAIR)
    with torch.no_grad():
        base = m(**inputs).logits
        base_gen = m.generate(**inputs, max_new_tokens=5, do_sample=False)
        with llava_next.attach(m, 1.0, method=method) as handle:
            kept = m(**inputs).logits
            kept_gen = m.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert [s.n_visual_after for s in handle.stats] == [528, 504]
    assert (kept - base).abs().max().item() == 0.0
    assert torch.equal(kept_gen, base_gen)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("names", [PAIR, [["small", "wide"]]])
def test_pruned_run_equals_masking_reference(attn, names):
    """Removing tokens at layer K == keeping them but masking their keys from that layer on, for the
    prompt pass and five greedy decoding steps; the newline tokens are never masked."""
    if attn == "eager" and len(names) == 1:
        pytest.skip("eager is covered by the batch")
    m = model(attn)
    inputs = batch(m, names)
    with torch.no_grad():
        with llava_next.attach(m, 0.2) as handle:
            pruned = m(**inputs).logits[:, -1]
            pruned_gen = m.generate(**inputs, max_new_tokens=5, do_sample=False, output_logits=True,
                                    return_dict_in_generate=True)
        dropped = dropped_positions(inputs["input_ids"], find_items(m, inputs), handle.stats)
        with masked_reference(m, K, dropped):
            masked = m(**inputs).logits[:, -1]
            masked_gen = m.generate(**inputs, max_new_tokens=5, do_sample=False, output_logits=True,
                                    return_dict_in_generate=True)
        full = m(**inputs).logits[:, -1]
    assert handle.prune_layer == K
    for i, newlines in enumerate(newline_positions(m, inputs)):
        assert not bool(dropped[i, newlines].any())
    torch.testing.assert_close(pruned, masked, atol=1e-4, rtol=0)
    assert (full - pruned).abs().max() > 1e-3, "pruning changed nothing: nothing was tested"
    assert torch.equal(pruned_gen.sequences, masked_gen.sequences)
    for a, b in zip(pruned_gen.logits, masked_gen.logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("names", [[["wide"]], PAIR])
def test_pruning_before_the_llm_equals_the_shortened_sequence(attn, names):
    """DivPrune before the LLM == the LLM run on its input with the dropped visual rows removed (newline
    rows stay), positions renumbered as LLaVA's are: prompt pass and five greedy decoding steps."""
    m = model(attn)
    inputs = batch(m, names)
    with torch.no_grad():
        with llava_next.attach(m, 0.2, method="divprune") as handle:
            pruned = m(**inputs).logits[:, -1]
            pruned_gen = m.generate(**inputs, max_new_tokens=5, do_sample=False, output_logits=True,
                                    return_dict_in_generate=True)
        dropped = dropped_positions(inputs["input_ids"], find_items(m, inputs), handle.stats)
        embeds, mask = shortened(m, inputs, dropped)
        ref = m(inputs_embeds=embeds, attention_mask=mask).logits[:, -1]
        ref_gen = m.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=5, do_sample=False,
                             output_logits=True, return_dict_in_generate=True)
    assert handle.prune_layer == 0
    assert [int(d.sum()) for d in dropped] == [n - round(0.2 * n) for n in (528, 504)[: len(names)]]
    assert pruned_gen.sequences[:, -5:].tolist() == ref_gen.sequences[:, -5:].tolist()
    if len(names) == 1:  # one unpadded item: the same positions, the same logits
        torch.testing.assert_close(pruned, ref, atol=1e-4, rtol=0)
        for a, b in zip(pruned_gen.logits, ref_gen.logits):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", ["d2pruner", "divprune"])
def test_newline_tokens_stay_in_place_outside_the_budget(method):
    """With a budget of 1 token the cut sequence holds every text token, every newline token (their
    image_newline vector, before the LLM) and one visual token per item."""
    m = model()
    inputs = batch(m, PAIR)
    seen = {}

    def grab(module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        seen.setdefault("hidden", hidden.detach().clone())

    with torch.no_grad(), llava_next.attach(m, 1, method=method) as handle:
        hook = m.model.language_model.layers[handle.prune_layer].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            m(**inputs)
        finally:
            hook.remove()
    assert [s.n_visual_before for s in handle.stats] == [528, 504]
    assert [s.n_visual_after for s in handle.stats] == [1, 1]
    newlines = [len(n) for n in newline_positions(m, inputs)]
    assert newlines == [16, 36]
    length = inputs["input_ids"].shape[1]
    kept = [length - n_vis + 1 for n_vis in (528, 504)]  # padding + text + newlines + 1 visual
    assert seen["hidden"].shape[1] == max(kept)
    if handle.prune_layer == 0:  # the LLM's input: the newline vector in as many rows as the item has newlines
        newline = m.model.image_newline
        for i, n in enumerate(newlines):
            rows = seen["hidden"][i, -kept[i]:]
            assert int((rows == newline).all(dim=-1).sum()) == n


def test_decoding_without_a_mask_after_pruning_before_the_llm():
    """Step by step without an attention mask after DivPrune: the handle numbers the steps after the
    shortened prompt, as the shortened sequence itself does."""
    from transformers import DynamicCache

    m = model()
    inputs = prompt(m, ["wide"])
    inputs.pop("attention_mask")

    def run(ctx, first):
        cache, logits = DynamicCache(config=m.config.get_text_config()), []
        with ctx, torch.no_grad():
            out = m(**first, past_key_values=cache, use_cache=True)
            for _ in range(3):
                logits.append(out.logits[:, -1])
                out = m(input_ids=out.logits[:, -1].argmax(-1, keepdim=True), past_key_values=cache, use_cache=True)
        return logits

    handle = llava_next.attach(m, 0.3, method="divprune")
    pruned = run(handle, inputs)
    embeds, _ = shortened(m, inputs, dropped_positions(inputs["input_ids"], find_items(m, inputs), handle.stats))
    reference = run(contextlib.nullcontext(), {"inputs_embeds": embeds})
    for a, b in zip(pruned, reference):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


# --- budgets, batches, every method -------------------------------------------------------------------

def test_exact_budgets_per_item_and_batch_equals_items_alone():
    m = model()
    budgets = [40, 0.25]
    inputs = batch(m, PAIR)
    with torch.no_grad():
        with llava_next.attach(m, budgets) as handle:
            together = m(**inputs).logits[:, -1]
        stats = list(handle.stats)
        alone = []
        for i, (names, b) in enumerate(zip(PAIR, budgets)):
            with llava_next.attach(m, b) as single:
                alone.append(m(**left_padded([prompt(m, names, seed=i, before=3 + 2 * i)])).logits[0, -1])
            assert single.stats[0].kept.tolist() == stats[i].kept.tolist()
    assert [s.n_visual_before for s in stats] == [528, 504]
    assert [s.n_visual_after for s in stats] == [40, 126]
    for i in range(2):
        torch.testing.assert_close(together[i], alone[i], atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", method_names())
def test_every_method_runs_or_is_refused_with_its_reason(method):
    m = model()
    inputs = batch(m, [["wide"]])
    mobj = get_method(method, text_tower=tiny.tiny_clip_text_tower(vision_width=32)) if method == "cdpruner" \
        else get_method(method)
    assert FAMILY.refusal(get_method(method)) is None  # LLaVA-NeXT refuses nothing
    budget = 0.5 if not mobj.progressive else 0.4  # progressive: an average the 4 tiny layers can reach
    with torch.no_grad(), llava_next.attach(m, budget, method=mobj) as handle:
        handle.set_instructions(["what is shown?"])
        m.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert handle.stats[0].n_visual_before == 528 and 0 < handle.stats[0].n_visual_after < 528


def test_vision_records_line_up_with_the_visual_tokens():
    """What a pre-LLM method reads for each visual token: its own crop row of the projector input (the
    projector maps it to the token's LLM input) and its crop's [CLS] attention to it."""
    from d2pruner.methods.base import Need

    m = model()
    inputs = batch(m, PAIR)
    capture = FAMILY.vision_capture(m, get_method("visionzip"))
    hooks = capture.register(types.SimpleNamespace(hints=None))
    try:
        with torch.no_grad():
            m(**inputs, output_hidden_states=True)
            embeds = m.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"], return_dict=True)
        items = find_items(m, inputs)(inputs["input_ids"])
        raw = {"features": list(capture.features), "cls": list(capture.cls)}
        records = capture.per_item([len(it[1]) for it in items])
    finally:
        for h in hooks:
            h.remove()
    assert Need.CLS_ATTENTION in get_method("visionzip").needs
    for i, item in enumerate(items):
        image = llava_next.image_from_size(m, inputs["image_sizes"][i])
        packed = embeds.pooler_output[i][torch.as_tensor(image.visual_offsets())]  # (N, D) newlines left out
        with torch.no_grad():
            torch.testing.assert_close(records[i]["project"](records[i]["vision_features"]), packed, atol=1e-5, rtol=0)
        # each token's [CLS] attention and keys are those of the crop row its projector input came from
        raw_feats = torch.cat(raw["features"]).flatten(0, 1)  # (crops * 144, Dv)
        same = (records[i]["vision_features"][:, None, :] == raw_feats[None]).all(dim=-1)  # (N, crops * 144)
        assert bool((same.sum(dim=1) == 1).all())
        source = same.float().argmax(dim=1)  # (N,)
        torch.testing.assert_close(records[i]["cls_attention"], torch.cat(raw["cls"]).flatten()[source], atol=0, rtol=0)
        assert records[i]["cls_attention"].shape == (len(item[0]),)
        assert bool((source[:144] // 144 == (source[0] // 144)).all())  # the base view is one crop (crop 0)


# --- the prior ----------------------------------------------------------------------------------------

def test_prior_spreads_over_the_base_view_as_is_and_over_the_canvas_resampled():
    from d2pruner.models.prior.grid import resample_grid

    m = model()
    values = torch.rand(144, generator=torch.Generator().manual_seed(1)).double() + 0.5
    image = llava_next.image_from_size(m, SIZES["wide"])
    layout = image.layout()
    spread = FAMILY.expand_prior(values, layout)
    assert torch.equal(spread[:144], values)
    assert torch.equal(spread[144:], resample_grid(values.view(12, 12), image.rows, image.cols).flatten())
    blocks = FAMILY.prior_blocks(m, spread, layout)
    assert blocks.shape == (2, 144)
    np.testing.assert_allclose(blocks[0], (values / values.mean()).numpy(), rtol=1e-12)  # each view to mean 1
    np.testing.assert_allclose(blocks.mean(axis=1), [1.0, 1.0], rtol=1e-12)
    assert FAMILY.prior_block(m) == 144


def test_a_prior_debiases_and_a_wrong_sized_one_is_refused():
    m = model()
    inputs = batch(m, PAIR)
    prior = torch.rand(144, generator=torch.Generator().manual_seed(2)) ** 4 + 0.01  # strongly uneven
    kept = {}
    with torch.no_grad():
        for name, options in [("none", {}), ("bilinear", {"prior": prior}),
                              ("nearest", {"prior": prior, "prior_resampling": "nearest"})]:
            with llava_next.attach(m, 0.2, **options) as handle:
                m(**inputs)
            kept[name] = [s.kept.tolist() for s in handle.stats]
            assert all(s.debiased == (name != "none") for s in handle.stats)
    assert kept["bilinear"] != kept["none"] and kept["nearest"] != kept["bilinear"]
    with pytest.raises(ValueError, match="144"):
        llava_next.attach(m, 0.2, prior=torch.ones(100))


def test_prior_command_measures_a_prior_over_images_of_different_grids(tmp_path):
    from PIL import Image

    from d2pruner.models.loading import build_inputs
    from d2pruner.models.prior import Prior
    from d2pruner.models.prior.__main__ import main
    from d2pruner.models.tiny_processor import tiny_processor

    m, processor = model(), tiny_processor("llava_next")
    folder = tmp_path / "ckpt"
    m.save_pretrained(folder)
    processor.save_pretrained(folder)
    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(30, 48), (70, 20), (24, 24)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "prior.json"
    assert main(["--model", str(folder), "--images", str(images), "--out", str(out), "--dtype", "float32"]) == 0
    prior = Prior.load(out)
    assert prior.values.shape == (144,) and bool((prior.values > 0).all())
    assert prior.meta["n_images"] == 3 and prior.meta["n_blocks"] == 6  # base view + canvas per image
    blocks = []
    for i in range(3):
        inputs = build_inputs(processor, "llava_next", Image.open(images / f"{i}.png"), "Describe the image.")
        (row, layout), = attention_rows(m, inputs, K, find_items(m, inputs))
        blocks.append(FAMILY.prior_blocks(m, row, layout))
    np.testing.assert_allclose(prior.values, np.concatenate(blocks).mean(0), rtol=1e-6)


# --- the full-size model ---------------------------------------------------------------------------------

def test_shipped_config_builds_the_published_model_and_its_row_tokens():
    config = FAMILY.full_size_config("sdpa")
    with torch.device("meta"):
        full = FAMILY.model_classes()[0](config)
    count = sum(p.numel() for p in full.parameters())
    assert count == 7_063_431_168 and f"{count:,}" in FAMILY.shipped_config()["_source"]
    assert config.image_grid_pinpoints == [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    assert (config.vision_feature_layer, config.image_token_id, config.text_config.num_hidden_layers) == (-2, 32000, 32)
    square = llava_next.image_from_size(types.SimpleNamespace(config=config), (672, 672))
    assert (square.n_visual, square.rows, FAMILY.row_visual_tokens) == (2880, 48, 2880)
    n_tokens, pixels, size = FAMILY.synthetic_image(types.SimpleNamespace(config=config), 1, torch.Generator())
    assert (n_tokens, tuple(pixels.shape), size) == (2928, (1, 5, 3, 336, 336), (672, 672))


def test_synthetic_inputs_run_on_the_tiny_twin():
    m = model()
    inputs, _ = FAMILY.synthetic_inputs(m, 1, torch.Generator().manual_seed(0), torch.arange(10, 20))
    with torch.no_grad(), llava_next.attach(m, 64) as handle:
        m(**inputs)
    assert handle.stats[0].n_visual_before == 720 and handle.stats[0].n_visual_after == 64
