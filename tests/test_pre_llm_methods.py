"""Methods that prune before the LLM from vision-side inputs (VisionZip, CDPruner), in the tiny models,
checked against references computed here from the vision tower's own outputs."""

from __future__ import annotations

import pytest
import torch

from d2pruner.methods import visionzip_merge, visionzip_selection
from d2pruner.models import internvl, llava, tiny
from d2pruner.models.attention import cls_attention_and_keys
from model_inputs import left_padded_batch


def vision_outputs(model, pixel_values):
    """Eager vision tower outputs: (CLS attention (I, N) summed over heads, head-mean keys (I, N, hd),
    projector input (I, N, Dv)) of the layer LLaVA projects (layer 0 of the tiny tower's 2)."""
    tower = model.model.vision_tower
    out = tower(pixel_values, output_attentions=True, output_hidden_states=True)
    layer = llava.feature_attention_layer(model)
    assert layer == 0
    attn = out.attentions[layer]  # (I, nH, 1+N, 1+N)
    cls = attn[:, :, 0, 1:].sum(dim=1)
    block = tower.encoder.layers[layer]
    x = block.layer_norm1(out.hidden_states[layer])
    hd = block.self_attn.head_dim
    keys = block.self_attn.k_proj(x).view(x.shape[0], x.shape[1], -1, hd).mean(dim=2)[:, 1:]
    return cls, keys, out.hidden_states[model.config.vision_feature_layer][:, 1:]


def reference_embeds(model, batch, plans, merged):
    """The LLM input a pre-LLM method defines: kept tokens' own embeddings (for VisionZip each target's
    slot holding its projected merged feature), every other image token removed; left-padded again.
    ``plans[i]`` has ``kept`` and ``targets`` (indices into item i's visual tokens)."""
    inner = model.model
    ids = batch["input_ids"]
    embeds = inner.get_input_embeddings()(ids)
    feats = inner.get_image_features(pixel_values=batch["pixel_values"], return_dict=True).pooler_output
    feats = torch.cat(list(feats)) if isinstance(feats, (list, tuple)) else feats.reshape(-1, embeds.shape[-1])
    embeds = embeds.masked_scatter((ids == tiny.IMAGE_TOKEN)[..., None], feats)
    rows, masks = [], []
    for i in range(len(ids)):
        pos = (ids[i] == tiny.IMAGE_TOKEN).nonzero()[:, 0]
        e = embeds[i].clone()
        e[pos[plans[i].targets]] = merged[i]
        drop = torch.zeros(len(ids[i]), dtype=torch.bool)
        drop[pos] = True
        drop[pos[plans[i].kept]] = False
        rows.append(e[~drop])
        masks.append(batch["attention_mask"][i][~drop])
    width = max(len(r) for r in rows)
    out = torch.zeros(len(rows), width, embeds.shape[-1])
    out_mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (r, m) in enumerate(zip(rows, masks)):
        out[i, width - len(r):], out_mask[i, width - len(m):] = r, m
    return out, out_mask


# --- VisionZip ----------------------------------------------------------------------------------------

def test_cls_attention_from_q_k_equals_eager_output_attentions():
    model = tiny.tiny_llava(attn_implementation="eager")
    pixels = left_padded_batch("llava", [(3, 4), (6, 2)])[0]["pixel_values"]
    with torch.no_grad():
        cls, keys, _ = vision_outputs(model, pixels)
        layer = model.model.vision_tower.encoder.layers[0]
        hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[0]
        got_cls, got_keys = cls_attention_and_keys(layer.self_attn, layer.layer_norm1(hidden))
    torch.testing.assert_close(got_cls, cls, atol=1e-6, rtol=0)
    torch.testing.assert_close(got_keys, keys, atol=1e-6, rtol=0)


@pytest.mark.parametrize("budgets", [[64], [40, 0.2]])
def test_visionzip_in_the_model_equals_the_reference_input(budgets):
    """Pruned run == a run on the sequence VisionZip defines, built here from the eager vision outputs:
    logits (one unpadded item) and greedy tokens (a left-padded batch)."""
    model = tiny.tiny_llava()
    batch, _ = left_padded_batch("llava", [(3, 4), (6, 2)][: len(budgets)])
    with torch.no_grad():
        with llava.attach(model, budgets, method="visionzip") as handle:
            logits = model(**batch).logits[:, -1]
            gen = model.generate(**batch, max_new_tokens=4, do_sample=False)
        cls, keys, feats = vision_outputs(tiny.tiny_llava(attn_implementation="eager"), batch["pixel_values"])
        n_keep = [k if isinstance(k, int) else round(k * 576) for k in budgets]
        plans = [visionzip_selection(cls[i], keys[i], n_keep[i]) for i in range(len(budgets))]
        merged = [model.model.multi_modal_projector(visionzip_merge(feats[i], p)) for i, p in enumerate(plans)]
        for p, s in zip(plans, handle.stats):
            assert s.kept.tolist() == p.kept.tolist() and s.n_visual_after == len(p.kept)
        embeds, mask = reference_embeds(model, batch, plans, merged)
        ref = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=4, do_sample=False)
        if len(budgets) == 1:
            torch.testing.assert_close(logits, model(inputs_embeds=embeds, attention_mask=mask).logits[:, -1],
                                       atol=1e-5, rtol=0)
            assert (model(**batch).logits[:, -1] - logits).abs().max() > 1e-3, "pruning changed nothing"
    assert gen[:, -4:].tolist() == ref[:, -4:].tolist()


def test_visionzip_keeping_every_token_changes_nothing_and_batches_equal_items_alone():
    model = tiny.tiny_llava()
    spec, budgets = [(3, 4), (6, 2)], [64, 0.2]
    batch, _ = left_padded_batch("llava", spec)
    with torch.no_grad():
        base = model(**batch).logits[:, -1]
        with llava.attach(model, 1.0, method="visionzip"):
            full = model(**batch).logits[:, -1]
        torch.testing.assert_close(full, base, atol=1e-5, rtol=0)
        with llava.attach(model, budgets, method="visionzip") as handle:
            together = model(**batch).logits[:, -1]
            kept = [s.kept.tolist() for s in handle.stats]
            for i in range(2):
                one, _ = left_padded_batch("llava", [spec[i]], item_offset=i)
                handle.budget = budgets[i]
                alone = model(**one).logits[:, -1]
                assert handle.stats[0].kept.tolist() == kept[i]
                torch.testing.assert_close(alone[0], together[i], atol=1e-4, rtol=0)


def test_visionzip_refuses_internvl_and_in_llm_layers():
    with pytest.raises(ValueError, match=r"visionzip needs the \[CLS\] attention of the vision tower, which InternVL "
                                         "does not have"):
        internvl.attach(tiny.tiny_internvl(), 64, method="visionzip")
    with pytest.raises(ValueError, match=r"'visionzip' .* prunes before the LLM only \(prune_layer=0\), not at \[2\]"):
        llava.attach(tiny.tiny_llava(), 64, method="visionzip", prune_layer=2)


# --- CDPruner -----------------------------------------------------------------------------------------

from d2pruner.methods import cdpruner_selection  # noqa: E402
from d2pruner.methods import get_method  # noqa: E402
from d2pruner.models.clip_text import load_clip_text_tower  # noqa: E402

QUESTIONS = ["what is the colour of the small cat sitting on the left?", "count the birds"]


def reference_relevance(tower, vision_features, text):
    """Cosine of CLIP image embeddings (post_layernorm -> visual_projection) with the text embedding,
    averaged over the text's 16-token segments, each zero-padded -- written out step by step."""
    img = tower.image_projection(tower.image_norm(vision_features)).double()
    ids = tower.tokenizer(text=[text])["input_ids"][0].tolist()
    segs = [ids[i:i + 16] for i in range(0, len(ids), 16)]
    cos = []
    for seg in segs:
        ids_t = torch.tensor([seg + [0] * (16 - len(seg))])
        mask = torch.tensor([[1] * len(seg) + [0] * (16 - len(seg))])
        t = tower.text_model(input_ids=ids_t, attention_mask=mask).text_embeds[0].double()
        cos.append(torch.nn.functional.cosine_similarity(img, t[None], dim=-1))
    return torch.stack(cos).mean(dim=0)


@pytest.mark.parametrize("negate", [True, False])
def test_cdpruner_in_the_model_is_the_dpp_of_the_clip_relevance(negate):
    model, tower = tiny.tiny_llava(), tiny.tiny_clip_text_tower()
    batch, _ = left_padded_batch("llava", [(3, 4), (6, 2)])
    method = get_method("cdpruner", text_tower=tower, negate_relevance=negate)
    with torch.no_grad():
        with llava.attach(model, [48, 0.2], method=method) as handle:
            handle.set_instructions(QUESTIONS)
            gen = model.generate(**batch, max_new_tokens=4, do_sample=False)
        tower_out = model.model.vision_tower(batch["pixel_values"], output_hidden_states=True)
        feats = tower_out.hidden_states[-2][:, 1:]  # (I, N, Dv): what LLaVA projects
        projected = model.model.multi_modal_projector(feats)
        plans = []
        for i, k in enumerate([48, round(0.2 * 576)]):
            rel = reference_relevance(tower, feats[i], QUESTIONS[i])
            want = cdpruner_selection(projected[i][None], (-rel if negate else rel)[None], [k])[0]
            assert handle.stats[i].kept.tolist() == want.tolist()
            plans.append(type("Plan", (), {"kept": want, "targets": want[:0]}))
        embeds, mask = reference_embeds(model, batch, plans, [projected[0][:0]] * 2)
        ref = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=4, do_sample=False)
    assert gen[:, -4:].tolist() == ref[:, -4:].tolist()


def test_cdpruner_depends_on_the_instruction_and_batches_equal_items_alone():
    model = tiny.tiny_llava()
    method = get_method("cdpruner", text_tower=tiny.tiny_clip_text_tower())
    spec = [(3, 4), (6, 2)]
    batch, _ = left_padded_batch("llava", spec)
    with torch.no_grad(), llava.attach(model, 40, method=method) as handle:
        handle.set_instructions(QUESTIONS)
        together = model(**batch).logits[:, -1]
        kept = [s.kept.tolist() for s in handle.stats]
        for i in range(2):
            one, _ = left_padded_batch("llava", [spec[i]], item_offset=i)
            handle.set_instructions([QUESTIONS[i]])
            alone = model(**one).logits[:, -1]
            assert handle.stats[0].kept.tolist() == kept[i]
            torch.testing.assert_close(alone[0], together[i], atol=1e-4, rtol=0)
        handle.set_instructions(["zebra stripes " * 3])
        model(**one)
        assert handle.stats[0].kept.tolist() != kept[1], "another instruction should change the kept tokens"


def test_text_tower_segments_long_instructions():
    tower = tiny.tiny_clip_text_tower()
    text = "a long instruction about the picture that needs three segments"
    n_ids = len(text) + 2
    assert tower.text_embeds(text).shape == ((n_ids - 1) // 16 + 1, 16)
    feats = torch.randn(7, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(tower.relevance(feats, text), reference_relevance(tower, feats, text), atol=1e-6, rtol=0)


def test_cdpruner_errors_name_what_is_missing():
    model = tiny.tiny_llava()
    batch, _ = left_padded_batch("llava", [(3, 4), (6, 2)])
    with pytest.raises(ValueError, match=r"CLIP text tower 'nobody/no-such-clip' .* not in the local Hugging Face "
                                         r"cache.*huggingface-cli download nobody/no-such-clip"):
        load_clip_text_tower("nobody/no-such-clip")
    method = get_method("cdpruner", text_tower=tiny.tiny_clip_text_tower())
    with llava.attach(model, 40, method=method) as handle, torch.no_grad():
        with pytest.raises(ValueError, match=r"needs each item's instruction text: call handle.set_instructions"):
            model(**batch)
        handle.set_instructions(["one"])
        with pytest.raises(ValueError, match="set_instructions gave 1 texts for a batch of 2 items"):
            model(**batch)
        handle.set_instructions(["one", None])
        with pytest.raises(ValueError, match="needs the instruction text of item 1, which is None"):
            model(**batch)
        with pytest.raises(ValueError, match="one text per batch item"):
            handle.set_instructions("one")
    with pytest.raises(ValueError, match=r"cdpruner needs a CLIP text tower .* InternVL has no CLIP"):
        internvl.attach(tiny.tiny_internvl(), 40, method="cdpruner")
    with pytest.raises(ValueError, match=r"'cdpruner' .* prunes before the LLM only"):
        llava.attach(model, 40, method=method, prune_layer=2)
