"""The package's import graph, read from the source (every import statement, also those inside
functions, so a lazy import cannot hide a cycle): the layers of docs/architecture.md hold."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("d2pruner", "reproduce")


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def resolve(name: str, known: set[str]) -> str | None:
    """The longest known module that ``name`` (a dotted import target) is or lies in."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """Modules of this project that ``module`` imports anywhere in its source."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # ``from pkg import sub`` imports the module pkg.sub when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            hit = resolve(target, known)
            if hit is not None and hit != module:
                out.add(hit)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports_of(m, p, known) for m, p in mods.items()}


def edges_from(graph, prefix):
    return {(a, b) for a, deps in graph.items() if a == prefix or a.startswith(prefix + ".") for b in deps}


def test_the_graph_is_read(graph):
    assert "d2pruner.models.handle" in graph["d2pruner.models.llava"]
    assert "d2pruner.methods.base" in graph["d2pruner.models.handle"]
    assert "d2pruner.models.family" in graph["reproduce.adapter"]  # an import inside a function counts


def test_the_library_never_imports_reproduce(graph):
    bad = {(a, b) for a, b in edges_from(graph, "d2pruner") if b.startswith("reproduce")}
    assert not bad, bad


def test_methods_never_import_models(graph):
    bad = {(a, b) for a, b in edges_from(graph, "d2pruner.methods") if b.startswith("d2pruner.models")}
    assert not bad, bad


def test_the_model_layer_imports_only_the_method_interface(graph):
    bad = {(a, b) for a, b in edges_from(graph, "d2pruner.models")
           if b.startswith("d2pruner.methods") and b != "d2pruner.methods.base"}
    assert not bad, bad


def test_reference_and_fast_never_import_each_other(graph):
    bad = {(a, b) for a, b in edges_from(graph, "d2pruner.reference") if b.startswith("d2pruner.fast")}
    bad |= {(a, b) for a, b in edges_from(graph, "d2pruner.fast") if b.startswith("d2pruner.reference")}
    assert not bad, bad


def test_no_module_names_a_model_family_but_its_own_file(graph):
    """Family-specific code lives in the family file: no other library module compares with a family's name."""
    family_files = {"d2pruner.models.llava": "llava", "d2pruner.models.internvl": "internvl"}
    mods = modules()
    bad = []
    for module, path in mods.items():
        if module in family_files:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                names = [c.value for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
                if any(n in family_files.values() for n in names):
                    bad.append(f"{module}:{node.lineno}")
    assert not bad, bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles(graph):
    assert cycles(graph) == []
