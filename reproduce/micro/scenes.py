"""Synthetic scenes for the micro reproduction: a few coloured shapes on a photograph, and what can be
truthfully asked about them.

A scene lives on a ``GRID`` x ``GRID`` board of cells. Each object has a shape (disk, square, triangle,
bar), a colour, a size (small or large) and a footprint of whole cells; footprints never touch, so
every object is seen apart from the others. Its box is its footprint, so the box of every object, in
InternVL's [0, 1000] frame, has coordinates on multiples of ``1000 / GRID`` (a finite answer set the
micro models can learn exactly; Acc@0.5 still asks for the right object and its extent). The
background is a random crop of a photograph that ships inside scikit-image (``skimage.data``), turned
grey and dimmed so the colours stay readable.

Everything is deterministic from a seed: :func:`make_scene` draws from a ``numpy`` generator, and
:func:`render` draws the same pixels for the same scene and size.

>>> import numpy as np
>>> scene = make_scene(np.random.default_rng(0))
>>> 2 <= len(scene.objects) <= 5, render(scene, 96).size
(True, (96, 96))
>>> scene.objects[0].box_1000() == [v * 125 for v in scene.objects[0].cells_xyxy()]
True
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

__all__ = ["GRID", "SHAPES", "COLOURS", "SIZES", "BACKGROUNDS", "RELATIONS", "Obj", "Scene", "make_scene", "render",
           "describe", "relation_holds"]

#: Cells per side of the scene board.
GRID = 8
SHAPES = ("disk", "square", "triangle", "bar")
#: Colour name -> RGB.
COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 230), "yellow": (235, 215, 40),
           "white": (245, 245, 245), "purple": (160, 60, 200)}
SIZES = ("small", "large")
#: Footprint (width, height) in cells of each (shape, size).
_FOOTPRINT = {("bar", "small"): (2, 1), ("bar", "large"): (3, 1)}
#: ``skimage.data`` photographs the backgrounds are cut from.
BACKGROUNDS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "moon", "brick", "grass", "gravel",
               "hubble_deep_field", "immunohistochemistry", "clock", "page")
RELATIONS = ("left of", "right of", "above", "below")


def footprint(shape: str, size: str) -> tuple[int, int]:
    """``(width, height)`` in cells: small 1x1, large 2x2, bars 2x1 / 3x1."""
    return _FOOTPRINT.get((shape, size), (1, 1) if size == "small" else (2, 2))


@dataclasses.dataclass(frozen=True)
class Obj:
    """One object: attributes and its footprint ``(x, y)`` (top-left cell) + ``(w, h)`` in cells."""

    shape: str
    colour: str
    size: str
    x: int
    y: int
    w: int
    h: int

    def cells_xyxy(self) -> list[int]:
        """Footprint as ``[x1, y1, x2, y2]`` in cells (x2, y2 exclusive)."""
        return [self.x, self.y, self.x + self.w, self.y + self.h]

    def box_1000(self) -> list[int]:
        """Box in InternVL's [0, 1000] frame (integers: GRID divides 1000)."""
        return [v * 1000 // GRID for v in self.cells_xyxy()]

    def box_pixels(self, side: int) -> list[float]:
        """Box ``[x, y, w, h]`` in pixels of a ``side`` x ``side`` rendering (RefCOCO's bbox format)."""
        c = side / GRID
        return [self.x * c, self.y * c, self.w * c, self.h * c]

    def centre(self) -> tuple[float, float]:
        return (self.x + self.w / 2, self.y + self.h / 2)


@dataclasses.dataclass(frozen=True)
class Scene:
    """Objects on a board over a background crop ``(photo, left, top, side)`` (fractions of the photo)."""

    objects: tuple[Obj, ...]
    background: tuple[str, float, float, float]
    digits: tuple[tuple[int, int, int, str], ...] = ()  # signs: (x, y, digit, colour), 2x2 cells each

    def matching(self, **attrs) -> list[Obj]:
        """Objects whose attributes equal ``attrs`` (``shape=``, ``colour=``, ``size=``; None ignored)."""
        return [o for o in self.objects if all(v is None or getattr(o, k) == v for k, v in attrs.items())]


def relation_holds(a: Obj, relation: str, b: Obj) -> bool:
    """Whether ``a`` is ``relation`` ``b``: wholly on that side (footprints do not overlap along the axis).

    >>> relation_holds(Obj("disk", "red", "small", 0, 0, 1, 1), "left of", Obj("bar", "blue", "small", 3, 5, 2, 1))
    True
    """
    ax1, ay1, ax2, ay2 = a.cells_xyxy()
    bx1, by1, bx2, by2 = b.cells_xyxy()
    return {"left of": ax2 <= bx1, "right of": ax1 >= bx2, "above": ay2 <= by1, "below": ay1 >= by2}[relation]


def _free(taken: np.ndarray, x: int, y: int, w: int, h: int) -> bool:
    """Whether a footprint fits the board with a one-cell moat around it free of other objects."""
    if x < 0 or y < 0 or x + w > GRID or y + h > GRID:
        return False
    return not taken[max(0, y - 1):y + h + 1, max(0, x - 1):x + w + 1].any()


def make_scene(rng: np.random.Generator, n_objects: tuple[int, int] = (2, 5), twins: float = 0.3,
               signs: int = 0) -> Scene:
    """A random scene of ``n_objects`` (inclusive range) objects.

    With probability ``twins`` one object gets a twin of the same shape, colour and size (so only a
    relation tells them apart). ``signs`` 2x2-cell signs with a digit are placed first (for the
    TextVQA-like questions).
    """
    taken = np.zeros((GRID, GRID), bool)
    digits = []
    for _ in range(signs):
        for _ in range(100):
            x, y = int(rng.integers(0, GRID - 1)), int(rng.integers(0, GRID - 1))
            if _free(taken, x, y, 2, 2):
                taken[y:y + 2, x:x + 2] = True
                digits.append((x, y, int(rng.integers(0, 10)), str(rng.choice(list(COLOURS)))))
                break
    want = int(rng.integers(n_objects[0], n_objects[1] + 1))
    objects: list[Obj] = []
    twin_at = int(rng.integers(0, want)) if want >= 2 and rng.random() < twins else -1
    for i in range(want):
        if i == twin_at + 1 and twin_at >= 0 and objects:
            shape, colour, size = objects[-1].shape, objects[-1].colour, objects[-1].size
        else:
            shape, colour, size = (str(rng.choice(SHAPES)), str(rng.choice(list(COLOURS))), str(rng.choice(SIZES)))
        w, h = footprint(shape, size)
        for _ in range(100):
            x, y = int(rng.integers(0, GRID - w + 1)), int(rng.integers(0, GRID - h + 1))
            if _free(taken, x, y, w, h):
                taken[y:y + h, x:x + w] = True
                objects.append(Obj(shape, colour, size, x, y, w, h))
                break
    side = float(rng.uniform(0.3, 0.8))
    background = (str(rng.choice(BACKGROUNDS)), float(rng.uniform(0, 1 - side)), float(rng.uniform(0, 1 - side)), side)
    return Scene(tuple(objects), background, tuple(digits))


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    """A ``skimage.data`` photograph as a grey float array in [0, 1]."""
    import skimage.data

    pixels = np.asarray(getattr(skimage.data, name)(), dtype=np.float64)
    if pixels.ndim == 3:
        pixels = pixels[..., :3].mean(axis=-1)
    return pixels / max(1.0, float(pixels.max()))


def render(scene: Scene, side: int):
    """The scene as a ``side`` x ``side`` RGB ``PIL.Image`` (same pixels for the same arguments)."""
    from PIL import Image, ImageDraw

    name, left, top, frac = scene.background
    photo = _photo(name)
    h, w = photo.shape
    crop = photo[int(top * h):int((top + frac) * h), int(left * w):int((left + frac) * w)]
    grey = Image.fromarray((crop * 255).astype(np.uint8), mode="L").resize((side, side), Image.Resampling.BILINEAR)
    dim = (np.asarray(grey, dtype=np.float64) * 0.35 + 30).astype(np.uint8)
    image = Image.fromarray(np.stack([dim] * 3, axis=-1), mode="RGB")
    draw = ImageDraw.Draw(image)
    c = side / GRID
    for x, y, digit, colour in scene.digits:
        x0, y0, x1, y1 = x * c, y * c, (x + 2) * c - 1, (y + 2) * c - 1
        draw.rectangle([x0, y0, x1, y1], fill=COLOURS[colour])
        _draw_digit(draw, digit, (x0, y0, x1, y1))
    for o in scene.objects:
        x0, y0 = o.x * c, o.y * c
        x1, y1 = (o.x + o.w) * c - 1, (o.y + o.h) * c - 1
        fill = COLOURS[o.colour]
        if o.shape == "disk":
            draw.ellipse([x0, y0, x1, y1], fill=fill)
        elif o.shape == "triangle":
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
        elif o.shape == "bar":
            draw.rectangle([x0, y0 + c * 0.25, x1, y1 - c * 0.25], fill=fill)
        else:
            draw.rectangle([x0, y0, x1, y1], fill=fill)
    return image


#: Seven-segment layout of each digit: segments a..g (top, top-right, bottom-right, bottom, bottom-left, top-left, middle).
_SEGMENTS = {0: "abcdef", 1: "bc", 2: "abged", 3: "abgcd", 4: "fgbc", 5: "afgcd", 6: "afgedc", 7: "abc", 8: "abcdefg",
             9: "abcfgd"}


def _draw_digit(draw, digit: int, box) -> None:
    """A black seven-segment digit inside ``box`` (large and blocky, so a few patches can read it)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    l, r, t, m, b = x0 + w * 0.25, x0 + w * 0.75, y0 + h * 0.15, y0 + h * 0.5, y0 + h * 0.85
    lines = {"a": (l, t, r, t), "b": (r, t, r, m), "c": (r, m, r, b), "d": (l, b, r, b), "e": (l, m, l, b),
             "f": (l, t, l, m), "g": (l, m, r, m)}
    width = max(1, int(round(w * 0.12)))
    for s in _SEGMENTS[digit]:
        draw.line(lines[s], fill=(0, 0, 0), width=width)


def describe(o: Obj, size: bool = True, colour: bool = True, shape: bool = True) -> str:
    """Noun phrase of an object's attributes: ``"small red disk"``, ``"red object"``, ``"small disk"``."""
    words = ([o.size] if size else []) + ([o.colour] if colour else []) + ([o.shape] if shape else ["object"])
    return " ".join(words)
