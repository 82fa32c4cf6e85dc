"""The benchmarks a table spec may name: one :class:`Benchmark` record each, one module per benchmark.

A record is every fact the code has about one benchmark column: its name in the table specs and in
``paper_tables`` (``"POPE"``, ``"RefCOCO+ testA"``), the stock lmms-eval 0.7.3 task that our overlay
``reproduce/tasks/d2p_<stock>.yaml`` departs from, the hub data sets a real run reads, the metric key
in lmms-eval's results and the scale the paper prints it at, the columns of the real data our task
reads, and the builder of its tiny local twin for smoke runs and tests. Each module of this package
(``pope.py``, ``refcoco.py``, ...) lists its records in ``BENCHMARKS``; the modules are discovered on
first use. So a new benchmark column is three files: a module here (record and smoke builder), its
overlay YAML in ``reproduce/tasks/``, and the column ``{"benchmark": name}`` in
``reproduce/specs/<table>.json`` (with the paper's numbers in ``paper_tables/<table>.csv``, data).

This package imports neither lmms-eval nor ``datasets`` (builders import ``datasets`` when called).

>>> pope = get("POPE")
>>> pope.stock, pope.task, pope.metric, pope.scale, pope.dataset_ids
('pope', 'd2p_pope', 'pope_f1_score', 100, ['lmms-lab-encoder/POPE'])
>>> by_stock("refcoco+_bbox_rec_testA").name
'RefCOCO+ testA'
>>> get("POPE ")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: unknown benchmark 'POPE '; known: ..., MME, POPE, RefCOCO testA, ...
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Callable, Mapping

__all__ = ["PREFIX", "Benchmark", "Data", "all_benchmarks", "by_stock", "get"]

#: Prefix of our task names: the overlay of stock task ``pope`` is ``d2p_pope`` (``reproduce/tasks/d2p_pope.yaml``).
PREFIX = "d2p_"


@dataclasses.dataclass(frozen=True)
class Data:
    """One hub data set configuration a real run reads.

    ``smoke_suffix``: which file of the smoke builder's output stands for it (``"<stock><suffix>.parquet"``).
    """

    repo: str
    config: str = "default"
    smoke_suffix: str = ""


@dataclasses.dataclass(frozen=True, eq=False)
class Benchmark:
    """One benchmark column.

    Attributes
    ----------
    name : str
        The column's name in the table specs and ``paper_tables`` (unique).
    stock : str
        The stock lmms-eval 0.7.3 task (unique); our task is :attr:`task`.
    data : tuple of Data
        The hub data set configurations the task loads, the one of its YAML's ``dataset_path`` first.
    metric : str
        The key in lmms-eval's results for this task (without the ``,none`` filter suffix).
    scale : int
        The value the paper prints = lmms-eval's value x ``scale`` (1 or 100).
    schema : frozenset of str
        Columns of the real data that the task reads; the smoke twin has at least these.
    smoke : callable
        ``smoke(n, offset) -> {file suffix: (rows, datasets.Features)}``: the tiny local twin of ``n``
        items (see :mod:`reproduce.tasks.smoke`), starting ``offset`` photographs further on.
    smoke_offset : int
        The ``offset`` this benchmark's twin uses (splits of one data set differ by it).
    smoke_overrides : mapping
        Keys of the smoke YAML set beyond its data source (e.g. a ``process_docs`` of its own).
    smoke_files : mapping
        Further files written beside the smoke YAML: file name -> text.
    micro : callable
        ``micro(n, seed) -> {file suffix: (rows, datasets.Features)}``: ``n`` items of the synthetic
        benchmark of the micro reproduction (:mod:`reproduce.micro`) in the same schema, drawn from
        split ``seed`` (:data:`reproduce.micro.data.SPLITS`).
    note : str
        What the paper's protocol or our choice makes of the stock task (for readers).
    """

    name: str
    stock: str
    data: tuple[Data, ...]
    metric: str
    scale: int
    schema: frozenset[str]
    smoke: Callable[[int, int], dict]
    smoke_offset: int = 0
    smoke_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    smoke_files: Mapping[str, str] = dataclasses.field(default_factory=dict)
    micro: Callable[[int, int], dict] | None = None
    note: str = ""

    @property
    def task(self) -> str:
        """Our task name (the overlay YAML ``reproduce/tasks/<task>.yaml`` defines it)."""
        return PREFIX + self.stock

    @property
    def dataset_ids(self) -> list[str]:
        """Hub data set ids a real run reads, in order, without repeats."""
        return list(dict.fromkeys(d.repo for d in self.data))


_BY_NAME: dict[str, Benchmark] = {}
_BY_STOCK: dict[str, Benchmark] = {}


def _discover() -> None:
    if _BY_NAME:
        return
    found: list[Benchmark] = []
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            found += importlib.import_module(f"{__name__}.{info.name}").BENCHMARKS
    by_name: dict[str, Benchmark] = {}
    by_stock: dict[str, Benchmark] = {}
    for bench in found:
        for key, seen in ((bench.name, by_name), (bench.stock, by_stock)):
            if key in seen:
                raise ValueError(f"benchmark {key!r} is defined twice")
            seen[key] = bench
    _BY_STOCK.update(sorted(by_stock.items()))
    _BY_NAME.update(by_name)


def all_benchmarks() -> list[Benchmark]:
    """Every benchmark record, in the order of their stock task names."""
    _discover()
    return list(_BY_STOCK.values())


def get(name: str) -> Benchmark:
    """The benchmark a table spec column names; ``ValueError`` listing the known names otherwise."""
    _discover()
    if name not in _BY_NAME:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(sorted(_BY_NAME))}")
    return _BY_NAME[name]


def by_stock(stock: str) -> Benchmark:
    """The benchmark of a stock lmms-eval task; ``ValueError`` listing the known stock tasks otherwise."""
    _discover()
    if stock not in _BY_STOCK:
        raise ValueError(f"unknown stock lmms-eval task {stock!r}; known: {', '.join(_BY_STOCK)}")
    return _BY_STOCK[stock]
