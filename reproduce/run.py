"""``python -m reproduce <table>``: regenerate a paper table through lmms-eval.

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
    .lock                                             held while a run writes here

Every option, the output folder and the prior are checked before the model loads. A run holds a lock
on its output folder (:class:`reproduce.records.OutputLock`): a second run into the same ``--out``
stops at once naming the first (pid, host, start time, command) instead of computing the same answers;
a lock left by a killed run is taken over with a note. The table shows the rows and columns run now
and, from their records, every cell that earlier runs into the same ``--out`` computed under the same
configuration, so a ``--rows`` / ``--columns`` subset adds to the table instead of replacing it.

The pieces: :mod:`reproduce.specs` (tables, rows, columns, rows not run), :mod:`reproduce.benchmarks`
(one record per benchmark column), :mod:`reproduce.inputs` (inputs checked or made),
:mod:`reproduce.cell` (one cell through lmms-eval), :mod:`reproduce.records` (what a cell leaves on
disk), :mod:`reproduce.tables` (the table). This module is the command line only.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

# TABLES and load_spec are also read from here by scripts/update_goldens.py
from reproduce.specs import ROOT, TABLES, load_spec, model_choice, select_columns, select_rows  # noqa: F401


def parse_args(table: str, argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m reproduce {table}", description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny models and tiny local data on CPU (seconds)")
    p.add_argument("--micro", action="store_true",
                   help="the micro twin: micro models trained here, synthetic test data, every row (CPU, minutes)")
    p.add_argument("--reduced", action="store_true", help="with --micro: the spec's reduced micro twin (what CI runs)")
    p.add_argument("--rows", help="comma-separated Method@budget labels, e.g. 'Vanilla@576,D2Pruner@64'")
    p.add_argument("--columns", help="comma-separated benchmark names, e.g. 'POPE,MME'")
    p.add_argument("--limit", type=int, help="at most N samples per benchmark (smoke default: the spec's)")
    p.add_argument("--out", type=pathlib.Path, help="output folder (default results/<table>[-smoke])")
    p.add_argument("--batch-size", type=int, default=None, help="requests per forward pass (default 8 on GPU, 2 on CPU)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument("--model", "--model-path", dest="model_path",
                   help="local folder of the checkpoint instead of the spec's hub id; for InternVL a folder converted "
                        "by python -m d2pruner.models.convert_internvl runs the paper's base weights")
    p.add_argument("--revision", help="checkpoint revision")
    p.add_argument("--prior", type=pathlib.Path, help="prior file (default: the spec's path, relative to the current folder)")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit {args.limit} must be >= 1")
    if args.batch_size is not None and args.batch_size < 1:
        p.error(f"--batch-size {args.batch_size} must be >= 1")
    if args.micro and (args.smoke or args.model_path):
        p.error("--micro runs the shipped micro model: not with --smoke or --model")
    if args.reduced and not args.micro:
        p.error("--reduced is a form of --micro")
    if args.micro and "micro" not in load_spec(table):
        p.error(f"{table} has no micro twin (no 'micro' section in its spec)")
    if args.reduced:
        reduced = load_spec(table)["micro"]["reduced"]
        args.rows = args.rows or ",".join(f"{m}@{b}" for m, b in reduced["rows"])
        args.columns = args.columns or ",".join(reduced["columns"])
        args.limit = args.limit or reduced["limit"]
    return args


def main(table: str, argv: list[str] | None = None) -> int:
    """Run the table; 0 when written, 2 (with a message on stderr, before any work) on a bad option, a
    missing input, a corrupt file, an unwritable or busy ``--out``."""
    args = parse_args(table, list(argv or []))
    spec = load_spec(table)
    from reproduce import adapter, inputs, records

    try:  # every option checked before anything is loaded or written
        rows, skipped = select_rows(spec, args.smoke, args.rows, micro=args.micro)
        columns = select_columns(spec, args.columns)
        device = adapter.process_device(args.device)  # cuda:LOCAL_RANK when several processes share the run
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    choice = model_choice(spec, args.model_path, args.smoke, args.micro)
    out = args.out or ROOT / "results" / (table + ("-smoke" if args.smoke else "-micro" if args.micro else ""))
    prior = out / "prior.json" if args.smoke else args.prior or pathlib.Path(choice["prior"])
    if not args.smoke and not args.micro:
        try:
            inputs.check_inputs(spec, rows, columns, choice["model"], args.revision, prior)
        except inputs.MissingInputs as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    if args.micro and any(adapter.uses_prior(r.key) for r in rows) and not prior.exists():
        print(f"error: prior file {prior} not found (needed by the "
              f"{', '.join(sorted({r.method for r in rows if adapter.uses_prior(r.key)}))} rows of the micro twin): measure it "
              "with the prior command on calibration scenes (docs/micro.md), or pass --prior PATH", file=sys.stderr)
        return 2
    if any(adapter.uses_prior(r.key) for r in rows) and prior.exists():  # before any answer is set aside for it
        from d2pruner.models.prior import Prior

        try:
            Prior.load(prior)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    lock = records.OutputLock(out, rank, world_size, command="python -m reproduce " + " ".join([table, *(argv or [])]))
    try:
        lock.acquire()
    except records.OutputBusy as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: cannot write to --out {out}: {err.strerror or err} ({err.filename or out})", file=sys.stderr)
        return 2
    if lock.stale:
        print(f"note: {lock.path} was left by a run that is no longer running ({records.describe_holder(lock.stale)}); "
              "taking it over: its answers are kept and resumed", file=sys.stderr)
    try:
        return _run(table, argv, args, spec, rows, skipped, columns, device, out, prior)
    except records.CorruptFile as err:  # a cell record or answer file damaged since it was written
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        lock.release()


def _run(table, argv, args, spec, rows, skipped, columns, device, out, prior) -> int:
    import torch

    from reproduce import adapter, inputs, records, tables, tasks
    from reproduce.cell import run_cell
    from reproduce.tasks import smoke

    if device.startswith("cuda:"):
        torch.cuda.set_device(torch.device(device))
    rank = int(os.environ.get("RANK", "0"))
    mspec = spec["model"]
    if args.smoke or args.micro:
        local = spec["smoke" if args.smoke else "micro"]
        model_id, dtype, limit = model_choice(spec, None, args.smoke, args.micro)["model"], "float32", args.limit or local["limit"]
        max_tiles = int(local.get("max_tiles", 4))
        revision = None
    else:
        model_id, dtype, limit = model_choice(spec, args.model_path)["model"], mspec["dtype"], args.limit
        max_tiles, revision = int(mspec.get("max_tiles") or 12), args.revision
    from d2pruner.measure import choose_attention

    # loaded with the fastest attention that runs here; each row switches to its own (reproduce.cell.row_attention)
    attn, _ = choose_attention(mspec["attn_implementation"], device)
    model = adapter.load(model_id, revision=revision, dtype=dtype, device=device, attn_implementation=attn,
                         max_tiles=max_tiles)
    if args.micro:  # the synthetic test split, each process its own copy (identical)
        include_path = smoke.write_micro_tasks([b.stock for b in columns], out / "micro-data" / f"rank{rank}", n=limit)
    elif args.smoke:  # every process writes its own copy (identical), so none reads a file another is writing
        include_path = smoke.write_smoke_tasks([b.stock for b in columns], out / "smoke-data" / f"rank{rank}", n=limit)
        if any(adapter.uses_prior(r.key) for r in rows) and not prior.exists():
            mine = out / f"prior.rank{rank}.json"
            inputs.smoke_prior(model[0], model[1], model[2], mine, max_tiles)
            os.replace(mine, prior)
    else:
        include_path = tasks.TASK_DIR
    batch = args.batch_size or (spec["micro"].get("batch_size") if args.micro else None) or (8 if device.startswith("cuda") else 2)
    adapter_kwargs = {"pretrained": model_id, "prior": str(prior) if prior.exists() else None,
                      "config": mspec.get("config", "default"), "batch_size": batch, "device": device, "dtype": dtype,
                      "attn_implementation": attn, "max_tiles": max_tiles, "revision": revision,
                      "model": model, "max_new_tokens_cap": (spec["smoke"].get("max_new_tokens_cap") if args.smoke else
                                                             spec["micro"].get("max_new_tokens_cap") if args.micro else None)}
    env = records.environment(device)
    provenance = {"model_id": model_id, "model_revision": revision or getattr(model[0].config, "_commit_hash", None),
                  "dtype": dtype, "attn_implementation": attn, "max_tiles": max_tiles,
                  "prior_sha256": adapter.file_sha256(prior) if prior.exists() else None, "smoke": args.smoke,
                  "micro": args.micro,
                  "max_new_tokens_cap": adapter_kwargs["max_new_tokens_cap"],
                  "weights": model_choice(spec, args.model_path, args.smoke, args.micro)["weights"],
                  "command": "python -m reproduce " + " ".join([table, *(argv or [])])}
    cells: dict = {}
    rank0 = rank == 0
    for row in rows:
        for bench in columns:
            record = run_cell(spec=spec, row=row, bench=bench, out=out, adapter_kwargs=adapter_kwargs, limit=limit,
                              include_path=include_path, env=env, provenance=provenance)
            if record:
                cells[(row.label, bench.name)] = record
                if rank0:
                    print(f"{row.label:>22} {bench.name:<16} {record['value']:8.2f}  ({record['n_samples']} samples)",
                          flush=True)
    if not rank0:
        return 0
    shown, earlier = recorded_cells(spec, rows, cells, out, limit, adapter_kwargs, args.micro)
    view = tables.micro_view(spec) if args.micro else spec  # a micro table is not compared with the paper
    lines = tables.build_table(view, shown, skipped, {**earlier, **cells})
    records.write_text_atomic(out / "table.csv", tables.table_csv(lines))
    weights = model_choice(spec, args.model_path, args.smoke, args.micro)["weights"]
    md = tables.table_markdown(view, lines, tables.table_header(view, args.smoke, weights, limit, micro=args.micro))
    records.write_text_atomic(out / "table.md", md)
    print(md)
    if earlier:
        print(f"(with {len(earlier)} cell{'s' if len(earlier) > 1 else ''} of earlier runs into {out} under this configuration: "
              f"{', '.join(sorted({label for label, _ in earlier}))})")
    print(f"wrote {out / 'table.md'} and {out / 'table.csv'}")
    return 0


def recorded_cells(spec: dict, rows: list, cells: dict, out: pathlib.Path, limit: int | None,
                   adapter_kwargs: dict, micro: bool = False) -> tuple[list, dict]:
    """The rows to show and the cells of earlier runs to show with this run's ``cells``.

    A ``--rows`` / ``--columns`` subset does not drop what earlier runs into the same ``out`` computed:
    every cell of the spec that this run did not compute and whose record on disk was made under this
    very configuration (:func:`reproduce.records.cell_fingerprint`: same checkpoint, limit, prior, ...)
    is shown too, and its row with it, in the spec's row order.
    """
    from reproduce import records
    from reproduce.cell import row_attention
    from reproduce.specs import benchmark_columns

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    earlier: dict = {}
    run_labels = [r.label for r in rows]
    all_rows, _ = select_rows(spec, False, None, micro=micro)
    for row in all_rows:
        for bench in benchmark_columns(spec):
            if (row.label, bench.name) in cells:
                continue
            record_path, _ = records.cell_paths(out, row, bench)
            if not record_path.exists():
                continue
            shared = adapter_kwargs.get("model")
            attn, _ = row_attention(spec, row, adapter_kwargs["device"], shared[0] if shared else None)
            cell = records.cell_fingerprint(spec=spec, row=row, bench=bench, limit=limit, world_size=world_size,
                                            adapter_kwargs=adapter_kwargs, attn_implementation=attn)
            record = records.reusable_record(record_path, cell, quiet=True)
            if record is not None:
                earlier[(row.label, bench.name)] = record
    if not earlier:
        return rows, earlier
    labels = {label for label, _ in earlier} | set(run_labels)
    shown = [r for r in all_rows if r.label in labels]
    return shown + [r for r in rows if r.label not in {s.label for s in shown}], earlier
