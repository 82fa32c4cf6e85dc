"""What the micro models learn from: each benchmark's micro items, asked exactly as our tasks ask them.

An example is ``(image, context, target)``: the context is what the task's own ``doc_to_text`` (the
function its overlay YAML names, with its default ``lmms_eval_specific_kwargs``) makes of the row, so
training sees the prompts evaluation will send; the target is the answer the task's metric accepts
(REC: InternVL's ``[[x1, y1, x2, y2]]`` in [0, 1000]; multiple choice: the option letter).

Two training-only tasks have no benchmark: ``caption`` ("Describe the image." -> every object in
reading order, ``"small red disk, large blue bar."``) and ``grounded_caption`` (the same with each
object's box). They give many supervised tokens about the image per example -- the role captioning
plays in a real VLM's first stage -- so that the benchmarks' one-word answers are learnt sooner.

Training data is an endless stream per task: example ``k`` of a task is item ``k % CHUNK`` of the
benchmark's micro builder under seed ``train_seed(k // CHUNK)`` (disjoint from the validation and test
seeds). :class:`Stream` keeps the current chunk only.

>>> examples = task_examples("pope", 2, 3)
>>> [(type(im).__name__, ctx.endswith("single word or phrase."), t) for im, ctx, t in examples]
[('PngImageFile', True, 'yes'), ('PngImageFile', True, 'yes')]
"""

from __future__ import annotations

import functools
import importlib
import io

from reproduce.micro.data import SPLITS

__all__ = ["CHUNK", "MIXES", "CAPTIONS", "train_seed", "task_examples", "caption", "Stream", "contexts", "targets"]

#: Items per generated chunk of a training stream.
CHUNK = 64

#: Training mixture of each family: stock task -> examples per batch of 32. LLaVA learns the general
#: benchmarks of Table 1; InternVL also grounding (Tables 2 and 3), which gets the largest share.
MIXES = {
    "llava": {"caption": 4, "pope": 3, "mme": 3, "gqa": 5, "vqav2_val": 4, "scienceqa_img": 3, "mmbench_en_dev": 3,
              "mmbench_cn_dev": 3, "textvqa_val": 4},
    "internvl": {"grounded_caption": 4, "caption": 2, "refcoco_bbox_rec_val": 10, "pope": 2, "mme": 2, "gqa": 3,
                 "vqav2_val": 2, "scienceqa_img": 2, "mmbench_en_dev": 2, "textvqa_val": 3},
}

#: The training-only tasks: name -> question.
CAPTIONS = {"caption": "Describe the image.", "grounded_caption": "Describe the image with boxes."}


def train_seed(chunk: int) -> int:
    """Seed of training chunk ``chunk``: 1000 + chunk, never a validation or test seed."""
    seed = 1000 + int(chunk)
    assert seed not in SPLITS.values()
    return seed


@functools.lru_cache(maxsize=None)
def _task_config(stock: str) -> tuple:
    """``(doc_to_text, kwargs)`` of our overlay task for ``stock``."""
    from reproduce.benchmarks import by_stock
    from reproduce.tasks import TASK_DIR
    from reproduce.tasks.smoke import load_task_yaml

    config = load_task_yaml(TASK_DIR / f"{by_stock(stock).task}.yaml")
    module, _, name = str(config["doc_to_text"]).rpartition(".")
    kwargs = (config.get("lmms_eval_specific_kwargs") or {}).get("default")
    return getattr(importlib.import_module(module), name), kwargs


def _rows(stock: str, n: int, seed: int) -> list[dict]:
    """The micro builder's rows, one per question (GQA's images joined, REC's expression as a string,
    as the tasks' ``process_docs`` leave them)."""
    from reproduce.benchmarks import by_stock

    files = by_stock(stock).micro(n, seed)
    rows = [dict(r) for r in files[""][0]]
    if "_images" in files:
        images = {r["id"]: r["image"] for r in files["_images"][0]}
        for r in rows:
            r["image"] = images[r["imageId"]]
    if stock.startswith("refcoco"):
        for r in rows:
            (r["answer"],) = r["answer"]
    return rows


def contexts(stock: str, rows: list[dict]) -> list[str]:
    """The question our task sends the model for each row (its ``doc_to_text``)."""
    doc_to_text, kwargs = _task_config(stock)
    return [doc_to_text(r, kwargs) if kwargs is not None else doc_to_text(r) for r in rows]


def targets(stock: str, rows: list[dict]) -> list[str]:
    """The answer the task's metric accepts for each row."""
    if stock.startswith("refcoco"):
        from reproduce.micro.data import SIDE

        out = []
        for r in rows:
            x, y, w, h = r["bbox"]
            box = [round(v * 1000 / SIDE) for v in (x, y, x + w, y + h)]
            out.append("[[" + ", ".join(str(v) for v in box) + "]]")
        return out
    if stock == "scienceqa_img":
        return ["ABCDE"[r["answer"]] for r in rows]
    if stock == "vqav2_val":
        return [r["multiple_choice_answer"] for r in rows]
    if stock == "textvqa_val":
        return [r["answers"][0] for r in rows]
    return [r["answer"] for r in rows]  # POPE, MME, GQA, MMBench (the letter)


def _image(cell: dict):
    """The PIL image of an image cell, carrying its scene (``.micro_scene``) for the training aids."""
    from PIL import Image

    from reproduce.micro.data import scene_of

    image = Image.open(io.BytesIO(cell["bytes"]))
    image.micro_scene = scene_of(cell["bytes"])
    if image.micro_scene is None:
        raise RuntimeError(f"{cell.get('path')!r}: no scene registered for this image (made by another process, "
                           "or forgotten: reproduce.micro.data.REGISTERED)")
    return image


def caption(scene, boxes: bool) -> str:
    """Every object of ``scene`` in reading order (top to bottom, then left to right), with its box if
    ``boxes``.

    >>> from reproduce.micro.scenes import Obj, Scene
    >>> scene = Scene((Obj("bar", "blue", "large", 4, 4, 3, 1), Obj("disk", "red", "small", 0, 0, 1, 1)), ("moon", 0, 0, .5))
    >>> caption(scene, False), caption(scene, True)
    ('small red disk, large blue bar.', 'small red disk [[0, 0, 125, 125]], large blue bar [[500, 500, 875, 625]].')
    """
    from reproduce.micro.scenes import describe

    parts = []
    for o in sorted(scene.objects, key=lambda o: (o.y, o.x)):
        parts.append(describe(o) + (" [[" + ", ".join(str(v) for v in o.box_1000()) + "]]" if boxes else ""))
    return ", ".join(parts) + "."


def _caption_examples(task: str, n: int, seed: int) -> list[tuple]:
    from reproduce.micro.data import draw, image_cell

    out = []
    for i in range(n):
        scene, _ = draw(seed, task, i, lambda s, rng: True)
        out.append((_image(image_cell(scene, f"{task}_{i}")), CAPTIONS[task], caption(scene, task == "grounded_caption")))
    return out


def task_examples(stock: str, n: int, seed: int) -> list[tuple]:
    """``n`` examples ``(PIL image, context, target)`` of one task under ``seed``."""
    if stock in CAPTIONS:
        return _caption_examples(stock, n, seed)
    rows = _rows(stock, n, seed)[:n]
    return [(_image(r["image"]), c, t) for r, c, t in zip(rows, contexts(stock, rows), targets(stock, rows))]


class Stream:
    """The endless training stream of one task: :meth:`take` returns examples ``start .. start + n - 1``.

    ``objects(chunk)``: the object-count range of the scenes of a chunk (the curriculum; a function of the
    chunk alone, so a resumed run draws the same examples); default the scenes' own.
    """

    def __init__(self, stock: str, objects=None) -> None:
        self.stock = stock
        self.objects = objects
        self._chunk: tuple[int, list] | None = None

    def _get(self, chunk: int) -> list:
        if self._chunk is None or self._chunk[0] != chunk:
            from reproduce.micro import data

            if self.objects is not None:
                data.OBJECTS.append(self.objects(chunk))
            try:
                self._chunk = (chunk, task_examples(self.stock, CHUNK, train_seed(chunk)))
            finally:
                if self.objects is not None:
                    data.OBJECTS.pop()
        return self._chunk[1]

    def take(self, start: int, n: int) -> list:
        return [self._get(k // CHUNK)[k % CHUNK] for k in range(start, start + n)]
