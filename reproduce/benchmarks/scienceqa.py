"""ScienceQA, the questions with an image (SQA-IMG).

Smoke item: one 2- or 3-choice question, hint on even items.
"""

from __future__ import annotations

from reproduce.benchmarks import Benchmark, Data
from reproduce.tasks.smoke import image_cell, sample_at


def build(n: int, offset: int):
    from datasets import Features, Image, List, Value

    rows = []
    for i in range(n):
        s = sample_at(i, offset)
        choices = [sample_at(i + 1, offset).absent, s.noun] + ([sample_at(i + 2, offset).absent] if i % 2 else [])
        if i % 3 == 0:
            choices.reverse()
        rows.append({
            "image": image_cell(s),
            "question": "Which object is shown in the picture?",
            "choices": choices,
            "answer": choices.index(s.noun),
            "hint": "Look at the picture." if i % 2 == 0 else "",
        })
    features = Features({"image": Image(), "question": Value("string"), "choices": List(Value("string")),
                         "answer": Value("int64"), "hint": Value("string")})
    return {"": (rows, features)}


def micro(n: int, seed: int):
    """Micro item: a 2- or 3-choice question (colour, shape or count), hint on even items."""
    from reproduce.micro.data import draw, image_cell
    from reproduce.micro.questions import choice

    rows = []
    for i in range(n):
        k = 2 + i % 2
        scene, (question, choices, right) = draw(seed, "scienceqa_img", i, lambda s, rng: choice(s, rng, k))
        rows.append({"image": image_cell(scene, f"sqa_{i}"), "question": question, "choices": choices, "answer": right,
                     "hint": "Look at the shapes in the picture." if i % 2 == 0 else ""})
    return {"": (rows, build(2, 0)[""][1])}


BENCHMARKS = (
    Benchmark("SQA-IMG", "scienceqa_img", (Data("lmms-lab-encoder/ScienceQA", "ScienceQA-IMG"),), "exact_match", 100,
              frozenset({"image", "question", "choices", "answer", "hint"}), build, micro=micro),
)
