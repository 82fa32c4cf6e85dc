"""The reduced micro twins of the paper tables (``python -m reproduce <table> --micro --reduced``), end to
end through lmms-eval with the shipped micro models, against golden outputs keyed by the spec version
(regenerate after a deliberate change: ``python scripts/update_goldens.py --micro``)."""

import csv
import io
import subprocess
import sys

import pytest

from reproduce import specs, tables
from tests.test_reproduce_smoke import GOLDEN, ROOT, smoke_env

pytestmark = [pytest.mark.lmms, pytest.mark.micro]
MICRO_TABLES = [t for t in specs.TABLES if "micro" in specs.load_spec(t)]


def test_the_paper_tables_have_micro_twins():
    assert {"table1", "table2", "table3"} <= set(MICRO_TABLES)


@pytest.mark.parametrize("table", MICRO_TABLES)
def test_reduced_micro_twin_matches_its_golden_output(table, tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "reproduce", table, "--micro", "--reduced", "--out", str(out)], cwd=ROOT,
                          env=smoke_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    produced = tables.golden_form((out / "table.csv").read_text())
    golden = GOLDEN / f"{table}-micro.spec-v{specs.load_spec(table)['spec_version']}.csv"
    assert golden.exists(), f"no golden {golden.name}: run python scripts/update_goldens.py --micro {table}"
    assert produced == golden.read_text(), f"{table} micro output differs from {golden.name}"
    md = (out / "table.md").read_text()
    assert "micro-model numbers, not the paper's" in md and " / " not in md.split("| method |")[1].split("\n\n")[0]
    values = {(r["method"], r["benchmark"]): r["reproduced"] for r in csv.DictReader(io.StringIO(produced))}
    reduced = specs.load_spec(table)["micro"]["reduced"]
    cells = [float(values[(m, c)]) for m, _ in reduced["rows"] for c in reduced["columns"]]
    assert max(cells) > 0 and len(set(cells)) > 1  # a trained model: real, different numbers


def test_micro_refuses_what_it_cannot_run(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "reproduce", *args], cwd=ROOT, env=smoke_env(tmp_path),
                              capture_output=True, text=True, timeout=300)

    done = run("table1", "--micro", "--smoke")
    assert done.returncode == 2 and "--micro runs the shipped micro model" in done.stderr
    done = run("table1", "--reduced")
    assert done.returncode == 2 and "--reduced is a form of --micro" in done.stderr
    no_twin = [t for t in specs.TABLES if t not in MICRO_TABLES][0]
    done = run(no_twin, "--micro")
    assert done.returncode == 2 and f"{no_twin} has no micro twin" in done.stderr
    done = run("table1", "--micro", "--rows", "D2Pruner@64", "--prior", str(tmp_path / "none.json"),
               "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and "none.json not found" in done.stderr
