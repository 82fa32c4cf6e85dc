"""Methods that prune before the LLM from vision-side inputs (VisionZip, CDPruner), in the tiny models,
checked against references computed here from the vision tower's own outputs."""

from __future__ import annotations

import pytest
import torch

from d2pruner.baselines import visionzip_merge, visionzip_selection
from d2pruner.models import internvl, llava, tiny
from d2pruner.models.hooks import cls_attention_and_keys
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
    """The LLM input VisionZip defines: dominant tokens' own embeddings, each target's slot holding its
    projected merged feature, every other image token removed; left-padded again."""
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
