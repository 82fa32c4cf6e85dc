"""The positional-bias prior: the mean layer-(K-1) attention row over calibration images.

D2Pruner divides each token's attention by the attention its *position* receives on average, with
one fixed generic prompt over many images (the paper: 1000 COCO images). This module measures that
mean, stores it with its provenance, and checks on loading that it fits the model and K.

One value per position of the family's prior block (``ModelFamily.prior_block``):

* LLaVA-1.5: one value per grid position (24x24 = 576).
* InternVL-2.5: one value per tile position (16x16 = 256), averaged over every tile and thumbnail of
  every image (each tile counts once); the same values then apply to every tile and to the thumbnail.
* Qwen2.5-VL / Qwen3-VL: one value per cell of a fixed 24x24 grid over normalised image positions;
  each image's (or frame group's) attention map is resampled onto it before averaging, and the grid
  is resampled back to each view's size when applied (``ModelFamily.prior_blocks`` / ``expand_prior``).

:func:`measure` runs the whole measurement for any registered model family (the command line and
the smoke runs of ``python -m reproduce`` both use it). Command line (real checkpoints from the
local Hugging Face cache; ``d2pruner/models/prior/__main__.py``)::

    python -m d2pruner.models.prior --model llava-hf/llava-1.5-7b-hf --images DIR --out prior.json

It shows a progress bar, writes its running sum after every image to ``OUT.partial.json`` and, when
run again, resumes from there; it refuses to mix models, layers or prompts in one file. An image that
cannot be decoded is skipped with a warning naming it and counted in the prior's provenance
(``n_skipped_images``, ``skipped_images``), so that one bad file neither stops a long measurement nor
goes unnoticed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import platform
from typing import Any, Callable, Iterable

import numpy as np
import torch

__all__ = ["DEFAULT_PROMPT", "IMAGE_SUFFIXES", "Prior", "PriorAccumulator", "SkippedImageWarning", "UnreadableImage",
           "attention_rows", "check_prune_layer", "compute", "image_key", "load_image", "measure", "prior_tensor",
           "provenance"]

#: The generic calibration prompt (our choice; the paper's exact wording is not published).
DEFAULT_PROMPT = "Describe the image."
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclasses.dataclass(frozen=True, eq=False)
class Prior:
    """Prior values (one per grid or tile position) and their provenance (``meta``)."""

    values: np.ndarray
    meta: dict

    def save(self, path: str | os.PathLike) -> None:
        _atomic_write(pathlib.Path(path), {"meta": self.meta, "values": [float(v) for v in self.values]})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Prior":
        """The prior in ``path``; ``ValueError`` naming the file (and the line) when it is not a prior file."""
        data = _read_json(pathlib.Path(path), "prior file")
        if not isinstance(data, dict) or "values" not in data or "meta" not in data:
            raise ValueError(f"prior file {path} has no 'values' and 'meta' (not written by python -m d2pruner.models.prior)")
        return cls(np.asarray(data["values"], dtype=np.float64), data["meta"])

    def check_fits(self, model, prune_layer: int) -> None:
        """Raise ``ValueError`` unless the prior was measured on this model class/id and this K."""
        if int(self.meta["prune_layer"]) != int(prune_layer):
            raise ValueError(f"the prior was measured for prune_layer K={self.meta['prune_layer']}, "
                             f"but pruning is at K={prune_layer}")
        cls = type(model).__name__
        if self.meta.get("model_class") and self.meta["model_class"] != cls:
            raise ValueError(f"the prior was measured on a {self.meta['model_class']}, not a {cls}")
        name = getattr(model.config, "_name_or_path", "") or ""
        if self.meta.get("model_id") and name and not same_model(name, self.meta["model_id"]):
            raise ValueError(f"the prior was measured on {self.meta['model_id']!r}, the model is {name!r}")


def same_model(a: str, b: str) -> bool:
    """Whether two model names (hub ids or folders) name the same checkpoint: equal, or, for folders,
    one's path is a tail of the other's (a prior measured on ``reproduce/micro/checkpoints/llava`` fits
    that folder in any clone of the repository).

    >>> same_model("llava-hf/llava-1.5-7b-hf", "llava-hf/llava-1.5-7b-hf"), same_model("a/llava", "b/llava")
    (True, False)
    >>> same_model("/home/u/repo/reproduce/micro/checkpoints/llava", "reproduce/micro/checkpoints/llava")
    True
    """
    if a == b:
        return True
    pa, pb = pathlib.PurePath(a).parts, pathlib.PurePath(b).parts
    short, long = sorted((pa, pb), key=len)
    return len(short) >= 2 and pathlib.PurePath(*long).is_absolute() and long[-len(short):] == short


def prior_tensor(prior: Any, expected: int, model, prune_layer: int) -> torch.Tensor | None:
    """The prior as a float32 tensor of ``expected`` positive values, checked against the model and K."""
    if prior is None:
        return None
    if isinstance(prior, (str, os.PathLike)):
        prior = Prior.load(prior)
    if isinstance(prior, Prior):
        prior.check_fits(model, prune_layer)
        prior = prior.values
    values = torch.as_tensor(np.asarray(prior, dtype=np.float32)).flatten()
    if values.numel() != expected:
        raise ValueError(f"the prior has {values.numel()} values; this model needs {expected} (one per grid/tile position)")
    if not bool(torch.isfinite(values).all()) or bool((values <= 0).any()):
        raise ValueError("the prior must be finite and > 0 at every position")
    return values


class _Stop(Exception):
    pass


class UnreadableImage(ValueError):
    """A calibration image that cannot be decoded; :func:`compute` skips it with a
    :class:`SkippedImageWarning` and counts it in the prior's provenance (``skipped_images``)."""


class SkippedImageWarning(UserWarning):
    """An unreadable calibration image was skipped (its name is in the message and in ``skipped_images``)."""


def load_image(path: pathlib.Path):
    """The image in ``path`` as RGB, or :class:`UnreadableImage` naming the file and what is wrong with it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as err:  # PIL's UnidentifiedImageError and "image file is truncated" are OSErrors
        raise UnreadableImage(f"image {path} cannot be read: {err}") from None


def check_prune_layer(prune_layer: int, n_layers: int) -> None:
    """``ValueError`` unless ``prune_layer`` = K is a layer a prior can be measured for: the attention row is
    read at layer K-1's input and tokens are cut from layer K on, so 1 <= K <= n_layers - 1.

    >>> check_prune_layer(2, 32)
    >>> check_prune_layer(0, 4)
    Traceback (most recent call last):
    ...
    ValueError: prune layer K=0 is out of range for a 4-layer language model: K must be 1 to 3 (the prior is the attention row at the input of layer K-1, pruning starts at layer K)
    """
    if isinstance(prune_layer, bool) or not isinstance(prune_layer, (int, np.integer)) or not 1 <= prune_layer <= n_layers - 1:
        raise ValueError(f"prune layer K={prune_layer!r} is out of range for a {n_layers}-layer language model: K must be "
                         f"1 to {n_layers - 1} (the prior is the attention row at the input of layer K-1, pruning "
                         "starts at layer K)")


@torch.no_grad()
def attention_rows(model, inputs: dict, prune_layer: int, find_items, family=None) -> list:
    """Layer-(K-1) last-token attention over each item's visual tokens: ``[(row (N,), layout) | None]``.

    Runs the model only up to layer K-1 (a hook stops the forward there). ``family`` (default: the
    model's) gives the inner model and the rotary scheme.
    """
    from d2pruner.models.attention import last_token_attention
    from d2pruner.models.family import family_for_model

    family = family or family_for_model(model)
    layers = family.inner(model).language_model.layers
    check_prune_layer(prune_layer, len(layers))
    layer = layers[prune_layer - 1]
    found: dict = {}

    def hook(module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        found["row"] = last_token_attention(module, hidden, kwargs["position_embeddings"], kwargs.get("attention_mask"),
                                            family.rotary)
        raise _Stop

    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(**inputs, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    items = find_items(inputs["input_ids"])
    return [None if it is None else (found["row"][i, it[0]].double().cpu(), it[1]) for i, it in enumerate(items)]


class PriorAccumulator:
    """Running sum of attention rows per position, saved after every image so a run can resume."""

    def __init__(self, block: int, meta: dict, state_path: pathlib.Path | None = None) -> None:
        self.block, self.meta, self.state_path = block, dict(meta), state_path
        self.total = np.zeros(block, dtype=np.float64)
        self.blocks = 0
        self.done: list[str] = []
        self.skipped: dict[str, str] = {}  # key -> why, of images that could not be read
        if state_path is not None and state_path.exists():
            state = _read_json(state_path, "partial prior state")
            _check_same_run(state["meta"], self.meta, state_path)
            self.total = np.asarray(state["total"], dtype=np.float64)
            self.blocks, self.done = int(state["blocks"]), list(state["done"])
            self.skipped = dict(state.get("skipped", {}))

    def add(self, key: str, row: torch.Tensor | np.ndarray) -> None:
        """Add one image's visual attention row (a whole number of blocks), or its blocks already
        shaped (blocks, block) by the family, under a unique key."""
        if key in self.done:
            return
        values = row.double().cpu().numpy() if isinstance(row, torch.Tensor) else np.asarray(row, dtype=np.float64)
        if values.ndim == 2 and values.shape[1] != self.block:
            raise ValueError(f"image {key!r}: blocks of {values.shape[1]} positions, expected {self.block}")
        if values.size % self.block:
            raise ValueError(f"image {key!r}: {values.size} visual tokens are not a whole number of {self.block}-position blocks")
        self.total += values.reshape(-1, self.block).sum(axis=0)
        self.blocks += values.size // self.block
        self.done.append(key)
        self.skipped.pop(key, None)
        self._save()

    def skip(self, key: str, why: str) -> None:
        """Record an image that could not be read (it counts in the provenance, not in the prior)."""
        self.skipped[key] = why
        self._save()

    def _save(self) -> None:
        if self.state_path is not None:
            _atomic_write(self.state_path, {"meta": self.meta, "total": self.total.tolist(), "blocks": self.blocks,
                                            "done": self.done, "skipped": self.skipped})

    def result(self, extra_meta: dict | None = None) -> Prior:
        if self.blocks == 0:
            raise ValueError("no image was processed: the prior would be empty"
                             + (f" ({len(self.skipped)} unreadable images skipped)" if self.skipped else ""))
        meta = {**self.meta, "n_images": len(self.done), "n_blocks": self.blocks,
                "images_sha256": hashlib.sha256("\n".join(sorted(self.done)).encode()).hexdigest(),
                "n_skipped_images": len(self.skipped), "skipped_images": dict(sorted(self.skipped.items())),
                **(extra_meta or {})}
        return Prior(self.total / self.blocks, meta)


def _check_same_run(old: dict, new: dict, path: pathlib.Path) -> None:
    for key in ("model_id", "revision", "model_class", "prune_layer", "prompt", "max_tiles"):
        if old.get(key) != new.get(key):
            raise ValueError(f"{path} holds a prior run with {key}={old.get(key)!r}; this run has {key}={new.get(key)!r}. "
                             "Refusing to mix them: use another --out or delete the file")


def _read_json(path: pathlib.Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} {path} is not valid JSON at line {err.lineno}, column {err.colno} ({err.msg}); "
                         "delete it and measure again") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} {path} is not a text file ({err.reason} at byte {err.start})") from None


def _atomic_write(path: pathlib.Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def provenance() -> dict:
    import transformers

    import d2pruner

    return {"d2pruner": d2pruner.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def image_key(path: pathlib.Path) -> str:
    """``name:sha256`` of an image file, so a resumed run recognises what it has done."""
    return f"{path.name}:{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"


def compute(model, samples: Iterable[tuple[str, Callable[[], dict]]], *, prune_layer: int, find_items, block: int,
            meta: dict, out: pathlib.Path, progress: bool = True, blocks_of: Callable | None = None) -> Prior:
    """Measure a prior over ``samples`` = ``(key, make_inputs)`` of one image each; resumable via ``out``.

    ``make_inputs()`` builds the model inputs of that image; it is not called for images a previous,
    interrupted run already added. ``blocks_of(row, layout)`` turns an image's row into prior blocks
    (default: consecutive ``block``-position pieces; Qwen-VL resamples each view). An image whose ``make_inputs()`` raises :class:`UnreadableImage` is
    skipped with a :class:`SkippedImageWarning` naming it, and counted in the result's provenance
    (``n_skipped_images``, ``skipped_images``: key -> why); a resumed run tries it again.
    """
    import warnings

    from tqdm.auto import tqdm

    if out.exists():
        _check_same_run(Prior.load(out).meta, meta, out)
    acc = PriorAccumulator(block, meta, out.with_name(out.name + ".partial.json"))
    for key, make_inputs in tqdm(samples, desc="prior", disable=not progress):
        if key in acc.done:
            continue
        try:
            inputs = make_inputs()
        except UnreadableImage as err:
            warnings.warn(f"skipped: {err}", SkippedImageWarning, stacklevel=2)
            acc.skip(key, str(err))
            continue
        (row, layout), = attention_rows(model, inputs, prune_layer, find_items)
        acc.add(key, row if blocks_of is None else blocks_of(row, layout))
    prior = acc.result(provenance())
    prior.save(out)
    acc.state_path.unlink(missing_ok=True)
    return prior


def measure(model, processor, family, images: Iterable[tuple[str, Callable[[], Any]]], *, prompt: str = DEFAULT_PROMPT,
            prune_layer: int = 2, max_tiles: int = 12, meta: dict, out: pathlib.Path, progress: bool = True) -> Prior:
    """Measure a prior on ``model`` (of ``family``) over ``images`` = ``(key, load_image)`` pairs, each
    image with ``prompt`` in the family's official format; resumable via ``out`` (see :func:`compute`)."""
    from d2pruner.models.loading import build_inputs

    hints: list = [None]
    current: list = [None]  # the inputs being measured (families whose layout needs them: image grids)

    def find(ids, inputs=None):
        return family.items(model, ids, hints[0], current[0] if inputs is None else inputs)

    def make_inputs(load):
        def build():
            image = load()
            hints[0] = family.item_hints(processor, [image], max_tiles)
            current[0] = build_inputs(processor, family, image, prompt, max_tiles, model.device)
            return current[0]
        return build

    return compute(model, [(key, make_inputs(load)) for key, load in images], prune_layer=prune_layer, find_items=find,
                   block=family.prior_block(model), meta=meta, out=out, progress=progress,
                   blocks_of=lambda row, layout: family.prior_blocks(model, row, layout))
