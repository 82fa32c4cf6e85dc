"""Thin functions our task YAMLs point at where the paper's protocol departs from stock lmms-eval.

Everything else in the YAMLs is lmms-eval 0.7.3's own code (``!function lmms_eval.tasks....``).
What lives here, and why:

* **REC with InternVL-2.5** -- :func:`rec_internvl_doc_to_text` asks with InternVL's grounding
  prompt; :func:`rec_internvl_process_result` reads its ``<box>[[x1, y1, x2, y2]]</box>`` answer
  in [0, 1000] image coordinates, divides by 1000 into the [0, 1] ``xyxy`` boxes that lmms-eval's
  REC ``process_docs`` made of the ground truth, and hands lmms-eval's REC aggregations the record
  they expect (IoU is invariant under per-axis scaling, so this equals InternVL's own pixel-space
  comparison).
* **MMBench offline** -- :func:`mmbench_en_dev_static_score` / :func:`mmbench_cn_dev_static_score`
  score with lmms-eval's ``MMBench_Evaluator.eval_result(..., eval_method="static")``: option-letter
  and option-text matching, then lmms-eval's regex MCQ extractor, circular items all-or-nothing;
  never the OpenAI API, and no submission files.
* **GQA from local data** -- :func:`gqa_join_images` attaches each question's image (bytes copied,
  not re-encoded); :func:`gqa_process_docs` does it with the hub's image configuration.

lmms-eval is imported inside the functions only (importing it installs a process-wide warnings
filter and resets loguru); the parsing helpers are pure.
"""

from __future__ import annotations

import re

__all__ = [
    "REC_PROMPT",
    "parse_internvl_box",
    "internvl_box_to_unit",
    "rec_internvl_doc_to_text",
    "rec_internvl_process_result",
    "mmbench_en_dev_static_score",
    "mmbench_cn_dev_static_score",
    "gqa_join_images",
    "gqa_process_docs",
]

#: InternVL-2.5's referring-expression grounding prompt; ``{}`` is the expression.
REC_PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: <ref>{}</ref>"

#: Side of InternVL's box coordinate frame: [0, 1000] across the image, in both axes.
INTERNVL_BOX_SCALE = 1000

_NUM = r"\s*(-?\d+(?:\.\d+)?)\s*"
_FOUR = f"{_NUM},{_NUM},{_NUM},{_NUM}"
_BOX_TAG = re.compile(r"<box>(.*?)</box>", re.DOTALL)
_DOUBLE = re.compile(rf"\[\s*\[{_FOUR}\]\s*\]")
_SINGLE = re.compile(rf"\[{_FOUR}\]")


def parse_internvl_box(text: str) -> list[float] | None:
    """The first box of an InternVL grounding answer, in its [0, 1000] coordinates.

    Looks, in order, for four numbers as ``[[x1, y1, x2, y2]]`` inside the first
    ``<box>...</box>``, then as ``[[...]]`` anywhere, then as ``[...]`` anywhere.

    Parameters
    ----------
    text : str
        The model's answer.

    Returns
    -------
    list of float or None
        ``[x1, y1, x2, y2]`` as written (not clipped, not reordered), or None when no box parses.

    Examples
    --------
    >>> parse_internvl_box("<ref>the cat</ref><box>[[100, 250, 600, 1000]]</box>")
    [100.0, 250.0, 600.0, 1000.0]
    >>> parse_internvl_box("[[12, 34.5, 56, 78]] and [[1, 2, 3, 4]]")
    [12.0, 34.5, 56.0, 78.0]
    >>> parse_internvl_box("[5, 6, 7, 8]")
    [5.0, 6.0, 7.0, 8.0]
    >>> parse_internvl_box("a cat on the left") is None
    True
    """
    tagged = _BOX_TAG.search(text)
    candidates = ([tagged.group(1)] if tagged else []) + [text]
    for pattern in (_DOUBLE, _SINGLE):
        for candidate in candidates:
            match = pattern.search(candidate)
            if match:
                return [float(v) for v in match.groups()]
    return None


def internvl_box_to_unit(box: list[float] | None) -> list[float]:
    """An InternVL [0, 1000] box as the [0, 1] ``xyxy`` box lmms-eval's REC metrics compare.

    Parameters
    ----------
    box : list of float or None
        ``[x1, y1, x2, y2]`` in [0, 1000] (see :func:`parse_internvl_box`); None for an
        unparseable answer.

    Returns
    -------
    list of float
        ``box / 1000``; ``[0, 0, 0, 0]`` for None -- lmms-eval's own value for an unparseable
        answer, which scores IoU 0 against any real box -- and for an inverted box (``x2 < x1`` or
        ``y2 < y1``: not a box; its negative area could cancel the true box's in lmms-eval's union
        and divide by zero).

    Examples
    --------
    >>> internvl_box_to_unit([100.0, 250.0, 600.0, 1000.0])
    [0.1, 0.25, 0.6, 1.0]
    >>> internvl_box_to_unit(None), internvl_box_to_unit([600.0, 250.0, 100.0, 1000.0])
    ([0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0])
    """
    if box is None or box[2] < box[0] or box[3] < box[1]:
        return [0.0, 0.0, 0.0, 0.0]
    return [v / INTERNVL_BOX_SCALE for v in box]


def rec_internvl_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """InternVL-2.5's grounding question for one referring expression.

    Parameters
    ----------
    doc : dict
        A row after lmms-eval's REC ``process_docs``: ``doc["answer"]`` is one expression.
    lmms_eval_specific_kwargs : dict, optional
        Unused (accepted because lmms-eval may pass it).

    Returns
    -------
    str
        :data:`REC_PROMPT` filled with the expression.

    Raises
    ------
    TypeError
        If ``doc["answer"]`` is not a string (the rows were not exploded per expression).

    Examples
    --------
    >>> rec_internvl_doc_to_text({"answer": "the cat on the left"})
    'Please provide the bounding box coordinate of the region this sentence describes: <ref>the cat on the left</ref>'
    """
    expression = doc["answer"]
    if not isinstance(expression, str):
        raise TypeError(f"REC doc answer must be one expression (str), got {type(expression).__name__}: {expression!r}")
    return REC_PROMPT.format(expression)


def rec_internvl_process_result(doc: dict, result: list[str]) -> dict:
    """Score record of one InternVL grounding answer, in the form lmms-eval's REC aggregations read.

    Parameters
    ----------
    doc : dict
        A row after lmms-eval's REC ``process_docs`` (``bbox`` in [0, 1] ``xyxy``).
    result : list of str
        ``[answer]``.

    Returns
    -------
    dict
        ``{"refcoco_<metric>": {"answer", "pred", "ann_id", "bbox"}}`` for each of lmms-eval's
        ``COCO_REC_METRICS``, with ``pred`` = :func:`internvl_box_to_unit` of the parsed answer.
    """
    from lmms_eval.tasks.refcoco.utils_rec import COCO_REC_METRICS

    pred = internvl_box_to_unit(parse_internvl_box(result[0] if result else ""))
    record = {"answer": doc["answer"], "pred": pred, "ann_id": doc["question_id"], "bbox": doc["bbox"]}
    return {f"refcoco_{metric}": record for metric in COCO_REC_METRICS}


def _present(value) -> bool:
    """A cell of MMBench's table that holds text (not missing, not the string "nan")."""
    return value is not None and not (isinstance(value, float) and value != value) and str(value) != "nan"


def mmbench_official_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """MMBench's prompt as LLaVA-1.5's and InternVL-2.5's own evaluations build it: the hint (if any),
    the question and each option on its own line, then the answer instruction (``post_prompt``).

    lmms-eval's stock prompt instead runs hint, question and a "There are several options:" block
    together on one line. Scoring is untouched (lmms-eval's records and static evaluator).

    >>> doc = {"hint": "nan", "question": "What is shown?", "A": "a cat", "B": "a dog", "C": "nan", "D": float("nan")}
    >>> print(mmbench_official_doc_to_text(doc, {"post_prompt": "Answer with the option's letter from the given choices directly."}))
    What is shown?
    A. a cat
    B. a dog
    Answer with the option's letter from the given choices directly.
    """
    lines = [str(doc["hint"])] if _present(doc.get("hint")) else []
    lines.append(str(doc["question"]))
    lines += [f"{letter}. {doc[letter]}" for letter in "ABCDE" if _present(doc.get(letter))]
    post = (lmms_eval_specific_kwargs or {}).get("post_prompt", "")
    if post:
        lines.append(post)
    return "\n".join(lines)


def _mmbench_static_score(evaluator, results) -> float:
    overall, _category, _l2_category = evaluator.eval_result(results, eval_method="static")
    return float(overall) * 100


def mmbench_en_dev_static_score(results: list[dict]) -> float:
    """MMBench-EN dev accuracy in percent, scored offline (lmms-eval's static evaluator).

    Parameters
    ----------
    results : list of dict
        lmms-eval's ``mmbench_process_results(...)["gpt_eval_score"]`` records.

    Returns
    -------
    float
        Percentage of main questions (``index < 1e6``) answered right in every circular variant.
    """
    from lmms_eval.tasks.mmbench.en_utils import mmbench_evaluator

    return _mmbench_static_score(mmbench_evaluator, results)


def mmbench_cn_dev_static_score(results: list[dict]) -> float:
    """MMBench-CN dev accuracy in percent, scored offline (lmms-eval's static evaluator).

    Parameters
    ----------
    results : list of dict
        lmms-eval's ``mmbench_process_results(...)["gpt_eval_score"]`` records (CN module).

    Returns
    -------
    float
        Percentage of main questions (``index < 1e6``) answered right in every circular variant.
    """
    from lmms_eval.tasks.mmbench.cn_utils import mmbench_evaluator

    return _mmbench_static_score(mmbench_evaluator, results)


def gqa_join_images(instructions, images):
    """Attach to each GQA question the image its ``imageId`` names.

    Parameters
    ----------
    instructions : datasets.Dataset
        GQA questions (``id, imageId, question, answer, ...``).
    images : datasets.Dataset
        GQA images (``id, image``).

    Returns
    -------
    datasets.Dataset
        ``instructions`` with an ``image`` column (``datasets.Image``; the stored bytes are copied,
        not decoded and re-encoded).

    Raises
    ------
    KeyError
        If some ``imageId`` has no image (the message names a few).
    """
    import datasets

    raw = images.cast_column("image", datasets.Image(decode=False))
    by_id = dict(zip(raw["id"], raw["image"]))
    missing = sorted(set(instructions["imageId"]) - by_id.keys())
    if missing:
        raise KeyError(f"GQA: {len(missing)} imageId(s) of the questions have no image, e.g. {missing[:3]}")
    features = instructions.features.copy()
    features["image"] = datasets.Image()
    return instructions.map(lambda doc: {"image": by_id[doc["imageId"]]}, features=features)


def gqa_process_docs(dataset):
    """GQA testdev-balanced questions with their images, from the hub dataset lmms-eval 0.7.3 uses.

    Parameters
    ----------
    dataset : datasets.Dataset
        The ``testdev_balanced_instructions`` split.

    Returns
    -------
    datasets.Dataset
        See :func:`gqa_join_images`; images from ``lmms-lab-encoder/GQA``,
        ``testdev_balanced_images`` (the local cache under ``HF_DATASETS_OFFLINE=1``).
    """
    import datasets

    images = datasets.load_dataset("lmms-lab-encoder/GQA", "testdev_balanced_images", split="testdev")
    return gqa_join_images(dataset, images)
