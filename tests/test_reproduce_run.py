"""``python -m reproduce <table>`` without lmms-eval: argument errors, missing inputs, rows not run, and the
table arithmetic."""

import csv
import io
import json
import re

import pytest

from reproduce import benchmarks, cell, records, specs, tables
from reproduce.__main__ import main
from reproduce.specs import Row, load_spec, paper_values, select_rows


def test_unknown_table_row_and_column_are_named(capsys):
    assert main(["table9"]) == 2
    assert "unknown command 'table9'" in capsys.readouterr().err
    assert main(["table1", "--rows", "D2Pruner@64,FastV@7"]) == 2
    err = capsys.readouterr().err
    assert "unknown rows ['FastV@7']" in err and "D2Pruner@64" in err
    assert main(["table3", "--columns", "RefCOCO val,Nope"]) == 2
    assert "unknown columns ['Nope']" in capsys.readouterr().err


def test_the_tables_are_the_spec_files():
    assert sorted(specs.TABLES) == sorted(p.stem for p in specs.SPECS.glob("*.json"))
    paper = [t for t in specs.TABLES if load_spec(t)["paper_file"] is not None]
    assert list(specs.TABLES[:len(paper)]) == sorted(paper, key=specs._natural)  # the paper's first, in order
    assert specs.TABLES[:3] == ("table1", "table2", "table3")
    assert specs.TABLES and all(load_spec(t)["table"] == t for t in specs.TABLES)
    with pytest.raises(ValueError, match=f"unknown table 'table9'; available: {', '.join(specs.TABLES)}"):
        load_spec("table9")


def test_missing_checkpoint_data_and_prior_are_all_named_and_nothing_is_written(tmp_path, monkeypatch, capsys):
    from d2pruner.models.clip_text import CLIP_FOR_LLAVA

    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-home" / "hub"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-hf-home" / "datasets"))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    spec = load_spec("table1")
    code = main(["table1", "--rows", "Vanilla@576,D2Pruner@64,CDPruner@64", "--columns", "POPE,MME", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"CLIP text tower {CLIP_FOR_LLAVA!r} (needed by the CDPruner rows)" in err
    assert f"checkpoint {spec['model']['id']!r} is not in the local Hugging Face cache" in err
    for name in ("POPE", "MME"):
        bench = benchmarks.get(name)
        assert f"{name} (task {bench.stock}): data set(s) {', '.join(bench.dataset_ids)} not in" in err
    assert f"prior file {spec['model']['prior']} not found" in err and "python -m d2pruner.models.prior" in err
    assert not out.exists()


@pytest.mark.parametrize("table", specs.TABLES)
def test_rows_not_run_are_marked_with_the_reason(table):
    """Every row either runs or is not run with its reason: the model family's refusal of the method, or
    the method's own schedule on the full-size model failing to reach the budget."""
    from d2pruner.flops import LMDims, paper_config
    from d2pruner.methods.base import get_method
    from d2pruner.models.family import get_family
    from d2pruner.spec import resolve_budget
    from reproduce.adapter import parse_budget

    spec = load_spec(table)
    rows, skipped = select_rows(spec, smoke=False, wanted=None)
    assert len(rows) + len(skipped) == len(spec["rows"])
    assert {r.label for r in rows} | {f"{m}@{b}" for m, b, _ in skipped} == {f"{r['method']}@{r['budget']}" for r in spec["rows"]}
    family = get_family(spec["model"]["family"])
    n_layers = LMDims.from_config(paper_config(spec["model"]["id"])).layers
    n_visual = specs.row_visual_tokens(spec)
    for method, budget, why in skipped:
        assert why and why != "not implemented", (method, budget)  # every method of the tables is implemented
        m = get_method(spec["method_keys"][method])
        if family.refusal(m) is not None:
            assert why == family.refusal(m)
        else:
            with pytest.raises(ValueError) as err:
                m.schedule(n_layers, n_visual, resolve_budget(parse_budget(budget), n_visual))
            assert why == str(err.value)
    for row in rows:
        if row.key is not None:
            assert family.refusal(get_method(row.key)) is None
            assert specs.row_schedule(spec, row.key, row.budget)  # reachable on the full-size model


def test_the_known_refusals():
    """The refusals the docs name: PyramidDrop below a quarter of the tokens; VisionZip and CDPruner on InternVL."""
    why = {f"{m}@{b}": w for m, b, w in select_rows(load_spec("table1"), smoke=False, wanted=None)[1]}
    assert "PyramidDrop@192" not in why and why["PyramidDrop@64"].startswith("pyramiddrop cannot average 64 visual tokens")
    rows, skipped = select_rows(load_spec("table3"), smoke=False, wanted=None)
    why = {m: w for m, _, w in skipped}
    assert "[CLS] attention" in why["VisionZip"] and "CLIP text tower" in why["CDPruner"] and "SparseVLM" not in why
    assert "cannot average 179 visual tokens" in why["PyramidDrop"]  # 10 % of 6 tiles + thumbnail


def test_rows_of_unregistered_methods_are_not_implemented():
    spec = load_spec("table1")
    unimplemented = {**spec, "method_keys": {**spec["method_keys"], "DART": None, "FastV": "no-such-method"}}
    _, skipped = select_rows(unimplemented, smoke=False, wanted="DART@64,FastV@64,D2Pruner@64")
    assert skipped == [("DART", "64", "not implemented"), ("FastV", "64", "not implemented")]


def test_spec_columns_name_benchmark_records():
    for table in specs.TABLES:
        spec = load_spec(table)
        names = [c["benchmark"] for c in spec["columns"] if "derived" not in c]
        assert [b.name for b in specs.benchmark_columns(spec)] == names
    bad = {**spec, "columns": [{"benchmark": "Nope"}]}
    known = ", ".join(sorted(b.name for b in benchmarks.all_benchmarks()))
    with pytest.raises(ValueError, match=re.escape(f"unknown benchmark 'Nope'; known: {known}")):
        specs.select_columns(bad, None)


def _records(spec, values):
    """Cell records as run_cell writes them, for (method, budget) -> {benchmark: value}."""
    return {(f"{m}@{b}", bench): {"value": v, "n_samples": 10, "answers_sha256": "x"}
            for (m, b), cols in values.items() for bench, v in cols.items()}


def test_table3_from_the_papers_own_cells_reproduces_them_and_shows_the_rel_discrepancy():
    spec = load_spec("table3")
    paper = paper_values(spec)
    benches = [b.name for b in specs.benchmark_columns(spec)]
    values = {(m, b): {x: paper[(m, b, x)] for x in benches} for m, b in [("Vanilla", "100%"), ("D2Pruner", "10%")]}
    rows = [Row("Vanilla", "100%", None), Row("D2Pruner", "10%", "d2pruner")]
    lines = tables.build_table(spec, rows, [], _records(spec, values))
    got = {(ln["method"], ln["benchmark"]): ln for ln in lines}
    for bench in benches:
        assert got[("D2Pruner", bench)]["delta"] == "+0.00" and got[("D2Pruner", bench)]["within_tolerance"] == "yes"
    # the printed averages follow from the printed splits ...
    avg = {m: sum(values[(m, b)].values()) / len(benches) for m, b in values}
    for m, b in values:
        assert got[(m, "Avg")]["reproduced"] == f"{avg[m]:.2f}" == f"{paper[(m, b, 'Avg')]:.2f}"
    # ... but the printed Rel does not: D2Pruner Avg / Vanilla Avg (paper_tables/README.md)
    rel, printed = got[("D2Pruner", "Rel")], paper[("D2Pruner", "10%", "Rel")]
    ours = 100 * avg["D2Pruner"] / avg["Vanilla"]
    assert (rel["reproduced"], rel["paper"], rel["delta"]) == (f"{ours:.2f}", f"{printed:.2f}", f"{ours - printed:+.2f}")
    assert rel["delta"] != "+0.00" and rel["within_tolerance"] == "yes"
    assert got[("Vanilla", "Rel")]["reproduced"] == "100.00"
    md = tables.table_markdown(spec, lines, "## table3")
    assert f"{ours:.2f} / {printed:.2f} ({ours - printed:+.2f} ✓)" in md


def test_avg_divides_mme_by_20_and_tolerance_marks_follow_the_spec():
    spec = load_spec("table1")
    benches = [b.name for b in specs.benchmark_columns(spec)]
    vals = {b: 50.0 for b in benches}
    vals["MME"] = 1400.0
    vals["GQA"] = 62.0
    lines = tables.build_table(spec, [Row("D2Pruner", "64", "d2pruner")], [], _records(spec, {("D2Pruner", "64"): vals}))
    got = {ln["benchmark"]: ln for ln in lines}
    assert got["Avg"]["reproduced"] == f"{(50 * (len(benches) - 2) + 62 + 1400 / 20) / len(benches):.2f}"
    paper_gqa = paper_values(spec)[("D2Pruner", "64", "GQA")]
    assert got["GQA"]["paper"] == f"{paper_gqa:.2f}"
    assert got["GQA"]["within_tolerance"] == ("yes" if abs(62.0 - paper_gqa) <= spec["tolerance"]["default"] else "no")
    from d2pruner.flops import CONVENTIONS, LMDims, paper_config, prefill_flops

    dims = LMDims.from_config(paper_config(spec["model"]["id"]))  # 576 tokens to layer 2, then 64; 64 text tokens
    want = prefill_flops(dims, 64, [(0, 576), (2, 64)], CONVENTIONS["exact"]) / 1e12
    assert got["prefill TFLOPs"]["reproduced"] == f"{want:.2f}"
    table = list(csv.DictReader(io.StringIO(tables.table_csv(lines))))
    assert [r["benchmark"] for r in table] == ([c["benchmark"] for c in spec["columns"]] + ["prefill TFLOPs"]
                                               + list(tables.MEASURED_LINES))
    assert {r["status"] for r in table if r["benchmark"] in tables.MEASURED_LINES} == {"not measured"}  # no timings


def _context(**change):
    from d2pruner.measure import measurement_context

    return {**measurement_context("cpu", "float32", 2), **change}


def _timed(record, ttfts, context, benchmark, attn="sdpa", selection=None):
    """``record`` with the timing a run in ``context`` would have recorded (one sample per TTFT value)."""
    from d2pruner.measure import context_id, memory_kind, summary

    per = {f"k{i}": {"ttft_ms": t, "decode_ms_per_token": t / 10, "peak_mib": 100.0 + t, "selection_ms": selection,
                     "new_tokens": 4, "batch": 2} for i, t in enumerate(ttfts)}
    timing = {"context": context, "context_id": context_id(context), "memory": memory_kind(context["device"]),
              "n_timed": len(per), "n_elsewhere": 0, "n_unmeasured": 0, "per_sample": per,
              **{f: summary([p[f] for p in per.values()]) for f in records.TIMING_FIELDS}}
    return {**record, "benchmark": benchmark, "timing": timing, "provenance": {"attn_implementation": attn}}


def _timed_table(vanilla_context, pruned_context):
    spec = load_spec("table2")
    rows = [Row("Vanilla", "100%", None), Row("D2Pruner", "10%", "d2pruner")]
    cells = _records(spec, {("Vanilla", "100%"): {"POPE": 80.0, "MME": 1500.0},
                            ("D2Pruner", "10%"): {"POPE": 79.0, "MME": 1490.0}})
    for (label, bench), rec in cells.items():
        vanilla = label.startswith("Vanilla")
        ttfts = [20.0, 30.0, 40.0] if vanilla else [10.0, 15.0, 20.0]
        cells[(label, bench)] = _timed(rec, ttfts, vanilla_context if vanilla else pruned_context, bench,
                                       attn="flash_attention_2" if vanilla else "sdpa", selection=None if vanilla else 1.5)
    lines = tables.build_table(spec, rows, [], cells)
    return spec, {(ln["method"], ln["benchmark"]): ln for ln in lines}, lines


def test_measured_columns_compare_rows_of_one_machine_and_settings():
    """TTFT medians over the row's samples, its speed-up over the unpruned row of the same context, decode,
    the largest peak, the selection's time, attention and machine per row; in CSV and Markdown."""
    from d2pruner.measure import context_label

    here = _context()
    spec, got, lines = _timed_table(here, here)
    assert got[("Vanilla", "TTFT ms")]["reproduced"] == "30.00" and got[("D2Pruner", "TTFT ms")]["reproduced"] == "15.00"
    assert got[("D2Pruner", "TTFT speed-up")]["reproduced"] == "2.00" and got[("Vanilla", "TTFT speed-up")]["reproduced"] == "1.00"
    assert got[("D2Pruner", "decode ms/token")]["reproduced"] == "1.50"
    assert got[("D2Pruner", "peak memory MiB")]["reproduced"] == "120"  # the largest, not the median
    assert got[("D2Pruner", "selection ms")]["reproduced"] == "1.50" and got[("Vanilla", "selection ms")]["reproduced"] == ""
    assert got[("Vanilla", "attention")]["reproduced"] == "flash_attention_2" and got[("D2Pruner", "attention")]["reproduced"] == "sdpa"
    assert got[("D2Pruner", "measured on")]["reproduced"] == context_label(here)
    assert got[("D2Pruner", "TTFT ms")]["n_samples"] == 6  # three samples in each of the two cells
    md = tables.table_markdown(spec, lines, "## table2")
    header = next(ln for ln in md.splitlines() if ln.startswith("| method"))
    for column in tables.MEASURED_LINES:
        assert f"| {column} |" in header
    assert "| 15.00 | 2.00× | 1.50 | 120 | 1.50 | sdpa | [A] |" in md and f"[A] {context_label(here)}" in md
    golden = tables.golden_form(tables.table_csv(lines))
    assert golden == tables.golden_form(golden)
    masked = {(r["method"], r["benchmark"]): r["reproduced"] for r in csv.DictReader(io.StringIO(golden))}
    assert masked[("D2Pruner", "TTFT ms")] == "*" and masked[("D2Pruner", "POPE")] == "79.00"
    assert masked[("D2Pruner", "attention")] == "sdpa" and masked[("D2Pruner", "selection ms")] == "*"


@pytest.mark.parametrize("elsewhere", [{"device": "cuda", "machine": "NVIDIA H100 80GB HBM3"}, {"host": "other-host"},
                                       {"batch_size": 8}, {"dtype": "bfloat16"}])
def test_a_record_made_elsewhere_is_never_the_baseline_of_a_speed_up(elsewhere):
    """The unpruned row measured on another device, host or setting: no speed-up, and the table says where
    the unpruned row was measured."""
    from d2pruner.measure import context_label

    here, there = _context(), _context(**elsewhere)
    spec, got, lines = _timed_table(there, here)
    speedup = got[("D2Pruner", "TTFT speed-up")]
    assert speedup["reproduced"] == ""
    assert speedup["status"] == f"not compared: the unpruned row was measured elsewhere ({context_label(there)})"
    assert got[("D2Pruner", "TTFT ms")]["reproduced"] == "15.00"  # its own timing is still shown
    md = tables.table_markdown(spec, lines, "## table2")
    assert "— (the unpruned row was measured elsewhere)" in md and "[A]" in md and "[B]" in md


def test_a_row_measured_in_several_places_uses_one_and_counts_the_rest():
    here = _context()
    spec = load_spec("table2")
    row = Row("D2Pruner", "10%", "d2pruner")
    cells = [_timed({}, [10.0, 12.0], here, "POPE"), _timed({}, [50.0], _context(host="x"), "MME")]
    timing = tables.row_timing(cells)
    assert timing["context"] == here and timing["cells_left_out"] == 1 and timing["samples"]["ttft_ms"] == [10.0, 12.0]
    assert "1 cell(s) measured elsewhere left out" in tables.measured_lines(row, timing, None)[0]["status"]
    assert tables.row_timing([{"value": 1.0}]) is None


def test_not_implemented_rows_keep_their_paper_values_in_the_table():
    spec = load_spec("table3")
    lines = tables.build_table(spec, [], [("FastV", "10%", "not implemented")], {})
    avg = next(ln for ln in lines if ln["benchmark"] == "Avg")
    paper = paper_values(spec)[("FastV", "10%", "Avg")]
    assert paper is not None and (avg["paper"], avg["reproduced"], avg["status"]) == (f"{paper:.2f}", "", "not run: not implemented")


def test_metric_value_names_the_reported_keys():
    results = {"results": {"d2p_pope": {"alias": "d2p_pope", "pope_f1_score,none": 0.5, "pope_f1_score_stderr,none": "N/A"}}}
    assert cell.metric_value(results, "d2p_pope", "pope_f1_score") == 0.5
    with pytest.raises(KeyError, match=r"'pope_accuracy' not in lmms-eval's results for d2p_pope; it reported \['pope_f1_score,none'\]"):
        cell.metric_value(results, "d2p_pope", "pope_accuracy")


def test_cell_records_are_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "cells" / "a.json"
    records.write_json_atomic(path, {"value": 1.5})
    assert json.loads(path.read_text()) == {"value": 1.5}
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]

    def killed(*args):  # the process dies after writing the new record, before it replaces the old one
        raise KeyboardInterrupt
    monkeypatch.setattr(records.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        records.write_json_atomic(path, {"value": 2.5, "long": "x" * 10_000})
    assert json.loads(path.read_text()) == {"value": 1.5}, "a record is never seen half-written"


def test_a_record_is_reused_only_for_its_own_fingerprint(tmp_path, capsys):
    row, bench = Row("D2Pruner", "10%", "d2pruner"), benchmarks.get("RefCOCO+ testA")
    record_path, answers = records.cell_paths(tmp_path, row, bench)
    assert (record_path.relative_to(tmp_path).as_posix(), answers.name) == (
        "cells/D2Pruner_10pct/RefCOCOplus_testA.json", "RefCOCOplus_testA.answers.jsonl")
    assert records.reusable_record(record_path, {"limit": 2}) is None
    records.write_json_atomic(record_path, {"cell": {"limit": 2}, "value": 1.0})
    assert records.reusable_record(record_path, {"limit": 2}) == {"cell": {"limit": 2}, "value": 1.0}
    assert records.reusable_record(record_path, {"limit": 3}) is None
    assert "recorded for another configuration" in capsys.readouterr().err


def test_relative_performance_and_the_abstracts_claim():
    """Rel = mean over the benchmarks of row / unpruned x 100 (MME included as a ratio), shown beside the
    abstract's claim of retained performance; a row with a benchmark not run has no Rel."""
    spec = load_spec("table1")
    benches = [b.name for b in specs.benchmark_columns(spec)]
    vanilla = {b: 60.0 for b in benches} | {"MME": 1500.0}
    pruned = {b: 57.0 for b in benches} | {"MME": 1500.0, "POPE": 60.0}
    rows = [Row("Vanilla", "576", None), Row("D2Pruner", "64", "d2pruner"), Row("FastV", "64", "fastv")]
    cells = _records(spec, {("Vanilla", "576"): vanilla, ("D2Pruner", "64"): pruned,
                            ("FastV", "64"): {b: 50.0 for b in benches if b != "GQA"}})
    lines = tables.build_table(spec, rows, [], cells)
    rel = {(ln["method"], ln["budget"]): ln["reproduced"] for ln in lines if ln["benchmark"] == "Rel"}
    want = 100 * ((len(benches) - 2) * 57 / 60 + 1 + 1) / len(benches)
    assert rel == {("Vanilla", "576"): "100.00", ("D2Pruner", "64"): f"{want:.2f}", ("FastV", "64"): ""}
    md = tables.table_markdown(spec, lines, "## table1")
    [entry] = spec["abstract"]
    with open(specs.ROOT / "paper_tables" / "abstract.csv", encoding="utf-8") as f:
        claim = next(r for r in csv.DictReader(f) if r["claim"] == entry["claim"])
    assert f"Abstract: {claim['claim']} = {claim['value']} {claim['unit']}" in md
    assert f"ours, D2Pruner Rel: 64 → {want:.2f}" in md


def test_a_second_lock_on_one_output_folder_is_refused_naming_the_first(tmp_path):
    import os

    first = records.OutputLock(tmp_path, command="python -m reproduce table1").acquire()
    with pytest.raises(records.OutputBusy, match=rf"{tmp_path} is in use by another run: pid {os.getpid()} on .*, started "
                                                 r".*python -m reproduce table1"):
        records.OutputLock(tmp_path).acquire()
    first.release()
    again = records.OutputLock(tmp_path).acquire()
    assert again.stale is None, "a lock released cleanly is not stale"
    again.release()


def _fake_run_cell(calls):
    """run_cell without lmms-eval: a record as the real one writes it (this run's fingerprint), value 1 + index."""
    def run_cell(*, spec, row, bench, out, adapter_kwargs, limit, include_path, env, provenance):
        import os as _os

        from reproduce import cell as cell_module

        calls.append((row.label, bench.name))
        record_path, _ = records.cell_paths(out, row, bench)
        cell = records.cell_fingerprint(spec=spec, row=row, bench=bench, limit=limit,
                                        world_size=int(_os.environ.get("WORLD_SIZE", "1")), adapter_kwargs=adapter_kwargs,
                                        attn_implementation=cell_module.row_attention(spec, row, "cpu")[0])
        if (old := records.reusable_record(record_path, cell)) is not None:
            return old
        record = {"cell": cell, "value": float(len(calls)), "n_samples": limit, "answers_sha256": f"h{len(calls)}"}
        records.write_json_atomic(record_path, record)
        return record
    return run_cell


def test_a_rows_subset_keeps_the_rows_earlier_runs_computed(tmp_path, monkeypatch, capsys):
    import csv
    import io

    from reproduce import cell

    calls = []
    monkeypatch.setattr(cell, "run_cell", _fake_run_cell(calls))
    out = tmp_path / "out"
    base = ["table1", "--smoke", "--columns", "POPE", "--out", str(out)]
    assert main([*base, "--rows", "Vanilla@576"]) == 0
    assert main([*base, "--rows", "FastV@64", "--limit", "3"]) == 0  # another limit: Vanilla's record does not fit
    assert main([*base, "--rows", "FastV@64"]) == 0
    assert calls == [("Vanilla@576", "POPE"), ("FastV@64", "POPE"), ("FastV@64", "POPE")]
    table = list(csv.DictReader(io.StringIO((out / "table.csv").read_text())))
    shown = {(r["method"], r["budget"]): r["reproduced"] for r in table if r["benchmark"] == "POPE"}
    assert shown == {("Vanilla", "576"): "1.00", ("FastV", "64"): "3.00"}
    md = (out / "table.md").read_text()
    assert "| Vanilla | 576 |" in md and "| FastV | 64 |" in md
    assert "1 cell of earlier runs" in capsys.readouterr().out


def test_rows_run_their_attention_the_unpruned_the_fastest_pruned_what_the_hooks_support(monkeypatch):
    """The spec's preference order: the unpruned row switches the shared model to the fastest that runs; a
    pruned row its language model alone to the fastest the hooks support (here, with the hooks pretending to
    support eager only, sdpa plays FlashAttention's part), the vision tower keeping the fastest."""
    from d2pruner.measure import attention_of
    from d2pruner.models import handle, tiny

    spec = {"model": {"attn_implementation": ["flash_attention_2", "sdpa", "eager"]}}
    model = tiny.tiny_llava(attn_implementation="eager")
    monkeypatch.setattr(handle, "SUPPORTED_ATTENTION", ("eager",))
    name, why = cell.row_attention(spec, Row("Vanilla", "576", None), "cpu", model)
    assert name == "sdpa" and why[0].startswith("flash_attention_2 needs a CUDA device")
    assert attention_of(model) == model.config.vision_config._attn_implementation == "sdpa"
    name, why = cell.row_attention(spec, Row("FastV", "64", "fastv"), "cpu", model)
    assert name == "eager" and "sdpa: not supported here (supported: eager)" in why
    assert attention_of(model) == "eager" and model.config.vision_config._attn_implementation == "sdpa"
    assert cell.row_attention(spec, Row("FastV", "64", "fastv"), "cpu")[0] == "eager"  # without a model: the choice


def test_a_cells_fingerprint_names_the_attention_its_row_runs_with(monkeypatch):
    """Kernels round differently, so answers cached under one attention implementation are not reused
    under another: the cell's run fingerprint carries the row's choice (the adapter's carries the one it
    was built with, the same)."""
    from d2pruner.models import handle
    from reproduce.benchmarks import all_benchmarks

    spec = {"spec_version": 1, "model": {"attn_implementation": ["flash_attention_2", "sdpa", "eager"]}}
    kwargs = dict(pretrained="m", revision=None, config="default", dtype="float32", prior=None, max_tiles=1,
                  max_new_tokens_cap=None, device="cpu")
    bench = all_benchmarks()[0]

    def fingerprint(row):
        return records.cell_fingerprint(spec=spec, row=row, bench=bench, limit=2, world_size=1, adapter_kwargs=kwargs,
                                        attn_implementation=cell.row_attention(spec, row, "cpu")[0])["run"]

    monkeypatch.setattr(handle, "SUPPORTED_ATTENTION", ("eager",))
    assert fingerprint(Row("Vanilla", "576", None))["attn_implementation"] == "sdpa"
    assert fingerprint(Row("FastV", "64", "fastv"))["attn_implementation"] == "eager"
    base = {k: v for k, v in kwargs.items() if k != "device"}
    assert (records.run_fingerprint(method="fastv", budget="64", attn_implementation="eager", **base)
            != records.run_fingerprint(method="fastv", budget="64", attn_implementation="sdpa", **base))
