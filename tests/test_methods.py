"""Every registered method inside both tiny model families, at its own pruning point."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from d2pruner.methods import fastv_selection
from d2pruner.methods import METHODS, get_method
from d2pruner.models import internvl, llava, tiny
from d2pruner.models.prior import attention_rows
from model_inputs import FAMILIES, left_padded_batch


def family_model(family):
    return tiny.tiny_llava() if family == "llava" else tiny.tiny_internvl()


def attach(family, model, budget, grids, **kw):
    handle = (llava if family == "llava" else internvl).attach(model, budget, **kw)
    if family == "internvl":
        handle.set_tile_grids(grids)
    return handle


#: Methods a model family refuses at attach time, with the reason the error must name.
REFUSED = {("internvl", "visionzip"): r"needs the \[CLS\] attention of the vision tower, which InternVL does not have"}
# CDPruner on InternVL without an explicit text tower: tests/test_pre_llm_methods.py


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", sorted(set(METHODS) - {"pyramiddrop", "sparsevlm"}))
def test_method_generates_with_exact_budgets(family, name):
    model = family_model(family)
    batch, items = left_padded_batch(family, [(3, 4), (6, 2)])
    if (family, name) in REFUSED:
        with pytest.raises(ValueError, match=REFUSED[family, name]):
            attach(family, model, [40, 0.2], items.grids, method=name)
        return
    method = name
    if name == "cdpruner":  # a tiny CLIP text tower built in code; InternVL's features are 4 x 32 wide after pixel shuffle
        method = get_method(name, text_tower=tiny.tiny_clip_text_tower(vision_width=32 if family == "llava" else 128))
    with torch.no_grad(), attach(family, model, [40, 0.2], items.grids, method=method) as handle:
        handle.set_instructions(["what is on the left?", "how many cats are there in this picture?"])
        out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == batch["input_ids"].shape[1] + 3
    n = items.n_visual
    assert [s.n_visual_after for s in handle.stats] == [40, max(1, int(np.floor(0.2 * n[1] + 0.5)))]
    assert all(s.method == name for s in handle.stats)
    assert handle.prune_layer == get_method(name).default_layer


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", ["fastv", "divprune", "dart", "mmr-d2score", "random", "pyramiddrop"])
def test_a_batch_keeps_what_each_item_keeps_alone(family, name):
    """Left-padded items of different lengths (and tile grids) select as they do alone. Position ids
    count real tokens only, as ``generate`` numbers them (DART's key norms are taken after RoPE)."""
    model = family_model(family)
    spec, budgets = [(3, 4), (6, 2)], [200, 0.45]
    batch, items = left_padded_batch(family, spec)

    def positions(b):
        return {**b, "position_ids": (b["attention_mask"].cumsum(-1) - 1).clamp(min=0)}
    with torch.no_grad():
        with attach(family, model, budgets, items.grids, method=name) as handle:
            model(**positions(batch))
        together = [s.kept.tolist() for s in handle.stats]
        for i in range(2):
            one, alone_items = left_padded_batch(family, [spec[i]], item_offset=i)
            with attach(family, model, budgets[i], alone_items.grids, method=name) as alone:
                model(**positions(one))
            assert alone.stats[0].kept.tolist() == together[i], (family, name, i)


#: Methods with more than one published pruning point: the points beside ``default_layer``.
OTHER_POINTS = {"random": (2,)}  # Random is compared both before the LLM and inside it (layer K = 2)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name,layer", [(n, k) for n, ks in OTHER_POINTS.items() for k in ks])
def test_method_generates_at_its_other_pruning_points(family, name, layer):
    model = family_model(family)
    batch, items = left_padded_batch(family, [(3, 4), (6, 2)])
    with torch.no_grad(), attach(family, model, [40, 0.2], items.grids, method=name, prune_layer=layer) as handle:
        out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == batch["input_ids"].shape[1] + 3
    assert handle.prune_layer == layer != get_method(name).default_layer
    assert [s.n_visual_after for s in handle.stats] == [40, max(1, int(np.floor(0.2 * items.n_visual[1] + 0.5)))]
    if name == "random":  # its choice depends only on the seed, N and the budget, not on where it prunes
        with torch.no_grad(), attach(family, model, [40, 0.2], items.grids, method=name) as before_llm:
            model(**batch)
        assert [s.kept.tolist() for s in handle.stats] == [s.kept.tolist() for s in before_llm.stats]


def _shortened_embeds(model, batch, dropped):
    """Independent reference for pruning before the LLM: drop the image embeddings from the input
    sequence itself (as if the placeholders had been shortened) and left-pad again."""
    inner = model.model
    embeds = inner.get_input_embeddings()(batch["input_ids"])
    feats = inner.get_image_features(pixel_values=batch["pixel_values"], return_dict=True).pooler_output
    feats = torch.cat(list(feats), dim=0) if isinstance(feats, (list, tuple)) else feats.reshape(-1, embeds.shape[-1])
    mask = batch["input_ids"] == tiny.IMAGE_TOKEN
    embeds = embeds.masked_scatter(mask[..., None], feats.to(embeds.dtype))
    rows = [embeds[i][~dropped[i]] for i in range(len(embeds))]
    masks = [batch["attention_mask"][i][~dropped[i]] for i in range(len(embeds))]
    width = max(len(r) for r in rows)
    out = torch.zeros(len(rows), width, embeds.shape[-1])
    out_mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (r, m) in enumerate(zip(rows, masks)):
        out[i, width - len(r):], out_mask[i, width - len(m):] = r, m
    return out, out_mask


@pytest.mark.parametrize("family", FAMILIES)
def test_pruning_before_the_llm_equals_shortened_placeholders(family):
    from model_inputs import dropped_positions

    model = family_model(family)
    for spec in ([(3, 4)], [(3, 4), (6, 2)]):
        batch, items = left_padded_batch(family, spec)
        with torch.no_grad():
            with attach(family, model, 48, items.grids, method="divprune") as handle:
                pruned_logits = model(**batch).logits[:, -1]
                pruned = model.generate(**batch, max_new_tokens=4, do_sample=False)
            dropped = dropped_positions(batch["input_ids"], items.find_items(model), handle.stats)
            embeds, mask = _shortened_embeds(model, batch, dropped)
            ref = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=4, do_sample=False)
            if len(spec) == 1:  # no padding: plain forwards number positions alike
                ref_logits = model(inputs_embeds=embeds, attention_mask=mask).logits[:, -1]
                torch.testing.assert_close(pruned_logits, ref_logits, atol=1e-5, rtol=0)
        assert pruned[:, -4:].tolist() == ref[:, -4:].tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_fastv_in_the_model_keeps_the_top_of_the_attention_row(family):
    model = family_model(family)
    batch, items = left_padded_batch(family, [(3, 4), (6, 2)])
    with torch.no_grad(), attach(family, model, 30, items.grids, method="fastv") as handle:
        model(**batch)
    rows = attention_rows(model, batch, 2, items.find_items(model))
    for (row, _), stats in zip(rows, handle.stats):
        want = fastv_selection(row[None], [30])[0].tolist()
        assert stats.kept.tolist() == want and stats.counts() == {"pivot": 0, "mis": 0, "topup": 0, "kept": 30}


@pytest.mark.parametrize("family", FAMILIES)
def test_dart_in_the_model_reads_layer_k_minus_1_keys_and_the_question(family):
    """DART's inputs rebuilt from the model's own ``output_hidden_states``: the L1 norms of layer K-1's
    keys after RoPE, text pivots among the tokens after the image only, cosines of the hidden states
    entering layer K after the final norm; the kept tokens are DART's rule on them."""
    from d2pruner.methods import dart_selection

    model = family_model(family)
    batch, items = left_padded_batch(family, [(5, 4)])  # one item, no padding: positions 0..L-1
    k = get_method("dart").default_layer
    with torch.no_grad():
        with attach(family, model, 50, items.grids, method="dart") as handle:
            model(**batch)
        out = model(**batch, output_hidden_states=True)
        lm = model.model.language_model
        h_in, h_k = out.hidden_states[k - 1], out.hidden_states[k]  # inputs of layers K-1 and K
        pos_ids = torch.arange(h_in.shape[1])[None]
        cos, sin = lm.rotary_emb(h_in, pos_ids)
        layer = lm.layers[k - 1]
        keys = layer.self_attn.k_proj(layer.input_layernorm(h_in)).view(1, h_in.shape[1], -1, layer.self_attn.head_dim)
        keys = keys.transpose(1, 2)  # (1, nKV, L, hd)
        half = keys.shape[-1] // 2
        rot = torch.cat([-keys[..., half:], keys[..., :half]], dim=-1)
        norms = (keys * cos[:, None] + rot * sin[:, None]).abs().sum(dim=(1, 3))[0]  # (L,)
        feats = lm.norm(h_k)[0]  # (L, D)
    pos = (batch["input_ids"][0] == tiny.IMAGE_TOKEN).nonzero()[:, 0]
    after = torch.arange(int(pos.max()) + 1, batch["input_ids"].shape[1])
    want, _ = dart_selection(feats[pos], norms[pos], 50, feats[after], norms[after], positions=pos, text_positions=after)
    assert handle.stats[0].kept.tolist() == want
    # the tokens before the image (BOS, system prompt) never act as text pivots
    before = torch.arange(int(pos.min()))
    wrong, _ = dart_selection(feats[pos], norms[pos], 50, feats[torch.cat([before, after])],
                              norms[torch.cat([before, after])], positions=pos, text_positions=torch.cat([before, after]))
    assert wrong != want, "with the tokens before the image as text pivots DART would keep other tokens"
    # the pivots take turns as the public code walks them (a set of their positions), not by key norm
    by_norm, _ = dart_selection(feats[pos], norms[pos], 50, feats[after], norms[after], pivot_order="norm")
    assert by_norm != want, "on this prompt the key-norm order keeps the same tokens"


def test_method_errors():
    model = family_model("llava")
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        llava.attach(model, 10, method="nope")
    with pytest.raises(ValueError, match="'fastv' reads the attention row of layer K-1, so it cannot prune before the LLM"):
        llava.attach(model, 10, method="fastv", prune_layer=0)
    with pytest.raises(ValueError, match="must be a name or have a select"):
        llava.attach(model, 10, method=object())


def test_random_is_reproducible_inside_the_model_and_varies_with_the_prompt():
    model = family_model("llava")
    batch, _ = left_padded_batch("llava", [(3, 4), (3, 4)])  # two prompts of the same length, other tokens
    kept = []
    for seed in (1, 1, 2):
        with torch.no_grad(), llava.attach(model, 20, method=get_method("random", seed=seed)) as handle:
            model(**batch)
        kept.append([s.kept.tolist() for s in handle.stats])
    assert kept[0] == kept[1] and kept[0][0] != kept[2][0]
    assert kept[0][0] != kept[0][1], "two questions must not share one random mask"
    one, _ = left_padded_batch("llava", [(3, 4)], item_offset=1)
    with torch.no_grad(), llava.attach(model, 20, method=get_method("random", seed=1)) as handle:
        model(**one)
    assert handle.stats[0].kept.tolist() == kept[0][1], "an item draws the same tokens alone as in a batch"


@given(n=st.integers(4, 4000), layers=st.integers(4, 64), budget=st.integers(1, 4000))
def test_pyramiddrop_equivalent_token_rule(n, layers, budget):
    from hypothesis import assume

    from d2pruner.methods import PyramidDropMethod

    assume(budget <= n)
    method = PyramidDropMethod()
    starts = method.stage_layers(layers)
    try:
        counts = method.stage_budgets(n, budget, layers)
    except ValueError as err:
        assert "cannot average" in str(err)
        n1 = (budget * layers - starts[0] * n) / ((starts[1] - starts[0]) + 0.5 * (starts[2] - starts[1]) + 0.25 * (layers - starts[2]))
        assert round(n1) < 1 or round(n1) > n, "a reachable budget was refused"
        return
    per_layer = [n if layer < starts[0] else counts[sum(layer >= s for s in starts) - 1] for layer in range(layers)]
    assert abs(sum(per_layer) / layers - budget) <= 1.0, "the average over the layers must equal the budget"
    assert n >= counts[0] >= counts[1] >= counts[2] >= 1


@pytest.mark.parametrize("family", FAMILIES)
def test_pyramiddrop_in_the_model_equals_the_masking_reference(family):
    from model_inputs import masked_reference_hooks, stage_dropped

    model = family_model(family)
    batch, items = left_padded_batch(family, [(3, 4), (6, 2)])
    with torch.no_grad():
        with attach(family, model, [200, 0.45], items.grids, method="pyramiddrop") as handle:
            pruned = model(**batch).logits[:, -1]
            pruned_gen = model.generate(**batch, max_new_tokens=4, do_sample=False)
        assert handle.stage_layers == [1, 2, 3]
        for i, n in enumerate(items.n_visual):
            counts = [len(stage[i]) for stage in handle.stage_stats]
            assert counts == get_method("pyramiddrop").stage_budgets(n, [200, max(1, int(np.floor(0.45 * n + 0.5)))][i], 4)
            kept = [set(stage[i].tolist()) for stage in handle.stage_stats]
            assert kept[2] <= kept[1] <= kept[0], "each stage must prune among the previous stage's tokens"
        dropped = stage_dropped(batch["input_ids"], items.find_items(model), handle.stage_stats)
        with masked_reference_hooks(model, handle.stage_layers, dropped):
            masked = model(**batch).logits[:, -1]
            masked_gen = model.generate(**batch, max_new_tokens=4, do_sample=False)
    torch.testing.assert_close(pruned, masked, atol=1e-5, rtol=0)
    assert torch.equal(pruned_gen, masked_gen)


@pytest.mark.parametrize("family", FAMILIES)
def test_pyramiddrop_stages_rank_by_the_stage_layers_own_attention(family):
    """Stage j keeps the top of the last token's attention *in layer s_j itself* (eager
    ``output_attentions``) over the sequence the earlier stages left, as the public code ranks."""
    from model_inputs import masked_reference_hooks, stage_dropped

    model = tiny.tiny_llava(attn_implementation="eager") if family == "llava" else tiny.tiny_internvl(attn_implementation="eager")
    batch, items = left_padded_batch(family, [(3, 4), (6, 2)])
    with torch.no_grad():
        with attach(family, model, [200, 0.45], items.grids, method="pyramiddrop") as handle:
            model(**batch)
        find = items.find_items(model)
        dropped = stage_dropped(batch["input_ids"], find, handle.stage_stats)
        for j, layer in enumerate(handle.stage_layers):
            if j == 0:
                att = model(**batch, output_attentions=True).attentions[layer]
            else:
                with masked_reference_hooks(model, handle.stage_layers[:j], dropped[:j]):
                    att = model(**batch, output_attentions=True).attentions[layer]
            row = att[:, :, -1, :].float().mean(dim=1)  # (B, L): the last token's row in layer s_j, mean over heads
            for i, (pos, _) in enumerate(find(batch["input_ids"])):
                before = np.arange(len(pos)) if j == 0 else np.asarray(handle.stage_stats[j - 1][i])
                scores = row[i, pos[torch.as_tensor(before)]]
                top = before[torch.topk(scores, len(handle.stage_stats[j][i])).indices.numpy()]
                assert sorted(top.tolist()) == sorted(handle.stage_stats[j][i].tolist()), (family, j, i)


def test_pyramiddrop_refuses_unreachable_budgets():
    model = family_model("llava")
    batch, _ = left_padded_batch("llava", [(3, 4)])
    with llava.attach(model, 64, method="pyramiddrop"), pytest.raises(ValueError, match="cannot average 64 visual tokens"):
        model(**batch)
    with pytest.raises(ValueError, match="prunes at its own stages"):
        llava.attach(model, 200, method="pyramiddrop", prune_layer=2)
