"""POPE (object hallucination, yes/no).

Smoke item: one yes/no question; even items "yes" (the object shown), odd items "no".
"""

from __future__ import annotations

from reproduce.benchmarks import Benchmark, Data
from reproduce.tasks.smoke import image_cell, sample_at, with_article


def build(n: int, offset: int):
    from datasets import Features, Image, Value

    rows = []
    for i in range(n):
        s = sample_at(i, offset)
        yes = i % 2 == 0
        rows.append({
            "question_id": str(i + 1),
            "question": f"Is there {with_article(s.noun if yes else s.absent)} in the image?",
            "answer": "yes" if yes else "no",
            "image_source": f"skimage_{s.name}",
            "image": image_cell(s),
            "category": ("adversarial", "popular", "random")[i % 3],
        })
    features = Features({"question_id": Value("string"), "question": Value("string"), "answer": Value("string"),
                         "image_source": Value("string"), "image": Image(), "category": Value("string")})
    return {"": (rows, features)}


def micro(n: int, seed: int):
    """Micro item: one existence question about a synthetic scene; item ``i`` is of category
    ``("adversarial", "popular", "random")[i % 3]`` and answers "yes" on even ``i // 3`` (balanced)."""
    from reproduce.micro.data import draw, image_cell
    from reproduce.micro.questions import existence

    rows = []
    for i in range(n):
        category, answer = ("adversarial", "popular", "random")[i % 3], ("yes", "no")[(i // 3) % 2]
        scene, (question, answer) = draw(seed, "pope", i, lambda s, rng: existence(s, rng, category, answer))
        rows.append({"question_id": str(i + 1), "question": question, "answer": answer,
                     "image_source": f"micro{seed}_pope_{i}", "image": image_cell(scene, f"pope_{i}"),
                     "category": category})
    return {"": (rows, build(2, 0)[""][1])}


BENCHMARKS = (
    Benchmark("POPE", "pope", (Data("lmms-lab-encoder/POPE"),), "pope_f1_score", 100,
              frozenset({"question_id", "question", "answer", "image_source", "image", "category"}), build, micro=micro,
              note="F1, the metric LLaVA-1.5 reports for POPE (our choice), as lmms-eval computes it: strict yes/no "
                   "answers, pooled over the three subsets (LLaVA's own script parses loosely and averages per subset)"),
)
