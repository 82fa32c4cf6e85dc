"""GQA, testdev balanced: the question file joined with the image file by our overlay itself.

Smoke item: one question; its image in the separate image file (``<stock>_images.parquet``), joined
by a ``process_docs`` module written beside the smoke YAML.
"""

from __future__ import annotations

from reproduce.benchmarks import Benchmark, Data
from reproduce.tasks.smoke import SAMPLES, FunctionRef, image_cell, sample_at


def build(n: int, offset: int):
    from datasets import Features, Image, Value

    questions, images = [], {}
    for i in range(n):
        s = sample_at(i, offset)
        image_id = f"n{SAMPLES.index(s):06d}"
        images.setdefault(image_id, image_cell(s))
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


def micro(n: int, seed: int):
    """Micro item: a colour, shape, size, relation-colour or left/right question (in turn); its scene in
    the image file."""
    from reproduce.micro.data import draw, image_cell
    from reproduce.micro.questions import colour_question, relation_colour, shape_question, side_question, size_question

    kinds = (colour_question, shape_question, size_question, relation_colour, side_question)
    questions, images = [], []
    for i in range(n):
        scene, (question, answer) = draw(seed, "gqa", i, kinds[i % len(kinds)])
        image_id = f"m{i:06d}"
        images.append({"id": image_id, "image": image_cell(scene, image_id)})
        questions.append({"id": f"{4000 + i}", "imageId": image_id, "question": question, "answer": answer,
                          "fullAnswer": f"{answer}."})
    features = build(1, 0)
    return {"": (questions, features[""][1]), "_images": (images, features["_images"][1])}


# The smoke GQA task's ``process_docs``: loaded by lmms-eval as a file next to the YAML, it joins
# the question file with the image file beside it. Fixed text (no paths), so identical every call.
_SHIM_MODULE = "d2p_smoke_gqa"
_SHIM = '''"""Smoke GQA: join the local question file with the local image file (written by reproduce.tasks.smoke)."""

import pathlib


def process_docs(dataset):
    import datasets

    from reproduce.tasks.utils import gqa_join_images

    images = pathlib.Path(__file__).resolve().parent / "gqa_images.parquet"
    return gqa_join_images(dataset, datasets.load_dataset("parquet", data_files=str(images), split="train"))
'''

BENCHMARKS = (
    Benchmark("GQA", "gqa", (Data("lmms-lab-encoder/GQA", "testdev_balanced_instructions"),
                             Data("lmms-lab-encoder/GQA", "testdev_balanced_images", smoke_suffix="_images")),
              "exact_match", 100, frozenset({"id", "imageId", "question", "answer"}), build, micro=micro,
              smoke_overrides={"process_docs": FunctionRef(f"{_SHIM_MODULE}.process_docs")},
              smoke_files={f"{_SHIM_MODULE}.py": _SHIM}),
)
