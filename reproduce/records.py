"""What a table run leaves on disk, per cell: the record (value, fingerprint, provenance) and the answers.

::

    cells/<method>@<budget>/<benchmark>.json                     one record per cell (value + provenance)
    cells/<method>@<budget>/<benchmark>.answers.jsonl            one line per answered sample (the resume cache)
    cells/<method>@<budget>/<benchmark>.answers.rankR-of-W.jsonl the same, per process when W share the run
    cells/<method>@<budget>/<benchmark>.answers.stale-<h>.jsonl  answers of another run configuration, set aside

    .lock, .lock.rankR-of-W                                      held by the run writing here (:class:`OutputLock`)

A record is reused only while its ``cell`` fingerprint (:func:`cell_fingerprint`) is this run's; the
answer files are the adapter's per-sample cache, whose first line fingerprints the run that wrote it.
A file read back that is not what was written (not JSON) stops the run with :class:`CorruptFile`
naming the file and the line.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
SEED = 0


def uses_prior(method: str | None) -> bool:
    """Whether the method of that name reads the positional prior (``Need.PRIOR``); every other method
    ignores it, and so do their fingerprints.

    >>> uses_prior("d2pruner"), uses_prior("mmr-d2score"), uses_prior("fastv"), uses_prior(None)
    (True, True, False, False)
    """
    if method is None:
        return False
    from d2pruner.methods.base import Need, get_method

    return Need.PRIOR in get_method(method).needs


def method_settings(method: str | None) -> dict | None:
    """The registered method's default settings (its plain-valued dataclass fields), so that answers
    made under other defaults (e.g. DART's pivot order before it followed the public code) are not
    reused as if current.

    >>> method_settings("dart")["pivot_order"], method_settings(None)
    ('public', None)
    """
    if method is None:
        return None
    import dataclasses

    from d2pruner.methods.base import get_method

    obj = get_method(method)
    plain = (bool, int, float, str, type(None))
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)
            if isinstance(getattr(obj, f.name), plain)} if dataclasses.is_dataclass(obj) else {}


def run_fingerprint(*, pretrained: str, revision: str | None, method: str | None, budget: Any, config: str,
                    dtype: str, prior: str | None, max_tiles: int, max_new_tokens_cap: int | None,
                    attn_implementation: str) -> dict:
    """What identifies a run's answers: the answer cache refuses a file of another fingerprint, and a cell
    record of another fingerprint is computed again. The prior counts only for the methods that read it
    (:func:`uses_prior`); the language model's attention implementation counts because kernels differ in
    rounding, which can flip a greedy answer (the vision tower's is the one the run loaded the model with,
    the same for every row of a run on a device; a record's provenance names it)."""
    reads_prior = uses_prior(method) and prior
    return {"pretrained": pretrained, "revision": revision, "method": method,
            "method_settings": method_settings(method),
            "budget": budget if method else None, "config": config, "dtype": dtype,
            "prior_sha256": file_sha256(prior) if reads_prior else None, "max_tiles": int(max_tiles),
            "max_new_tokens_cap": max_new_tokens_cap, "attn_implementation": attn_implementation}


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file (provenance of priors and data)."""
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def slug(text: str) -> str:
    """A file-name-safe form of a method, budget or benchmark name.

    >>> slug("RefCOCO+ testA"), slug("10%"), slug("MMB-CN")
    ('RefCOCOplus_testA', '10pct', 'MMB-CN')
    """
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text.replace("+", "plus").replace("%", "pct").replace(" ", "_"))


def cell_paths(out: pathlib.Path, row, bench) -> tuple[pathlib.Path, pathlib.Path]:
    """``(record, answers)`` paths of the cell of ``row`` (:class:`reproduce.specs.Row`) and ``bench``
    (:class:`reproduce.benchmarks.Benchmark`) under the output folder ``out``."""
    cell_dir = out / "cells" / slug(row.label)
    return cell_dir / f"{slug(bench.name)}.json", cell_dir / f"{slug(bench.name)}.answers.jsonl"


def write_json_atomic(path: pathlib.Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")


def write_text_atomic(path: pathlib.Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class OutputBusy(RuntimeError):
    """Another live run holds the output folder's lock (the message names it: pid, host, start time, command)."""


class CorruptFile(ValueError):
    """A file the run reads back (a cell record, an answer cache, a prior) is not what it wrote: the
    message names the file and the line."""


def read_json(path: pathlib.Path, what: str) -> Any:
    """The JSON document in ``path``; :class:`CorruptFile` naming ``what``, the path, line and column if it is not JSON.

    >>> import tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "POPE.json"; _ = p.write_text('{"value": 1,\\n oops}')
    >>> read_json(p, "cell record")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    reproduce.records.CorruptFile: cell record .../POPE.json is not valid JSON at line 2, column 2 (Expecting property name enclosed in double quotes)...
    """
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise CorruptFile(f"{what} {path} is not valid JSON at line {err.lineno}, column {err.colno} ({err.msg})"
                          f"{_REMEDY.get(what, '')}") from None


_REMEDY = {"cell record": ": delete it and run again (the cell is evaluated again from its cached answers)"}


class OutputLock:
    """An exclusive lock on a run's output folder, so that two runs never compute the same answers.

    The lock is ``<out>/.lock`` (``.lock.rankR-of-W`` for the other processes of an ``accelerate
    launch`` / ``torchrun`` run, so that each process of one run holds its own and a second run of the
    same shape collides on every rank), held with ``fcntl.flock`` for as long as the run lives. The
    file names its holder (pid, host, start time, command): a second run stops with
    :class:`OutputBusy` naming it. The operating system releases the lock when the holder dies however it
    dies, so a stale lock (holder killed) is taken over at once, with a note naming the dead holder; the
    answers it left are resumed as usual. On a network file system ``flock`` works where the server
    supports locks (NFS v4 does); the holder's host is then named in the message.

    >>> import tempfile
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> with OutputLock(out) as lock:
    ...     OutputLock(out).acquire()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    reproduce.records.OutputBusy: ... is in use by another run: pid ... on ..., started ...; wait for it to end or use another --out (lock file .../.lock)
    >>> OutputLock(out).acquire().release()  # free again
    """

    def __init__(self, out: pathlib.Path, rank: int = 0, world_size: int = 1, command: str = "") -> None:
        self.out = pathlib.Path(out)
        self.path = self.out / (".lock" if rank == 0 else f".lock.rank{rank}-of-{world_size}")
        self.command = command or " ".join(sys.argv)
        self._fd: int | None = None
        self.stale: dict | None = None  # the dead holder taken over, if any

    def acquire(self) -> "OutputLock":
        import fcntl
        import socket

        self.out.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _holder(self.path)
            os.close(fd)
            raise OutputBusy(f"{self.out} is in use by another run: {describe_holder(holder)}; wait for it to end or use "
                             f"another --out (lock file {self.path})") from None
        previous = _holder(self.path)
        if previous:  # left by a run that died without releasing it
            self.stale = previous
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": self.command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        os.ftruncate(self._fd, 0)  # empty = free; a killed holder leaves its line, read as stale
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _holder(path: pathlib.Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8").strip()
        return json.loads(text) if text else {}
    except (OSError, json.JSONDecodeError):
        return {"unreadable": str(path)}


def describe_holder(holder: dict) -> str:
    """How a lock's holder is named in messages: pid, host, start time, command."""
    if not holder or "pid" not in holder:
        return "a process that has not written its name yet"
    return (f"pid {holder['pid']} on {holder.get('host', '?')}, started {holder.get('started', '?')}"
            + (f" (`{holder['command']}`)" if holder.get("command") else ""))


def cell_fingerprint(*, spec: dict, row, bench, limit: int | None, world_size: int, adapter_kwargs: dict,
                     attn_implementation: str) -> dict:
    """What makes a cell's value: spec version, task, metric, limit, process count and the run's fingerprint
    (checkpoint, revision, method, budget, configuration, dtype, prior hash, tile limit, and the attention
    implementation the row runs with, :func:`reproduce.cell.row_attention`)."""
    return {"spec_version": spec["spec_version"], "task": bench.task, "metric": bench.metric, "limit": limit,
            "world_size": world_size,
            "run": run_fingerprint(
                pretrained=adapter_kwargs["pretrained"], revision=adapter_kwargs["revision"], method=row.key,
                budget=row.budget_to_run if row.key else None, config=adapter_kwargs["config"], dtype=adapter_kwargs["dtype"],
                prior=adapter_kwargs["prior"], max_tiles=adapter_kwargs["max_tiles"],
                max_new_tokens_cap=adapter_kwargs["max_new_tokens_cap"], attn_implementation=attn_implementation)}


def reusable_record(record_path: pathlib.Path, cell: dict, quiet: bool = False) -> dict | None:
    """The cell's record if one exists for this very fingerprint ``cell``, else None (saying so, on rank 0
    and unless ``quiet``, when a record of another configuration is there). :class:`CorruptFile` naming
    the file and line when the record is not JSON."""
    if not record_path.exists():
        return None
    record = read_json(record_path, "cell record")
    if record.get("cell") == json.loads(json.dumps(cell)):
        return record
    if int(os.environ.get("RANK", "0")) == 0 and not quiet:
        print(f"{record_path}: recorded for another configuration ({record.get('cell')}); evaluating again",
              file=sys.stderr)
    return None


def make_record(*, spec: dict, row, bench, cell: dict, raw: float, answers: pathlib.Path, limit: int | None,
                world_size: int, wall_s: float, env: dict, provenance: dict, timing_context: dict | None = None) -> dict:
    """The record of one evaluated cell: lmms-eval's ``raw`` value and the value as the paper prints it,
    what was scored (:func:`answers_digest`), the measured efficiency (:func:`timing_summary`, for the
    samples measured in ``timing_context``) and the provenance."""
    digest, n, kept = answers_digest(answers, limit, world_size)
    return {"table": spec["table"], "spec_version": spec["spec_version"], "cell": cell, "method": row.method,
            "budget": row.budget, "budget_run": row.budget_to_run, "benchmark": bench.name, "task": bench.task,
            "stock_task": bench.stock,
            "metric": bench.metric, "value": round(raw * bench.scale, 4), "raw_value": raw,
            "n_samples": n, "limit": limit, "answers_sha256": digest, "mean_visual_tokens_kept": kept,
            "wall_s": round(wall_s, 2),
            "timing": timing_summary(answers, limit, world_size, timing_context),
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "provenance": {**env, **provenance, "seed": SEED}}


#: The per-sample measurements an answer line carries (``timing``, written by the adapter) and a record summarises.
TIMING_FIELDS = ("ttft_ms", "decode_ms_per_token", "peak_mib", "selection_ms")


def timing_summary(path: pathlib.Path, limit: int | None, world_size: int, context: dict | None) -> dict | None:
    """The measured efficiency of the samples this evaluation scored (those of :func:`answers_digest`):
    per sample (by key) and summarised (median, p90, max, n: :func:`d2pruner.measure.summary`), over the
    samples measured in ``context`` (:func:`d2pruner.measure.measurement_context`) only; samples answered
    elsewhere (another machine, dtype, batch size, ... e.g. from the cache of an earlier run) or not
    measured are counted in ``n_elsewhere`` and ``n_unmeasured``. None when ``context`` is None (the run
    did not measure).

    >>> import tempfile
    >>> from d2pruner.measure import context_id
    >>> ctx = {"device": "cpu"}; f = pathlib.Path(tempfile.mkdtemp()) / "POPE.answers.jsonl"
    >>> lines = [{"fingerprint": {}}] + [{"key": k, "doc_id": i, "answer": "a", "timing": {"ttft_ms": t,
    ...     "decode_ms_per_token": 1.0, "peak_mib": 9.0, "selection_ms": None, "context": c}}
    ...     for i, (k, t, c) in enumerate([("a", 2.0, context_id(ctx)), ("b", 4.0, context_id(ctx)), ("c", 99.0, "other")])]
    >>> _ = f.write_text("".join(json.dumps(x) + "\\n" for x in lines))
    >>> s = timing_summary(f, None, 1, ctx)
    >>> s["ttft_ms"]["median"], s["n_timed"], s["n_elsewhere"], s["selection_ms"], sorted(s["per_sample"])
    (3.0, 2, 1, None, ['a', 'b'])
    """
    if context is None:
        return None
    from d2pruner.measure import context_id, memory_kind, summary

    cid = context_id(context)
    mine, elsewhere, unmeasured = {}, 0, 0
    for record in scored_lines(path, limit, world_size):
        t = record.get("timing")
        if t is None:
            unmeasured += 1
        elif t.get("context") != cid:
            elsewhere += 1
        else:
            mine[record["key"]] = {k: t.get(k) for k in (*TIMING_FIELDS, "new_tokens", "batch")}
    per = [mine[k] for k in sorted(mine)]
    return {"context": context, "context_id": cid, "memory": memory_kind(context["device"]), "n_timed": len(mine),
            "n_elsewhere": elsewhere, "n_unmeasured": unmeasured,
            **{f: summary([p[f] for p in per]) for f in TIMING_FIELDS},
            "per_sample": {k: mine[k] for k in sorted(mine)}}


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
    records = scored_lines(path, limit, world_size)
    digest = hashlib.sha256(json.dumps([[r["key"], r["answer"]] for r in records]).encode()).hexdigest()[:12]
    kept = [r["visual_tokens"][1] for r in records if "visual_tokens" in r]
    return digest, len(records), (round(sum(kept) / len(kept), 2) if kept else None)


def scored_lines(path: pathlib.Path, limit: int | None = None, world_size: int = 1) -> list[dict]:
    """The answer lines of the samples an evaluation scored, each sample once, sorted by key (see
    :func:`answers_digest`)."""
    rows = [json_line(f, n, line) for f in answer_files(path, world_size)
            for n, line in enumerate(f.read_text(encoding="utf-8").splitlines()[1:], start=2)]
    unique = {r["key"]: r for r in rows if limit is None or r["doc_id"] < limit}
    return sorted(unique.values(), key=lambda r: r["key"])


def json_line(path: pathlib.Path, lineno: int, line: str) -> Any:
    """One line of a JSON-lines file, or :class:`CorruptFile` naming the file and the line number."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise CorruptFile(f"{path} line {lineno} is not valid JSON ({err.msg} at column {err.colno}): {line[:80]!r}; "
                          "delete that line (its sample is answered again) or the file") from None


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
