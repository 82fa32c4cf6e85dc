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
