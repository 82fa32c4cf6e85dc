"""The docs state the config the code has: every field's default and source appear in docs/method.md."""

import pathlib
import re

from d2pruner import D2PrunerConfig

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "method.md"


def test_config_table_matches_code():
    rows = {m.group(1): m.group(2).strip() for m in re.finditer(r"^\| `(\w+)` \| ([^|]+) \|", DOC.read_text(), re.M)}
    fields = D2PrunerConfig.field_table()
    assert set(rows) == {name for name, *_ in fields}
    for name, default, source, _ in fields:
        assert rows[name] == str(default), f"{name}: docs say {rows[name]}, code says {default}"
        row = re.search(rf"^\| `{name}` \|[^|]+\| ([^|]+) \|", DOC.read_text(), re.M).group(1)
        assert row.strip() == source, f"{name}: docs source {row.strip()!r} vs code {source!r}"
