"""Questions about a synthetic scene (:mod:`reproduce.micro.scenes`) whose answers are true by construction.

Each function takes a scene and a ``numpy`` generator and returns a question with its answer (or
``None`` when the scene does not allow that kind of question; callers draw another scene). The
benchmark builders (``micro`` of each record in :mod:`reproduce.benchmarks`) put these into the real
data sets' column schemas.

>>> import numpy as np
>>> from reproduce.micro.scenes import Obj, Scene
>>> scene = Scene((Obj("disk", "red", "small", 0, 0, 1, 1), Obj("bar", "blue", "large", 4, 4, 3, 1)), ("moon", 0, 0, .5))
>>> q, a = colour_question(scene, np.random.default_rng(0))
>>> q in ("What color is the disk?", "What color is the small disk?", "What color is the bar?",
...       "What color is the large bar?"), a in ("red", "blue")
(True, True)
>>> existence(scene, np.random.default_rng(0), "adversarial")[1]
'no'
"""

from __future__ import annotations

import itertools

import numpy as np

from reproduce.micro.scenes import COLOURS, RELATIONS, SHAPES, Obj, Scene, describe, relation_holds

__all__ = ["referring", "existence", "colour_question", "shape_question", "count_question", "size_question",
           "relation_colour", "side_question", "choice", "digit_question", "yes_no_pair", "COLOUR_CN", "SHAPE_CN"]

COLOUR_CN = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "white": "白色", "purple": "紫色"}
SHAPE_CN = {"disk": "圆盘", "square": "正方形", "triangle": "三角形", "bar": "长条"}

#: Attribute subsets a description may use, simplest first: (size, colour, shape).
_SUBSETS = ((False, False, True), (False, True, True), (True, False, True), (True, True, True), (False, True, False))


def _unique_descriptions(scene: Scene, o: Obj) -> list[str]:
    """Attribute-only descriptions that pick out ``o`` alone."""
    out = []
    for size, colour, shape in _SUBSETS:
        attrs = {"size": o.size if size else None, "colour": o.colour if colour else None,
                 "shape": o.shape if shape else None}
        if len(scene.matching(**attrs)) == 1:
            out.append(describe(o, size, colour, shape))
    return out


def _relational(scene: Scene, o: Obj) -> list[str]:
    """``"<o's attributes> <relation> <unique other>"`` descriptions that pick out ``o`` alone."""
    out = []
    for other in scene.objects:
        if other is o:
            continue
        anchors = _unique_descriptions(scene, other)
        if not anchors:
            continue
        for relation in RELATIONS:
            if not relation_holds(o, relation, other):
                continue
            for size, colour, shape in _SUBSETS[:4]:
                attrs = {"size": o.size if size else None, "colour": o.colour if colour else None, "shape": o.shape}
                rivals = [p for p in scene.matching(**attrs) if p is not other and relation_holds(p, relation, other)]
                if rivals == [o]:
                    out.append(f"{describe(o, size, colour, True)} {relation} the {anchors[0]}")
                    break
    return out


def referring(scene: Scene, rng: np.random.Generator, relational: float = 0.5) -> tuple[str, Obj] | None:
    """A referring expression (``"the small red disk left of the blue bar"``) and the object it names.

    With probability ``relational`` a relational expression is preferred when there is one (an object
    with a twin has only relational ones).
    """
    for o in rng.permutation(len(scene.objects)):
        target = scene.objects[int(o)]
        plain, related = _unique_descriptions(scene, target), _relational(scene, target)
        pool = related if related and (not plain or rng.random() < relational) else plain
        if pool:
            return "the " + str(rng.choice(pool)), target
    return None


def _absent(scene: Scene, rng: np.random.Generator, kind: str) -> tuple[str, str] | None:
    """A (colour, shape) in no object of the scene: ``random``; ``popular`` (a colour of the scene);
    ``adversarial`` (a colour and a shape of the scene, never together)."""
    present = {(o.colour, o.shape) for o in scene.objects}
    colours, shapes = {o.colour for o in scene.objects}, {o.shape for o in scene.objects}
    pools = {"random": list(itertools.product(COLOURS, SHAPES)),
             "popular": list(itertools.product(sorted(colours), SHAPES)),
             "adversarial": list(itertools.product(sorted(colours), sorted(shapes)))}
    for name in (kind, "popular", "random"):
        pool = [p for p in pools[name] if p not in present]
        if pool:
            return pool[int(rng.integers(len(pool)))]
    return None


def existence(scene: Scene, rng: np.random.Generator, kind: str = "random", answer: str | None = None
              ) -> tuple[str, str]:
    """``("Is there a red disk in the image?", "yes"|"no")``; negatives drawn by ``kind`` (POPE's three)."""
    answer = answer or ("yes" if rng.random() < 0.5 else "no")
    if answer == "yes":
        o = scene.objects[int(rng.integers(len(scene.objects)))]
        colour, shape = o.colour, o.shape
    else:
        colour, shape = _absent(scene, rng, kind)
    return f"Is there a {colour} {shape} in the image?", answer


def colour_question(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    options = [(d, o) for o in scene.objects for d in _unique_descriptions(scene, o) if o.colour not in d]
    if not options:
        return None
    d, o = options[int(rng.integers(len(options)))]
    return f"What color is the {d}?", o.colour


def shape_question(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    options = [o for o in scene.objects if len(scene.matching(colour=o.colour)) == 1]
    if not options:
        return None
    o = options[int(rng.integers(len(options)))]
    return f"What shape is the {o.colour} object?", o.shape


def count_question(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    if rng.random() < 0.5:
        shape = str(rng.choice(SHAPES))
        return f"How many {shape}s are there?", str(len(scene.matching(shape=shape)))
    colour = str(rng.choice(sorted({o.colour for o in scene.objects})))
    return f"How many {colour} objects are there?", str(len(scene.matching(colour=colour)))


def size_question(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    options = [o for o in scene.objects if len(scene.matching(colour=o.colour, shape=o.shape)) == 1]
    if not options:
        return None
    o = options[int(rng.integers(len(options)))]
    return f"Is the {o.colour} {o.shape} small or large?", o.size


def relation_colour(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    """``"What color is the object left of the blue bar?"`` when exactly one object is there."""
    options = []
    for anchor in scene.objects:
        names = _unique_descriptions(scene, anchor)
        for relation in RELATIONS:
            hits = [o for o in scene.objects if o is not anchor and relation_holds(o, relation, anchor)]
            if names and len(hits) == 1:
                options.append((f"What color is the object {relation} the {names[0]}?", hits[0].colour))
    return options[int(rng.integers(len(options)))] if options else None


def side_question(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    """``"Is the red disk to the left or to the right of the blue bar?"`` -> ``"left"``/``"right"``."""
    pairs = [(a, b) for a in scene.objects for b in scene.objects if a is not b
             and _unique_descriptions(scene, a) and _unique_descriptions(scene, b)
             and (relation_holds(a, "left of", b) or relation_holds(a, "right of", b))]
    if not pairs:
        return None
    a, b = pairs[int(rng.integers(len(pairs)))]
    side = "left" if relation_holds(a, "left of", b) else "right"
    return (f"Is the {_unique_descriptions(scene, a)[0]} to the left or to the right of the "
            f"{_unique_descriptions(scene, b)[0]}?", side)


def choice(scene: Scene, rng: np.random.Generator, n_options: int = 4, cn: bool = False
           ) -> tuple[str, list[str], int] | None:
    """A multiple-choice question: ``(question, options, index of the right one)``.

    Kinds: the colour of a uniquely described shape, the shape of a uniquely coloured object, or a count.
    ``cn``: the question and options in Chinese.
    """
    kind = int(rng.integers(3))
    if kind == 0:
        options = [o for o in scene.objects if len(scene.matching(shape=o.shape)) == 1]
        if not options:
            return None
        o = options[int(rng.integers(len(options)))]
        right, pool = o.colour, list(COLOURS)
        question = f"图中的{SHAPE_CN[o.shape]}是什么颜色？" if cn else f"What color is the {o.shape}?"
        names = COLOUR_CN if cn else None
    elif kind == 1:
        options = [o for o in scene.objects if len(scene.matching(colour=o.colour)) == 1]
        if not options:
            return None
        o = options[int(rng.integers(len(options)))]
        right, pool = o.shape, list(SHAPES)
        question = f"图中{COLOUR_CN[o.colour]}的物体是什么形状？" if cn else f"What shape is the {o.colour} object?"
        names = SHAPE_CN if cn else None
    else:
        shape = str(rng.choice(SHAPES))
        right, pool = str(len(scene.matching(shape=shape))), [str(k) for k in range(6)]
        question = f"图中有几个{SHAPE_CN[shape]}？" if cn else f"How many {shape}s are in the image?"
        names = None
    wrong = [p for p in pool if p != right]
    picked = [wrong[int(i)] for i in rng.permutation(len(wrong))[:n_options - 1]] + [right]
    order = rng.permutation(n_options)
    options = [picked[int(i)] for i in order]
    if names:
        options = [names[o] for o in options]
    return question, options, int(np.nonzero(order == n_options - 1)[0][0])


def digit_question(scene: Scene, rng: np.random.Generator) -> tuple[str, str, list[str]] | None:
    """``("what number is written on the red sign?", "7", OCR tokens)`` for a scene with signs of distinct colours."""
    colours = [c for _, _, _, c in scene.digits]
    options = [s for s in scene.digits if colours.count(s[3]) == 1]
    if not options:
        return None
    x, y, digit, colour = options[int(rng.integers(len(options)))]
    return f"what number is written on the {colour} sign?", str(digit), [str(d) for _, _, d, _ in scene.digits]


def yes_no_pair(scene: Scene, rng: np.random.Generator, category: str) -> tuple[str, str] | None:
    """MME's pair for one image and category (existence, count, color, position): a question whose answer
    is "Yes" and one whose answer is "No", each ending with MME's "Please answer yes or no."."""
    tail = " Please answer yes or no."
    if category == "existence":
        yes, _ = existence(scene, rng, "random", "yes")
        no, _ = existence(scene, rng, "adversarial", "no")
        return yes.replace("the image", "this image") + tail, no.replace("the image", "this image") + tail
    if category == "count":
        shape = str(rng.choice(sorted({o.shape for o in scene.objects})))
        n = len(scene.matching(shape=shape))
        wrong = n + (1 if n == 1 or rng.random() < 0.5 else -1)
        return (f"Are there {n} {shape}{'s' if n > 1 else ''} in this image?{tail}",
                f"Are there {wrong} {shape}{'s' if wrong > 1 else ''} in this image?{tail}")
    if category == "color":
        options = [o for o in scene.objects if len(scene.matching(shape=o.shape)) == 1]
        if not options:
            return None
        o = options[int(rng.integers(len(options)))]
        other = str(rng.choice([c for c in COLOURS if c != o.colour]))
        return f"Is the {o.shape} {o.colour}?{tail}", f"Is the {o.shape} {other}?{tail}"
    if category == "position":
        opposite = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
        pairs = [(a, r, b) for a in scene.objects for b in scene.objects for r in RELATIONS if a is not b
                 and relation_holds(a, r, b) and _unique_descriptions(scene, a) and _unique_descriptions(scene, b)]
        if not pairs:
            return None
        a, r, b = pairs[int(rng.integers(len(pairs)))]
        da, db = _unique_descriptions(scene, a)[0], _unique_descriptions(scene, b)[0]
        return f"Is the {da} {r} the {db}?{tail}", f"Is the {da} {opposite[r]} the {db}?{tail}"
    raise ValueError(f"unknown MME category {category!r}; micro MME has existence, count, color, position")
