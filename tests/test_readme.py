"""The README's Python examples run as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no Python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})
    out = capsys.readouterr().out
    assert "{'pivot': 44, 'mis': 20, 'topup': 0}" in out  # the count the README's comment states
    assert "576 -> 64 {'pivot': 44, 'mis': 20, 'topup': 0} debiased: False" in out
    assert "is not in the local Hugging Face cache" in out or "pivot" in out.splitlines()[-1]


def test_readme_results_section_is_generated_from_the_result_files():
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_results", README.parent / "scripts" / "render_results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = README.read_text()
    section = text.split(mod.START, 1)[1].split(mod.END, 1)[0]
    assert section == "\n" + mod.render(), "README results differ from docs/results: run python scripts/render_results.py"
