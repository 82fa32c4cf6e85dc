"""The smoke twins of the paper tables, end to end through lmms-eval, against golden outputs.

Each test runs ``python -m reproduce <table> --smoke`` in a subprocess (importing lmms-eval changes
process-wide logging and warning filters): tiny random models, tiny local benchmark files, our
adapter and task overlays, lmms-eval's metric code. The golden files are keyed by the table spec's
version; after a deliberate change regenerate them with ``python scripts/update_goldens.py`` and
review the diff. The measured columns' values (timings, the machine) are masked on both sides
(:func:`reproduce.tables.golden_form`); which lines were measured, over how many samples, and the
attention implementation are compared.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from reproduce import specs, tables

pytestmark = pytest.mark.lmms
ROOT = pathlib.Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "reproduce" / "golden"


def smoke_env(tmp_path: pathlib.Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_CACHE=str(tmp_path / "datasets-cache"), TQDM_DISABLE="1")
    env.pop("HYPOTHESIS_PROFILE", None)
    return env


def golden_path(table: str) -> pathlib.Path:
    return GOLDEN / f"{table}-smoke.spec-v{specs.load_spec(table)['spec_version']}.csv"


def smoke(table: str, out: pathlib.Path, tmp_path: pathlib.Path, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reproduce", table, "--smoke", "--out", str(out)], cwd=ROOT,
                          env=smoke_env(tmp_path), capture_output=True, text=True, timeout=600, **popen)


@pytest.mark.parametrize("table", specs.TABLES)
def test_smoke_twin_matches_its_golden_output(table, tmp_path):
    done = smoke(table, tmp_path / "out", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    produced = tables.golden_form((tmp_path / "out" / "table.csv").read_text())
    golden = golden_path(table)
    assert golden.exists(), f"no golden output {golden.name} for this spec version: run python scripts/update_goldens.py"
    assert produced == golden.read_text(), f"{table} smoke output differs from {golden.name}"
    measured = [ln for ln in produced.splitlines() if ",TTFT ms," in ln or ",TTFT speed-up," in ln]
    assert measured and all(",*," in ln and ln.endswith(",measured") for ln in measured), measured  # CPU: measured, compared
    assert "wrote" in done.stdout and (tmp_path / "out" / "table.md").exists()
    records = sorted((tmp_path / "out" / "cells").glob("*/*.json"))
    spec = specs.load_spec(table)
    assert len(records) == len(spec["smoke"]["rows"]) * len(specs.benchmark_columns(spec))
    rec = json.loads(records[0].read_text())
    for field in ("d2pruner", "lmms_eval", "git_commit", "device", "dtype", "seed", "prior_sha256", "model_id",
                  "attn_implementation", "batch_size"):
        assert field in rec["provenance"], field
    timing = rec["timing"]
    assert timing["context"]["device"] == "cpu" and timing["n_timed"] == len(timing["per_sample"]) == rec["n_samples"]
    assert set(timing["ttft_ms"]) == {"median", "p90", "max", "n"}
    assert rec["spec_version"] == spec["spec_version"] and rec["n_samples"] == spec["smoke"]["limit"]


def answer_lines(out: pathlib.Path) -> dict[pathlib.Path, list[dict]]:
    return {p: [json.loads(line) for line in p.read_text().splitlines()[1:]]
            for p in sorted((out / "cells").glob("*/*.answers.jsonl"))}


def test_a_run_killed_mid_way_resumes_without_computing_any_sample_twice(tmp_path):
    table = "table3"  # 2 rows x 8 benchmarks: long enough to be killed inside one cell
    limit = specs.load_spec(table)["smoke"]["limit"]
    for attempt in range(5):
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
        mid_cell = [p for p in interrupted if 0 < len(before[p]) < limit]  # some answers of the cell, not all
        if mid_cell:
            break
    assert mid_cell, "could not kill the run between two batches of a cell in 5 attempts"
    done = smoke(table, out, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    after = answer_lines(out)
    for path, lines in after.items():
        keys = [r["key"] for r in lines]
        assert len(keys) == len(set(keys)) == limit, f"{path.name}: {len(keys)} answers, {len(set(keys))} distinct"
        assert lines[:len(before.get(path, []))] == before.get(path, []), f"{path.name}: answers of the killed run changed"
    for p in mid_cell:  # the killed run's answers kept, the rest computed by the second run
        assert after[p][0]["run"] != after[p][-1]["run"], f"{p.name}: the cell was not resumed"
    assert tables.golden_form((out / "table.csv").read_text()) == golden_path(table).read_text()


def test_two_processes_shard_the_samples_and_give_the_same_table(tmp_path):
    """``torchrun --nproc_per_node 2 -m reproduce``: each process answers its own share of every cell
    (one answer file per rank, no sample answered twice) and rank 0 writes the single-process table.
    Three samples do not split evenly: lmms-eval pads the short shard with a copy of its last request,
    which must be answered once and counted once."""
    rows, columns = "Vanilla@100%,D2Pruner@10%", "POPE,GQA"
    args = ["table2", "--smoke", "--limit", "3", "--rows", rows, "--columns", columns]
    alone = subprocess.run([sys.executable, "-m", "reproduce", *args, "--out", str(tmp_path / "alone")], cwd=ROOT,
                           env=smoke_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert alone.returncode == 0, alone.stderr[-3000:]
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "reproduce",
                           *args, "--out", str(out)], cwd=ROOT, env=smoke_env(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    cells = sorted((out / "cells").glob("*/*.json"))
    assert len(cells) == len(rows.split(",")) * len(columns.split(","))
    for cell in cells:
        shards = sorted(cell.parent.glob(cell.stem + ".answers.rank*-of-2.jsonl"))
        assert [s.name.split(".")[-2] for s in shards] == ["rank0-of-2", "rank1-of-2"], cell
        keys = [[json.loads(line)["key"] for line in s.read_text().splitlines()[1:]] for s in shards]
        assert [len(k) for k in keys] == [2, 1], f"{cell.name}: answers per rank {[len(k) for k in keys]}"
        assert len(set(keys[0] + keys[1])) == 3
        assert json.loads(cell.read_text())["n_samples"] == 3
    assert tables.golden_form((out / "table.csv").read_text()) == tables.golden_form((tmp_path / "alone" / "table.csv").read_text())


def test_a_record_of_another_configuration_is_evaluated_again(tmp_path):
    """A cell recorded with ``--limit 2`` is not shown for ``--limit 3``: it is evaluated again, reusing the
    two cached answers and computing only the third."""
    args = ["table2", "--smoke", "--rows", "D2Pruner@10%", "--columns", "POPE", "--out", str(tmp_path / "out")]
    first = subprocess.run([sys.executable, "-m", "reproduce", *args, "--limit", "2"], cwd=ROOT, env=smoke_env(tmp_path),
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    record = tmp_path / "out" / "cells" / "D2Pruner_10pct" / "POPE.json"
    answers = record.with_name("POPE.answers.jsonl")
    before = answers.read_text().splitlines()
    assert json.loads(record.read_text())["n_samples"] == 2 and len(before) == 3
    # the adapter's answer cache and the cell record name the same run, the row's attention kernel included
    run = json.loads(record.read_text())["cell"]["run"]
    assert json.loads(before[0])["fingerprint"] == run and run["attn_implementation"] == "sdpa"
    again = subprocess.run([sys.executable, "-m", "reproduce", *args, "--limit", "3"], cwd=ROOT, env=smoke_env(tmp_path),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "recorded for another configuration" in again.stderr
    after = answers.read_text().splitlines()
    assert after[:3] == before and len(after) == 4, "the cached answers must be reused and only one sample added"
    rec = json.loads(record.read_text())
    assert rec["n_samples"] == 3 and rec["cell"]["limit"] == 3
    short = subprocess.run([sys.executable, "-m", "reproduce", *args, "--limit", "2"], cwd=ROOT, env=smoke_env(tmp_path),
                           capture_output=True, text=True, timeout=600)
    assert short.returncode == 0 and json.loads(record.read_text())["n_samples"] == 2  # counts only what it scored
    # answers a killed run of another configuration (here: another prior) left behind, with no record:
    # set aside, not mixed in nor refused
    record.unlink()
    lines = answers.read_text().splitlines()
    head = json.loads(lines[0])
    head["fingerprint"]["prior_sha256"] = "0" * 64
    answers.write_text("\n".join([json.dumps(head, sort_keys=True), *lines[1:]]) + "\n")
    other = subprocess.run([sys.executable, "-m", "reproduce", *args, "--limit", "2"], cwd=ROOT, env=smoke_env(tmp_path),
                           capture_output=True, text=True, timeout=600)
    assert other.returncode == 0, other.stderr[-3000:]
    assert "answers of another run configuration, set aside" in other.stderr
    stale = list(answers.parent.glob("POPE.answers.stale-*.jsonl"))
    assert len(stale) == 1 and stale[0].read_text().splitlines()[1:] == lines[1:], "the other run's answers are kept"
    assert len(answers.read_text().splitlines()) == 3 and json.loads(record.read_text())["n_samples"] == 2


def test_rows_that_do_not_read_the_prior_do_not_depend_on_it():
    from reproduce import adapter

    base = dict(pretrained="m", revision=None, budget="64", config="default", dtype="float16", max_tiles=12,
                max_new_tokens_cap=None, attn_implementation="sdpa")
    prior = ROOT / "d2pruner" / "data" / "llava-1.5-7b-hf.json"
    for method in ("fastv", None):
        assert adapter.run_fingerprint(method=method, prior=None, **base) == adapter.run_fingerprint(method=method, prior=str(prior), **base)
    assert adapter.run_fingerprint(method="d2pruner", prior=None, **base) != adapter.run_fingerprint(method="d2pruner", prior=str(prior), **base)
