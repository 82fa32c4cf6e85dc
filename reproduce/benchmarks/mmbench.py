"""MMBench dev, English and Chinese (A-D questions, circular evaluation).

Smoke item: one A-D question (hint on odd items); the last item is the circular variant (index + 1e6,
options rotated) of the one before it.
"""

from __future__ import annotations

import functools

from reproduce.benchmarks import Benchmark, Data
from reproduce.tasks.smoke import image_cell, sample_at

_ABSENT_CN = {"dog": "狗", "car": "汽车", "bicycle": "自行车", "boat": "船", "horse": "马"}


def build(n: int, offset: int, cn: bool):
    from datasets import Features, Image, Value

    rows = []
    for i in range(n):
        circular = n >= 2 and i == n - 1
        base = i - 1 if circular else i
        s = sample_at(base, offset)
        if cn:
            names = [s.noun_cn] + [_ABSENT_CN[sample_at(base + k, offset).absent] for k in (1, 2, 3)]
        else:
            names = [s.noun] + [sample_at(base + k, offset).absent for k in (1, 2, 3)]
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
            "image": image_cell(s),
        })
    features = Features({"index": Value("int64"), "question": Value("string"), "hint": Value("string"),
                         "A": Value("string"), "B": Value("string"), "C": Value("string"), "D": Value("string"),
                         "answer": Value("string"), "category": Value("string"), "L2-category": Value("string"),
                         "source": Value("string"), "split": Value("string"), "comment": Value("string"),
                         "image": Image()})
    return {"": (rows, features)}


def micro(n: int, seed: int, cn: bool):
    """Micro item: an A-D question (colour, shape or count) and, on odd items, the circular variant
    of the item before it (index + 1e6, options rotated by one: both must be right)."""
    from reproduce.micro.data import draw, image_cell
    from reproduce.micro.questions import choice

    name = "mmbench_cn_dev" if cn else "mmbench_en_dev"
    rows = []
    for i in range(n):
        base = i - i % 2
        scene, (question, options, right) = draw(seed, name, base, lambda s, rng: choice(s, rng, 4, cn=cn))
        if i % 2:
            options, right = options[-1:] + options[:-1], (right + 1) % 4
        rows.append({"index": base + 1_000_000 if i % 2 else base, "question": question,
                     "hint": None if base % 4 == 0 else ("请看图中的形状。" if cn else "Look at the shapes in the picture."),
                     "A": options[0], "B": options[1], "C": options[2], "D": options[3], "answer": "ABCD"[right],
                     "category": "attribute_recognition", "L2-category": "fine-grained_perception (instance-level)",
                     "source": "micro", "split": "dev", "comment": None, "image": image_cell(scene, f"{name}_{base}")})
    return {"": (rows, build(2, 0, cn)[""][1])}


_SCHEMA = frozenset({"index", "question", "hint", "A", "B", "C", "D", "answer", "category", "L2-category", "source",
                     "split", "comment", "image"})
_NOTE = "offline regex evaluator"

BENCHMARKS = (
    Benchmark("MMB", "mmbench_en_dev", (Data("lmms-lab-encoder/MMBench", "en"),), "gpt_eval_score", 1, _SCHEMA,
              functools.partial(build, cn=False), micro=functools.partial(micro, cn=False), note=_NOTE),
    Benchmark("MMB-CN", "mmbench_cn_dev", (Data("lmms-lab-encoder/MMBench", "cn"),), "gpt_eval_score", 1, _SCHEMA,
              functools.partial(build, cn=True), micro=functools.partial(micro, cn=True), note=_NOTE),
)
