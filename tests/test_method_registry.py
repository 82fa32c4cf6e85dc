"""The method registry and the method interface (``d2pruner.methods.base``): what every registered
method declares, the refusals of ``cut_layers`` / ``schedule``, and a method added by ``@register``."""

from __future__ import annotations

import ast
import dataclasses
import pathlib
import re

import pytest
import torch

import d2pruner.methods as methods
from d2pruner import D2PrunerConfig, TokenLayout
from d2pruner.methods import METHODS, ItemInputs, Method, Need, get_method, kept_selection, method_names, register
from d2pruner.methods import base
from d2pruner.spec import Role

NAMES = ["cdpruner", "d2pruner", "dart", "divprune", "fastv", "mmr-d2score", "pyramiddrop", "random", "sparsevlm", "visionzip"]

#: name -> (needs, default_layer, progressive, scores_at_stage_layer), as each method's publication reads and prunes.
DECLARED = {
    "cdpruner": ({Need.VISION_FEATURES, Need.INSTRUCTION, Need.TEXT_TOWER}, 0, False, False),
    "d2pruner": ({Need.ATTENTION, Need.PRIOR}, D2PrunerConfig().prune_layer, False, False),
    "dart": ({Need.KEYS}, 2, False, False),
    "divprune": (set(), 0, False, False),
    "fastv": ({Need.ATTENTION}, 2, False, False),
    "mmr-d2score": ({Need.ATTENTION, Need.PRIOR}, 2, False, False),
    "pyramiddrop": ({Need.ATTENTION}, None, True, True),
    "random": ({Need.TOKEN_KEY}, 0, False, False),
    "sparsevlm": ({Need.RATER_ATTENTION}, None, True, False),
    "visionzip": ({Need.VISION_FEATURES, Need.CLS_ATTENTION}, 0, False, False),
}


@pytest.fixture
def registry():
    """The registry, restored after the test (methods registered in it are removed again)."""
    saved = dict(base._REGISTRY)
    yield base._REGISTRY
    base._REGISTRY.clear()
    base._REGISTRY.update(saved)


def test_the_registry_holds_every_method_once_under_its_own_name():
    assert method_names() == sorted(METHODS) == NAMES
    classes = list(METHODS.values())
    assert len(set(classes)) == len(classes) == len(NAMES)
    for name, cls in METHODS.items():
        assert issubclass(cls, Method) and dataclasses.is_dataclass(cls), name
        assert cls.__dataclass_params__.frozen, f"{name} is not a frozen dataclass"
        assert "name" in {f.name for f in dataclasses.fields(cls)}, f"{name}: name is not a dataclass field"
        m = get_method(name)
        assert type(m) is cls and m.name == name
        with pytest.raises(dataclasses.FrozenInstanceError):
            m.name = "other"  # type: ignore[misc]
    # every method class the package exports is registered, and no module exports another's name
    exported = [v for v in vars(methods).values() if isinstance(v, type) and issubclass(v, Method) and v is not Method]
    assert sorted(c.__name__ for c in exported) == sorted(c.__name__ for c in classes)


def test_declarations_match_the_methods():
    for name, (needs, layer, progressive, at_stage) in DECLARED.items():
        m = get_method(name)
        assert isinstance(m.needs, frozenset) and all(isinstance(n, Need) for n in m.needs), name
        assert set(m.needs) == needs, name
        assert (m.default_layer, m.progressive, m.scores_at_stage_layer) == (layer, progressive, at_stage), name
    # declarations are not dataclass fields: no method takes them as options
    for name, cls in METHODS.items():
        fields = {f.name for f in dataclasses.fields(cls)}
        assert not fields & {"needs", "default_layer", "progressive", "scores_at_stage_layer"}, (name, fields)
        assert not any(f.startswith("needs_") for f in fields), (name, fields)


def test_options_and_instance_dependent_declarations():
    assert get_method("random", seed=3).seed == 3
    assert (get_method("mmr-d2score", lam=0.25).lam, get_method("dart", image_pivots=2).image_pivots) == (0.25, 2)
    assert Need.TEXT_TOWER not in get_method("cdpruner", text_tower=object()).needs
    assert get_method("cdpruner", text_tower=object()).needs == {Need.VISION_FEATURES, Need.INSTRUCTION}
    cfg = D2PrunerConfig(prune_layer=5)
    assert get_method("d2pruner", config=cfg).default_layer == 5
    assert get_method("d2pruner", config=cfg).schedule(32, 576, 64) == [(0, 576), (5, 64)]
    with pytest.raises(TypeError):
        get_method("fastv", seed=1)


def test_an_unknown_name_is_refused_naming_it_and_the_known_ones():
    with pytest.raises(ValueError) as err:
        get_method("nope", seed=1)
    assert str(err.value) == f"unknown method 'nope'; available: {', '.join(NAMES)}"
    with pytest.raises(ValueError, match=r"unknown method 'FastV'; available: cdpruner, d2pruner, dart"):
        base.method_class("FastV")


@pytest.mark.parametrize("name,n_layers,prune_layer,message", [
    *[(name, 32, 0, f"method {name!r} reads the attention row of layer K-1, so it cannot prune before the LLM "
                    "(prune_layer=0)") for name in ("fastv", "mmr-d2score", "d2pruner")],
    ("dart", 32, 0, "method 'dart' reads the keys of layer K-1, so it cannot prune before the LLM (prune_layer=0)"),
    ("visionzip", 32, 2, "method 'visionzip' merges or scores vision-tower features, so it prunes before the LLM only "
                         "(prune_layer=0), not at [2]"),
    ("cdpruner", 32, 7, "method 'cdpruner' merges or scores vision-tower features, so it prunes before the LLM only "
                        "(prune_layer=0), not at [7]"),
    ("pyramiddrop", 32, 8, "'pyramiddrop' prunes at its own stages; do not pass prune_layer (got prune_layer=8)"),
    ("sparsevlm", 32, 0, "'sparsevlm' prunes at its own stages; do not pass prune_layer (got prune_layer=0)"),
    ("fastv", 32, 32, "prune_layer=32 must lie in [0, 31] for a 32-layer model"),
    ("divprune", 4, -1, "prune_layer=-1 must lie in [0, 3] for a 4-layer model"),
    ("pyramiddrop", 3, None, "pyramiddrop needs at least 4 decoder layers, the model has 3"),
    ("sparsevlm", 3, None, "sparsevlm needs at least 4 decoder layers, the model has 3"),
])
def test_cut_layers_and_schedule_refuse_naming_the_value(name, n_layers, prune_layer, message):
    m = get_method(name)
    with pytest.raises(ValueError, match=re.escape(message)):
        m.cut_layers(n_layers, prune_layer)
    with pytest.raises(ValueError, match=re.escape(message)):
        m.schedule(n_layers, 576, 64, prune_layer)


def test_schedules_at_the_default_and_at_other_points():
    want = {"fastv": [(0, 576), (2, 64)], "mmr-d2score": [(0, 576), (2, 64)], "dart": [(0, 576), (2, 64)],
            "d2pruner": [(0, 576), (2, 64)], "divprune": [(0, 64)], "random": [(0, 64)], "visionzip": [(0, 64)],
            "cdpruner": [(0, 64)]}
    for name, sched in want.items():
        assert get_method(name).schedule(32, 576, 64) == sched, name
    assert get_method("random").schedule(32, 576, 64, prune_layer=2) == [(0, 576), (2, 64)]
    assert get_method("divprune").cut_layers(32, prune_layer=5) == [5]
    assert get_method("pyramiddrop").schedule(32, 576, 192) == [(0, 576), (8, 110), (16, 55), (24, 28)]
    assert get_method("sparsevlm").schedule(32, 576, 192) == [(0, 576), (3, 353), (7, 177), (16, 89)]
    assert get_method("sparsevlm").cut_layers(4) == [1, 2, 3]
    with pytest.raises(ValueError, match="pyramiddrop cannot average 64 visual tokens per layer"):
        get_method("pyramiddrop").schedule(32, 576, 64)
    with pytest.raises(NotImplementedError, match="fastv is not progressive"):
        get_method("fastv").stage_layers(32)


def test_a_method_registered_in_a_test_is_found_by_name(registry):
    @register
    @dataclasses.dataclass(frozen=True)
    class KeepLast(Method):
        """Keeps the last ``n_keep`` tokens (a method of the test's own)."""

        offset: int = 0
        name: str = "keep-last-test"
        needs = frozenset({Need.TOKEN_KEY})
        default_layer = 0

        def select(self, items, n_keep):
            return [kept_selection(torch.arange(len(it.layout) - k - self.offset, len(it.layout) - self.offset))
                    for it, k in zip(items, n_keep)]

    m = get_method("keep-last-test", offset=1)
    assert type(m) is KeepLast and m.offset == 1
    assert "keep-last-test" in METHODS and "keep-last-test" in method_names()
    item = ItemInputs(attn=None, features=torch.zeros(9, 2), layout=TokenLayout.grid(3, 3), prior=None)
    (sel,) = m.select([item], [3])
    assert sel.kept.tolist() == [5, 6, 7] and set(sel.roles.tolist()) == {int(Role.KEPT)}
    assert m.schedule(32, 9, 3) == [(0, 3)]
    assert register(KeepLast) is KeepLast  # registering the same class again is harmless

    @dataclasses.dataclass(frozen=True)
    class Impostor(Method):
        name: str = "fastv"

    with pytest.raises(ValueError, match="method name 'fastv' is registered twice"):
        register(Impostor)
    assert METHODS["fastv"] is methods.FastVMethod
    with pytest.raises(TypeError, match="register expects a Method subclass"):
        register(int)

    class Unnamed(Method):
        pass

    with pytest.raises(TypeError, match="must set its own name"):
        register(Unnamed)


def test_the_registry_is_clean_after_a_test_registered_in_it(registry):
    assert sorted(registry) == NAMES


def test_methods_is_read_only():
    with pytest.raises(TypeError):
        METHODS["x"] = object  # type: ignore[index]


def test_the_package_re_exports_every_method_module():
    pkg = pathlib.Path(methods.__file__).parent
    modules = sorted(p.stem for p in pkg.glob("*.py") if p.stem not in {"__init__", "base", "common"})
    assert modules == ["cdpruner", "d2pruner", "dart", "divprune", "fastv", "mmr", "pyramiddrop", "random", "sparsevlm",
                       "visionzip"]
    for stem in modules:
        module = getattr(methods, stem)
        assert module.__all__, stem
        for name in module.__all__:
            assert getattr(methods, name) is getattr(module, name) and name in methods.__all__, (stem, name)


def test_methods_never_import_the_model_layer():
    pkg = pathlib.Path(methods.__file__).parent
    for path in sorted(pkg.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any(n == "d2pruner.models" or n.startswith("d2pruner.models.") for n in names), (path.name, names)
