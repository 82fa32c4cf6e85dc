"""Selection speed: the fast backend against the bare similarity matmul and against the reference.

For every (device, N, B, D) it times, side by side in one run and on identical inputs:

* ``matmul`` -- the bare batched cosine-similarity matmul ``X @ X^T`` of pre-normalised float32
  features ``(B, N, D)``: the floor any method comparing all token pairs pays;
* ``fast`` -- :func:`d2pruner.fast.select_tokens`, the whole selection (checks, scores, ranks, graph,
  MIS, top-up) from float32 inputs;
* ``reference`` -- :func:`d2pruner.reference.select_tokens` on each of the B items in turn (CPU, float64).

and prints ``fast / matmul``, ``fast / reference`` and the number of MIS rounds. Inputs are the
seeded demo inputs of ``python -m d2pruner`` (clustered features, a smooth attention row times a
positional bias). Results are written as JSON with the command, device, versions and date.

Usage::

    python benchmarks/selection.py                 # the full grid, CPU (and CUDA when present)
    python benchmarks/selection.py --quick         # a small smoke grid (CI)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import numpy as np
import torch

import d2pruner
from d2pruner import D2PrunerConfig, methods, reference, resolve_budget
from d2pruner.__main__ import demo_inputs
from d2pruner.fast import select_tokens as fast_select


def _cpu_name() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timeit(fns: dict, device: str, repeats: int, warmup: int = 1) -> dict:
    """Median wall time in seconds of each ``fns[name]()``, calls interleaved so that drift in the
    machine's speed hits all of them alike (device-synchronised, after ``warmup`` calls each)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def make_batch(n: int, b: int, d: int, seed: int = 0):
    side = int(round(n ** 0.5))
    items = []
    for i in range(b):
        attn, prior, feats, _ = demo_inputs(seed + i, side=side, dim=d)
        items.append((attn[:n], prior[:n], feats[:n]))
    layout = d2pruner.TokenLayout.grid(side, side) if side * side == n else d2pruner.TokenLayout.internvl(*_tiles(n))
    return items, layout


def _tiles(n: int) -> tuple[int, int]:
    """A tile grid whose InternVL token count is n (e.g. 1280 = 4 tiles + thumbnail, 3328 = 12 + 1)."""
    tiles = n // 256 - 1
    for rows in range(int(tiles ** 0.5), 0, -1):
        if tiles % rows == 0:
            return rows, tiles // rows
    raise ValueError(f"no tile grid gives {n} tokens")


def bench_one(device: str, n: int, b: int, d: int, ratio: float, config: D2PrunerConfig, repeats: int, with_reference: bool,
              with_peers: bool = False):
    items, layout = make_batch(n, b, d)
    n_keep = [resolve_budget(ratio, n)] * b
    attn = torch.tensor(np.stack([a for a, _, _ in items]), dtype=torch.float32, device=device)  # (B, N)
    prior = torch.tensor(np.stack([p for _, p, _ in items]), dtype=torch.float32, device=device)  # (B, N)
    feats = torch.tensor(np.stack([f for _, _, f in items]), dtype=torch.float32, device=device)  # (B, N, D)
    lay = torch.tensor(layout.as_array(), device=device).expand(b, n, 3)  # (B, N, 3)
    unit = torch.nn.functional.normalize(feats, dim=-1)

    out = fast_select(attn, prior, feats, lay, n_keep, config)
    fns = {"matmul": lambda: torch.bmm(unit, unit.transpose(1, 2)),
           "fast": lambda: fast_select(attn, prior, feats, lay, n_keep, config)}
    if with_peers:  # the peers' selections on identical inputs (importance / relevance: the attention row)
        fns.update(divprune=lambda: methods.divprune_selection(feats, n_keep),
                   cdpruner=lambda: methods.cdpruner_selection(feats, attn, n_keep),
                   mmr=lambda: methods.mmr_selection(attn / prior, feats, n_keep))
    t = timeit(fns, device, repeats if not with_peers else max(3, repeats // 3))
    t_matmul, t_fast = t["matmul"], t["fast"]
    row = dict(device=device, N=n, B=b, D=d, n_keep=n_keep[0], matmul_ms=1e3 * t_matmul, fast_ms=1e3 * t_fast,
               fast_over_matmul=t_fast / t_matmul, mis_rounds=out.rounds)
    for peer in ("divprune", "cdpruner", "mmr"):
        if peer in t:
            row[f"{peer}_ms"] = 1e3 * t[peer]
            row[f"fast_over_{peer}"] = t_fast / t[peer]
    if with_reference:
        host = [(a.astype(np.float32).astype(np.float64), p.astype(np.float32).astype(np.float64),
                 f.astype(np.float32).astype(np.float64)) for a, p, f in items]

        def run_reference():
            return [reference.select_tokens(a, p, f, layout, k, config) for (a, p, f), k in zip(host, n_keep)]

        t0 = time.perf_counter()
        ref = run_reference()
        t_ref = time.perf_counter() - t0  # one timed run: the reference is slow and its time stable
        row.update(reference_ms=1e3 * t_ref, fast_over_reference=t_fast / t_ref,
                   identical=all(x == y for x, y in zip(out.to_list(), ref)))
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small grid for a CI smoke run")
    parser.add_argument("--n", type=int, nargs="*", default=[576, 1280, 3328])
    parser.add_argument("--b", type=int, nargs="*", default=[1, 8])
    parser.add_argument("--d", type=int, nargs="*", default=[64, 4096])
    parser.add_argument("--ratio", type=float, default=64 / 576, help="budget as a ratio of N (default 64/576)")
    parser.add_argument("--spatial-weight", type=float, default=0.0)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--devices", nargs="*", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--peers", action="store_true", help="also time our DivPrune, CDPruner and MMR selections")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.b, args.d, args.repeats = [576], [1, 2], [64], 3
    config = D2PrunerConfig(spatial_weight=args.spatial_weight)

    meta = dict(command="python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                d2pruner=d2pruner.__version__, torch=torch.__version__, numpy=np.__version__, python=platform.python_version(),
                cpu=_cpu_name(), cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
                cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                config=dict(spatial_weight=config.spatial_weight, ratio=args.ratio, repeats=args.repeats))
    for key, value in meta.items():
        print(f"# {key}: {value}")
    peer_cols = "".join(f" {p + ' ms':>11} {'fast/' + p:>13}" for p in ("divprune", "cdpruner", "mmr")) if args.peers else ""
    header = f"{'device':6} {'N':>5} {'B':>2} {'D':>5} {'keep':>5} {'matmul ms':>10} {'fast ms':>9} {'ref ms':>9} {'fast/matmul':>11} {'fast/ref':>9} {'rounds':>6} same" + peer_cols
    print(header)
    rows = []
    for device in args.devices:
        for n in args.n:
            for b in args.b:
                for d in args.d:
                    row = bench_one(device, n, b, d, args.ratio, config, args.repeats, not args.no_reference, args.peers)
                    rows.append(row)
                    print(f"{device:6} {n:5d} {b:2d} {d:5d} {row['n_keep']:5d} {row['matmul_ms']:10.2f} {row['fast_ms']:9.2f} "
                          f"{row.get('reference_ms', float('nan')):9.1f} {row['fast_over_matmul']:11.2f} "
                          f"{row.get('fast_over_reference', float('nan')):9.4f} {row['mis_rounds']:6d} {str(row.get('identical', '-')):>4}"
                          + "".join(f" {row[p + '_ms']:11.2f} {row['fast_over_' + p]:13.3f}" for p in ("divprune", "cdpruner", "mmr")
                                    if p + "_ms" in row),
                          flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
        print(f"wrote {args.out}")
    return 0 if all(r.get("identical", True) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
