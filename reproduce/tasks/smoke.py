"""Tiny local twins of our tasks, for CPU smoke runs and the metric-contract tests.

:func:`write_smoke_tasks` writes, per stock task, a parquet file in the real dataset's column
schema and a YAML that is the real overlay (``TASK_DIR / "d2p_<stock>.yaml"``) with only its data
source replaced: same task name, functions, prompts and generation settings. The rows are built
deterministically from sample photographs that ship inside scikit-image (``skimage.data``:
astronaut, chelsea the cat, coffee, rocket, cameraman), resized to small sizes whose sides divide
1000, so that every pixel box has an exact InternVL [0, 1000] twin. Same bytes on every call.

What one "item" is depends on the benchmark: each record of :mod:`reproduce.benchmarks` holds
its builder (``smoke(n, offset)``) and says in its module what an item is. This module holds what
the builders share (the photographs, :func:`image_cell`, :func:`sample_at`) and writes their output
as task folders (:func:`write_smoke_tasks`) or as a primed ``datasets`` cache (:func:`write_hub_cache`).
"""

from __future__ import annotations

import functools
import io
import os
import pathlib
from dataclasses import dataclass
from typing import Sequence

__all__ = ["SAMPLES", "Sample", "sample_png", "image_cell", "sample_at", "with_article", "write_smoke_tasks",
           "write_micro_tasks",
           "write_hub_cache", "load_task_yaml", "dump_task_yaml", "FunctionRef"]


@dataclass(frozen=True)
class Sample:
    """One sample photograph and what can truthfully be said about it.

    Attributes
    ----------
    name : str
        ``skimage.data`` loader name.
    size : tuple of int
        ``(width, height)`` after resizing; each side divides 1000.
    noun : str
        The main object.
    absent : str
        An object not in the picture (for "no" questions).
    box : tuple of int
        ``(x, y, w, h)`` of the main object, in pixels of the resized image.
    expressions : tuple of str
        Referring expressions for ``box``.
    color : str
        Answer to "What color is the {noun}?".
    noun_cn : str
        The main object in Chinese.
    ocr : tuple of str
        Plausible OCR tokens.
    """

    name: str
    size: tuple[int, int]
    noun: str
    absent: str
    box: tuple[int, int, int, int]
    expressions: tuple[str, ...]
    color: str
    noun_cn: str
    ocr: tuple[str, ...]


#: The sample photographs, in the order items cycle through them.
SAMPLES: tuple[Sample, ...] = (
    Sample("astronaut", (200, 200), "astronaut", "dog", (40, 20, 120, 180),
           ("the astronaut", "woman in the white space suit"), "white", "宇航员", ("NASA", "USA")),
    Sample("chelsea", (200, 125), "cat", "car", (30, 10, 140, 115),
           ("the cat", "orange tabby cat looking left"), "orange", "猫", ("tabby",)),
    Sample("coffee", (250, 200), "cup", "bicycle", (50, 30, 150, 130),
           ("the cup of coffee", "white cup on the saucer"), "white", "咖啡杯", ("latte", "art")),
    Sample("rocket", (125, 200), "rocket", "boat", (40, 10, 45, 170),
           ("the rocket", "white rocket on the launch pad"), "white", "火箭", ("SpaceX", "Falcon")),
    Sample("camera", (200, 200), "camera", "horse", (60, 30, 80, 90),
           ("the man with the camera", "photographer in the dark coat"), "black", "相机", ("Cameraman",)),
)


@functools.lru_cache(maxsize=None)
def _png(name: str, size: tuple[int, int]) -> bytes:
    """PNG bytes of one ``skimage.data`` photograph, RGB, resized to ``size`` (deterministic)."""
    import numpy as np
    import skimage.data
    from PIL import Image

    pixels = getattr(skimage.data, name)()
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    image = Image.fromarray(pixels[..., :3].astype(np.uint8), mode="RGB").resize(size, Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def sample_png(sample: Sample) -> bytes:
    """PNG bytes of one of :data:`SAMPLES`, RGB, at its smoke size (the same bytes every call).

    Parameters
    ----------
    sample : Sample
        One of :data:`SAMPLES`.

    Returns
    -------
    bytes
        The PNG file the smoke data stores for it.

    Examples
    --------
    >>> import io
    >>> from PIL import Image
    >>> Image.open(io.BytesIO(sample_png(SAMPLES[1]))).size
    (200, 125)
    """
    return _png(sample.name, sample.size)


def image_cell(sample: Sample) -> dict:
    """The value of an ``Image()`` column holding one of :data:`SAMPLES` (PNG bytes and a file name)."""
    return {"bytes": sample_png(sample), "path": f"{sample.name}.png"}


def with_article(noun: str) -> str:
    """``noun`` with its indefinite article.

    >>> with_article("astronaut"), with_article("cat")
    ('an astronaut', 'a cat')
    """
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def sample_at(i: int, offset: int = 0) -> Sample:
    """The photograph of item ``i`` of a builder starting ``offset`` photographs on (items cycle through them)."""
    return SAMPLES[(i + offset) % len(SAMPLES)]


# ----------------------------------------------------------------------------------------------
# YAML with lmms-eval's ``!function`` tags, read and written without importing lmms-eval.
# ----------------------------------------------------------------------------------------------


class FunctionRef(str):
    """The dotted path of a ``!function`` tag in a task YAML (kept as text, not imported)."""


def _yaml_classes():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    class Dumper(yaml.SafeDumper):
        pass

    Loader.add_constructor("!function", lambda loader, node: FunctionRef(loader.construct_scalar(node)))
    Dumper.add_representer(FunctionRef, lambda dumper, ref: dumper.represent_scalar("!function", str(ref)))
    Dumper.add_representer(str, _represent_str)
    return Loader, Dumper


def _represent_str(dumper, text: str):
    """Strings with line breaks double-quoted (``"\\nAnswer ..."``), as in lmms-eval's YAMLs."""
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style='"' if "\n" in text else None)


def load_task_yaml(path: str | os.PathLike) -> dict:
    """Read one task YAML, ``!function`` values as :class:`FunctionRef`.

    Parameters
    ----------
    path : path-like
        The YAML file.

    Returns
    -------
    dict
        Its mapping.

    Examples
    --------
    >>> from reproduce.tasks import TASK_DIR
    >>> config = load_task_yaml(TASK_DIR / "d2p_pope.yaml")
    >>> config["task"], config["doc_to_text"]
    ('d2p_pope', 'lmms_eval.tasks.pope.utils.pope_doc_to_text')
    >>> isinstance(config["doc_to_text"], FunctionRef)
    True
    """
    import yaml

    loader, _ = _yaml_classes()
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=loader)  # noqa: S506 -- SafeLoader subclass


def dump_task_yaml(config: dict) -> str:
    """Task YAML text of a mapping from :func:`load_task_yaml` (key order kept).

    Parameters
    ----------
    config : dict
        Task configuration, ``!function`` values as :class:`FunctionRef`.

    Returns
    -------
    str
        YAML text lmms-eval reads.

    Examples
    --------
    >>> print(dump_task_yaml({"task": "t", "doc_to_text": FunctionRef("m.f")}), end="")
    task: t
    doc_to_text: !function 'm.f'
    """
    import yaml

    _, dumper = _yaml_classes()
    return yaml.dump(config, Dumper=dumper, sort_keys=False, allow_unicode=True, width=120)


def _write_parquet(rows: list[dict], features, path: pathlib.Path) -> None:
    """One parquet file whose schema metadata carries the ``datasets`` features (images load as PIL)."""
    import datasets
    import pyarrow.parquet as pq

    columns = {name: [row[name] for row in rows] for name in features}
    table = datasets.Dataset.from_dict(columns, features=features).data.table
    pq.write_table(table, str(path))


def write_smoke_tasks(stocks: Sequence[str], out_dir: str | os.PathLike, n: int = 4, source: str = "smoke"
                      ) -> pathlib.Path:
    """Write tiny local benchmark files and task YAMLs with our real task names.

    For each stock task, what its benchmark record's builder makes: ``<stock>.parquet`` in the real
    dataset's columns (GQA also ``gqa_images.parquet``), the record's further files (GQA's
    ``d2p_smoke_gqa.py`` join module), and ``d2p_<stock>.yaml`` = the real overlay with
    ``dataset_path: parquet`` and ``data_files`` pointing at that file (relative to the YAML), plus
    the record's ``smoke_overrides``. Writing the same tasks again gives byte-identical files.

    Parameters
    ----------
    stocks : sequence of str
        Stock lmms-eval task names (see :func:`reproduce.tasks.task_name`); repeats are ignored.
    out_dir : path-like
        Folder to write into (created if needed). Pass it to
        ``TaskManager(include_path=..., include_defaults=False)``.
    n : int, default 4
        Items per task (what an item is: see each module of :mod:`reproduce.benchmarks`), at least 2.
    source : {"smoke", "micro"}
        ``"smoke"``: the records' smoke builders (sample photographs); ``"micro"``: their micro builders,
        the test split of the synthetic benchmarks the micro models were not trained on
        (:mod:`reproduce.micro`; :func:`write_micro_tasks`).

    Returns
    -------
    pathlib.Path
        ``out_dir``.

    Raises
    ------
    ValueError
        If a stock task is unknown or ``n < 2``.

    Examples
    --------
    >>> import tempfile, pandas as pd
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = write_smoke_tasks(["pope"], d)
    ...     table = pd.read_parquet(path / "pope.parquet")
    ...     sorted(p.name for p in path.iterdir())
    ['d2p_pope.yaml', 'pope.parquet']
    >>> table["answer"].tolist()
    ['yes', 'no', 'yes', 'no']
    """
    from reproduce.benchmarks import by_stock
    from reproduce.tasks import TASK_DIR

    if isinstance(stocks, str):
        raise ValueError(f"stocks must be a sequence of task names, got the string {stocks!r}")
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n={n!r} smoke items per task: need an int >= 2")
    if source not in ("smoke", "micro"):
        raise ValueError(f"source={source!r}: 'smoke' or 'micro'")
    benches = [by_stock(stock) for stock in dict.fromkeys(stocks)]
    if source == "micro":
        from reproduce.micro.data import SPLITS

        missing = [b.stock for b in benches if b.micro is None]
        if missing:
            raise ValueError(f"no micro builder for {missing}")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for bench in benches:
        stock, name = bench.stock, bench.task
        config = load_task_yaml(TASK_DIR / f"{name}.yaml")
        files = bench.smoke(n, bench.smoke_offset) if source == "smoke" else bench.micro(n, SPLITS["test"])
        for suffix, (rows, features) in files.items():
            _write_parquet(rows, features, out / f"{stock if not suffix else stock + suffix}.parquet")
        config.pop("dataset_name", None)
        config["dataset_path"] = "parquet"
        config["dataset_kwargs"] = {"data_files": {config["test_split"]: f"{stock}.parquet"}}
        config.update(bench.smoke_overrides)
        for file_name, text in bench.smoke_files.items():
            (out / file_name).write_text(text, encoding="utf-8")
        what = ("local items built from skimage.data photographs" if source == "smoke" else
                "synthetic scenes of the micro reproduction (reproduce.micro, test split)")
        header = (f"# {source.capitalize()} twin of reproduce/tasks/{name}.yaml, written by reproduce.tasks.smoke.write_smoke_tasks:\n"
                  f"# the same task over {n} {what}. Not a benchmark.\n")
        (out / f"{name}.yaml").write_text(header + dump_task_yaml(_ordered(config)), encoding="utf-8")
    return out


def write_micro_tasks(stocks: Sequence[str], out_dir: str | os.PathLike, n: int = 32) -> pathlib.Path:
    """:func:`write_smoke_tasks` with the micro builders: ``n`` test-split items of each synthetic benchmark."""
    return write_smoke_tasks(stocks, out_dir, n=n, source="micro")


def write_hub_cache(stocks: Sequence[str], cache_dir: str | os.PathLike, n: int = 4) -> pathlib.Path:
    """Prepare the smoke data in a ``datasets`` cache as if it were the real tasks' hub datasets.

    Offline (``HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1``, ``HF_DATASETS_CACHE=cache_dir``),
    ``datasets.load_dataset("lmms-lab-encoder/POPE", split="test")`` then returns the smoke POPE
    rows, so the *real* task YAMLs of :data:`reproduce.tasks.TASK_DIR` run end to end on CPU, and
    :func:`reproduce.tasks.missing_data` reports nothing missing. For tests of the real-run path
    only: the cached data is the smoke data, whatever the hub id says.

    Parameters
    ----------
    stocks : sequence of str
        Stock lmms-eval task names; all splits of one hub dataset (e.g. RefCOCO val/testA/testB)
        that are asked for go into one cached configuration.
    cache_dir : path-like
        The ``datasets`` cache to write into (existing smoke entries are replaced).
    n : int, default 4
        Items per task, as in :func:`write_smoke_tasks`.

    Returns
    -------
    pathlib.Path
        ``cache_dir``.

    Raises
    ------
    ValueError
        As :func:`write_smoke_tasks`.
    """
    import json
    import shutil
    import tempfile

    from datasets.packaged_modules.parquet.parquet import Parquet

    from reproduce.benchmarks import by_stock
    from reproduce.tasks import TASK_DIR, _cache_folder

    cache = pathlib.Path(cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        smoke = write_smoke_tasks(stocks, pathlib.Path(tmp) / "smoke", n=n)
        groups: dict[tuple[str, str], dict[str, str]] = {}
        for stock in dict.fromkeys(stocks):
            bench = by_stock(stock)
            split = load_task_yaml(TASK_DIR / f"{bench.task}.yaml")["test_split"]
            for data in bench.data:
                groups.setdefault((data.repo, data.config), {})[split] = str(smoke / f"{stock}{data.smoke_suffix}.parquet")
        for (repo, config), files in groups.items():
            folder = _cache_folder(repo)
            builder = Parquet(cache_dir=str(pathlib.Path(tmp) / "build"), dataset_name=folder.split("___")[1],
                              config_name=config, hash="smoke", data_files=files)
            builder.download_and_prepare()
            target = cache / folder / config / "0.0.0" / "smoke"
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(builder.cache_dir, target)
            info_path = target / "dataset_info.json"
            info = json.loads(info_path.read_text(encoding="utf-8"))
            info["config_name"] = config  # the builder records its config id (name + data-files hash)
            info_path.write_text(json.dumps(info), encoding="utf-8")
    return cache


_FIRST_KEYS = ("task", "dataset_path", "dataset_kwargs", "test_split")


def _ordered(config: dict) -> dict:
    """Put the identifying keys first, the rest in the real YAML's order."""
    return {**{k: config[k] for k in _FIRST_KEYS if k in config}, **{k: v for k, v in config.items() if k not in _FIRST_KEYS}}
