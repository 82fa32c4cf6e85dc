"""One cell of a table (a row's method and budget on one benchmark) through lmms-eval, resumable.

:func:`run_cell` returns the cell's record (:mod:`reproduce.records`): the one on disk when it was made
under this very configuration, else a new one from one ``simple_evaluate`` call of our task on our
adapter, which answers from its per-sample cache what an earlier run of the same configuration
answered and computes the rest. The row runs with its attention implementation (:func:`row_attention`);
the adapter measures every sample it computes, and the record summarises those timings.
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


def row_attention(spec: dict, row, device: str, model=None) -> tuple[str, list[str]]:
    """The attention implementation of a row and why each one the spec prefers to it was passed over.

    The spec's ``model.attn_implementation`` is a preference order (a single name: that one only). The
    unpruned row takes the first that runs on ``device`` (``flash_attention_2`` on a GPU where it is
    installed); a pruned row the first that the pruning hooks also support
    (:data:`d2pruner.models.handle.SUPPORTED_ATTENTION`: they cut the 4-D attention mask, which
    FlashAttention does not take). No method here needs eager attention weights: each computes the
    attention rows it reads from the layer's q/k. With ``model`` (the loaded model shared between rows)
    the model is switched to it (:func:`d2pruner.measure.use_attention`): the whole model to the fastest,
    then, for a pruned row, its language model alone to the one the hooks support (the vision tower,
    where no method prunes, runs the same kernel in every row).

    >>> from reproduce.specs import Row, load_spec
    >>> row_attention(load_spec("table1"), Row("Vanilla", "576", None), "cpu")[0]
    'sdpa'
    """
    from d2pruner import measure
    from d2pruner.models.handle import SUPPORTED_ATTENTION

    prefs = spec["model"]["attn_implementation"]
    supported = None if row.key is None else SUPPORTED_ATTENTION
    if model is None:
        return measure.choose_attention(prefs, device, supported)
    fastest, why = measure.use_attention(model, prefs, device)
    if supported is None or fastest in supported:
        return fastest, why
    return measure.use_attention(model, prefs, device, supported, part="text_config")


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
    # the kernel the row runs with (the shared model is switched to it): the same one names the cell and
    # the adapter's answer cache, so a rerun finds its own answers
    shared = adapter_kwargs.get("model")
    attn, passed_over = row_attention(spec, row, adapter_kwargs["device"], shared[0] if shared else None)
    cell = records.cell_fingerprint(spec=spec, row=row, bench=bench, limit=limit, world_size=world_size,
                                    adapter_kwargs=adapter_kwargs, attn_implementation=attn)
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
    method, budget = row.key or "none", row.budget_to_run if row.key else None
    vision = getattr(getattr(shared[0].config, "vision_config", None), "_attn_implementation", None) if shared else None
    provenance = {**provenance, "attn_implementation": attn, "attn_implementation_vision": vision,
                  "attn_passed_over": passed_over, "batch_size": adapter_kwargs["batch_size"]}
    lm = adapter.adapter_class()(method=method, budget=budget, cache=str(cache),
                                 **{**adapter_kwargs, "attn_implementation": attn})
    started = time.time()
    results = simple_evaluate(model=lm, tasks=[bench.task], limit=limit, task_manager=TaskManager(
        include_path=str(include_path), include_defaults=False), random_seed=SEED, numpy_random_seed=SEED,
        torch_random_seed=SEED, fewshot_random_seed=SEED, verbosity="WARNING", log_samples=False,
        distributed_executor_backend=launcher())
    if results is None:  # a non-zero rank under accelerate: rank 0 writes the record
        return {}
    raw = metric_value(results, bench.task, bench.metric)
    record = records.make_record(spec=spec, row=row, bench=bench, cell=cell, raw=raw, answers=cache, limit=limit,
                                 world_size=world_size, wall_s=time.time() - started, env=env, provenance=provenance,
                                 timing_context=lm.timing_context)
    records.write_json_atomic(record_path, record)
    return record
