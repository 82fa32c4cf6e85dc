"""The synthetic benchmarks of the micro reproduction: deterministic, disjoint splits, real schemas,
answers true by construction (checked by an interpreter written here, independent of the generator)."""

import re

import numpy as np
import pytest

from reproduce.benchmarks import all_benchmarks
from reproduce.micro import data, questions, scenes
from reproduce.micro.scenes import Obj, Scene

MICRO = [b for b in all_benchmarks() if b.micro is not None]


def test_every_benchmark_has_a_micro_builder():
    assert {b.stock for b in all_benchmarks()} == {b.stock for b in MICRO}


def _plain(rows):
    return [{k: v for k, v in r.items() if k != "image"} for r in rows]


@pytest.mark.parametrize("bench", MICRO, ids=lambda b: b.stock)
def test_micro_rows_are_deterministic_in_schema_and_split_dependent(bench):
    first, again = bench.micro(6, data.SPLITS["test"]), bench.micro(6, data.SPLITS["test"])
    rows, features = first[""]
    assert bench.schema <= set(rows[0]) and set(rows[0]) == set(features)
    assert _plain(rows) == _plain(again[""][0])
    assert [r.get("image") for r in rows] == [r.get("image") for r in again[""][0]]
    other = bench.micro(6, data.SPLITS["validation"])[""][0]
    images = lambda files: [r["image"]["bytes"] for r in (files["_images"][0] if "_images" in files else files[""][0])]
    assert not set(images(first)) & set(images({"": (other, None)} if "_images" not in first
                                                else bench.micro(6, data.SPLITS["validation"])))


def test_training_seeds_never_meet_held_out_splits():
    from reproduce.micro.teach import train_seed

    assert not {train_seed(c) for c in range(10_000)} & set(data.SPLITS.values())


def test_draw_rejects_a_bad_seed():
    with pytest.raises(ValueError, match="seed -1"):
        data.draw(-1, "pope", 0, lambda s, rng: True)


# ---- an interpreter of the generated language, independent of reproduce.micro.questions ----------

_REL = "|".join(scenes.RELATIONS)
_NP = r"(?:(small|large) )?(?:(" + "|".join(scenes.COLOURS) + r") )?(" + "|".join(scenes.SHAPES) + r"|object)"


def _matches(o: Obj, size, colour, shape) -> bool:
    return (size is None or o.size == size) and (colour is None or o.colour == colour) and (shape in ("object", o.shape))


def _side(a: Obj, relation: str, b: Obj) -> bool:
    (ax1, ay1), (ax2, ay2) = (a.x, a.y), (a.x + a.w, a.y + a.h)
    (bx1, by1), (bx2, by2) = (b.x, b.y), (b.x + b.w, b.y + b.h)
    return {"left of": ax2 <= bx1, "right of": ax1 >= bx2, "above": ay2 <= by1, "below": ay1 >= by2}[relation]


def resolve(scene: Scene, expression: str) -> list[Obj]:
    """Every object an expression can name."""
    m = re.fullmatch(rf"the {_NP}(?: ({_REL}) the {_NP})?", expression)
    assert m, expression
    size, colour, shape, relation, *anchor = m.groups()
    found = [o for o in scene.objects if _matches(o, size, colour, shape)]
    if relation is None:
        return found
    anchors = [o for o in scene.objects if _matches(o, *anchor)]
    assert len(anchors) == 1, (expression, anchors)
    return [o for o in found if o is not anchors[0] and _side(o, relation, anchors[0])]


@pytest.mark.parametrize("seed", range(60))
def test_a_referring_expression_names_exactly_its_object(seed):
    rng = np.random.default_rng(seed)
    scene = scenes.make_scene(rng)
    got = questions.referring(scene, rng)
    if got is None:
        return
    expression, target = got
    assert resolve(scene, expression) == [target]


@pytest.mark.parametrize("seed", range(40))
def test_short_answers_are_true_of_the_scene(seed):
    rng = np.random.default_rng(seed)
    scene = scenes.make_scene(rng, signs=2)
    q, a = questions.existence(scene, rng, ("random", "popular", "adversarial")[seed % 3])
    colour, shape = re.fullmatch(r"Is there a (\w+) (\w+) in the image\?", q).groups()
    assert a == ("yes" if scene.matching(colour=colour, shape=shape) else "no")
    q, a = questions.count_question(scene, rng)
    m = re.fullmatch(r"How many (\w+)s are there\?|How many (\w+) objects are there\?", q)
    assert int(a) == len(scene.matching(shape=m.group(1)) if m.group(1) else scene.matching(colour=m.group(2)))
    if (got := questions.colour_question(scene, rng)) is not None:
        q, a = got
        (o,) = resolve(scene, "the " + re.fullmatch(r"What color is the (.+)\?", q).group(1))
        assert a == o.colour
    if (got := questions.relation_colour(scene, rng)) is not None:
        q, a = got
        relation, anchor = re.fullmatch(rf"What color is the object ({_REL}) the (.+)\?", q).groups()
        (b,) = resolve(scene, "the " + anchor)
        hits = [o for o in scene.objects if o is not b and _side(o, relation, b)]
        assert [o.colour for o in hits] == [a]
    if (got := questions.choice(scene, rng, 4)) is not None:
        q, options, right = got
        assert len(set(options)) == 4 and 0 <= right < 4
        if q.startswith("How many"):
            assert int(options[right]) == len(scene.matching(shape=re.search(r"many (\w+)s", q).group(1)))


def test_mme_pairs_answer_yes_then_no():
    from reproduce.benchmarks import get

    rows = get("MME").micro(8, data.SPLITS["test"])[""][0]
    assert [r["answer"] for r in rows] == ["Yes", "No"] * 4
    assert [r["category"] for r in rows[::2]] == ["existence", "count", "color", "position"]
    assert all(r["question"].endswith("Please answer yes or no.") for r in rows)


def test_rec_boxes_lie_on_the_board_and_in_the_image():
    from reproduce.benchmarks import get

    for r in get("RefCOCO val").micro(20, data.SPLITS["test"])[""][0]:
        x, y, w, h = r["bbox"]
        assert 0 <= x < x + w <= data.SIDE and 0 <= y < y + h <= data.SIDE
        assert all(v % (data.SIDE // scenes.GRID) == 0 for v in r["bbox"])


def test_render_is_deterministic_and_draws_objects_in_their_colour():
    scene = Scene((Obj("square", "red", "large", 2, 2, 2, 2),), ("moon", 0.1, 0.1, 0.5))
    a, b = np.asarray(scenes.render(scene, 128)), np.asarray(scenes.render(scene, 128))
    assert (a == b).all()
    assert tuple(a[40, 40]) == scenes.COLOURS["red"] and len(set(map(tuple, a[100:110, 100:110].reshape(-1, 3)))) > 1


def test_write_scenes(tmp_path):
    paths = data.write_scenes(tmp_path, 3)
    assert [p.name for p in paths] == ["scene_0000.png", "scene_0001.png", "scene_0002.png"]
    with pytest.raises(ValueError, match="split 'train'"):
        data.write_scenes(tmp_path, 1, split="train")


def test_the_scene_registry_forgets_the_oldest_first_and_teach_refuses_a_forgotten_image(monkeypatch):
    """A long run registers more scenes than the registry keeps: the ones just made (the chunk being
    read) must be there; an image whose scene is gone is refused, never given to training without one."""
    import numpy as np

    from reproduce.micro import data, teach
    from reproduce.micro.scenes import make_scene

    monkeypatch.setattr(data, "REGISTERED", 5)
    monkeypatch.setattr(data, "_SCENES", type(data._SCENES)())
    scenes = [make_scene(np.random.default_rng(i)) for i in range(8)]
    cells = [data.image_cell(s, f"s{i}") for i, s in enumerate(scenes)]
    assert [data.scene_of(c["bytes"]) for c in cells] == [None] * 3 + scenes[3:]
    assert teach._image(cells[-1]).micro_scene == scenes[-1]
    with pytest.raises(RuntimeError, match="'s0.png': no scene registered"):
        teach._image(cells[0])
