"""Selection methods behind one interface, by name: D2Pruner and the methods the paper compares against.

Each method is one module of this package holding its selection rule -- public functions on plain,
batched torch tensors (``fastv_selection``, ``dart_selection``, ``cdpruner_select``, ...; ties always
to the lower token index) -- and its method object, a frozen dataclass deriving from
:class:`~d2pruner.methods.base.Method` and registered by name with
:func:`~d2pruner.methods.base.register`. The object declares where it prunes (``default_layer``; 0 =
before the LLM, where the kept tokens are renumbered as if the image placeholders had been shortened;
``progressive`` methods cut at their own ``stage_layers``), what it reads (``needs``, a set of
:class:`~d2pruner.methods.base.Need`) and ``select(items, n_keep) -> list[Selection]`` over
:class:`~d2pruner.methods.base.ItemInputs`. Baselines tag every kept token with
:attr:`~d2pruner.spec.Role.KEPT` (they have no pivots or MIS). Where a method is published with a
pruning point other than D2Pruner's, the *selection* is the same; attaching it there is the model
hooks' business (methods never import :mod:`d2pruner.models`).

Every module here except :mod:`~d2pruner.methods.base`, :mod:`~d2pruner.methods.common` and private
``_*`` ones is imported on first import of the package, and the names of its ``__all__`` are
re-exported here: a new method is one module (plus its tests and docs).

>>> sorted(METHODS)
['cdpruner', 'd2pruner', 'dart', 'divprune', 'fastv', 'mmr-d2score', 'pyramiddrop', 'random', 'sparsevlm', 'visionzip']
>>> get_method("fastv").default_layer, get_method("divprune").default_layer
(2, 0)
>>> fastv_selection(torch.tensor([[0.1, 0.5, 0.5, 0.2]]), [2]).tolist()
[[1, 2]]
"""

from __future__ import annotations

import importlib
import pkgutil
import types

import torch  # noqa: F401  (the doctests above)

from d2pruner.methods import base as _base
from d2pruner.methods.base import (ItemInputs, MergedSelection, Method, Need, get_method, kept_selection, method_class,
                                   method_names, register)

__all__ = ["METHODS", "ItemInputs", "MergedSelection", "Method", "Need", "get_method", "kept_selection", "method_class",
           "method_names", "register"]

_NOT_METHODS = frozenset({"base", "common"})


def _import_method_modules() -> None:
    """Import every method module of this package and re-export its ``__all__`` names here."""
    origin: dict[str, str] = {name: "base" for name in __all__}
    for info in pkgutil.iter_modules(__path__):
        if info.name in _NOT_METHODS or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for name in getattr(module, "__all__", ()):
            if name in origin and origin[name] != info.name:
                raise ImportError(f"d2pruner.methods.{info.name} and d2pruner.methods.{origin[name]} both export {name!r}")
            origin[name] = info.name
            globals()[name] = getattr(module, name)
            if name not in __all__:
                __all__.append(name)


_import_method_modules()

#: Read-only view name -> method class of the registry (every registered method, also those registered later).
METHODS = types.MappingProxyType(_base._REGISTRY)
