"""reproduce/specs: every spec cell maps to exactly one paper_tables cell, and every paper cell is used."""

import csv
import json
import pathlib

import pytest

from d2pruner.methods import METHODS

ROOT = pathlib.Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "reproduce" / "specs").glob("table*.json"))


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_spec_cells_match_the_paper_cells_one_to_one(path):
    spec = json.loads(path.read_text())
    assert spec["spec_version"] >= 1 and spec["table"] == path.stem
    with open(ROOT / spec["paper_file"], encoding="utf-8") as f:
        paper = list(csv.DictReader(f))
    paper_cells = [(r["method"], r["budget"], r["benchmark"]) for r in paper]
    spec_cells = [(r["method"], r["budget"], c["benchmark"]) for r in spec["rows"] for c in spec["columns"]]
    assert len(spec_cells) == len(set(spec_cells))
    assert sorted(spec_cells) == sorted(paper_cells), set(spec_cells) ^ set(paper_cells)


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_spec_columns_and_methods_are_runnable_or_marked(path):
    spec = json.loads(path.read_text())
    for col in spec["columns"]:
        assert ("task" in col and "metric" in col and col["scale"] in (1, 100)) or "derived" in col, col
    for row in spec["rows"]:
        key = spec["method_keys"][row["method"]]
        assert key is None or key in METHODS, f"{row['method']} maps to unknown method {key!r}"
    for method, budget in spec["smoke"]["rows"]:
        assert {"method": method, "budget": budget} in spec["rows"]


def test_reproduce_list(capsys):
    from reproduce.__main__ import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "paper cells known: 7 of 250" in out and "paper cells known: 0 of 136" in out and "paper cells known: 21 of 90" in out
    assert "25 rows, 23 runnable" in out and "not run: VisionZip@10%: visionzip needs the [CLS] attention" in out
    assert "not implemented" not in out
    assert main(["nope"]) == 2 and "unknown command 'nope'" in capsys.readouterr().err
