"""The notebooks are jupytext pairs: the .ipynb holds exactly the .py's cells and no outputs."""

import pathlib

import jupytext
import pytest

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
PAIRS = sorted(NOTEBOOKS.glob("*.py"))


def test_there_are_three_walkthroughs():
    assert [p.stem for p in PAIRS] == ["01_method_walkthrough", "02_reference_vs_fast", "03_pruned_model"]


@pytest.mark.parametrize("script", PAIRS, ids=[p.stem for p in PAIRS])
def test_pair_in_sync_and_without_outputs(script):
    text = jupytext.read(script)
    nb = jupytext.read(script.with_suffix(".ipynb"))
    assert [(c.cell_type, c.source) for c in nb.cells] == [(c.cell_type, c.source) for c in text.cells], \
        f"{script.name} and its .ipynb differ: run `jupytext --sync {script}`"
    assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code"), \
        "commit notebooks without outputs"
    assert "def " not in "".join(c.source for c in text.cells if c.cell_type == "code" and "@given" not in c.source
                                 and "without_topup" not in c.source), "notebooks walk through; they do not implement"
