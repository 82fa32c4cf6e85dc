"""MME (perception; yes/no question pairs per image, scored accuracy + accuracy+).

Smoke item: one image with its two paired questions (Yes, then No) sharing a question_id; ``n`` is
rounded up to even rows, categories alternate perception / cognition.
"""

from __future__ import annotations

from reproduce.benchmarks import Benchmark, Data
from reproduce.tasks.smoke import image_cell, sample_at, with_article

_CATEGORIES = ("existence", "commonsense_reasoning", "count", "numerical_calculation")


def build(n: int, offset: int):
    from datasets import Features, Image, Value

    rows = []
    for p in range((n + 1) // 2):
        s = sample_at(p, offset)
        category = _CATEGORIES[p % len(_CATEGORIES)]
        question_id = f"{category}/{p:04d}.png"
        for thing, answer in ((s.noun, "Yes"), (s.absent, "No")):
            rows.append({
                "question_id": question_id,
                "image": image_cell(s),
                "question": f"Is there {with_article(thing)} in this image? Please answer yes or no.",
                "answer": answer,
                "category": category,
            })
    features = Features({"question_id": Value("string"), "image": Image(), "question": Value("string"),
                         "answer": Value("string"), "category": Value("string")})
    return {"": (rows, features)}


_MICRO_CATEGORIES = ("existence", "count", "color", "position")


def micro(n: int, seed: int):
    """Micro item: one scene with its two paired questions (Yes, then No) of one perception category
    (existence, count, color, position, in turn); ``n`` rounded up to even rows."""
    from reproduce.micro.data import draw, image_cell
    from reproduce.micro.questions import yes_no_pair

    rows = []
    for p in range((n + 1) // 2):
        category = _MICRO_CATEGORIES[p % len(_MICRO_CATEGORIES)]
        scene, (yes, no) = draw(seed, "mme", p, lambda s, rng: yes_no_pair(s, rng, category))
        for question, answer in ((yes, "Yes"), (no, "No")):
            rows.append({"question_id": f"{category}/{p:04d}.png", "image": image_cell(scene, f"mme_{p}"),
                         "question": question, "answer": answer, "category": category})
    return {"": (rows, build(2, 0)[""][1])}


BENCHMARKS = (
    Benchmark("MME", "mme", (Data("lmms-lab-encoder/MME"),), "mme_perception_score", 1,
              frozenset({"question_id", "question", "answer", "category", "image"}), build, micro=micro,
              note="perception score, out of 2000"),
)
