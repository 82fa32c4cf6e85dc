"""RefCOCO, RefCOCO+ and RefCOCOg referring-expression localization (REC), one record per split.

Our overlays ask with InternVL-2.5's grounding prompt and read its ``<box>[[x1, y1, x2, y2]]</box>``
answers in [0, 1000]; lmms-eval's REC aggregation scores accuracy at IoU >= 0.5.

Smoke item: one object box ``[x, y, w, h]`` in pixels with 1 (even items) or 2 expressions; each
split starts one photograph further on (``smoke_offset``), so the splits differ.
"""

from __future__ import annotations

import functools

from reproduce.benchmarks import Benchmark, Data
from reproduce.tasks.smoke import image_cell, sample_at


def build(n: int, offset: int):
    from datasets import Features, Image, List, Value

    rows = []
    for i in range(n):
        s = sample_at(i, offset)
        rows.append({
            "question_id": str(3000 + i),
            "image": image_cell(s),
            "bbox": [float(v) for v in s.box],
            "answer": list(s.expressions[: 1 + i % 2]),
        })
    features = Features({"question_id": Value("string"), "image": Image(), "bbox": List(Value("float64")),
                         "answer": List(Value("string"))})
    return {"": (rows, features)}


def micro(n: int, seed: int, stock: str):
    """Micro item: one referring expression (attributes, or attributes and a relation to another
    object) and the box of the object it names, in pixels of the scene image."""
    from reproduce.micro.data import SIDE, draw, image_cell
    from reproduce.micro.questions import referring

    rows = []
    for i in range(n):
        scene, (expression, target) = draw(seed, stock, i, referring)
        rows.append({"question_id": str(3000 + i), "image": image_cell(scene, f"{stock}_{i}"),
                     "bbox": [float(v) for v in target.box_pixels(SIDE)], "answer": [expression]})
    return {"": (rows, build(2, 0)[""][1])}


#: stock task prefix -> (name in the tables, hub data set, splits)
_SETS = {"refcoco": ("RefCOCO", "lmms-lab-encoder/RefCOCO", ("val", "testA", "testB")),
         "refcoco+": ("RefCOCO+", "lmms-lab-encoder/RefCOCOplus", ("val", "testA", "testB")),
         "refcocog": ("RefCOCOg", "lmms-lab-encoder/RefCOCOg", ("val", "test"))}
_SPLITS = [(stock, split) for stock, (_, _, splits) in _SETS.items() for split in splits]

BENCHMARKS = tuple(
    Benchmark(f"{_SETS[stock][0]} {split}", f"{stock}_bbox_rec_{split}", (Data(_SETS[stock][1]),), "refcoco_ACC@0.5", 100,
              frozenset({"question_id", "image", "bbox", "answer"}), build, smoke_offset=offset,
              micro=functools.partial(micro, stock=f"{stock}_bbox_rec_{split}"),
              note="overlay task: InternVL REC prompt, [0,1000] boxes")
    for offset, (stock, split) in enumerate(_SPLITS)
)
