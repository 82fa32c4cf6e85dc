"""VQAv2, val split (test-dev needs an upload to the EvalAI server).

Smoke item: one question with 10 answers: all agree on even items, 2 of 10 on odd items.
"""

from __future__ import annotations

from reproduce.benchmarks import Benchmark, Data
from reproduce.tasks.smoke import image_cell, sample_at


def build(n: int, offset: int):
    from datasets import Features, Image, List, Value

    rows = []
    for i in range(n):
        s = sample_at(i, offset)
        agree = 10 if i % 2 == 0 else 2
        words = [s.noun] * agree + [s.color] * (10 - agree)
        answers = [{"answer": w, "answer_confidence": "yes", "answer_id": k + 1} for k, w in enumerate(words)]
        rows.append({
            "question_id": 1000 + i,
            "question": "What is in the picture?",
            "image": image_cell(s),
            "answers": answers,
            "multiple_choice_answer": max(set(words), key=lambda w: (words.count(w), w)),
        })
    answer = {"answer": Value("string"), "answer_confidence": Value("string"), "answer_id": Value("int64")}
    features = Features({"question_id": Value("int64"), "question": Value("string"), "image": Image(),
                         "answers": List(answer), "multiple_choice_answer": Value("string")})
    return {"": (rows, features)}


def micro(n: int, seed: int):
    """Micro item: a count, colour or yes/no existence question (in turn) with 10 agreeing answers."""
    from reproduce.micro.data import draw, image_cell
    from reproduce.micro.questions import colour_question, count_question, existence

    kinds = (count_question, colour_question, lambda s, rng: existence(s, rng, "random"))
    rows = []
    for i in range(n):
        scene, (question, answer) = draw(seed, "vqav2_val", i, kinds[i % 3])
        rows.append({"question_id": 1000 + i, "question": question, "image": image_cell(scene, f"vqav2_{i}"),
                     "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)],
                     "multiple_choice_answer": answer})
    return {"": (rows, build(2, 0)[""][1])}


BENCHMARKS = (
    Benchmark("VQAv2", "vqav2_val", (Data("lmms-lab-encoder/VQAv2"),), "exact_match", 100,
              frozenset({"question_id", "question", "image", "answers", "multiple_choice_answer"}), build, micro=micro,
              note="val split: test-dev needs an EvalAI upload"),
)
