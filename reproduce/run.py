"""``python -m reproduce table1|table2|table3``: regenerate a paper table through lmms-eval.

For each row (method x budget) and column (benchmark) of the table spec (``reproduce/specs``) one
lmms-eval task runs on our adapter (:mod:`reproduce.adapter`) with our task files
(:mod:`reproduce.tasks`). Every cell writes a record with its provenance; every answer is cached per
sample as soon as its batch is done, so a run killed at any moment and started again recomputes
nothing and duplicates nothing. At the end the table is printed and written (Markdown and CSV) with
the paper's value, ours, the difference and whether it is within the spec's tolerance, the derived
columns (Avg, Rel) computed as the spec says, and each row's prefill FLOPs.

``--smoke`` runs the same spec on CPU in seconds: the tiny random model of the same family, tiny
local benchmark files in the real schemas built from sample images shipped in installed packages,
and a prior measured on the tiny model; its output is compared with a golden file in CI.

Output folder (``--out``, default ``results/<table>`` or ``results/<table>-smoke``)::

    cells/<method>@<budget>/<benchmark>.json          one record per cell (value + provenance)
    cells/<method>@<budget>/<benchmark>.answers.jsonl one line per answered sample (the resume cache)
    table.md, table.csv                               the table
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import hashlib
import io
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
SPECS = pathlib.Path(__file__).resolve().parent / "specs"
TABLES = ("table1", "table2", "table3")
SEED = 0


class MissingInputs(Exception):
    """A checkpoint, data set or prior that a real run needs is not available locally."""


def load_spec(table: str) -> dict:
    """The table spec ``reproduce/specs/<table>.json``; ``ValueError`` naming the known tables otherwise."""
    path = SPECS / f"{table}.json"
    if table not in TABLES or not path.exists():
        raise ValueError(f"unknown table {table!r}; available: {', '.join(TABLES)}")
    return json.loads(path.read_text())


def paper_values(spec: dict) -> dict[tuple[str, str, str], float | None]:
    """``(method, budget, benchmark) -> value`` from paper_tables (None where the paper's cell is unknown)."""
    with open(ROOT / spec["paper_file"], encoding="utf-8") as f:
        return {(r["method"], r["budget"], r["benchmark"]): None if r["value"] == "unknown" else float(r["value"])
                for r in csv.DictReader(f)}


def slug(text: str) -> str:
    """A file-name-safe form of a method, budget or benchmark name.

    >>> slug("RefCOCO+ testA"), slug("10%"), slug("MMB-CN")
    ('RefCOCOplus_testA', '10pct', 'MMB-CN')
    """
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text.replace("+", "plus").replace("%", "pct").replace(" ", "_"))


@dataclasses.dataclass(frozen=True)
class Row:
    method: str
    budget: str
    key: str | None  # method name in d2pruner.methods.METHODS; None for the unpruned model

    @property
    def label(self) -> str:
        return f"{self.method}@{self.budget}"


def select_rows(spec: dict, smoke: bool, wanted: str | None) -> tuple[list[Row], list[tuple[str, str, str]]]:
    """The rows to run and the rows marked not run (with the reason).

    ``wanted``: comma-separated ``Method@budget`` labels (``--rows``); ``ValueError`` naming unknown ones.
    """
    from d2pruner.methods import METHODS

    rows = spec["rows"]
    if smoke:
        rows = [{"method": m, "budget": b} for m, b in spec["smoke"]["rows"]]
    if wanted:
        labels = [w.strip() for w in wanted.split(",") if w.strip()]
        known = {f"{r['method']}@{r['budget']}": r for r in spec["rows"]}
        bad = [w for w in labels if w not in known]
        if bad:
            raise ValueError(f"unknown rows {bad} for {spec['table']}; rows are: {', '.join(known)}")
        rows = [known[w] for w in labels]
    run, skipped = [], []
    for r in rows:
        key = spec["method_keys"][r["method"]]
        if r["method"] == "Vanilla":
            run.append(Row(r["method"], r["budget"], None))
        elif key is None or key not in METHODS:
            skipped.append((r["method"], r["budget"], "not implemented"))
        elif (why := row_refusal(spec, key, r["budget"])) is not None:
            skipped.append((r["method"], r["budget"], why))
        else:
            run.append(Row(r["method"], r["budget"], key))
    return run, skipped


def row_refusal(spec: dict, key: str, budget: str) -> str | None:
    """Why method ``key`` cannot run at ``budget`` on the spec's model, decided before anything runs, or None.

    Two reasons exist: the model family refuses the method (InternVL has no [CLS] attention for
    VisionZip and no CLIP text tower for CDPruner: :func:`d2pruner.models.internvl.unsupported`), or a
    progressive method cannot average ``budget`` visual tokens over the full-size model's layers under
    the equivalent-token rule (PyramidDrop at 128 or 64 of 576).

    >>> spec = load_spec("table1")
    >>> row_refusal(spec, "pyramiddrop", "192") is None, row_refusal(spec, "pyramiddrop", "64")[:40]
    (True, 'pyramiddrop cannot average 64 visual tok')
    >>> row_refusal(load_spec("table3"), "visionzip", "10%")[:40]
    'visionzip needs the [CLS] attention of t'
    """
    from d2pruner.methods import get_method
    from d2pruner.models import internvl
    from reproduce.efficiency import row_tflops

    if spec["model"]["family"] == "internvl" and (why := internvl.unsupported(get_method(key))) is not None:
        return why
    try:  # the schedule of the full-size model: stage budgets raise where the average is unreachable
        row_tflops(spec["model"]["id"], key, budget)
    except ValueError as err:
        return str(err)
    return None


def select_columns(spec: dict, wanted: str | None) -> list[dict]:
    """The benchmark columns to run (``--columns``: comma-separated benchmark names)."""
    cols = [c for c in spec["columns"] if "derived" not in c]
    if wanted:
        names = [w.strip() for w in wanted.split(",") if w.strip()]
        known = {c["benchmark"]: c for c in cols}
        bad = [n for n in names if n not in known]
        if bad:
            raise ValueError(f"unknown columns {bad} for {spec['table']}; columns are: {', '.join(known)}")
        cols = [known[n] for n in names]
    return cols


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if sha.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: str) -> dict:
    """Versions and machine of this run (the part of a cell's provenance shared by all cells)."""
    from importlib import metadata

    import torch
    import transformers

    import d2pruner

    if str(device).startswith("cuda") and torch.cuda.is_available():
        machine = torch.cuda.get_device_name(torch.device(device))
    else:
        machine = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return {"d2pruner": d2pruner.__version__, "lmms_eval": metadata.version("lmms-eval"), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(), "git_commit": git_commit(),
            "device": str(device), "machine": machine}


def checkpoint_cached(model_id: str, revision: str | None) -> bool:
    """Whether ``model_id`` (a hub id or a local folder) is available without network."""
    if pathlib.Path(model_id).is_dir():
        return (pathlib.Path(model_id) / "config.json").exists()
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(model_id, "config.json", revision=revision)
    return isinstance(hit, str)


def check_inputs(spec: dict, rows: list[Row], columns: list[dict], model_id: str, revision: str | None,
                 prior: pathlib.Path | None) -> None:
    """Raise :class:`MissingInputs` listing every missing checkpoint, data set and prior, with how to get them."""
    from reproduce import tasks

    problems = []
    if not checkpoint_cached(model_id, revision):
        problems.append(f"checkpoint {model_id!r} is not in the local Hugging Face cache: on a machine with network run "
                        f"`huggingface-cli download {model_id}` and copy the cache (HF_HOME) here, or pass "
                        "--model-path DIR with a local copy")
    for col in columns:
        missing = tasks.missing_data(col["task"])
        if missing:
            problems.append(f"{col['benchmark']} (task {col['task']}): data set(s) {', '.join(missing)} not in the local "
                            "datasets cache: run once with network access (`python -m reproduce "
                            f"{spec['table']} --columns '{col['benchmark']}' --limit 1` with HF_TOKEN set and without "
                            "HF_HUB_OFFLINE) or copy the cache (HF_HOME) here")
    if spec["model"]["family"] == "llava" and any(r.key == "cdpruner" for r in rows):
        from d2pruner.models.clip_text import CLIP_FOR_LLAVA

        if not checkpoint_cached(CLIP_FOR_LLAVA, None):
            problems.append(f"CLIP text tower {CLIP_FOR_LLAVA!r} (needed by the CDPruner rows) is not in the local "
                            f"Hugging Face cache: on a machine with network run `huggingface-cli download "
                            f"{CLIP_FOR_LLAVA}` and copy the cache (HF_HOME) here")
    if any(r.key in NEEDS_PRIOR for r in rows) and (prior is None or not prior.exists()):
        problems.append(f"prior file {prior} not found (needed by the {', '.join(sorted({r.method for r in rows if r.key in NEEDS_PRIOR}))} "
                        f"rows): measure it with `python -m d2pruner.models.prior --model {model_id} --images "
                        f"<folder of calibration images, e.g. 1000 COCO images> --out {prior}`, or pass --prior PATH")
    if problems:
        raise MissingInputs("cannot run " + spec["table"] + ":\n  - " + "\n  - ".join(problems))


from reproduce.adapter import NEEDS_PRIOR  # noqa: E402  (the adapter module imports only torch and the stdlib)


def smoke_images() -> list:
    """The package sample photographs the smoke data is built from, as PIL images."""
    from PIL import Image

    from reproduce.tasks import smoke

    return [Image.open(io.BytesIO(smoke.sample_png(s))).convert("RGB") for s in smoke.SAMPLES]


def smoke_prior(model, processor, family: str, out: pathlib.Path, max_tiles: int) -> pathlib.Path:
    """A prior measured on the tiny model over three package sample images (the real command's code path)."""
    from d2pruner.models import internvl, llava
    from d2pruner.models.loading import build_inputs
    from d2pruner.models.prior import DEFAULT_PROMPT, compute
    from reproduce.adapter import tile_pixels

    grids: list = [None]
    if family == "llava":
        side = llava.grid_side(model)
        find = lambda ids: llava.find_items(ids, int(model.config.image_token_id), side)  # noqa: E731
    else:
        side = internvl.tile_side(model)
        find = lambda ids: internvl.find_items(ids, int(model.config.image_token_id), side, grids)  # noqa: E731

    def make(image):
        def build():
            if family == "internvl":
                grids[0] = internvl.tile_grid((image.height, image.width), max_tiles, tile_pixels=tile_pixels(processor))
            return build_inputs(processor, family, image, DEFAULT_PROMPT, max_tiles, model.device)
        return build

    images = smoke_images()[:3]
    meta = {"model_id": f"tiny_{family}", "model_class": type(model).__name__, "prune_layer": 2, "prompt": DEFAULT_PROMPT,
            "per": "smoke: package sample images"}
    compute(model, [(f"sample{i}", make(im)) for i, im in enumerate(images)], prune_layer=2, find_items=find,
            block=side * side, meta=meta, out=out, progress=False)
    return out


def metric_value(results: dict, task: str, metric: str) -> float:
    """The metric from lmms-eval's results dict (keys are ``"<metric>,<filter>"``)."""
    scores = results["results"][task]
    for key in (metric, f"{metric},none"):
        if key in scores:
            return float(scores[key])
    keys = sorted(k for k in scores if not k.endswith("_stderr,none") and k != "alias")
    raise KeyError(f"metric {metric!r} not in lmms-eval's results for {task}; it reported {keys}")


def write_json_atomic(path: pathlib.Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def answer_files(path: pathlib.Path, world_size: int = 1) -> list[pathlib.Path]:
    """The answer files of a cell for ``world_size`` processes (one per rank when several share the run)."""
    if world_size == 1:
        return [path] if path.exists() else []
    return [path.with_name(f"{path.stem}.rank{r}-of-{world_size}{path.suffix}") for r in range(world_size)
            if path.with_name(f"{path.stem}.rank{r}-of-{world_size}{path.suffix}").exists()]


def set_aside_stale_answers(path: pathlib.Path, fingerprint: dict) -> list[pathlib.Path]:
    """Rename the answer files of a cell (plain or per rank) that another run wrote (another checkpoint,
    prior, dtype, ...: their first line's fingerprint differs) to ``<name>.stale-<hash>.jsonl``, so that
    the new run starts its own and nothing is lost; return the new names.

    >>> import tempfile
    >>> d = pathlib.Path(tempfile.mkdtemp()); f = d / "POPE.answers.jsonl"
    >>> _ = f.write_text(json.dumps({"fingerprint": {"prior_sha256": "a"}}) + "\\n")
    >>> set_aside_stale_answers(f, {"prior_sha256": "a"}), f.exists()
    ([], True)
    >>> [p.name for p in set_aside_stale_answers(f, {"prior_sha256": "b"})], f.exists()
    (['POPE.answers.stale-716e38b7.jsonl'], False)
    """
    moved = []
    want = json.loads(json.dumps(fingerprint))
    for f in [path, *path.parent.glob(f"{path.stem}.rank*-of-*{path.suffix}")]:
        if not f.exists() or ".stale-" in f.name:  # set aside before
            continue
        with open(f, encoding="utf-8") as fh:
            first = fh.readline()
        try:
            head = json.loads(first).get("fingerprint") if first.strip() else want
        except json.JSONDecodeError:  # cut inside its first line: nothing in it to keep
            head = None
        if head == want:
            continue
        tag = hashlib.sha256(json.dumps(head, sort_keys=True).encode()).hexdigest()[:8]
        stale = f.with_name(f"{f.stem}.stale-{tag}{f.suffix}")
        os.replace(f, stale)
        moved.append(stale)
    return moved


def answers_digest(path: pathlib.Path, limit: int | None = None, world_size: int = 1) -> tuple[str, int, float | None]:
    """SHA-256 (12 hex) of the sorted (key, answer) pairs of the samples this evaluation scored, their
    count, and the mean visual tokens kept.

    Only this process count's answer files are read, each sample once, and with ``limit`` only the
    first ``limit`` documents (those lmms-eval evaluates): answers left in the cache by a longer or
    differently sharded run of the same configuration are not counted.
    """
    lines = [line for f in answer_files(path, world_size) for line in f.read_text(encoding="utf-8").splitlines()[1:]]
    unique = {r["key"]: r for r in map(json.loads, lines) if limit is None or r["doc_id"] < limit}
    records = sorted(unique.values(), key=lambda r: r["key"])
    digest = hashlib.sha256(json.dumps([[r["key"], r["answer"]] for r in records]).encode()).hexdigest()[:12]
    kept = [r["visual_tokens"][1] for r in records if "visual_tokens" in r]
    return digest, len(records), (round(sum(kept) / len(kept), 2) if kept else None)


def launcher() -> str:
    """lmms-eval's distributed backend for this process: ``torchrun`` when started by torchrun (CPU or
    GPU, collectives through torch.distributed), else ``accelerate`` (``accelerate launch`` or one process).

    >>> import os; launcher() == ("torchrun" if "TORCHELASTIC_RUN_ID" in os.environ else "accelerate")
    True
    """
    return "torchrun" if "TORCHELASTIC_RUN_ID" in os.environ else "accelerate"


def run_cell(*, spec: dict, row: Row, col: dict, out: pathlib.Path, adapter_kwargs: dict, limit: int | None,
             include_path: pathlib.Path, env: dict, provenance: dict) -> dict:
    """Run one (row, column) cell through lmms-eval unless a record of the same cell exists; return the record.

    A record is reused only when its ``cell`` fingerprint (spec version, task, metric, limit, process
    count and the run's fingerprint: checkpoint, revision, method, budget, configuration, dtype, prior
    hash, tile limit) equals this one's; otherwise the cell is evaluated again, reusing every cached
    answer of the same run.
    """
    from reproduce import adapter, tasks

    cell_dir = out / "cells" / slug(row.label)
    record_path = cell_dir / f"{slug(col['benchmark'])}.json"
    task = tasks.task_name(col["task"])
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    method, budget = row.key or "none", row.budget if row.key else None
    cell = {"spec_version": spec["spec_version"], "task": task, "metric": col["metric"], "limit": limit,
            "world_size": world_size,
            "run": adapter.run_fingerprint(
                pretrained=adapter_kwargs["pretrained"], revision=adapter_kwargs["revision"], method=row.key,
                budget=budget, config=adapter_kwargs["config"], dtype=adapter_kwargs["dtype"],
                prior=adapter_kwargs["prior"], max_tiles=adapter_kwargs["max_tiles"],
                max_new_tokens_cap=adapter_kwargs["max_new_tokens_cap"])}
    if record_path.exists():
        record = json.loads(record_path.read_text())
        if record.get("cell") == json.loads(json.dumps(cell)):
            return record
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"{record_path}: recorded for another configuration ({record.get('cell')}); evaluating again",
                  file=sys.stderr)
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    cache = cell_dir / f"{slug(col['benchmark'])}.answers.jsonl"
    if int(os.environ.get("RANK", "0")) == 0:  # one process moves another run's answers aside (each rank reads only its own)
        for stale in set_aside_stale_answers(cache, cell["run"]):
            print(f"{stale.name}: answers of another run configuration, set aside", file=sys.stderr)
    if world_size > 1:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
    lm = adapter.adapter_class()(method=method, budget=budget, cache=str(cache), **adapter_kwargs)
    started = time.time()
    results = simple_evaluate(model=lm, tasks=[task], limit=limit, task_manager=TaskManager(
        include_path=str(include_path), include_defaults=False), random_seed=SEED, numpy_random_seed=SEED,
        torch_random_seed=SEED, fewshot_random_seed=SEED, verbosity="WARNING", log_samples=False,
        distributed_executor_backend=launcher())
    if results is None:  # a non-zero rank under accelerate: rank 0 writes the record
        return {}
    raw = metric_value(results, task, col["metric"])
    digest, n, kept = answers_digest(cache, limit, world_size)
    record = {"table": spec["table"], "spec_version": spec["spec_version"], "cell": cell, "method": row.method,
              "budget": row.budget, "benchmark": col["benchmark"], "task": task, "stock_task": col["task"],
              "metric": col["metric"], "value": round(raw * col["scale"], 4), "raw_value": raw,
              "n_samples": n, "limit": limit, "answers_sha256": digest, "mean_visual_tokens_kept": kept,
              "wall_s": round(time.time() - started, 2),
              "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "provenance": {**env, **provenance, "seed": SEED}}
    write_json_atomic(record_path, record)
    return record


# ---------------------------------------------------------------------------------------------- table


def derived_values(spec: dict, values: dict[str, float | None], vanilla: dict[str, float | None] | None) -> dict:
    """The spec's derived columns for one row, from its benchmark ``values`` (None where not run).

    >>> spec = {"columns": [{"benchmark": "A"}, {"benchmark": "MME"},
    ...     {"benchmark": "Avg", "derived": "mean", "of": ["A", "MME"], "divide": {"MME": 20}},
    ...     {"benchmark": "Rel", "derived": "relative", "of": "Avg", "to": "Vanilla"}]}
    >>> derived_values(spec, {"A": 60.0, "MME": 1500.0}, {"Avg": 80.0})
    {'Avg': 67.5, 'Rel': 84.375}
    >>> derived_values(spec, {"A": 60.0, "MME": None}, None)
    {'Avg': None, 'Rel': None}
    >>> spec = {"columns": [{"benchmark": "Rel", "derived": "relative_mean", "of": ["A", "MME"], "to": "Vanilla"}]}
    >>> derived_values(spec, {"A": 60.0, "MME": 1500.0}, {"A": 80.0, "MME": 1500.0})  # (75 % + 100 %) / 2
    {'Rel': 87.5}
    """
    out: dict[str, float | None] = {}
    for col in spec["columns"]:
        if col.get("derived") == "mean":
            parts = [values.get(b) for b in col["of"]]
            if any(p is None for p in parts):
                out[col["benchmark"]] = None
            else:
                div = col.get("divide", {})
                out[col["benchmark"]] = sum(p / div.get(b, 1) for b, p in zip(col["of"], parts)) / len(parts)
        elif col.get("derived") == "relative":
            mine = out.get(col["of"], values.get(col["of"]))
            ref = (vanilla or {}).get(col["of"])
            out[col["benchmark"]] = None if mine is None or not ref else 100.0 * mine / ref
        elif col.get("derived") == "relative_mean":  # mean over benchmarks of row / unpruned, in percent
            pairs = [(values.get(b), (vanilla or {}).get(b)) for b in col["of"]]
            ok = all(m is not None and r for m, r in pairs)
            out[col["benchmark"]] = 100.0 * sum(m / r for m, r in pairs) / len(pairs) if ok else None
    return out


def flops_note(spec: dict) -> str:
    """What the table's FLOPs column counts.

    >>> flops_note(load_spec("table3"))
    'Prefill TFLOPs: the full-size OpenGVLab/InternVL2_5-8B-MPO-hf with 64 text tokens and 1792 visual tokens before pruning (6 tiles + thumbnail; a real image has 256 to 3328), exact counting convention (reproduce.efficiency).'
    """
    from reproduce.efficiency import ROW_TEXT_TOKENS, ROW_VISUAL_TOKENS

    model_id = spec["model"]["id"]
    n = ROW_VISUAL_TOKENS.get(model_id)
    tiles = " (6 tiles + thumbnail; a real image has 256 to 3328)" if spec["model"]["family"] == "internvl" else ""
    return (f"Prefill TFLOPs: the full-size {model_id} with {ROW_TEXT_TOKENS} text tokens and {n} visual tokens "
            f"before pruning{tiles}, exact counting convention (reproduce.efficiency).")


def row_flops(spec: dict, row: Row) -> str:
    """Prefill TFLOPs of the row on the spec's full-size model (see :func:`reproduce.efficiency.row_tflops`)."""
    from reproduce.efficiency import row_tflops

    try:
        return f"{row_tflops(spec['model']['id'], row.key, row.budget):.2f}"
    except ValueError as err:
        return f"n/a ({err})"


def build_table(spec: dict, rows: list[Row], skipped: list, records: dict) -> list[dict]:
    """One long-form line per (row, benchmark incl. derived): paper, reproduced, delta, within tolerance."""
    paper = paper_values(spec)
    tol = spec["tolerance"]
    columns = [c["benchmark"] for c in spec["columns"]]
    per_row = {}
    for row in rows:
        per_row[row.label] = {c: records[(row.label, c)]["value"] if (row.label, c) in records else None for c in columns}
    vanilla = next((per_row[r.label] for r in rows if r.method == "Vanilla"), None)
    if vanilla is not None:
        vanilla.update(derived_values(spec, vanilla, None))
    lines = []
    for row in rows:
        values = per_row[row.label]
        values.update({k: v for k, v in derived_values(spec, values, vanilla).items()})
        for bench in columns:
            mine, theirs = values.get(bench), paper.get((row.method, row.budget, bench))
            delta = None if mine is None or theirs is None else mine - theirs
            rec = records.get((row.label, bench), {})
            lines.append({"method": row.method, "budget": row.budget, "benchmark": bench,
                          "paper": _fmt(theirs), "reproduced": _fmt(mine), "delta": _fmt(delta, signed=True),
                          "within_tolerance": "" if delta is None else ("yes" if abs(delta) <= tol.get(bench, tol["default"]) else "no"),
                          "n_samples": rec.get("n_samples", ""), "answers_sha256": rec.get("answers_sha256", ""),
                          "status": "run" if mine is not None else "not run"})
        lines.append({"method": row.method, "budget": row.budget, "benchmark": "prefill TFLOPs", "paper": "",
                      "reproduced": row_flops(spec, row), "delta": "", "within_tolerance": "", "n_samples": "",
                      "answers_sha256": "", "status": "computed"})
    for method, budget, why in skipped:
        for bench in columns:
            theirs = paper.get((method, budget, bench))
            lines.append({"method": method, "budget": budget, "benchmark": bench, "paper": _fmt(theirs),
                          "reproduced": "", "delta": "", "within_tolerance": "", "n_samples": "", "answers_sha256": "",
                          "status": f"not run: {why}"})
    return lines


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def table_csv(lines: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(lines[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(lines)
    return buf.getvalue()


def abstract_lines(spec: dict, lines: list[dict]) -> list[str]:
    """The abstract's claims this table can check, beside our value of the same kind (the spec's
    ``abstract`` entries: a claim of ``paper_tables/abstract.csv``, the method and the derived column).

    >>> spec = load_spec("table3")
    >>> abstract_lines(spec, [{"method": "D2Pruner", "budget": "10%", "benchmark": "Rel", "reproduced": "84.10"}])
    ['Abstract: InternVL-2.5-8B localization performance retained at 90% token reduction = 85.7 % of unpruned (abstract (primary)); ours, D2Pruner Rel: 10% → 84.10.']
    """
    with open(ROOT / "paper_tables" / "abstract.csv", encoding="utf-8") as f:
        claims = {r["claim"]: r for r in csv.DictReader(f)}
    out = []
    for entry in spec.get("abstract", []):
        claim = claims[entry["claim"]]
        ours = [f"{ln['budget']} → {ln['reproduced'] or 'not run'}" for ln in lines
                if ln["method"] == entry["method"] and ln["benchmark"] == entry["column"]]
        out.append(f"Abstract: {claim['claim']} = {claim['value']} {claim['unit']} ({claim['provenance']}); "
                   f"ours, {entry['method']} {entry['column']}: {', '.join(ours)}.")
    return out


def table_markdown(spec: dict, lines: list[dict], header: str) -> str:
    """The wide table: one line per row, each cell ``ours / paper (delta, mark)``."""
    columns = [c["benchmark"] for c in spec["columns"]] + ["prefill TFLOPs"]
    order, cells = [], {}
    for ln in lines:
        label = (ln["method"], ln["budget"])
        if label not in cells:
            order.append(label)
            cells[label] = {"status": ln["status"]}
        cells[label][ln["benchmark"]] = ln
        if ln["status"].startswith("not run: "):
            cells[label]["status"] = ln["status"]
    out = [header, "", "Each cell: reproduced / paper (difference; ✓ within tolerance, ✗ not). "
           "`?` = the paper's value is unknown; blank = not run.", "",
           "| method | budget | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for label in order:
        row = cells[label]
        if row["status"].startswith("not run: "):
            out.append(f"| {label[0]} | {label[1]} | " + " | ".join(
                f"— / {row[c]['paper'] or '?'}" if c in row else "" for c in columns) + f" |  ← {row['status']}")
            continue
        shown = []
        for c in columns:
            ln = row.get(c)
            if ln is None:
                shown.append("")
            elif c == "prefill TFLOPs":
                shown.append(ln["reproduced"])
            elif not ln["reproduced"]:
                shown.append(f"— / {ln['paper'] or '?'}")
            elif not ln["paper"]:
                shown.append(f"{ln['reproduced']} / ?")
            else:
                mark = "✓" if ln["within_tolerance"] == "yes" else "✗"
                shown.append(f"{ln['reproduced']} / {ln['paper']} ({ln['delta']} {mark})")
        out.append(f"| {label[0]} | {label[1]} | " + " | ".join(shown) + " |")
    claims = abstract_lines(spec, lines)
    return "\n".join(out + ([""] + claims if claims else [])) + "\n"


# ---------------------------------------------------------------------------------------------- main


def parse_args(table: str, argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m reproduce {table}", description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny models and tiny local data on CPU (seconds)")
    p.add_argument("--rows", help="comma-separated Method@budget labels, e.g. 'Vanilla@576,D2Pruner@64'")
    p.add_argument("--columns", help="comma-separated benchmark names, e.g. 'POPE,MME'")
    p.add_argument("--limit", type=int, help="at most N samples per benchmark (smoke default: the spec's)")
    p.add_argument("--out", type=pathlib.Path, help="output folder (default results/<table>[-smoke])")
    p.add_argument("--batch-size", type=int, default=None, help="requests per forward pass (default 8 on GPU, 2 on CPU)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument("--model-path", help="local folder of the checkpoint instead of the spec's hub id")
    p.add_argument("--revision", help="checkpoint revision")
    p.add_argument("--prior", type=pathlib.Path, help="prior file (default: the spec's path, relative to the current folder)")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit {args.limit} must be >= 1")
    return args


def main(table: str, argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(table, list(argv or []))
    spec = load_spec(table)
    try:
        rows, skipped = select_rows(spec, args.smoke, args.rows)
        columns = select_columns(spec, args.columns)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from reproduce import adapter, tasks

    device = adapter.process_device(args.device)  # cuda:LOCAL_RANK when several processes share the run
    if device.startswith("cuda:"):
        torch.cuda.set_device(torch.device(device))
    rank = int(os.environ.get("RANK", "0"))
    mspec = spec["model"]
    out = args.out or ROOT / "results" / (table + ("-smoke" if args.smoke else ""))
    if args.smoke:
        model_id, dtype, limit = spec["smoke"]["model"], "float32", args.limit or spec["smoke"]["limit"]
        max_tiles = int(spec["smoke"].get("max_tiles", 4))
        revision = None
    else:
        model_id, dtype, limit = args.model_path or mspec["id"], mspec["dtype"], args.limit
        max_tiles, revision = int(mspec.get("max_tiles") or 12), args.revision
        prior = args.prior or pathlib.Path(mspec["prior"])
        try:
            check_inputs(spec, rows, columns, model_id, revision, prior)
        except MissingInputs as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    out.mkdir(parents=True, exist_ok=True)
    model = adapter.load(model_id, revision=revision, dtype=dtype, device=device,
                         attn_implementation=mspec["attn_implementation"], max_tiles=max_tiles)
    if args.smoke:  # every process writes its own copy (identical), so none reads a file another is writing
        include_path = tasks.write_smoke_tasks([c["task"] for c in columns], out / "smoke-data" / f"rank{rank}", n=limit)
        prior = out / "prior.json"
        if any(r.key in NEEDS_PRIOR for r in rows) and not prior.exists():
            mine = out / f"prior.rank{rank}.json"
            smoke_prior(model[0], model[1], model[2], mine, max_tiles)
            os.replace(mine, prior)
    else:
        include_path = tasks.TASK_DIR
    batch = args.batch_size or (8 if device.startswith("cuda") else 2)
    adapter_kwargs = {"pretrained": model_id, "prior": str(prior) if prior.exists() else None,
                      "config": mspec.get("config", "default"), "batch_size": batch, "device": device, "dtype": dtype,
                      "attn_implementation": mspec["attn_implementation"], "max_tiles": max_tiles, "revision": revision,
                      "model": model, "max_new_tokens_cap": spec["smoke"].get("max_new_tokens_cap") if args.smoke else None}
    env = environment(device)
    provenance = {"model_id": model_id, "model_revision": revision or getattr(model[0].config, "_commit_hash", None),
                  "dtype": dtype, "attn_implementation": mspec["attn_implementation"], "max_tiles": max_tiles,
                  "prior_sha256": adapter.file_sha256(prior) if prior.exists() else None, "smoke": args.smoke,
                  "max_new_tokens_cap": adapter_kwargs["max_new_tokens_cap"],
                  "command": "python -m reproduce " + " ".join([table, *(argv or [])])}
    records: dict = {}
    rank0 = rank == 0
    for row in rows:
        for col in columns:
            record = run_cell(spec=spec, row=row, col=col, out=out, adapter_kwargs=adapter_kwargs, limit=limit,
                              include_path=include_path, env=env, provenance=provenance)
            if record:
                records[(row.label, col["benchmark"])] = record
                if rank0:
                    print(f"{row.label:>22} {col['benchmark']:<16} {record['value']:8.2f}  ({record['n_samples']} samples)",
                          flush=True)
    if not rank0:
        return 0
    lines = build_table(spec, rows, skipped, records)
    header = (f"## {table}{' (smoke: tiny random model, tiny local data — not the paper numbers)' if args.smoke else ''}"
              f"\n\n{spec['caption']}. Spec v{spec['spec_version']}; model {model_id}; "
              f"{'limit ' + str(limit) + ' samples per benchmark' if limit else 'full benchmarks'}."
              f"\n\n{flops_note(spec)}")
    (out / "table.csv").write_text(table_csv(lines), encoding="utf-8")
    md = table_markdown(spec, lines, header)
    (out / "table.md").write_text(md, encoding="utf-8")
    print(md)
    print(f"wrote {out / 'table.md'} and {out / 'table.csv'}")
    return 0
