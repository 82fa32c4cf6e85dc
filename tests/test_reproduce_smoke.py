"""The smoke twins of the paper tables, end to end through lmms-eval, against golden outputs.

Each test runs ``python -m reproduce <table> --smoke`` in a subprocess (importing lmms-eval changes
process-wide logging and warning filters): tiny random models, tiny local benchmark files, our
adapter and task overlays, lmms-eval's metric code. The golden files are keyed by the table spec's
version; after a deliberate change regenerate them with ``python scripts/update_goldens.py`` and
review the diff.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from reproduce import run

pytestmark = pytest.mark.lmms
ROOT = pathlib.Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "reproduce" / "golden"


def smoke_env(tmp_path: pathlib.Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_CACHE=str(tmp_path / "datasets-cache"), TQDM_DISABLE="1")
    env.pop("HYPOTHESIS_PROFILE", None)
    return env


def golden_path(table: str) -> pathlib.Path:
    return GOLDEN / f"{table}-smoke.spec-v{run.load_spec(table)['spec_version']}.csv"


def smoke(table: str, out: pathlib.Path, tmp_path: pathlib.Path, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reproduce", table, "--smoke", "--out", str(out)], cwd=ROOT,
                          env=smoke_env(tmp_path), capture_output=True, text=True, timeout=600, **popen)


@pytest.mark.parametrize("table", run.TABLES)
def test_smoke_twin_matches_its_golden_output(table, tmp_path):
    done = smoke(table, tmp_path / "out", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    produced = (tmp_path / "out" / "table.csv").read_text()
    golden = golden_path(table)
    assert golden.exists(), f"no golden output {golden.name} for this spec version: run python scripts/update_goldens.py"
    assert produced == golden.read_text(), f"{table} smoke output differs from {golden.name}"
    assert "wrote" in done.stdout and (tmp_path / "out" / "table.md").exists()
    records = sorted((tmp_path / "out" / "cells").glob("*/*.json"))
    spec = run.load_spec(table)
    assert len(records) == len(spec["smoke"]["rows"]) * sum("derived" not in c for c in spec["columns"])
    rec = json.loads(records[0].read_text())
    for field in ("d2pruner", "lmms_eval", "git_commit", "device", "dtype", "seed", "prior_sha256", "model_id"):
        assert field in rec["provenance"], field
    assert rec["spec_version"] == spec["spec_version"] and rec["n_samples"] == spec["smoke"]["limit"]


def answer_lines(out: pathlib.Path) -> dict[pathlib.Path, list[dict]]:
    return {p: [json.loads(line) for line in p.read_text().splitlines()[1:]]
            for p in sorted((out / "cells").glob("*/*.answers.jsonl"))}


def test_a_run_killed_mid_way_resumes_without_computing_any_sample_twice(tmp_path):
    table = "table3"  # 16 cells: long enough to be killed inside one
    for attempt in range(3):
        out = tmp_path / f"out{attempt}"
        proc = subprocess.Popen([sys.executable, "-m", "reproduce", table, "--smoke", "--out", str(out)], cwd=ROOT,
                                env=smoke_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            cells = out / "cells"
            partial = [p for p in cells.glob("*/*.answers.jsonl") if p.read_text().count("\n") >= 2] if cells.exists() else []
            if len(partial) >= 3:
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"the smoke run ended before it could be killed: {proc.stderr.read()[-2000:]}"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        before = answer_lines(out)
        interrupted = [p for p, lines in before.items()
                       if not p.with_name(p.name.replace(".answers.jsonl", ".json")).exists()]
        if interrupted:
            break
    assert interrupted, "could not kill the run inside a cell in 3 attempts"
    done = smoke(table, out, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    after = answer_lines(out)
    limit = run.load_spec(table)["smoke"]["limit"]
    for path, lines in after.items():
        keys = [r["key"] for r in lines]
        assert len(keys) == len(set(keys)) == limit, f"{path.name}: {len(keys)} answers, {len(set(keys))} distinct"
        assert lines[:len(before.get(path, []))] == before.get(path, []), f"{path.name}: answers of the killed run changed"
    resumed = [p for p in interrupted if after[p][0]["run"] != after[p][-1]["run"]]
    assert resumed or any(len(before[p]) == limit for p in interrupted)
    assert (out / "table.csv").read_text() == golden_path(table).read_text()


def test_two_processes_shard_the_samples_and_give_the_same_table(tmp_path):
    """``torchrun --nproc_per_node 2 -m reproduce``: each process answers its own share of every cell
    (one answer file per rank, no sample answered twice) and rank 0 writes the single-process table."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "reproduce",
                           "table2", "--smoke", "--out", str(out)], cwd=ROOT, env=smoke_env(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    limit = run.load_spec("table2")["smoke"]["limit"]
    for cell in sorted((out / "cells").glob("*/*.json")):
        shards = sorted(cell.parent.glob(cell.stem + ".answers.rank*-of-2.jsonl"))
        assert [s.name.split(".")[-2] for s in shards] == ["rank0-of-2", "rank1-of-2"], cell
        keys = [json.loads(line)["key"] for s in shards for line in s.read_text().splitlines()[1:]]
        assert all(len(s.read_text().splitlines()) > 1 for s in shards), f"{cell.name}: a rank answered nothing"
        assert len(keys) == len(set(keys)) == limit, f"{cell.name}: {len(keys)} answers, {len(set(keys))} distinct"
    assert (out / "table.csv").read_text() == golden_path("table2").read_text()
