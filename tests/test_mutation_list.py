"""The mutation check's mutants still apply: each one's text occurs in its file (a refactor that moves the
code must move the mutant with it, or the check stops at that mutant)."""

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _mutants() -> dict:
    spec = importlib.util.spec_from_file_location("mutation_check", ROOT / "scripts" / "mutation_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MUTANTS


@pytest.mark.parametrize("name", sorted(_mutants()))
def test_every_mutant_applies_to_its_file(name):
    path, old, new = _mutants()[name]
    text = (ROOT / path).read_text()
    assert old in text, f"mutant {name!r}: its text is no longer in {path}"
    assert old != new
