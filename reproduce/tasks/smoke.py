"""Tiny local twins of our tasks, for CPU smoke runs and the metric-contract tests.

:func:`write_smoke_tasks` writes, per stock task, a parquet file in the real dataset's column
schema and a YAML that is the real overlay (``TASK_DIR / "d2p_<stock>.yaml"``) with only its data
source replaced: same task name, functions, prompts and generation settings. The rows are built
deterministically from sample photographs that ship inside scikit-image (``skimage.data``:
astronaut, chelsea the cat, coffee, rocket, cameraman), resized to small sizes whose sides divide
1000, so that every pixel box has an exact InternVL [0, 1000] twin. Same bytes on every call.

What one "item" is, per benchmark (``n`` items per task):

========== ===================================================================================
POPE       one yes/no question; even items "yes" (the object shown), odd items "no"
MME        one image with its two paired questions (Yes, then No) sharing a question_id;
           ``n`` is rounded up to even rows, categories alternate perception / cognition
MMBench    one A-D question (hint on odd items); the last item is the circular variant
           (index + 1e6, options rotated) of the one before it
SQA-IMG    one 2- or 3-choice question, hint on even items
VQAv2      one question with 10 answers: all agree on even items, 2 of 10 on odd items
TextVQA    one question with 10 answers and its OCR tokens
RefCOCO    one object box ``[x, y, w, h]`` in pixels with 1 (even items) or 2 expressions
GQA        one question; its image in the separate image file
========== ===================================================================================
"""

from __future__ import annotations

import functools
import io
import os
import pathlib
from dataclasses import dataclass
from typing import Callable, Sequence

__all__ = ["SAMPLES", "Sample", "sample_png", "write_smoke_tasks", "write_hub_cache", "load_task_yaml", "dump_task_yaml", "FunctionRef"]


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

_ABSENT_CN = {"dog": "狗", "car": "汽车", "bicycle": "自行车", "boat": "船", "horse": "马"}


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


def _image(sample: Sample) -> dict:
    return {"bytes": sample_png(sample), "path": f"{sample.name}.png"}


def _a(noun: str) -> str:
    """``noun`` with its indefinite article."""
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _sample(i: int, offset: int = 0) -> Sample:
    return SAMPLES[(i + offset) % len(SAMPLES)]


# ----------------------------------------------------------------------------------------------
# Builders: (n, offset) -> {file name suffix: (columns, features)}; features as a dict of
# datasets feature objects, made lazily so that this module imports without ``datasets``.
# ----------------------------------------------------------------------------------------------


def _pope(n: int, offset: int):
    from datasets import Features, Image, Value

    rows = []
    for i in range(n):
        s = _sample(i, offset)
        yes = i % 2 == 0
        rows.append({
            "question_id": str(i + 1),
            "question": f"Is there {_a(s.noun if yes else s.absent)} in the image?",
            "answer": "yes" if yes else "no",
            "image_source": f"skimage_{s.name}",
            "image": _image(s),
            "category": ("adversarial", "popular", "random")[i % 3],
        })
    features = Features({"question_id": Value("string"), "question": Value("string"), "answer": Value("string"),
                         "image_source": Value("string"), "image": Image(), "category": Value("string")})
    return {"": (rows, features)}


_MME_CATEGORIES = ("existence", "commonsense_reasoning", "count", "numerical_calculation")


def _mme(n: int, offset: int):
    from datasets import Features, Image, Value

    rows = []
    for p in range((n + 1) // 2):
        s = _sample(p, offset)
        category = _MME_CATEGORIES[p % len(_MME_CATEGORIES)]
        question_id = f"{category}/{p:04d}.png"
        for thing, answer in ((s.noun, "Yes"), (s.absent, "No")):
            rows.append({
                "question_id": question_id,
                "image": _image(s),
                "question": f"Is there {_a(thing)} in this image? Please answer yes or no.",
                "answer": answer,
                "category": category,
            })
    features = Features({"question_id": Value("string"), "image": Image(), "question": Value("string"),
                         "answer": Value("string"), "category": Value("string")})
    return {"": (rows, features)}


def _mmbench(n: int, offset: int, cn: bool):
    from datasets import Features, Image, Value

    rows = []
    for i in range(n):
        circular = n >= 2 and i == n - 1
        base = i - 1 if circular else i
        s = _sample(base, offset)
        if cn:
            names = [s.noun_cn] + [_ABSENT_CN[_sample(base + k, offset).absent] for k in (1, 2, 3)]
        else:
            names = [s.noun] + [_sample(base + k, offset).absent for k in (1, 2, 3)]
        right = base % 4  # the right option's letter position
        options = names[1:]
        options.insert(right, names[0])
        if circular:  # the circular variant: options rotated by one
            options = options[-1:] + options[:-1]
            right = (right + 1) % 4
        rows.append({
            "index": base + 1_000_000 if circular else base,
            "question": "图中主要的物体是什么？" if cn else "What is the main object in the image?",
            "hint": None if base % 2 == 0 else ("这张照片来自示例图片集。" if cn else "The photo is from a collection of sample images."),
            "A": options[0], "B": options[1], "C": options[2], "D": options[3],
            "answer": "ABCD"[right],
            "category": "image_topic",
            "L2-category": "coarse_perception",
            "source": "skimage",
            "split": "dev",
            "comment": None,
            "image": _image(s),
        })
    features = Features({"index": Value("int64"), "question": Value("string"), "hint": Value("string"),
                         "A": Value("string"), "B": Value("string"), "C": Value("string"), "D": Value("string"),
                         "answer": Value("string"), "category": Value("string"), "L2-category": Value("string"),
                         "source": Value("string"), "split": Value("string"), "comment": Value("string"),
                         "image": Image()})
    return {"": (rows, features)}


def _scienceqa(n: int, offset: int):
    from datasets import Features, Image, List, Value

    rows = []
    for i in range(n):
        s = _sample(i, offset)
        choices = [_sample(i + 1, offset).absent, s.noun] + ([_sample(i + 2, offset).absent] if i % 2 else [])
        if i % 3 == 0:
            choices.reverse()
        rows.append({
            "image": _image(s),
            "question": "Which object is shown in the picture?",
            "choices": choices,
            "answer": choices.index(s.noun),
            "hint": "Look at the picture." if i % 2 == 0 else "",
        })
    features = Features({"image": Image(), "question": Value("string"), "choices": List(Value("string")),
                         "answer": Value("int64"), "hint": Value("string")})
    return {"": (rows, features)}


def _vqav2(n: int, offset: int):
    from datasets import Features, Image, List, Value

    rows = []
    for i in range(n):
        s = _sample(i, offset)
        agree = 10 if i % 2 == 0 else 2
        words = [s.noun] * agree + [s.color] * (10 - agree)
        answers = [{"answer": w, "answer_confidence": "yes", "answer_id": k + 1} for k, w in enumerate(words)]
        rows.append({
            "question_id": 1000 + i,
            "question": "What is in the picture?",
            "image": _image(s),
            "answers": answers,
            "multiple_choice_answer": max(set(words), key=lambda w: (words.count(w), w)),
        })
    answer = {"answer": Value("string"), "answer_confidence": Value("string"), "answer_id": Value("int64")}
    features = Features({"question_id": Value("int64"), "question": Value("string"), "image": Image(),
                         "answers": List(answer), "multiple_choice_answer": Value("string")})
    return {"": (rows, features)}


def _textvqa(n: int, offset: int):
    from datasets import Features, Image, List, Value

    rows = []
    for i in range(n):
        s = _sample(i, offset)
        word = s.ocr[0].lower()
        rows.append({
            "question_id": 2000 + i,
            "question": "what word is written in the picture?",
            "image": _image(s),
            "answers": [word] * 9 + ["unanswerable"],
            "ocr_tokens": list(s.ocr),
        })
    features = Features({"question_id": Value("int64"), "question": Value("string"), "image": Image(),
                         "answers": List(Value("string")), "ocr_tokens": List(Value("string"))})
    return {"": (rows, features)}


def _rec(n: int, offset: int):
    from datasets import Features, Image, List, Value

    rows = []
    for i in range(n):
        s = _sample(i, offset)
        rows.append({
            "question_id": str(3000 + i),
            "image": _image(s),
            "bbox": [float(v) for v in s.box],
            "answer": list(s.expressions[: 1 + i % 2]),
        })
    features = Features({"question_id": Value("string"), "image": Image(), "bbox": List(Value("float64")),
                         "answer": List(Value("string"))})
    return {"": (rows, features)}


def _gqa(n: int, offset: int):
    from datasets import Features, Image, Value

    questions, images = [], {}
    for i in range(n):
        s = _sample(i, offset)
        image_id = f"n{SAMPLES.index(s):06d}"
        images.setdefault(image_id, _image(s))
        questions.append({
            "id": f"{4000 + i}",
            "imageId": image_id,
            "question": f"What color is the {s.noun}?",
            "answer": s.color,
            "fullAnswer": f"The {s.noun} is {s.color}.",
        })
    q_features = Features({"id": Value("string"), "imageId": Value("string"), "question": Value("string"),
                           "answer": Value("string"), "fullAnswer": Value("string")})
    i_features = Features({"id": Value("string"), "image": Image()})
    image_rows = [{"id": k, "image": v} for k, v in sorted(images.items())]
    return {"": (questions, q_features), "_images": (image_rows, i_features)}


_BUILDERS: dict[str, Callable] = {
    "pope": _pope,
    "mme": _mme,
    "mmbench_en": functools.partial(_mmbench, cn=False),
    "mmbench_cn": functools.partial(_mmbench, cn=True),
    "scienceqa": _scienceqa,
    "vqav2": _vqav2,
    "textvqa": _textvqa,
    "rec": _rec,
    "gqa": _gqa,
}

# The smoke GQA task's ``process_docs``: loaded by lmms-eval as a file next to the YAML, it joins
# the question file with the image file beside it. Fixed text (no paths), so identical every call.
_GQA_SHIM_MODULE = "d2p_smoke_gqa"
_GQA_SHIM = '''"""Smoke GQA: join the local question file with the local image file (written by reproduce.tasks.smoke)."""

import pathlib


def process_docs(dataset):
    import datasets

    from reproduce.tasks.utils import gqa_join_images

    images = pathlib.Path(__file__).resolve().parent / "gqa_images.parquet"
    return gqa_join_images(dataset, datasets.load_dataset("parquet", data_files=str(images), split="train"))
'''


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


def write_smoke_tasks(stocks: Sequence[str], out_dir: str | os.PathLike, n: int = 4) -> pathlib.Path:
    """Write tiny local benchmark files and task YAMLs with our real task names.

    For each stock task: ``<stock>.parquet`` (GQA also ``gqa_images.parquet`` and a
    ``d2p_smoke_gqa.py`` join module) in the real dataset's columns, and ``d2p_<stock>.yaml`` =
    the real overlay with ``dataset_path: parquet`` and ``data_files`` pointing at that file
    (relative to the YAML). Writing the same tasks again gives byte-identical files.

    Parameters
    ----------
    stocks : sequence of str
        Stock lmms-eval task names (see :func:`reproduce.tasks.task_name`); repeats are ignored.
    out_dir : path-like
        Folder to write into (created if needed). Pass it to
        ``TaskManager(include_path=..., include_defaults=False)``.
    n : int, default 4
        Items per task (see the module docstring), at least 2.

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
    from reproduce.tasks import STOCK_TASKS, TASK_DIR, _stock, task_name

    if isinstance(stocks, str):
        raise ValueError(f"stocks must be a sequence of task names, got the string {stocks!r}")
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n={n!r} smoke items per task: need an int >= 2")
    for stock in stocks:
        _stock(stock)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rec_names = [s for s in STOCK_TASKS if STOCK_TASKS[s].family == "rec"]
    for stock in dict.fromkeys(stocks):
        family = STOCK_TASKS[stock].family
        offset = rec_names.index(stock) if family == "rec" else 0  # REC splits differ
        name = task_name(stock)
        config = load_task_yaml(TASK_DIR / f"{name}.yaml")
        files = _BUILDERS[family](n, offset)
        for suffix, (rows, features) in files.items():
            _write_parquet(rows, features, out / f"{stock if not suffix else stock + suffix}.parquet")
        config.pop("dataset_name", None)
        config["dataset_path"] = "parquet"
        config["dataset_kwargs"] = {"data_files": {config["test_split"]: f"{stock}.parquet"}}
        if family == "gqa":
            config["process_docs"] = FunctionRef(f"{_GQA_SHIM_MODULE}.process_docs")
            (out / f"{_GQA_SHIM_MODULE}.py").write_text(_GQA_SHIM, encoding="utf-8")
        header = (f"# Smoke twin of reproduce/tasks/{name}.yaml, written by reproduce.tasks.write_smoke_tasks:\n"
                  f"# the same task over {n} local items built from skimage.data photographs. Not a benchmark.\n")
        (out / f"{name}.yaml").write_text(header + dump_task_yaml(_ordered(config)), encoding="utf-8")
    return out


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

    from reproduce.tasks import STOCK_TASKS, TASK_DIR, _cache_folder, task_name

    cache = pathlib.Path(cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        smoke = write_smoke_tasks(stocks, pathlib.Path(tmp) / "smoke", n=n)
        groups: dict[tuple[str, str], dict[str, str]] = {}
        for stock in dict.fromkeys(stocks):
            split = load_task_yaml(TASK_DIR / f"{task_name(stock)}.yaml")["test_split"]
            for repo, config in STOCK_TASKS[stock].data:
                suffix = "_images" if config == "testdev_balanced_images" else ""
                groups.setdefault((repo, config), {})[split] = str(smoke / f"{stock}{suffix}.parquet")
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
