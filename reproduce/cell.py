"""One cell of a table (a row's method and budget on one benchmark) through lmms-eval, resumable.

:func:`run_cell` returns the cell's record (:mod:`reproduce.records`): the one on disk when it was made
under this very configuration, else a new one from one ``simple_evaluate`` call of our task on our
adapter, which answers from its per-sample cache what an earlier run of the same configuration
answered and computes the rest.
"""

from __future__ import annotations

import os
import pathlib
import sys
import time

from reproduce import records
from reproduce.records import SEED


def launcher() -> str:
    """lmms-eval's distributed backend for this process: ``torchrun`` when started by torchrun (CPU or
    GPU, collectives through torch.distributed), else ``accelerate`` (``accelerate launch`` or one process).

    >>> import os; launcher() == ("torchrun" if "TORCHELASTIC_RUN_ID" in os.environ else "accelerate")
    True
    """
    return "torchrun" if "TORCHELASTIC_RUN_ID" in os.environ else "accelerate"


def metric_value(results: dict, task: str, metric: str) -> float:
    """The metric from lmms-eval's results dict (keys are ``"<metric>,<filter>"``)."""
    scores = results["results"][task]
    for key in (metric, f"{metric},none"):
        if key in scores:
            return float(scores[key])
    keys = sorted(k for k in scores if not k.endswith("_stderr,none") and k != "alias")
    raise KeyError(f"metric {metric!r} not in lmms-eval's results for {task}; it reported {keys}")


def run_cell(*, spec: dict, row, bench, out: pathlib.Path, adapter_kwargs: dict, limit: int | None,
             include_path: pathlib.Path, env: dict, provenance: dict) -> dict:
    """Run one (row, benchmark) cell through lmms-eval unless a record of the same cell exists; return the record.

    ``row`` is a :class:`reproduce.specs.Row`, ``bench`` a :class:`reproduce.benchmarks.Benchmark`. A
    record is reused only when its ``cell`` fingerprint (:func:`reproduce.records.cell_fingerprint`)
    equals this one's; otherwise the cell is evaluated again, reusing every cached answer of the same
    run. Returns ``{}`` on a process other than rank 0 (which writes the record).
    """
    from reproduce import adapter

    record_path, cache = records.cell_paths(out, row, bench)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cell = records.cell_fingerprint(spec=spec, row=row, bench=bench, limit=limit, world_size=world_size,
                                    adapter_kwargs=adapter_kwargs)
    if (record := records.reusable_record(record_path, cell)) is not None:
        return record
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    if int(os.environ.get("RANK", "0")) == 0:  # one process moves another run's answers aside (each rank reads only its own)
        for stale in records.set_aside_stale_answers(cache, cell["run"]):
            print(f"{stale.name}: answers of another run configuration, set aside", file=sys.stderr)
    if world_size > 1:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
    method, budget = row.key or "none", row.budget if row.key else None
    lm = adapter.adapter_class()(method=method, budget=budget, cache=str(cache), **adapter_kwargs)
    started = time.time()
    results = simple_evaluate(model=lm, tasks=[bench.task], limit=limit, task_manager=TaskManager(
        include_path=str(include_path), include_defaults=False), random_seed=SEED, numpy_random_seed=SEED,
        torch_random_seed=SEED, fewshot_random_seed=SEED, verbosity="WARNING", log_samples=False,
        distributed_executor_backend=launcher())
    if results is None:  # a non-zero rank under accelerate: rank 0 writes the record
        return {}
    raw = metric_value(results, bench.task, bench.metric)
    record = records.make_record(spec=spec, row=row, bench=bench, cell=cell, raw=raw, answers=cache, limit=limit,
                                 world_size=world_size, wall_s=time.time() - started, env=env, provenance=provenance)
    records.write_json_atomic(record_path, record)
    return record
