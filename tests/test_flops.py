"""FLOPs counts against hand computation, and the efficiency table against the counts."""

from __future__ import annotations

import csv

import pytest
from hypothesis import given
from hypothesis import strategies as st

from d2pruner.flops import (CONVENTIONS, FASTV, Convention, LMDims, decode_step_flops, layer_flops, paper_config,
                            prefill_flops, reduction, vision_flops)
from d2pruner.flops import qwen_vision_flops as vision_flops_qwen
from reproduce import efficiency

TINY = LMDims(layers=3, hidden=8, intermediate=12, heads=4, kv_heads=2, head_dim=2, vocab=50)


def test_reads_dimensions_from_a_transformers_config():
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=8, intermediate_size=12, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=50)
    assert LMDims.from_config(cfg) == TINY
    llava = LMDims.from_config(paper_config("llava-hf/llava-1.5-7b-hf"))
    internvl = LMDims.from_config(paper_config("OpenGVLab/InternVL2_5-8B-MPO-hf"))
    assert (llava.hidden, llava.intermediate, llava.kv_heads) == (4096, 11008, 32)
    assert (internvl.intermediate, internvl.kv_heads, internvl.vocab) == (14336, 8, 92553)
    with pytest.raises(ValueError, match="lacks 'intermediate_size'"):
        LMDims.from_config({"hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1, "vocab_size": 3})


def test_layer_by_hand():
    n = 5
    # exact: 2 FLOPs per MAC; q,o at 4*2=8 wide, k,v at 2*2=4 wide (GQA); QK^T + AV; 3-matrix MLP
    hand = 2 * (n * 8 * (8 + 8 + 4 + 4) + 2 * 8 * n * n + 3 * n * 8 * 12)
    assert layer_flops(TINY, n, convention=CONVENTIONS["exact"]) == hand
    # FastV: 4nd^2 + 2n^2 d + 2ndm multiply-adds
    assert layer_flops(TINY, n, convention=FASTV) == 4 * n * 64 + 2 * n * n * 8 + 2 * n * 8 * 12
    causal = 2 * (n * 8 * 24 + 2 * 8 * (n * (n + 1) // 2) + 3 * n * 8 * 12)
    assert layer_flops(TINY, n, convention=CONVENTIONS["exact-causal"]) == causal
    assert layer_flops(TINY, n, convention=CONVENTIONS["linear-only"]) == 2 * (n * 8 * 24 + 3 * n * 8 * 12)


def test_prefill_schedule_and_decode_by_hand():
    conv = CONVENTIONS["exact"]
    # 3 text tokens; 10 visual in layer 0, 4 from layer 1 on
    want = layer_flops(TINY, 13, convention=conv) + 2 * layer_flops(TINY, 7, convention=conv)
    assert prefill_flops(TINY, 3, [(0, 10), (1, 4)], conv) == want
    with_head = Convention("h", lm_head=True)
    assert prefill_flops(TINY, 3, [(0, 10)], with_head) == prefill_flops(TINY, 3, [(0, 10)], conv) + 2 * 8 * 50
    # one decoding step: each layer 1 query against its cached tokens + itself
    assert decode_step_flops(TINY, [13, 7, 7], conv) == sum(layer_flops(TINY, 1, kv_len=c + 1, convention=conv)
                                                           for c in (13, 7, 7))
    for bad in ([(1, 10)], [(0, 10), (0, 4)], [(0, -1)]):
        with pytest.raises(ValueError, match="a schedule must start at layer 0"):
            prefill_flops(TINY, 3, bad, conv)


def test_vision_tower_by_hand():
    vc = {"hidden_size": 4, "intermediate_size": 8, "num_hidden_layers": 2, "image_size": 4, "patch_size": 2}
    n = 4 + 1
    per_layer = 4 * n * 16 + 2 * n * n * 4 + 2 * n * 4 * 8
    assert vision_flops(vc, n_images=3, convention=FASTV) == 3 * (4 * 3 * 4 * 4 + 2 * per_layer)


@given(text=st.integers(0, 300), keep=st.integers(1, 576), k=st.integers(0, 31))
def test_pruning_never_costs_more_and_later_pruning_saves_less(text, keep, k):
    dims = LMDims.from_config(paper_config("llava-hf/llava-1.5-7b-hf"))
    full = prefill_flops(dims, text, [(0, 576)])
    early = prefill_flops(dims, text, efficiency.d2pruner_schedule(576, keep, k))
    late = prefill_flops(dims, text, efficiency.d2pruner_schedule(576, keep, k + 1))
    assert early <= late <= full
    assert 0 <= reduction(early, full) < 100


@pytest.mark.parametrize("method,stages", [("pyramiddrop", [0, 8, 16, 24]), ("sparsevlm", [0, 3, 7, 16])])
def test_progressive_schedules_average_the_budget(method, stages):
    sched = efficiency.method_schedule(method, 576, 192)
    layers = 32
    counts = [[n for s, n in sched if s <= layer][-1] for layer in range(layers)]
    assert abs(sum(counts) / layers - 192) <= 1 and [s for s, _ in sched] == stages
    if method == "pyramiddrop":
        with pytest.raises(ValueError, match="cannot average 128"):
            efficiency.method_schedule(method, 576, 128)


def test_schedules_follow_each_methods_pruning_point():
    from d2pruner.methods import METHODS, get_method

    for key in METHODS:
        m = get_method(key)
        if m.progressive:
            continue
        layer = 2 if m.default_layer is None else m.default_layer
        assert efficiency.method_schedule(key, 576, 64) == ([(0, 64)] if layer == 0 else [(0, 576), (layer, 64)]), key
    assert efficiency.method_schedule("mmr-d2score", 576, 64) == [(0, 576), (2, 64)]  # needs layer K-1's attention


def test_efficiency_command_writes_tables_that_match_the_counts(tmp_path, capsys):
    assert efficiency.main(["--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader(open(tmp_path / "d2pruner_reduction.csv")))
    dims = LMDims.from_config(paper_config("llava-hf/llava-1.5-7b-hf"))
    row = next(r for r in rows if r["budget"] == "64/576" and r["text_tokens"] == "64")
    full = prefill_flops(dims, 64, [(0, 576)], FASTV)
    assert float(row["fastv"]) == round(reduction(prefill_flops(dims, 64, [(0, 576), (2, 64)], FASTV), full), 2)
    search = list(csv.DictReader(open(tmp_path / "search_74_2.csv")))
    hit = next(r for r in search if r["convention"] == "exact" and r["kept"] == "64" and r["pruning"] == "K=2")
    assert hit["reproduces_74.2"] == "True" and 60 <= int(hit["closest_text_tokens"]) <= 90
    assert all(r["reproduces_74.2"] == "False" for r in search if r["kept"] == "192")
    assert "74.2" in (tmp_path / "efficiency.md").read_text()
    methods = list(csv.DictReader(open(tmp_path / "methods.csv")))
    assert [r["schedule"].startswith("unreachable") for r in methods if r["method"] == "PyramidDrop"] == [False, True, True]
    assert sorted({r["method"] for r in methods}) == sorted(["unpruned", *efficiency.TABLE_METHODS])
    assert all(r["TFLOPs"] for r in methods if r["method"] == "SparseVLM")  # reachable at 192, 128 and 64
    # the Qwen checkpoints: named in the output, D2Pruner rows, vision tower, per-method rows that add up
    out = capsys.readouterr().out
    assert "Qwen2.5-VL-7B = `Qwen/Qwen2.5-VL-7B-Instruct`" in out and "Qwen3-VL-8B = `Qwen/Qwen3-VL-8B-Instruct`" in out
    assert {r["budget"] for r in rows if r["model"].startswith("Qwen")} == {
        f"{b}/576 ({px} px)" for b in (192, 128, 64) for px in (672, 768)}
    vision = {r["model"]: r for r in csv.DictReader(open(tmp_path / "qwen_vision.csv"))}
    assert sorted(vision) == ["Qwen2.5-VL-7B", "Qwen3-VL-8B"]
    qwen = list(csv.DictReader(open(tmp_path / "qwen_methods.csv")))
    for family, model_id in (("qwen2_5_vl", "Qwen/Qwen2.5-VL-7B-Instruct"), ("qwen3_vl", "Qwen/Qwen3-VL-8B-Instruct")):
        name = efficiency.MODEL_NAMES[family]
        cfg = paper_config(model_id)
        dims = LMDims.from_config(cfg)
        vis = vision_flops_qwen(cfg["vision_config"], (1, 48, 48))
        assert float(vision[name]["total_GFLOPs"]) == round(vis / 1e9, 2)
        mine = [r for r in qwen if r["model"] == name]
        assert sorted({r["method"] for r in mine}) == sorted(["unpruned", *efficiency.TABLE_METHODS])
        d2 = next(r for r in mine if r["method"] == "D2Pruner" and r["budget"] == "64")
        llm = prefill_flops(dims, 64, [(0, 576), (2, 64)])
        assert d2["schedule"] == "[(0, 576), (2, 64)]" and float(d2["LLM_TFLOPs"]) == round(llm / 1e12, 4)
        full = prefill_flops(dims, 64, [(0, 576)]) + vis
        assert float(d2["total_reduction"]) == round(reduction(llm + vis, full), 2)
        refused = {r["method"] for r in mine if r["schedule"].startswith("refused")}
        assert refused == {"VisionZip", "CDPruner"} and all(r["vision_TFLOPs"] for r in mine)
        pyramid = [r["schedule"].split(":")[0] for r in mine if r["method"] == "PyramidDrop"]
        assert pyramid == [f"[(0, 576), ({dims.layers // 4}, 110), ({dims.layers // 2}, 55), ({3 * dims.layers // 4}, 28)]",
                           "unreachable", "unreachable"]
