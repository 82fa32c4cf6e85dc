"""The table specs ``reproduce/specs/<table>.json``: which tables exist, their rows and columns, the
paper's values, and which rows cannot run (and why), decided before anything runs.

The tables are the spec files in the folder (``table1``, ``table2``, ... ; a new file is a new table).
A spec names its model once (``model.id``, ``model.family``); its benchmark columns name records of
:mod:`reproduce.benchmarks` (``{"benchmark": "POPE"}``), its derived columns say how they are computed
(:func:`reproduce.tables.derived_values`).

>>> TABLES[:2], load_spec("table1")["model"]["family"]
(('table1', 'table2'), 'llava')
>>> [b.task for b in benchmark_columns(load_spec("table3"))][:2]
['d2p_refcoco_bbox_rec_val', 'd2p_refcoco_bbox_rec_testA']
"""

from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
SPECS = pathlib.Path(__file__).resolve().parent / "specs"


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _order(path: pathlib.Path) -> tuple:
    beyond = json.loads(path.read_text())["paper_file"] is None  # every spec names its paper file, or null
    return beyond, _natural(path.stem)


#: The tables: the spec files of :data:`SPECS`, the paper's first, each group in natural order
#: (``table2`` before ``table10``), then the tables beyond the paper.
TABLES: tuple[str, ...] = tuple(p.stem for p in sorted(SPECS.glob("*.json"), key=_order))



def load_spec(table: str) -> dict:
    """The table spec ``reproduce/specs/<table>.json``; ``ValueError`` naming the known tables otherwise."""
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; available: {', '.join(TABLES)}")
    return json.loads((SPECS / f"{table}.json").read_text())


def family_models() -> dict[str, str]:
    """Model family -> the model id the table specs give it (each family one model).

    >>> family_models()["llava"]
    'llava-hf/llava-1.5-7b-hf'
    """
    out: dict[str, str] = {}
    for table in TABLES:
        model = load_spec(table)["model"]
        if out.setdefault(model["family"], model["id"]) != model["id"]:
            raise ValueError(f"the specs give family {model['family']!r} two models: {out[model['family']]!r}, {model['id']!r}")
    return out


def model_choice(spec: dict, model_path: str | None = None, smoke: bool = False, micro: bool = False) -> dict:
    """The model a run of the table loads and which weights those are: ``{"model", "prior", "weights"}``.

    By default the spec's ``model.id`` (for InternVL-2.5 the MPO build, ``model.weights`` says so). A
    ``--model PATH`` folder written by :mod:`d2pruner.models.convert_internvl` (its ``conversion.json``
    complete) is the spec's ``model.base``: the paper's base weights, with the base prior as default.
    Any other folder is named as a local folder. Every table's heading and every cell's provenance
    carry the ``weights`` sentence.

    >>> spec = load_spec("table3")
    >>> model_choice(spec)["weights"][:60]
    'OpenGVLab/InternVL2_5-8B-MPO-hf: MPO: the transformers-nativ'
    >>> model_choice(spec, "/no/such/folder")["weights"][:31]
    'local folder /no/such/folder (g'

    >>> model_choice(spec, smoke=True)["weights"]
    'tiny_internvl (tiny random weights)'
    """
    from d2pruner.models.convert_internvl import conversion_record

    mspec = spec["model"]
    if smoke:
        model = spec["smoke"]["model"]
        return {"model": model, "prior": None, "weights": f"{model} (tiny random weights)"}
    if micro:
        folder = micro_checkpoint(spec)
        where = folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder
        return {"model": str(folder), "prior": str(folder / "prior.json"),
                "weights": f"micro {spec['micro']['model']} trained here on synthetic scenes ({where}, model card "
                           "README.md there): micro-model numbers, not the paper's"}
    if model_path is None:
        words = f"{mspec['id']}: {mspec['weights']}" if mspec.get("weights") else mspec["id"]
        return {"model": mspec["id"], "prior": mspec["prior"], "weights": words}
    record = conversion_record(model_path)
    base = mspec.get("base")
    if record is not None and base is not None:
        return {"model": str(model_path), "prior": base["prior"],
                "weights": f"{base['id']}: {base['weights']} (folder {model_path}, from {record['source']} by "
                           f"{record['converter']})"}
    return {"model": str(model_path), "prior": mspec["prior"],
            "weights": f"local folder {model_path} (given with --model; not a conversion by d2pruner.models.convert_internvl)"}


def paper_values(spec: dict) -> dict[tuple[str, str, str], float | None]:
    """``(method, budget, benchmark) -> value`` from paper_tables (None where the paper's cell is unknown);
    empty for a table beyond the paper (``"paper_file": null``, with its ``beyond_paper`` note)."""
    if spec["paper_file"] is None:
        return {}
    with open(ROOT / spec["paper_file"], encoding="utf-8") as f:
        return {(r["method"], r["budget"], r["benchmark"]): None if r["value"] == "unknown" else float(r["value"])
                for r in csv.DictReader(f)}


def benchmark_columns(spec: dict) -> list:
    """The benchmark records (:class:`reproduce.benchmarks.Benchmark`) of the spec's non-derived columns,
    in order; ``ValueError`` naming a column that no record has."""
    from reproduce import benchmarks

    return [benchmarks.get(c["benchmark"]) for c in spec["columns"] if "derived" not in c]


@dataclasses.dataclass(frozen=True)
class Row:
    method: str
    budget: str
    key: str | None  # the method's registered name (d2pruner.methods); None for the unpruned model
    run_budget: str | None = None  # the budget the model is run at, when not ``budget`` (micro: scaled)

    @property
    def label(self) -> str:
        return f"{self.method}@{self.budget}"

    @property
    def budget_to_run(self) -> str:
        """The budget the adapter prunes to: :attr:`run_budget`, else :attr:`budget`."""
        return self.run_budget or self.budget


def select_rows(spec: dict, smoke: bool, wanted: str | None, micro: bool = False
                ) -> tuple[list[Row], list[tuple[str, str, str]]]:
    """The rows to run and the rows marked not run (with the reason).

    ``wanted``: comma-separated ``Method@budget`` labels (``--rows``); ``ValueError`` naming unknown ones.
    ``micro``: the micro twin (every row of the spec; budgets given in tokens run at the spec's
    ``micro.budgets`` scaling, :attr:`Row.run_budget`; methods the micro model cannot feed are refused,
    :func:`micro_refusal`).

    >>> rows, skipped = select_rows(load_spec("table1"), False, "FastV@64,CDPruner@64", micro=True)
    >>> rows[0].label, rows[0].budget_to_run, skipped[0][2][:36]
    ('FastV@64', '16', 'cdpruner needs a CLIP text tower ali')
    """
    rows = spec["rows"]
    if smoke:
        rows = [{"method": m, "budget": b} for m, b in spec["smoke"]["rows"]]
    if wanted is not None:
        labels = [w.strip() for w in wanted.split(",") if w.strip()]
        known = {f"{r['method']}@{r['budget']}": r for r in spec["rows"]}
        if not labels:
            raise ValueError(f"--rows {wanted!r} names no row; rows are: {', '.join(known)}")
        bad = [w for w in labels if w not in known]
        if bad:
            raise ValueError(f"unknown rows {bad} for {spec['table']}; rows are: {', '.join(known)}")
        rows = [known[w] for w in labels]
    run, skipped = [], []
    for r in rows:
        key = spec["method_keys"][r["method"]]
        if r["method"] == "Vanilla":
            run.append(Row(r["method"], r["budget"], None))
            continue
        if key is None or not _registered(key):
            skipped.append((r["method"], r["budget"], "not implemented"))
        elif (why := row_refusal(spec, key, r["budget"])) is not None:
            skipped.append((r["method"], r["budget"], why))
        elif micro and (why := micro_refusal(spec, key, r["budget"])) is not None:
            skipped.append((r["method"], r["budget"], why))
        else:
            run.append(Row(r["method"], r["budget"], key))
    if micro:
        scale = spec["micro"].get("budgets", {})
        run = [dataclasses.replace(r, run_budget=scale.get(r.budget)) for r in run]
    return run, skipped


def micro_refusal(spec: dict, key: str, budget: str) -> str | None:
    """Why method ``key`` cannot run at the row's ``budget`` on the spec's micro model, or None: a method
    that needs a text tower the family takes from a checkpoint of its own (LLaVA's CLIP for CDPruner)
    has none aligned with the micro model's vision tower; a progressive method whose schedule cannot
    reach the (scaled) budget with the micro model's 4 layers and 80 or 144 visual tokens.

    >>> micro_refusal(load_spec("table2"), "sparsevlm", "10%")[:55]
    'on the micro model: sparsevlm cannot average 8 visual t'
    """
    from d2pruner.methods.base import Need, get_method
    from d2pruner.models.family import get_family
    from d2pruner.spec import resolve_budget
    from reproduce.adapter import parse_budget
    from reproduce.micro.models import token_regions

    method = get_method(key)
    if Need.TEXT_TOWER in method.needs and get_family(spec["model"]["family"]).text_tower_checkpoint:
        return (f"{key} needs a CLIP text tower aligned with the vision tower; the micro model's vision tower "
                "was trained here without one")
    config = json.loads((micro_checkpoint(spec) / "config.json").read_text())
    n_layers = int(config["text_config"]["num_hidden_layers"])
    n_visual = len(token_regions(spec["micro"]["model"]))
    run = parse_budget(spec["micro"].get("budgets", {}).get(budget, budget))
    try:
        method.schedule(n_layers, n_visual, resolve_budget(run, n_visual))
    except ValueError as err:
        return f"on the micro model: {err}"
    return None


def micro_checkpoint(spec: dict):
    """The shipped checkpoint folder of the spec's micro model (``spec["micro"]["model"]``: a family)."""
    from reproduce.micro.models import checkpoint_dir

    return checkpoint_dir(spec["micro"]["model"])


def _registered(key: str) -> bool:
    from d2pruner.methods.base import get_method

    try:
        get_method(key)
    except ValueError:  # no method registered under that name
        return False
    return True


def row_visual_tokens(spec: dict) -> int:
    """The visual tokens of a table row on the spec's full-size model: the family's
    :attr:`~d2pruner.models.family.ModelFamily.row_visual_tokens` (budgets given as a percentage are
    resolved against it, and the row's FLOPs are counted for it)."""
    from d2pruner.models.family import get_family

    family = get_family(spec["model"]["family"])
    if family.row_visual_tokens is None:
        raise ValueError(f"no row visual token count for model family {family.name!r}")
    return family.row_visual_tokens


def row_schedule(spec: dict, key: str | None, budget: str) -> list[tuple[int, int]]:
    """``[(layer, visual tokens from that layer on), ...]`` of a row on the spec's full-size model: the
    method's own schedule (:meth:`d2pruner.methods.base.Method.schedule`) with the model's decoder
    layers, :func:`row_visual_tokens` and the budget (``"64"`` or ``"10%"``, resolved against those
    tokens, halves rounded up); ``[(0, n_visual)]`` for the unpruned model. ``ValueError`` where the
    method cannot reach the budget.

    >>> spec = load_spec("table3")
    >>> row_schedule(spec, None, "100%"), row_schedule(spec, "d2pruner", "10%"), row_schedule(spec, "divprune", "10%")
    ([(0, 1792)], [(0, 1792), (2, 179)], [(0, 179)])
    """
    from d2pruner.flops import LMDims, paper_config
    from d2pruner.methods.base import get_method
    from d2pruner.spec import resolve_budget
    from reproduce.adapter import parse_budget

    n_visual = row_visual_tokens(spec)
    parsed = parse_budget(budget)
    if key is None or parsed is None:
        return [(0, n_visual)]
    n_layers = LMDims.from_config(paper_config(spec["model"]["id"])).layers
    return get_method(key).schedule(n_layers, n_visual, resolve_budget(parsed, n_visual))


def row_refusal(spec: dict, key: str, budget: str) -> str | None:
    """Why method ``key`` cannot run at ``budget`` on the spec's model, decided before anything runs, or None.

    Two reasons exist: the model family refuses the method (InternVL has no [CLS] attention for
    VisionZip and no CLIP text tower for CDPruner: the family's ``refusal``), or the method's own
    schedule on the full-size model cannot reach the budget (:func:`row_schedule`: a progressive
    method cannot average ``budget`` visual tokens over the layers under the equivalent-token rule,
    e.g. PyramidDrop at 128 or 64 of 576).

    >>> spec = load_spec("table1")
    >>> row_refusal(spec, "pyramiddrop", "192") is None, row_refusal(spec, "pyramiddrop", "64")[:40]
    (True, 'pyramiddrop cannot average 64 visual tok')
    >>> row_refusal(load_spec("table3"), "visionzip", "10%")[:40]
    'visionzip needs the [CLS] attention of t'
    """
    from d2pruner.methods.base import get_method
    from d2pruner.models.family import get_family

    if (why := get_family(spec["model"]["family"]).refusal(get_method(key))) is not None:
        return why
    try:
        row_schedule(spec, key, budget)
    except ValueError as err:
        return str(err)
    return None


def select_columns(spec: dict, wanted: str | None) -> list:
    """The benchmark columns to run, as :class:`reproduce.benchmarks.Benchmark` records (``--columns``:
    comma-separated benchmark names)."""
    cols = benchmark_columns(spec)
    if wanted is not None:
        names = [w.strip() for w in wanted.split(",") if w.strip()]
        known = {b.name: b for b in cols}
        if not names:
            raise ValueError(f"--columns {wanted!r} names no column; columns are: {', '.join(known)}")
        bad = [n for n in names if n not in known]
        if bad:
            raise ValueError(f"unknown columns {bad} for {spec['table']}; columns are: {', '.join(known)}")
        cols = [known[n] for n in names]
    return cols
