"""The selection benchmark runs end to end (smoke size; its timings are not checked here)."""

import json
import runpy
import sys


def test_selection_benchmark_smoke(tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench.json"
    monkeypatch.setattr(sys, "argv", ["selection.py", "--quick", "--repeats", "1", "--out", str(out)])
    try:
        runpy.run_path("benchmarks/selection.py", run_name="__main__")
    except SystemExit as stop:
        assert stop.code == 0, "the benchmark found the backends disagreeing"
    result = json.loads(out.read_text())
    assert [(r["N"], r["B"], r["D"]) for r in result["rows"]] == [(576, 1, 64), (576, 2, 64)]
    assert all(r["identical"] and r["mis_rounds"] >= 1 and r["fast_ms"] > 0 for r in result["rows"])
    assert "selection.py --quick --repeats 1" in result["meta"]["command"]
    assert "fast/matmul" in capsys.readouterr().out


def test_latency_benchmark_smoke(tmp_path, monkeypatch):
    out = tmp_path / "lat.json"
    monkeypatch.setattr(sys, "argv", ["latency.py", "--smoke", "--attn", "sdpa", "--out", str(out)])
    try:
        runpy.run_path("benchmarks/latency.py", run_name="__main__")
    except SystemExit as stop:
        assert stop.code == 0
    rows = json.loads(out.read_text())["rows"]
    got = [(r["family"], r["tiles"], r["visual_after"]) for r in rows]
    assert got == [("internvl", 1, None), ("internvl", 1, 256), ("internvl", 1, 64), ("internvl", 1, 26),
                   ("internvl", 2, None), ("internvl", 2, 768), ("internvl", 2, 192), ("internvl", 2, 77),
                   ("internvl3", 1, None), ("internvl3", 1, 256), ("internvl3", 1, 64), ("internvl3", 1, 26),
                   ("internvl3", 2, None), ("internvl3", 2, 768), ("internvl3", 2, 192), ("internvl3", 2, 77),
                   ("llava", 1, None), ("llava", 1, 576), ("llava", 1, 192), ("llava", 1, 128), ("llava", 1, 64),
                   ("llava_next", 1, None), ("llava_next", 1, 720), ("llava_next", 1, 160), ("llava_next", 1, 80),
                   ("llava_next", 1, 40),
                   ("qwen2_5_vl", 1, None), ("qwen2_5_vl", 1, 256), ("qwen2_5_vl", 1, 64), ("qwen2_5_vl", 1, 26),
                   ("qwen3_vl", 1, None), ("qwen3_vl", 1, 256), ("qwen3_vl", 1, 64), ("qwen3_vl", 1, 26)]
    assert all(r["ttft_ms"] > 0 and r["ttft_speedup"] > 0 and r["ttft_speedup_vs_fastest"] > 0 for r in rows)
    assert all(r["decode_ms_per_token"] > 0 for r in rows)  # d2pruner.measure, as the tables (no speed asserted)
    assert all(r["selection_ms"] > 0 for r in rows if r["budget"] != "unpruned")
    assert "cpu (" in json.loads(out.read_text())["meta"]["device"]


def test_full_size_models_build_from_the_shipped_configs():
    """On the meta device (no memory): the parameter counts of the paper's two 7-8B models, as the latency
    benchmark builds them (``ModelFamily.full_size_model``)."""
    import torch

    from d2pruner.models.family import get_family

    counts = {}
    for family in ("llava", "internvl"):
        model = get_family(family).full_size_model("sdpa", torch.float16, "meta")
        counts[family] = sum(p.numel() for p in model.parameters())
        layers = model.model.language_model.layers
        assert len(layers) == 32 and layers[0].mlp.gate_proj.weight.shape[0] == (11008 if family == "llava" else 14336)
    assert 7.0e9 < counts["llava"] < 7.1e9  # LLaVA-1.5-7B: 7.06 B
    assert 8.0e9 < counts["internvl"] < 8.1e9  # InternVL-2.5-8B: 8.08 B
