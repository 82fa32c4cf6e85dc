"""reproduce/specs: every spec cell maps to exactly one paper_tables cell, every paper cell is used, and
every column names a benchmark record."""

import csv

import pytest

from reproduce import benchmarks
from reproduce.specs import ROOT, TABLES, load_spec, select_rows


def _paper(spec):
    with open(ROOT / spec["paper_file"], encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("table", TABLES)
def test_spec_cells_match_the_paper_cells_one_to_one(table):
    spec = load_spec(table)
    assert spec["spec_version"] >= 1 and spec["table"] == table
    if spec["paper_file"] is None:  # beyond the paper: it says so, and its cells are unique
        assert spec["beyond_paper"].startswith("Not in the paper")
        cells = [(r["method"], r["budget"], c["benchmark"]) for r in spec["rows"] for c in spec["columns"]]
        assert len(cells) == len(set(cells))
        return
    paper_cells = [(r["method"], r["budget"], r["benchmark"]) for r in _paper(spec)]
    spec_cells = [(r["method"], r["budget"], c["benchmark"]) for r in spec["rows"] for c in spec["columns"]]
    assert len(spec_cells) == len(set(spec_cells))
    assert sorted(spec_cells) == sorted(paper_cells), set(spec_cells) ^ set(paper_cells)


@pytest.mark.parametrize("table", TABLES)
def test_spec_columns_and_methods_are_runnable_or_marked(table):
    from d2pruner.methods.base import get_method

    spec = load_spec(table)
    names = [c["benchmark"] for c in spec["columns"]]
    assert len(names) == len(set(names))
    for col in spec["columns"]:
        if "derived" in col:
            of = col["of"] if isinstance(col["of"], list) else [col["of"]]
            assert set(of) <= set(names), col
        else:  # a benchmark column only names its record: task, metric and scale are the record's
            assert set(col) == {"benchmark"}, col
            assert benchmarks.get(col["benchmark"]).scale in (1, 100)
    for row in spec["rows"]:
        key = spec["method_keys"][row["method"]]
        if key is not None:
            get_method(key)  # raises for a name no method is registered under
    for method, budget in spec["smoke"]["rows"]:
        assert {"method": method, "budget": budget} in spec["rows"]


def test_every_benchmark_record_is_a_column_of_some_table():
    used = {c["benchmark"] for t in TABLES for c in load_spec(t)["columns"] if "derived" not in c}
    assert {b.name for b in benchmarks.all_benchmarks()} == used


def test_reproduce_list(capsys):
    from reproduce.__main__ import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for table in TABLES:
        spec = load_spec(table)
        if spec["paper_file"] is None:
            assert f"{table}: beyond the paper, no paper cells" in out
        else:
            paper = _paper(spec)
            known = sum(r["value"] != "unknown" for r in paper)
            assert f"paper cells known: {known} of {len(paper)}" in out
            assert len(paper) == len(spec["rows"]) * len(spec["columns"])
        runnable, skipped = select_rows(spec, smoke=False, wanted=None)
        assert len(runnable) + len(skipped) == len(spec["rows"])
        assert f"{table} (spec v{spec['spec_version']}): {spec['caption']}\n  model {spec['model']['id']}; " \
               f"{len(spec['rows'])} rows, {len(runnable)} runnable\n" in out
        for method, budget, why in skipped:
            assert why and f"  not run: {method}@{budget}: {why.split(': ')[0]}" in out
    assert "not run: VisionZip@10%: visionzip needs the [CLS] attention" in out
    assert "not implemented" not in out
    assert f"python -m reproduce {'|'.join(TABLES)} [--smoke | --micro [--reduced]]" in out
    for table in TABLES:
        micro = load_spec(table).get("micro")
        if micro:
            rows, _ = select_rows(load_spec(table), False, None, micro=True)
            assert f"micro twin (--micro): micro {micro['model']}, {len(rows)} rows that run" in out
    assert main(["nope"]) == 2 and "unknown command 'nope'" in capsys.readouterr().err
