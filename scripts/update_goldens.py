"""Regenerate the golden outputs: ``python scripts/update_goldens.py [--micro] [table ...]``.

Runs ``python -m reproduce <table> --smoke`` for each table (all by default) into a temporary folder
and writes its ``table.csv``, timings masked (:func:`reproduce.tables.golden_form`), to
``reproduce/golden/<table>-smoke.spec-v<version>.csv``. With ``--micro``: the reduced micro twin
(``--micro --reduced``) of each table that has one, to ``<table>-micro.spec-v<version>.csv``. Review the
diff before committing: a golden changes only with a deliberate change of the spec, the adapter,
the task files, the tiny models or a method.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reproduce import run  # noqa: E402
from reproduce.tables import golden_form  # noqa: E402


def main(argv: list[str]) -> int:
    micro = "--micro" in argv
    argv = [a for a in argv if a != "--micro"]
    tables = argv or [t for t in run.TABLES if not micro or "micro" in run.load_spec(t)]
    mode, flags = ("micro", ["--micro", "--reduced"]) if micro else ("smoke", ["--smoke"])
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TQDM_DISABLE="1")
    for table in tables:
        with tempfile.TemporaryDirectory() as tmp:
            env["HF_DATASETS_CACHE"] = str(pathlib.Path(tmp) / "datasets-cache")
            out = pathlib.Path(tmp) / "out"
            done = subprocess.run([sys.executable, "-m", "reproduce", table, *flags, "--out", str(out)], cwd=ROOT,
                                  env=env, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                return done.returncode
            golden = ROOT / "reproduce" / "golden" / f"{table}-{mode}.spec-v{run.load_spec(table)['spec_version']}.csv"
            golden.parent.mkdir(exist_ok=True)
            golden.write_text(golden_form((out / "table.csv").read_text()))  # timings masked
            print(f"wrote {golden.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
