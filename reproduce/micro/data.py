"""What the micro benchmark builders share: split seeds, per-item random streams, scene images.

Every item of every micro benchmark is drawn from its own generator, seeded by ``(split seed,
stream, item index, attempt)``: the split seeds of :data:`SPLITS` are disjoint, the stream is a hash
of the stock task (so RefCOCO val and testA differ), and an item is the same whatever else is
drawn. :func:`draw` retries a scene until the question kind can be asked about it.

>>> scene, (q, a) = draw(SPLITS["test"], "pope", 0, lambda s, rng: existence(s, rng, "random"))
>>> q.startswith("Is there a "), a in ("yes", "no")
(True, True)
>>> draw(SPLITS["test"], "pope", 0, lambda s, rng: existence(s, rng, "random"))[1] == (q, a)
True
"""

from __future__ import annotations

import collections
import functools
import io
import zlib
from typing import Callable

import numpy as np

from reproduce.micro.questions import existence  # noqa: F401  (the doctest's question kind)
from reproduce.micro.scenes import Scene, make_scene, render

__all__ = ["SPLITS", "SIDE", "stream", "draw", "image_cell", "scene_png", "scene_of", "write_scenes"]

#: Seed of each held-out split: validation (model cards), test (the micro tables), calibration (the
#: scenes the micro priors are measured on). Training draws from seeds 1000 and up
#: (:func:`reproduce.micro.teach.train_seed`), so no two splits share an item.
SPLITS = {"validation": 2, "test": 3, "calibration": 4}
#: Side in pixels of every scene image the data sets store.
SIDE = 128


def stream(name: str) -> int:
    """A stable 32-bit stream id of a name (a stock task or a training task)."""
    return zlib.crc32(name.encode("utf-8"))


#: Object counts of the scenes :func:`draw` makes when the caller does not say (the training
#: curriculum narrows it for its first chunks: :data:`reproduce.micro.train.CURRICULUM`).
OBJECTS = [(2, 5)]


def draw(seed: int, name: str, i: int, ask: Callable, **scene_kwargs) -> tuple[Scene, tuple]:
    """Scene and question number ``i`` of stream ``name`` under split ``seed``: ``ask(scene, rng)`` must
    return the question or ``None`` (then the next attempt draws a new scene)."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed {seed!r}: need an int >= 0 (splits: {SPLITS})")
    for attempt in range(1000):
        rng = np.random.default_rng([seed, stream(name), i, attempt])
        scene = make_scene(rng, **{"n_objects": OBJECTS[-1], **scene_kwargs})
        question = ask(scene, rng)
        if question is not None:
            return scene, question
    raise RuntimeError(f"no scene of stream {name!r} allowed its question after 1000 attempts (item {i})")


@functools.lru_cache(maxsize=4096)
def scene_png(scene: Scene, side: int = SIDE) -> bytes:
    """PNG bytes of a rendered scene."""
    buffer = io.BytesIO()
    render(scene, side).save(buffer, format="PNG")
    return buffer.getvalue()


#: The scene of each PNG that :func:`image_cell` made, for training aids that need what the pixels show:
#: the newest :data:`REGISTERED` of them (the oldest are forgotten first, so the scenes of the chunk
#: being generated are always there).
_SCENES: collections.OrderedDict[bytes, Scene] = collections.OrderedDict()
REGISTERED = 100_000


def image_cell(scene: Scene, name: str) -> dict:
    """The value of an ``Image()`` column holding a rendered scene."""
    png = scene_png(scene)
    _SCENES[png] = scene
    _SCENES.move_to_end(png)
    while len(_SCENES) > REGISTERED:
        _SCENES.popitem(last=False)
    return {"bytes": png, "path": f"{name}.png"}


def scene_of(png: bytes) -> Scene | None:
    """The scene a PNG made by :func:`image_cell` in this process shows (None if unknown)."""
    return _SCENES.get(png)


def write_scenes(out, n: int, split: str = "calibration") -> list:
    """Write ``n`` scene images of ``split`` as ``scene_<i>.png`` into folder ``out`` (for the prior
    command's ``--images``); the paths written."""
    import pathlib

    if split not in SPLITS:
        raise ValueError(f"split {split!r}: one of {', '.join(SPLITS)}")
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        scene, _ = draw(SPLITS[split], "scenes", i, lambda s, rng: True)
        path = out / f"scene_{i:04d}.png"
        path.write_bytes(scene_png(scene))
        paths.append(path)
    return paths
