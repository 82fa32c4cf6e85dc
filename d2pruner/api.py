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


#: Feature dtypes whose every value float32 holds exactly; any other dtype is read in float64.
_FLOAT32_EXACT = (torch.float16, torch.bfloat16, torch.float32)


def _is_batch(attn: Any) -> bool:
    """The single-item / batch decision: a list or tuple of array-likes (arrays, tensors, sequences) is a
    batch; a list or tuple of numbers is one item's attention; anything else is one item.

    >>> _is_batch([0.1, 0.5]), _is_batch([[0.1, 0.5]]), _is_batch(np.ones(3)), _is_batch((np.ones(3),))
    (False, True, False, True)
    """
    if not isinstance(attn, (list, tuple)):
        return False
    is_seq = [np.ndim(a) > 0 or isinstance(a, (list, tuple)) for a in attn]
    if all(is_seq):
        return True
    if not any(is_seq):
        return False
    k = is_seq.index(not is_seq[0])
    raise ValueError(f"attn mixes numbers and sequences (entry {k} is a {type(attn[k]).__name__}): pass one item's "
                     "attention as a flat sequence of numbers, or a batch as a list of one sequence per item")


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
        Positional-bias prior; ``None`` runs un-debiased. In a list, an item whose entry is ``None``
        runs un-debiased, the others debiased (on both backends).
    config : D2PrunerConfig, optional
    backend : {"fast", "reference"}
        ``"fast"`` batches all items in one call of :func:`d2pruner.fast.select_tokens`;
        ``"reference"`` runs :func:`d2pruner.reference.select_tokens` item by item. Both give the same result.
    device : torch device, optional
        Where the fast backend computes (default: where the inputs are).

    Returns
    -------
    Selection, or a list of Selection for a batch.

    Notes
    -----
    **One item or a batch.** A batch is a list or tuple whose entries are array-likes (arrays,
    tensors, lists): ``[attn_0, attn_1]``. A numpy array, a tensor, or a list of numbers is one item.
    A list mixing numbers and sequences is refused.

    Every item gives the same selection in a batch as alone, whatever the dtypes of the items: the
    fast backend packs ``attn`` and ``prior`` in float64 and features in float32 when every item's
    dtype is float16, bfloat16 or float32 (exact), else in float64; it runs items of similar size
    together (:func:`d2pruner.fast.ragged.size_groups`) and items with and without a prior apart,
    so a batch costs about what its items cost alone.

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
    single = not _is_batch(attn)
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
        from d2pruner.fast import pack
        from d2pruner.fast.ragged import size_groups
        from d2pruner.fast.select import select_padded

        out = [None] * b
        sizes = [int(np.shape(a)[0]) for a in attns]
        for with_prior in (True, False):  # items with and without a prior run apart: prior=None is per item
            ids = [i for i in range(b) if (priors[i] is not None) == with_prior]
            for group in size_groups([sizes[i] for i in ids]):
                items = [ids[g] for g in group]
                feats = [_as_tensor(featss[i], device) for i in items]
                fdtype = torch.float32 if all(f.dtype in _FLOAT32_EXACT for f in feats) else torch.float64
                a, valid = pack([_as_tensor(attns[i], device).to(torch.float64) for i in items])
                f, _ = pack([x.to(fdtype) for x in feats])
                lay, _ = pack([torch.as_tensor(layouts[i].as_array(), device=a.device) for i in items])
                p = pack([_as_tensor(priors[i], device).to(torch.float64) for i in items], pad_value=1)[0] if with_prior else None
                got = select_padded(a, p, f, lay, [n_keep[i] for i in items], config, valid, item_ids=items).to_list()
                for i, sel in zip(items, got):
                    out[i] = sel
    return out[0] if single else out
