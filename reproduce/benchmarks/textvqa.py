"""TextVQA, val split, with the OCR tokens in the prompt (LLaVA-1.5's protocol).

Smoke item: one question with 10 answers and its OCR tokens.
"""

from __future__ import annotations

from reproduce.benchmarks import Benchmark, Data
from reproduce.tasks.smoke import image_cell, sample_at


def build(n: int, offset: int):
    from datasets import Features, Image, List, Value

    rows = []
    for i in range(n):
        s = sample_at(i, offset)
        word = s.ocr[0].lower()
        rows.append({
            "question_id": 2000 + i,
            "question": "what word is written in the picture?",
            "image": image_cell(s),
            "answers": [word] * 9 + ["unanswerable"],
            "ocr_tokens": list(s.ocr),
        })
    features = Features({"question_id": Value("int64"), "question": Value("string"), "image": Image(),
                         "answers": List(Value("string")), "ocr_tokens": List(Value("string"))})
    return {"": (rows, features)}


def micro(n: int, seed: int):
    """Micro item: two or three signs with a digit each; the question names one sign by its colour, the
    OCR tokens list every digit shown (so the image, not the prompt, tells which one)."""
    from reproduce.micro.data import draw, image_cell
    from reproduce.micro.questions import digit_question

    rows = []
    for i in range(n):
        scene, (question, answer, ocr) = draw(seed, "textvqa_val", i, digit_question, signs=2 + i % 2,
                                              n_objects=(1, 3))
        rows.append({"question_id": 2000 + i, "question": question, "image": image_cell(scene, f"textvqa_{i}"),
                     "answers": [answer] * 10, "ocr_tokens": ocr})
    return {"": (rows, build(2, 0)[""][1])}


BENCHMARKS = (
    Benchmark("TextVQA", "textvqa_val", (Data("lmms-lab-encoder/textvqa"),), "exact_match", 100,
              frozenset({"question_id", "question", "image", "answers", "ocr_tokens"}), build, micro=micro,
              note="with OCR tokens (LLaVA's protocol)"),
)
