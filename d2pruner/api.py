"""The public entry point: :func:`select_tokens` with a backend switch."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from d2pruner.spec import D2PrunerConfig, Selection, TokenLayout, check_shapes, resolve_budget, validate_item

__all__ = ["BACKENDS", "select_tokens"]

BACKENDS = ("fast", "reference")


def _as_tensor(x: Any, device: torch.device | str | None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.to(device) if device is not None else t


def select_tokens(attn: Any, features: Any, layout: TokenLayout | Sequence[TokenLayout], budget: int | float | Sequence[int | float],
                  *, prior: Any = None, config: D2PrunerConfig | None = None, backend: str = "fast",
                  device: torch.device | str | None = None) -> Selection | list[Selection]:
    """Select the visual tokens D2Pruner keeps, for one item or a list of items.

    Parameters
    ----------
    attn : array-like (N,) or a list of them
        Last-text-token attention to the visual tokens at layer K-1 (numpy or torch).
    features : array-like (N, D) or a list of them
        Visual hidden states entering layer K.
    layout : TokenLayout or a list of them
    budget : int, float or a list of them
        Token count, or a ratio in (0, 1] (see :func:`d2pruner.spec.resolve_budget`).
    prior : array-like (N,), a list of them, or None
        Positional-bias prior; ``None`` runs un-debiased.
    config : D2PrunerConfig, optional
    backend : {"fast", "reference"}
        ``"fast"`` batches all items in one call of :func:`d2pruner.fast.select_tokens`;
        ``"reference"`` runs :func:`d2pruner.reference.select_tokens` item by item. Both give the same result.
    device : torch device, optional
        Where the fast backend computes (default: where the inputs are).

    Returns
    -------
    Selection, or a list of Selection for a list input.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> attn, feats = rng.random(16), rng.normal(size=(16, 8))
    >>> sel = select_tokens(attn, feats, TokenLayout.grid(4, 4), budget=0.25)
    >>> len(sel), sel.counts()
    (4, {'pivot': 2, 'mis': 2, 'topup': 0})
    >>> sel == select_tokens(attn, feats, TokenLayout.grid(4, 4), budget=4, backend="reference")
    True
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    single = not isinstance(attn, (list, tuple))
    attns = [attn] if single else list(attn)
    b = len(attns)
    if b == 0:
        raise ValueError("select_tokens got an empty list of items")

    def per_item(name: str, value: Any, is_item: bool) -> list:
        if single:
            return [value]
        if is_item:
            return [value] * b
        if not isinstance(value, (list, tuple)) or len(value) != b:
            raise ValueError(f"{name} must be a list of {b} entries to match attn, got {type(value).__name__}"
                             + (f" of length {len(value)}" if isinstance(value, (list, tuple)) else ""))
        return list(value)

    featss = per_item("features", features, False)
    layouts = per_item("layout", layout, isinstance(layout, TokenLayout))
    budgets = per_item("budget", budget, not isinstance(budget, (list, tuple)))
    priors = per_item("prior", prior, prior is None)
    config = config or D2PrunerConfig()
    for i, (a, p, f, lay) in enumerate(zip(attns, priors, featss, layouts)):
        if not isinstance(lay, TokenLayout):
            raise ValueError(f"layout of item {i} must be a TokenLayout, got {type(lay).__name__}")
        check_shapes(tuple(np.shape(a)), None if p is None else tuple(np.shape(p)), tuple(np.shape(f)), len(lay), i)
    n_keep = [resolve_budget(bud, int(np.shape(a)[0]), i) for i, (bud, a) in enumerate(zip(budgets, attns))]

    if backend == "reference":
        from d2pruner import reference

        def host(x: Any) -> Any:
            return None if x is None else (x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x))

        out = []
        for i, (a, p, f, lay, k) in enumerate(zip(attns, priors, featss, layouts, n_keep)):
            a, p, f = host(a), host(p), host(f)
            validate_item(a, p, f, lay, k, item=i)  # so that errors name the item in the batch
            out.append(reference.select_tokens(a, p, f, lay, k, config))
    else:
        from d2pruner.fast import pack, select_tokens as fast_select

        a, valid = pack([_as_tensor(x, device) for x in attns])
        f, _ = pack([_as_tensor(x, device) for x in featss])
        lay, _ = pack([torch.as_tensor(x.as_array(), device=a.device) for x in layouts])
        if any(p is None for p in priors) and not all(p is None for p in priors):
            raise ValueError("prior must be given for every item or for none")
        p = None if priors[0] is None else pack([_as_tensor(x, device) for x in priors], pad_value=1)[0]
        out = fast_select(a, p, f, lay, n_keep, config, valid).to_list()
    return out[0] if single else out
