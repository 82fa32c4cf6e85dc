"""Our lmms-eval task layer: one overlay YAML per stock lmms-eval 0.7.3 task the table specs use.

Every benchmark record (:mod:`reproduce.benchmarks`) names a *stock* lmms-eval task (``pope``,
``refcoco_bbox_rec_val``, ...). We run each through our own self-contained task YAML,
``d2p_<stock>.yaml`` in :data:`TASK_DIR`, which reuses lmms-eval's own functions (answer
normalisation, MME pairing, MMBench circular scoring, POPE parsing, REC IoU) and departs from the
stock task only where the paper's protocol does:

* TextVQA with the OCR tokens in the prompt (LLaVA's protocol; lmms-eval's ``ocr: true``);
* MMBench EN/CN scored offline by lmms-eval's static (regex) matcher, never its OpenAI API path;
* GQA joining the question file with the image file itself (the stock task hard-codes a hub
  download of the images with ``token=True`` and 8 processes);
* the REC splits with InternVL-2.5's grounding prompt and ``<box>[[x1, y1, x2, y2]]</box>``
  answers in [0, 1000], still aggregated by lmms-eval's REC functions;
* no YAML forces ``token: True`` (a stored Hugging Face token is still used when there is one), and
  no task writes submission files.

The runner loads them with ``lmms_eval.tasks.TaskManager(include_path=TASK_DIR,
include_defaults=False)``. :func:`reproduce.tasks.smoke.write_smoke_tasks` writes the same tasks
(same names, same functions, same generation settings) over tiny local data for CPU smoke runs and
tests; :func:`reproduce.tasks.smoke.write_hub_cache` primes a ``datasets`` cache with that data
under the real hub ids, so that the real YAMLs themselves can be run offline in tests.

This module imports neither lmms-eval nor ``datasets`` at import time.

Examples
--------
>>> task_name("pope")
'd2p_pope'
>>> task_name("refcoco+_bbox_rec_val")
'd2p_refcoco+_bbox_rec_val'
>>> dataset_ids("gqa")
['lmms-lab-encoder/GQA']
>>> (TASK_DIR / "d2p_mme.yaml").is_file()
True
"""

from __future__ import annotations

import os
import pathlib
from reproduce.benchmarks import PREFIX, by_stock

__all__ = ["TASK_DIR", "PREFIX", "task_name", "dataset_ids", "missing_data"]

#: Folder of the real-run task YAMLs (``d2p_<stock>.yaml``), to pass as ``include_path``.
TASK_DIR: pathlib.Path = pathlib.Path(__file__).resolve().parent


def task_name(stock: str) -> str:
    """Our task name for the stock lmms-eval task of a benchmark record.

    Parameters
    ----------
    stock : str
        A stock lmms-eval 0.7.3 task name, e.g. ``"mmbench_en_dev"``.

    Returns
    -------
    str
        ``"d2p_" + stock``; the task of that name is defined by ``TASK_DIR / f"{name}.yaml"``
        and, for smoke runs, by the folder :func:`reproduce.tasks.smoke.write_smoke_tasks` returns.

    Raises
    ------
    ValueError
        If no benchmark record (:mod:`reproduce.benchmarks`) has that stock task (the message
        lists the known ones).

    Examples
    --------
    >>> task_name("mmbench_cn_dev")
    'd2p_mmbench_cn_dev'
    >>> task_name("vqav2_testdev")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown stock lmms-eval task 'vqav2_testdev'; known: gqa, mmbench_cn_dev, ...
    """
    return by_stock(stock).task


def dataset_ids(stock: str) -> list[str]:
    """Hugging Face hub dataset ids a real run of a stock task reads, in order, without repeats.

    Parameters
    ----------
    stock : str
        A stock lmms-eval task name (see :func:`task_name`).

    Returns
    -------
    list of str
        e.g. ``["lmms-lab-encoder/POPE"]``.

    Raises
    ------
    ValueError
        If ``stock`` is unknown.

    Examples
    --------
    >>> dataset_ids("refcocog_bbox_rec_test")
    ['lmms-lab-encoder/RefCOCOg']
    """
    return by_stock(stock).dataset_ids


def _datasets_cache_dir() -> pathlib.Path:
    """Where ``datasets`` keeps prepared datasets (``HF_DATASETS_CACHE``, else under ``HF_HOME``)."""
    if os.environ.get("HF_DATASETS_CACHE"):
        return pathlib.Path(os.environ["HF_DATASETS_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return pathlib.Path(home).expanduser() / "datasets"


def _cache_folder(repo: str) -> str:
    """``datasets``' folder name for a hub dataset: ``org___snake_case_name``."""
    from datasets.naming import camelcase_to_snakecase

    org, name = repo.split("/")
    return f"{org}___{camelcase_to_snakecase(name)}"


def missing_data(stock: str, cache_dir: str | os.PathLike | None = None) -> list[str]:
    """Hub dataset ids of a stock task that an offline run could not load from the local cache.

    A cheap check, without downloading or opening anything: a dataset configuration counts as
    available when ``datasets`` has prepared it in its cache, i.e. a folder
    ``<cache_dir>/<org>___<snake_name>/<config>/<version>/<hash>`` exists -- what
    ``datasets.load_dataset`` falls back to under ``HF_DATASETS_OFFLINE=1``.

    Parameters
    ----------
    stock : str
        A stock lmms-eval task name (see :func:`task_name`).
    cache_dir : path-like, optional
        The ``datasets`` cache; by default ``$HF_DATASETS_CACHE``, else ``$HF_HOME/datasets``,
        else ``~/.cache/huggingface/datasets`` (what ``datasets`` itself uses).

    Returns
    -------
    list of str
        The ids of :func:`dataset_ids` with at least one needed configuration missing; empty when
        the task can run offline.

    Raises
    ------
    ValueError
        If ``stock`` is unknown.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as empty:
    ...     missing_data("gqa", cache_dir=empty)
    ['lmms-lab-encoder/GQA']
    """
    bench = by_stock(stock)
    root = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else _datasets_cache_dir()
    missing = []
    for data in bench.data:
        prepared = root / _cache_folder(data.repo) / data.config
        if not any(p.is_dir() for p in prepared.glob("*/*")):
            missing.append(data.repo)
    return list(dict.fromkeys(missing))
