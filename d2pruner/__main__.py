"""``python -m d2pruner``: run D2Pruner on an embedded, seeded LLaVA-sized input with both backends.

It needs no model weights and no network: the attention row, the prior and the features are drawn
from a fixed seed with the shapes of LLaVA-1.5 (576 tokens on a 24x24 grid, 4096-wide features) and
a synthetic positional bias, then it prints what each step kept and checks that both backends agree.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from d2pruner import D2PrunerConfig, TokenLayout, select_tokens


def demo_inputs(seed: int = 0, side: int = 24, dim: int = 4096):
    """Seeded stand-ins of the real inputs: a smooth 'content' attention times a positional bias
    that grows towards the end of the sequence (the bias D2Pruner removes), features with clusters."""
    rng = np.random.default_rng(seed)
    n = side * side
    yy, xx = np.divmod(np.arange(n), side)
    content = np.exp(-(((yy - 8) ** 2 + (xx - 15) ** 2) / 30.0)) + 0.05 * rng.random(n)
    prior = 0.2 + np.linspace(0.0, 1.0, n) ** 4 * 5.0  # later tokens attract attention regardless of content
    attn = content * prior
    attn = attn / attn.sum() * 0.3  # a softmax row over the full sequence: the image gets 30 % of it
    centres = rng.normal(size=(48, dim))
    features = centres[rng.integers(0, 48, n)] + 0.4 * rng.normal(size=(n, dim))  # cos ~0.86 within a cluster
    return attn, prior / prior.mean() * attn.mean(), features, TokenLayout.grid(side, side)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m d2pruner", description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="64", help="token count (int) or ratio (float), default 64 of 576")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    budget = float(args.budget) if "." in args.budget else int(args.budget)
    attn, prior, features, layout = demo_inputs(args.seed)
    cfg = D2PrunerConfig()
    print(f"D2Pruner on a seeded LLaVA-sized input: N={len(layout)} tokens (24x24), D={features.shape[1]}, budget={budget}")
    results = {}
    for backend in ("fast", "reference"):
        t0 = time.perf_counter()
        results[backend] = select_tokens(attn, features, layout, budget, prior=prior, config=cfg, backend=backend)
        print(f"  {backend:9s} backend: {1e3 * (time.perf_counter() - t0):8.1f} ms  kept {results[backend].counts()}")
    sel = results["fast"]
    raw = select_tokens(attn, features, layout, budget, config=cfg)
    mean_row = lambda s: float(np.mean(layout.row[s.kept]))  # noqa: E731
    print(f"  kept tokens' mean row: debiased {mean_row(sel):.1f} vs un-debiased {mean_row(raw):.1f} "
          f"(the synthetic bias favours late rows; content peaks at row 8)")
    grid = np.full((24, 24), ".")
    for i, r in zip(sel.kept, sel.roles):
        grid[layout.row[i], layout.col[i]] = "PMT"[int(r)]
    print("  kept (P pivot, M mis, T top-up):")
    print("\n".join("    " + " ".join(row) for row in grid))
    same = results["fast"] == results["reference"]
    print(f"  reference == fast: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
