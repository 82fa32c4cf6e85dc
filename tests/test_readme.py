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
