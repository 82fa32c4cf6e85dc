"""Selection speed: the fast backend against the bare similarity matmul and against the reference.

For every (device, N, B, D) it times, side by side in one run and on identical inputs:

* ``matmul`` -- the bare batched cosine-similarity matmul ``X @ X^T`` of pre-normalised float32
  features ``(B, N, D)``: the floor any method comparing all token pairs pays;
* ``fast`` -- :func:`d2pruner.fast.select_tokens`, the whole selection (checks, scores, ranks, graph,
  MIS, top-up) from float32 inputs;
* ``reference`` -- :func:`d2pruner.reference.select_tokens` on each of the B items in turn (CPU, float64).

and prints ``fast / matmul``, ``fast / reference``, the number of MIS rounds and the peak extra
resident memory of one fast call and of one matmul (``peak MiB``: the process's high-water mark,
reset before the call through ``/proc/self/clear_refs``, minus its resident size then). In the grid,
memory the allocator kept from earlier calls is reused without growing the resident size, so small
figures (tens of MiB, after warm-up calls) read low, down to 0; the video and ragged rows measure
each call in a fresh process, where nothing is reused.

Two more tables, measured in the same run:

* **video** -- one item of N up to 16,384 tokens, D = 3584 (Qwen2-VL-sized features): time and
  peak extra memory of the whole fast selection against the bare float32 ``X @ X^T``, one call each;
* **ragged** -- 64 items of 4 tokens plus one of 4000: the whole list padded into one
  :func:`d2pruner.fast.select_tokens` call (what ``d2pruner.select_tokens`` did before it grouped
  items by size) against ``d2pruner.select_tokens`` on the list and on the big item alone.

Inputs are the
seeded demo inputs of ``python -m d2pruner`` (clustered features, a smooth attention row times a
positional bias). Results are written as JSON with the command, device, versions and date.

Usage::

    python benchmarks/selection.py                 # the full grid, CPU (and CUDA when present)
    python benchmarks/selection.py --quick         # a small smoke grid (CI)
    python benchmarks/selection.py --video 4096    # a smaller video row
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


def _status_kib(field: str) -> int | None:
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_mib(fn) -> tuple[float, object]:
    """``(peak extra resident MiB during fn(), fn's result)``; NaN where /proc cannot reset the peak."""
    import gc

    gc.collect()
    try:
        pathlib.Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current VmRSS
    except OSError:
        return float("nan"), fn()
    base = _status_kib("VmRSS")
    out = fn()
    return (_status_kib("VmHWM") - base) / 1024.0, out


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
    fast_mib = peak_mib(fns["fast"])[0] if device == "cpu" else float("nan")
    matmul_mib = peak_mib(fns["matmul"])[0] if device == "cpu" else float("nan")
    row = dict(device=device, N=n, B=b, D=d, n_keep=n_keep[0], matmul_ms=1e3 * t_matmul, fast_ms=1e3 * t_fast,
               fast_over_matmul=t_fast / t_matmul, mis_rounds=out.rounds, fast_peak_mib=fast_mib, matmul_peak_mib=matmul_mib)
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


def _in_child(kind: str, name: str, n: int, d: int, ratio: float, spatial_weight: float) -> tuple[float, float]:
    """``(seconds, peak extra MiB)`` of one call measured in a fresh Python process (so that memory the
    allocator kept from earlier calls cannot hide the call's own)."""
    import subprocess

    cmd = [sys.executable, __file__, "--child", kind, name, str(n), str(d), repr(ratio), repr(spatial_weight)]
    got = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    return got["sec"], got["mib"]


def bench_video(n: int, d: int, ratio: float, config: D2PrunerConfig, child: str | None = None) -> dict:
    """One item of n tokens (an InternVL-like canvas), one call each of X @ X^T and of the fast selection,
    each in a fresh process."""
    rng = np.random.default_rng(0)
    side = int(np.ceil(n ** 0.5))
    layout = d2pruner.TokenLayout.from_array(np.stack([np.zeros(n, np.int64), *np.divmod(np.arange(n), side)], axis=1))
    centres = torch.tensor(rng.normal(size=(64, d)), dtype=torch.float32)
    feats = centres[torch.tensor(rng.integers(0, 64, n))] + 0.4 * torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    feats = feats[None]  # (1, N, D) float32
    attn = torch.tensor(rng.random(n), dtype=torch.float32)[None]
    lay = torch.tensor(layout.as_array())[None]
    n_keep = [resolve_budget(ratio, n)]
    unit = torch.nn.functional.normalize(feats, dim=-1)

    def matmul():
        return torch.bmm(unit, unit.transpose(1, 2))

    def fast():
        return fast_select(attn, None, feats, lay, n_keep, config)

    if child is not None:  # in a fresh process: this one call, nothing allocated before it
        fn = {"matmul": matmul, "fast": fast}[child]
        t0 = time.perf_counter()
        mib, res = peak_mib(fn)
        return dict(sec=time.perf_counter() - t0, mib=mib)
    out = {name: _in_child("video", name, n, d, ratio, config.spatial_weight) for name in ("matmul", "fast")}
    return dict(N=n, B=1, D=d, n_keep=n_keep[0], matmul_ms=1e3 * out["matmul"][0], fast_ms=1e3 * out["fast"][0],
                fast_over_matmul=out["fast"][0] / out["matmul"][0], matmul_peak_mib=out["matmul"][1],
                fast_peak_mib=out["fast"][1])


def bench_ragged(d: int, config: D2PrunerConfig, child: str | None = None) -> dict:
    """64 items of 4 tokens and one of 4000: padded in one call, grouped by the API, the big one alone;
    each measured in a fresh process, the selections compared here."""
    rng = np.random.default_rng(0)
    sizes = [4] * 64 + [4000]
    layouts = [d2pruner.TokenLayout.grid(2, 2)] * 64 + [d2pruner.TokenLayout.grid(40, 100)]
    attn = [torch.tensor(rng.random(n), dtype=torch.float32) for n in sizes]
    feats = [torch.tensor(rng.normal(size=(n, d)), dtype=torch.float32) for n in sizes]
    budgets = [2] * 64 + [400]
    from d2pruner.fast import pack

    def padded():
        a, valid = pack(attn)
        f, _ = pack(feats)
        lay, _ = pack([torch.tensor(x.as_array()) for x in layouts])
        return fast_select(a, None, f, lay, budgets, config, valid).to_list()

    def grouped():
        return d2pruner.select_tokens(attn, feats, layouts, budgets, config=config)

    def alone():
        return d2pruner.select_tokens(attn[-1], feats[-1], layouts[-1], budgets[-1], config=config)

    if child is not None:
        fn = {"alone": alone, "grouped": grouped, "padded": padded}[child]
        t0 = time.perf_counter()
        mib, _ = peak_mib(fn)
        return dict(sec=time.perf_counter() - t0, mib=mib)
    out = {name: _in_child("ragged", name, 0, d, 0.0, config.spatial_weight) for name in ("alone", "grouped", "padded")}
    results = {"alone": alone(), "grouped": grouped(), "padded": padded()}
    same = results["padded"] == results["grouped"] and results["grouped"][-1] == results["alone"]
    row = dict(items="64 x 4 + 1 x 4000", D=d, identical=same)
    for name, (sec, mib) in out.items():
        row[f"{name}_ms"], row[f"{name}_peak_mib"] = 1e3 * sec, mib
    row.update(padded_over_alone_mib=out["padded"][1] / out["alone"][1], grouped_over_alone_mib=out["grouped"][1] / out["alone"][1],
               padded_over_alone_time=out["padded"][0] / out["alone"][0], grouped_over_alone_time=out["grouped"][0] / out["alone"][0])
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
    parser.add_argument("--video", type=int, nargs="*", default=[16384], help="N of the one-item video rows (D = --video-d)")
    parser.add_argument("--video-d", type=int, default=3584)
    parser.add_argument("--ragged-d", type=int, default=1024, help="D of the ragged-batch row (0: skip it)")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="write the results as JSON here")
    parser.add_argument("--child", nargs=6, default=None, help=argparse.SUPPRESS)  # one measured call in a fresh process
    args = parser.parse_args(argv)
    if args.child:
        kind, name, n, d, ratio, w = args.child
        cfg = D2PrunerConfig(spatial_weight=float(w))
        got = bench_video(int(n), int(d), float(ratio), cfg, name) if kind == "video" else bench_ragged(int(d), cfg, name)
        print(json.dumps(got))
        return 0
    if args.quick:
        args.n, args.b, args.d, args.repeats, args.video, args.video_d, args.ragged_d = [576], [1, 2], [64], 3, [2048], 256, 64
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
    header = (f"{'device':6} {'N':>5} {'B':>2} {'D':>5} {'keep':>5} {'matmul ms':>10} {'fast ms':>9} {'ref ms':>9} {'fast/matmul':>11} "
              f"{'fast/ref':>9} {'rounds':>6} same {'fast MiB':>9} {'matmul MiB':>10}" + peer_cols)
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
                          f" {row['fast_peak_mib']:9.1f} {row['matmul_peak_mib']:10.1f}"
                          + "".join(f" {row[p + '_ms']:11.2f} {row['fast_over_' + p]:13.3f}" for p in ("divprune", "cdpruner", "mmr")
                                    if p + "_ms" in row),
                          flush=True)
    video = []
    if args.video:
        print(f"# video: one item, float32 features, peak = extra resident memory of one call; fast/matmul measured side by side")
        print(f"{'N':>6} {'D':>5} {'keep':>5} {'matmul ms':>10} {'fast ms':>10} {'fast/matmul':>11} {'matmul MiB':>10} {'fast MiB':>9}")
    for n in args.video:
        r = bench_video(n, args.video_d, args.ratio, config)
        video.append(r)
        print(f"{r['N']:6d} {r['D']:5d} {r['n_keep']:5d} {r['matmul_ms']:10.1f} {r['fast_ms']:10.1f} {r['fast_over_matmul']:11.2f} "
              f"{r['matmul_peak_mib']:10.1f} {r['fast_peak_mib']:9.1f}", flush=True)
    ragged = None
    if args.ragged_d:
        ragged = bench_ragged(args.ragged_d, config)
        print(f"# ragged: {ragged['items']} tokens, D={ragged['D']}; peak extra MiB and ms of one call each")
        for name in ("alone", "grouped", "padded"):
            what = {"alone": "the 4000-token item alone", "grouped": "d2pruner.select_tokens on the list (grouped by size)",
                    "padded": "one padded fast.select_tokens call (before grouping)"}[name]
            print(f"{name:8} {ragged[name + '_peak_mib']:9.1f} MiB {ragged[name + '_ms']:10.1f} ms   {what}")
        print(f"memory / alone: padded {ragged['padded_over_alone_mib']:.2f}, grouped {ragged['grouped_over_alone_mib']:.2f}; "
              f"time / alone: padded {ragged['padded_over_alone_time']:.2f}, grouped {ragged['grouped_over_alone_time']:.2f}; "
              f"identical {ragged['identical']}", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(dict(meta=meta, rows=rows, video=video, ragged=ragged), indent=1))
        print(f"wrote {args.out}")
    return 0 if all(r.get("identical", True) for r in rows) and (ragged is None or ragged["identical"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
