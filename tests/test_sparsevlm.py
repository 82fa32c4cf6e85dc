"""SparseVLM in the tiny models: raters, the rater attention, stages, budgets, recycling, generation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from d2pruner.methods import Need, sparsevlm_raters, sparsevlm_selection
from d2pruner.methods import SparseVLMMethod, get_method
from d2pruner.models import internvl, llava, tiny
from model_inputs import FAMILIES, left_padded_batch


def family_attach(family, model, budget, grids, **kw):
    handle = (llava if family == "llava" else internvl).attach(model, budget, **kw)
    if family == "internvl":
        handle.set_tile_grids(grids)
    return handle


def test_stage_layers_scale_with_depth():
    m = SparseVLMMethod()
    assert m.stage_layers(32) == [3, 7, 16]  # after layers 2, 6, 15 as published
    assert m.stage_layers(4) == [1, 2, 3] and m.stage_layers(40) == [4, 9, 20]
    with pytest.raises(ValueError, match="sparsevlm needs at least 4 decoder layers, the model has 3"):
        m.stage_layers(3)


@given(n=st.integers(4, 4000), layers=st.integers(4, 64), budget=st.integers(1, 4000))
def test_equivalent_token_rule(n, layers, budget):
    assume(budget <= n)
    method = SparseVLMMethod()
    starts = method.stage_layers(layers)
    try:
        counts = method.stage_budgets(n, budget, layers)
    except ValueError as err:
        assert "sparsevlm cannot average" in str(err)
        n1 = (budget * layers - starts[0] * n) / ((starts[1] - starts[0]) + 0.5 * (starts[2] - starts[1]) + 0.25 * (layers - starts[2]))
        assert round(n1) < 1 or round(n1) > n, "a reachable budget was refused"
        return
    per_layer = [n if layer < starts[0] else counts[sum(layer >= s for s in starts) - 1] for layer in range(layers)]
    assert abs(sum(per_layer) / layers - budget) <= 1.0, "the average over the layers must equal the budget"
    assert n >= counts[0] >= counts[1] >= counts[2] >= 1


@pytest.mark.parametrize("family", FAMILIES)
def test_sparsevlm_generates_with_exact_stage_budgets(family):
    model = tiny.tiny_llava() if family == "llava" else tiny.tiny_internvl()
    batch, items = left_padded_batch(family, [(3, 4), (6, 2)])
    budgets = [200, 0.45]
    with torch.no_grad(), family_attach(family, model, budgets, items.grids, method="sparsevlm") as handle:
        out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == batch["input_ids"].shape[1] + 3
    assert handle.stage_layers == [1, 2, 3]
    for i, n in enumerate(items.n_visual):
        k = budgets[i] if isinstance(budgets[i], int) else max(1, int(np.floor(budgets[i] * n + 0.5)))
        want = get_method("sparsevlm").stage_budgets(n, k, 4)
        assert [len(stage[i]) for stage in handle.stage_stats] == want
        kept = [set(stage[i].tolist()) for stage in handle.stage_stats]
        assert kept[2] <= kept[1] <= kept[0], "each stage prunes among the previous stage's tokens"
        assert handle.stats[i].method == "sparsevlm" and handle.stats[i].n_visual_after == want[-1]


def test_first_stage_equals_the_definition_on_eager_outputs():
    """Stage 1 from independent inputs: raters chosen on the input embeddings, their attention rows of
    layer 0 from eager ``output_attentions`` (mean over heads), the hidden states after layer 0."""
    model = tiny.tiny_llava(attn_implementation="eager")
    batch, items = left_padded_batch("llava", [(3, 4), (6, 2)])
    with torch.no_grad():
        with llava.attach(model, [200, 0.45], method="sparsevlm") as handle:
            model(**batch)
        out = model(**batch, output_attentions=True, output_hidden_states=True)
        embeds = model.model.get_input_embeddings()(batch["input_ids"])
        feats = model.model.get_image_features(pixel_values=batch["pixel_values"], return_dict=True).pooler_output
        embeds = embeds.masked_scatter((batch["input_ids"] == tiny.IMAGE_TOKEN)[..., None], torch.cat(list(feats)))
    attn = out.attentions[0].mean(dim=1)  # (B, L, L)
    for i, k in enumerate([200, round(0.45 * 576)]):
        pos = (batch["input_ids"][i] == tiny.IMAGE_TOKEN).nonzero()[:, 0]
        after = torch.arange(int(pos.max()) + 1, batch["input_ids"].shape[1])
        raters = after[sparsevlm_raters(embeds[i, pos], embeds[i, after])]
        assert handle.probe(Need.RATER_ATTENTION).raters[i].tolist() == raters.tolist()
        score = attn[i][raters][:, pos].double().mean(dim=0)
        n1 = get_method("sparsevlm").stage_budgets(576, k, 4)[0]
        want = sparsevlm_selection(score, out.hidden_states[1][i, pos], n1)
        assert handle.stage_stats[0][i].tolist() == want.kept.tolist()
        assert len(want.centres) > 0, "the budget should make this stage recycle"


def test_recycled_tokens_carry_the_merged_hidden_states():
    """The hooks put a recycled centre's merged features in its slot and every other kept token's own
    hidden state: capture the input of layer 1 (the first stage's cut) and compare."""
    import dataclasses

    recorded = []

    @dataclasses.dataclass(frozen=True)
    class Recording(SparseVLMMethod):
        def select(self, items, n_keep):
            out = super().select(items, n_keep)
            recorded.append(out)
            return out

    model = tiny.tiny_llava()
    batch, _ = left_padded_batch("llava", [(3, 4)])
    seen = {}
    layers = model.model.language_model.layers
    with torch.no_grad(), llava.attach(model, 200, method=Recording()) as handle:
        def grab_input(m, a, k):
            seen.setdefault("in1", a[0] if a else k["hidden_states"])

        def grab_output(m, a, o):
            seen.setdefault("out0", o[0] if isinstance(o, tuple) else o)

        hooks = [layers[1].register_forward_pre_hook(grab_input, with_kwargs=True), layers[0].register_forward_hook(grab_output)]
        model(**batch)
        for h in hooks:
            h.remove()
    pos = (batch["input_ids"][0] == tiny.IMAGE_TOKEN).nonzero()[:, 0]
    first = recorded[0][0]
    kept = handle.stage_stats[0][0].tolist()
    assert first.kept.tolist() == kept and len(first.replaced) > 0
    visual = seen["in1"][0, int(pos[0]):int(pos[0]) + len(kept)]  # (n1, H): the kept visual slots, in order
    own = seen["out0"][0, pos[kept]]  # (n1, H): their own hidden states after layer 0
    replaced = {int(r): f for r, f in zip(first.replaced, first.features)}
    for j, t in enumerate(kept):
        want = replaced.get(t, own[j])
        torch.testing.assert_close(visual[j], want, atol=1e-6, rtol=0)
    assert any(not torch.allclose(replaced[t], own[kept.index(t)]) for t in replaced), "merging changed nothing"


def test_sparsevlm_batches_equal_items_alone():
    model = tiny.tiny_llava()
    spec, budgets = [(3, 4), (6, 2)], [200, 0.45]
    batch, _ = left_padded_batch("llava", spec)
    with torch.no_grad(), llava.attach(model, budgets, method="sparsevlm") as handle:
        together = model(**batch).logits[:, -1]
        kept = [[s[i].tolist() for s in handle.stage_stats] for i in range(2)]
        for i in range(2):
            one, _ = left_padded_batch("llava", [spec[i]], item_offset=i)
            handle.budget = budgets[i]
            alone = model(**one).logits[:, -1]
            assert [s[0].tolist() for s in handle.stage_stats] == kept[i]
            torch.testing.assert_close(alone[0], together[i], atol=1e-4, rtol=0)


def test_sparsevlm_refuses_unreachable_budgets_and_fixed_layers():
    model = tiny.tiny_llava()
    batch, _ = left_padded_batch("llava", [(3, 4)])
    with llava.attach(model, 64, method="sparsevlm"), pytest.raises(ValueError, match="sparsevlm cannot average 64 visual tokens"):
        model(**batch)
    with pytest.raises(ValueError, match="prunes at its own stages"):
        llava.attach(model, 200, method="sparsevlm", prune_layer=2)


def test_later_stages_read_the_raters_attention_on_the_cut_sequence():
    """At stages 2 and 3 the rater rows the method gets equal eager ``output_attentions`` of the pruned
    run (layers 1 and 2 see the cut sequence), rows at the raters' slots, columns at the visual slots."""
    import dataclasses

    seen = []

    @dataclasses.dataclass(frozen=True)
    class Recording(SparseVLMMethod):
        def select(self, items, n_keep):
            seen.append([it.rater_attention for it in items])
            return super().select(items, n_keep)

    model = tiny.tiny_llava(attn_implementation="eager")
    batch, _ = left_padded_batch("llava", [(3, 4), (6, 2)])
    with torch.no_grad(), llava.attach(model, [200, 0.45], method=Recording()) as handle:
        out = model(**batch, output_attentions=True)
    find = lambda ids: llava.find_items(ids, tiny.IMAGE_TOKEN, 24)  # noqa: E731
    for stage in (1, 2):
        index, valid = handle.stage_state[stage - 1]  # (B, L') original position of each slot after stage `stage`
        attn = out.attentions[handle.stage_layers[stage] - 1].mean(dim=1)  # (B, L', L')
        for i, (pos, _) in enumerate(find(batch["input_ids"])):
            raters = handle.probe(Need.RATER_ATTENTION).raters[i]
            r_slots = torch.isin(index[i], raters) & valid[i]
            kept_pos = pos[torch.as_tensor(handle.stage_stats[stage - 1][i])]
            v_slots = torch.isin(index[i], kept_pos) & valid[i]
            want = attn[i][r_slots][:, v_slots]
            torch.testing.assert_close(seen[stage][i].float(), want, atol=1e-6, rtol=0)
