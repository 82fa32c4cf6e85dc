"""Metric contract of our lmms-eval task layer (``reproduce/tasks``).

Two kinds of test:

* **API and data** (no lmms-eval import): task names, dataset ids, the offline-cache check, the
  smoke files' schemas and determinism, the real and smoke YAMLs agreeing but for their data.
* **Contract** (``@pytest.mark.lmms``): one subprocess (``tests/scripted_lmm.py``) runs a scripted
  model through ``lmms_eval.evaluator.simple_evaluate`` on every smoke task twice -- all answers
  right, then a known mix -- and the tests assert the exact metric values lmms-eval reports under
  the keys the table specs read, plus the prompts our overlays send (OCR tokens, InternVL's REC
  prompt) and that MMBench never calls an API.

Expected values are worked out by hand in each test from the benchmark's definition; they are not
read back from lmms-eval.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pandas as pd
import pytest

from reproduce import benchmarks, specs
from reproduce.benchmarks import mmbench, refcoco
from reproduce.tasks import TASK_DIR, dataset_ids, missing_data, task_name
from reproduce.tasks.smoke import load_task_yaml, write_hub_cache, write_smoke_tasks
from reproduce.tasks.utils import REC_PROMPT, parse_internvl_box

ROOT = pathlib.Path(__file__).resolve().parents[1]
ALL = [b.stock for b in benchmarks.all_benchmarks()]
REC = [b.stock for b in refcoco.BENCHMARKS]
MMB = [b.stock for b in mmbench.BENCHMARKS]
N = 4
EXACT = dict(abs=1e-12, rel=0)  # "exact" for sums of a few binary fractions


def _spec_benchmarks():
    """``(table, benchmark record)`` of every benchmark column of every table spec."""
    return [(t, b) for t in specs.TABLES for b in specs.benchmark_columns(specs.load_spec(t))]


# ---------------------------------------------------------------------------------------------
# API
# ---------------------------------------------------------------------------------------------


def test_every_spec_column_has_an_overlay_task():
    columns = _spec_benchmarks()
    assert columns, "no spec column names a benchmark"
    for _, bench in columns:
        assert task_name(bench.stock) == bench.task == f"d2p_{bench.stock}"
        assert (TASK_DIR / f"{bench.task}.yaml").is_file(), bench.task
        assert load_task_yaml(TASK_DIR / f"{bench.task}.yaml")["task"] == bench.task


def test_the_overlays_cover_exactly_the_known_stock_tasks():
    names = sorted(p.stem for p in TASK_DIR.glob("*.yaml"))
    assert names == sorted(task_name(s) for s in ALL)
    assert len(ALL) == len(set(ALL)) == len({b.name for b in benchmarks.all_benchmarks()})


@pytest.mark.parametrize("bad", ["vqav2_testdev", "d2p_pope", "POPE", ""])
def test_task_name_rejects_unknown_tasks_naming_them(bad):
    with pytest.raises(ValueError, match=re.escape(f"unknown stock lmms-eval task '{bad}'; known: {', '.join(sorted(ALL))}")):
        task_name(bad)
    with pytest.raises(ValueError, match=repr(bad)):
        dataset_ids(bad)
    with pytest.raises(ValueError, match=repr(bad)):
        missing_data(bad)
    with pytest.raises(ValueError, match=repr(bad)):
        write_smoke_tasks([bad], "/nonexistent/never/written")


def _stock_yaml(stock):
    """The installed lmms-eval's own YAML of a stock task, its ``include`` chain merged (without importing lmms-eval)."""
    import importlib.util

    root = pathlib.Path(importlib.util.find_spec("lmms_eval").submodule_search_locations[0]) / "tasks"

    def load(path):
        config = load_task_yaml(path)
        base = load(path.parent / config.pop("include")) if "include" in config else {}
        return {**base, **config}

    found = [c for c in map(load, root.rglob(f"{stock}.yaml")) if c.get("task") == stock]
    assert len(found) == 1, (stock, len(found))
    return found[0]


@pytest.mark.parametrize("stock", ALL)
def test_dataset_ids_are_the_ones_lmms_eval_0_7_3_uses(stock):
    bench = benchmarks.by_stock(stock)
    stock_config = _stock_yaml(stock)
    assert (bench.data[0].repo, bench.data[0].config) == (stock_config["dataset_path"],
                                                          stock_config.get("dataset_name") or "default")
    assert dataset_ids(stock) == bench.dataset_ids and all(r.startswith("lmms-lab-encoder/") for r in bench.dataset_ids)
    # ... and the ones our real YAMLs load
    config = load_task_yaml(TASK_DIR / f"{task_name(stock)}.yaml")
    assert config["dataset_path"] == bench.data[0].repo
    assert (config.get("dataset_name") or "default") == bench.data[0].config


def test_missing_data_on_an_empty_cache_lists_every_dataset(tmp_path):
    for task in ALL:
        assert missing_data(task, cache_dir=tmp_path) == dataset_ids(task)


def test_missing_data_finds_prepared_configurations(tmp_path):
    # the layout datasets uses: <org>___<snake_name>/<config>/<version>/<hash>/
    (tmp_path / "lmms-lab-encoder___pope" / "default" / "0.0.0" / "abc123").mkdir(parents=True)
    assert missing_data("pope", cache_dir=tmp_path) == []
    (tmp_path / "lmms-lab-encoder___gqa" / "testdev_balanced_instructions" / "0.0.0" / "abc").mkdir(parents=True)
    assert missing_data("gqa", cache_dir=tmp_path) == ["lmms-lab-encoder/GQA"]  # images not prepared
    (tmp_path / "lmms-lab-encoder___gqa" / "testdev_balanced_images" / "0.0.0" / "abc").mkdir(parents=True)
    assert missing_data("gqa", cache_dir=tmp_path) == []
    (tmp_path / "lmms-lab-encoder___ref_coc_oplus").mkdir()  # a folder without a prepared config
    assert missing_data("refcoco+_bbox_rec_val", cache_dir=tmp_path) == ["lmms-lab-encoder/RefCOCOplus"]


def test_missing_data_reads_hf_datasets_cache_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))
    assert missing_data("mme") == ["lmms-lab-encoder/MME"]
    (tmp_path / "lmms-lab-encoder___mme" / "default" / "0.0.0" / "h").mkdir(parents=True)
    assert missing_data("mme") == []


# ---------------------------------------------------------------------------------------------
# Smoke data
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory):
    return write_smoke_tasks(ALL, tmp_path_factory.mktemp("smoke_tasks"), n=N)


def _table(smoke_dir, stock, suffix=""):
    return pd.read_parquet(smoke_dir / f"{stock}{suffix}.parquet")


def test_smoke_writing_encodes_each_photograph_once_and_writes_only_its_files(tmp_path):
    """What keeps writing the smoke tasks cheap (every smoke run and CI job does it), without a clock: each
    sample photograph is decoded, resized and PNG-encoded once per process however many tasks, items and
    folders use it, and nothing is written but each task's data files, its YAML and its record's own files."""
    from reproduce.tasks import smoke

    smoke._png.cache_clear()
    first = write_smoke_tasks(ALL, tmp_path / "a", n=N)
    write_smoke_tasks(ALL, tmp_path / "b", n=7)
    assert smoke._png.cache_info().misses == len(smoke.SAMPLES), smoke._png.cache_info()
    want = set()
    for bench in benchmarks.all_benchmarks():
        want |= {f"{bench.stock}{d.smoke_suffix}.parquet" for d in bench.data} | {f"{bench.task}.yaml"}
        want |= set(bench.smoke_files)
    assert sorted(p.name for p in first.iterdir()) == sorted(want)


def test_smoke_files_are_byte_identical_across_calls_and_folders(smoke_dir, tmp_path):
    again = write_smoke_tasks(ALL, tmp_path, n=N)
    names = sorted(p.name for p in smoke_dir.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (smoke_dir / name).read_bytes() == (again / name).read_bytes(), name


@pytest.mark.parametrize("n", [2, 3, 7])
def test_smoke_item_counts(tmp_path, n):
    path = write_smoke_tasks(ALL, tmp_path, n=n)
    for stock in ALL:
        rows = len(_table(path, stock))
        assert rows == (2 * ((n + 1) // 2) if stock == "mme" else n), stock
    mmb = _table(path, "mmbench_en_dev")
    assert mmb["index"].tolist() == list(range(n - 1)) + [1_000_000 + n - 2]
    assert len(_rec_docs(path, "refcoco_bbox_rec_val")) == n + n // 2


def test_smoke_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n=1"):
        write_smoke_tasks(["pope"], tmp_path, n=1)
    with pytest.raises(ValueError, match="'pope'"):
        write_smoke_tasks("pope", tmp_path)


@pytest.mark.parametrize("stock", ALL)
def test_smoke_files_have_the_real_columns(smoke_dir, stock):
    schema = benchmarks.by_stock(stock).schema
    table = _table(smoke_dir, stock)
    assert schema and schema <= set(table.columns), schema - set(table.columns)
    assert len(table) == N
    if "image" in table.columns:
        assert all(isinstance(v["bytes"], bytes) and v["bytes"][:4] == b"\x89PNG" for v in table["image"])
    for data in benchmarks.by_stock(stock).data:
        assert (smoke_dir / f"{stock}{data.smoke_suffix}.parquet").is_file(), data
    if stock == "gqa":
        images = _table(smoke_dir, stock, "_images")
        assert set(images.columns) == {"id", "image"}
        assert set(table["imageId"]) <= set(images["id"])


def test_smoke_benchmark_semantics(smoke_dir):
    pope = _table(smoke_dir, "pope")
    assert pope["answer"].tolist() == ["yes", "no", "yes", "no"]
    mme = _table(smoke_dir, "mme")
    assert mme["question_id"].value_counts().eq(2).all()  # MME pairs
    assert all(sorted(g) == ["No", "Yes"] for _, g in mme.groupby("question_id")["answer"])
    assert mme["question"].str.endswith(" Please answer yes or no.").all()
    sqa = _table(smoke_dir, "scienceqa_img")
    assert all(0 <= a < len(c) for a, c in zip(sqa["answer"], sqa["choices"]))
    vqa = _table(smoke_dir, "vqav2_val")
    assert all(len(a) == 10 and [x["answer_id"] for x in a] == list(range(1, 11)) for a in vqa["answers"])
    textvqa = _table(smoke_dir, "textvqa_val")
    assert all(len(a) == 10 for a in textvqa["answers"]) and all(len(t) >= 1 for t in textvqa["ocr_tokens"])
    for stock in MMB:
        mmb = _table(smoke_dir, stock)
        assert mmb["answer"].isin(list("ABCD")).all()
        assert mmb["index"].tolist() == [0, 1, 2, 1_000_002]
        base, variant = mmb.iloc[2], mmb.iloc[3]
        assert base[base["answer"]] == variant[variant["answer"]]  # the same right option, moved
        assert base["answer"] != variant["answer"]


@pytest.mark.parametrize("stock", REC)
def test_smoke_rec_boxes_are_inside_their_images_in_pixels(smoke_dir, stock):
    from PIL import Image
    import io

    table = _table(smoke_dir, stock)
    for _, row in table.iterrows():
        width, height = Image.open(io.BytesIO(row["image"]["bytes"])).size
        x, y, w, h = row["bbox"]
        assert 0 <= x < x + w <= width and 0 <= y < y + h <= height, (row["question_id"], row["bbox"], (width, height))
        assert 1000 % width == 0 and 1000 % height == 0  # exact InternVL [0, 1000] twins
        assert 1 <= len(row["answer"]) <= 2


@pytest.mark.parametrize("stock", ALL)
def test_smoke_yaml_is_the_real_yaml_but_for_its_data(smoke_dir, stock):
    name = task_name(stock)
    real = load_task_yaml(TASK_DIR / f"{name}.yaml")
    smoke = load_task_yaml(smoke_dir / f"{name}.yaml")
    assert smoke["task"] == real["task"] == name
    assert smoke["dataset_path"] == "parquet"
    assert smoke["dataset_kwargs"] == {"data_files": {real["test_split"]: f"{stock}.parquet"}}
    overrides = benchmarks.by_stock(stock).smoke_overrides
    data_keys = {"dataset_path", "dataset_name", "dataset_kwargs"} | set(overrides)
    assert {k: v for k, v in smoke.items() if k not in data_keys} == {k: v for k, v in real.items() if k not in data_keys}
    assert all(type(smoke[k]) is type(real[k]) for k in smoke if k in real)  # FunctionRef stays a tag
    for key, value in overrides.items():
        assert smoke[key] == value and type(smoke[key]) is type(value)
    for name in benchmarks.by_stock(stock).smoke_files:
        assert (smoke_dir / name).is_file()


def test_real_yamls_differ_from_stock_only_where_documented():
    for stock in ALL:
        config = load_task_yaml(TASK_DIR / f"{task_name(stock)}.yaml")
        assert config["generation_kwargs"]["temperature"] == 0 and config["generation_kwargs"]["do_sample"] is False
        assert "token" not in (config.get("dataset_kwargs") or {})
        assert all(m["metric"] != "submission" for m in config["metric_list"])
    textvqa = load_task_yaml(TASK_DIR / "d2p_textvqa_val.yaml")
    assert textvqa["lmms_eval_specific_kwargs"]["default"]["ocr"] is True
    for lang in ("en", "cn"):
        mmb = load_task_yaml(TASK_DIR / f"d2p_mmbench_{lang}_dev.yaml")
        assert [m["aggregation"] for m in mmb["metric_list"]] == [f"reproduce.tasks.utils.mmbench_{lang}_dev_static_score"]
    recs = [load_task_yaml(TASK_DIR / f"{task_name(s)}.yaml") for s in REC]
    varying = {"task", "dataset_path", "test_split"}
    first = {k: v for k, v in recs[0].items() if k not in varying}
    for config in recs:
        assert {k: v for k, v in config.items() if k not in varying} == first
        assert config["doc_to_text"] == "reproduce.tasks.utils.rec_internvl_doc_to_text"


# ---------------------------------------------------------------------------------------------
# Contract: lmms-eval on the smoke tasks with a scripted model
# ---------------------------------------------------------------------------------------------


def _rec_docs(smoke_dir, stock):
    """The REC docs in lmms-eval's order after its process_docs: one per expression."""
    from PIL import Image
    import io

    docs = []
    for _, row in _table(smoke_dir, stock).iterrows():
        width, height = Image.open(io.BytesIO(row["image"]["bytes"])).size
        x, y, w, h = row["bbox"]
        box = [x * 1000 / width, y * 1000 / height, (x + w) * 1000 / width, (y + h) * 1000 / height]
        docs += [{"expression": e, "box1000": [int(v) for v in box]} for e in row["answer"]]
    return docs


def _fmt(box):
    return "<box>[[{}, {}, {}, {}]]</box>".format(*box)


def _shift_x(box, fraction):
    dx = (box[2] - box[0]) * fraction
    return [box[0] + dx, box[1], box[2] + dx, box[3]]


def _answers(smoke_dir, scenario):
    """``[[task, doc_id, answer], ...]`` for one scenario ("right" or "mixed")."""
    right = scenario == "right"
    out = []

    def add(stock, answers):
        out.extend([task_name(stock), i, a] for i, a in enumerate(answers))

    add("pope", ["yes", "no", "yes", "no"] if right else ["yes", "yes", "Yes", "no"])
    add("mme", ["Yes", "No", "Yes", "No"] if right else ["yes", "yes", "Yes, there is.", "No."])
    for stock in MMB:
        mmb = _table(smoke_dir, stock)
        letters = mmb["answer"].tolist()
        wrong = ["ABCD"[("ABCD".index(x) + 1) % 4] for x in letters]
        if right:
            row1 = mmb.iloc[1]
            add(stock, [letters[0], f"{letters[1]}. {row1[letters[1]]}", f"The answer is ({letters[2]}).", letters[3]])
        else:  # item 0 right; item 1 wrong; item 2 right but its circular variant wrong
            add(stock, [letters[0], wrong[1], letters[2], "I am not sure."])
    sqa = _table(smoke_dir, "scienceqa_img")
    letters = ["ABC"[a] for a in sqa["answer"]]
    if right:
        add("scienceqa_img", [letters[0], f"{letters[1]}. {sqa['choices'][1][sqa['answer'][1]]}", letters[2].lower(), letters[3]])
    else:
        add("scienceqa_img", [letters[0], "Z", "A" if letters[2] != "A" else "B", letters[3]])
    vqa = _table(smoke_dir, "vqav2_val")
    majority = vqa["multiple_choice_answer"].tolist()
    minority = [next(a["answer"] for a in row if a["answer"] != m) if i % 2 else m
                for i, (row, m) in enumerate(zip(vqa["answers"], majority))]
    if right:
        add("vqav2_val", [majority[0], majority[1].upper() + ".", majority[2], majority[3]])
    else:  # 1, 2 of 10 agree -> 0.6, none -> 0, 8 of 10 -> 1
        add("vqav2_val", [majority[0], minority[1], "zebra", majority[3]])
    textvqa = _table(smoke_dir, "textvqa_val")
    words = [a[0] for a in textvqa["answers"]]
    add("textvqa_val", words if right else ["unanswerable", words[1], "zebra", words[3]])
    gqa = _table(smoke_dir, "gqa")["answer"].tolist()
    add("gqa", gqa if right else [gqa[0].capitalize() + ".", "zebra", gqa[2], "zebra"])
    for stock in REC:
        docs = _rec_docs(smoke_dir, stock)
        boxes = [d["box1000"] for d in docs]
        if right:
            add(stock, [_fmt(b) for b in boxes])
        else:
            add(stock, [
                _fmt(boxes[0]),  # exact: IoU 1
                _fmt(_shift_x(boxes[1], 0.5)),  # half a width to the right: IoU 1/3
                "I cannot find it.",  # unparseable: lmms-eval's [0, 0, 0, 0], IoU 0
                "[[{}, {}, {}, {}]]".format(*boxes[3]),  # exact, without <box> tags: IoU 1
                _fmt([float(v) for v in boxes[4]]),  # exact, floats: IoU 1
                _fmt(_shift_x(boxes[5], 1.0)),  # a full width to the right: IoU 0
            ])
    return out


@pytest.fixture(scope="module")
def contract(smoke_dir, tmp_path_factory):
    """Run both scenarios on every smoke task in one lmms-eval subprocess; parsed results."""
    work = tmp_path_factory.mktemp("lmms_run")
    write_hub_cache(ALL, work / "cache", n=N)  # the smoke data under the real hub ids, for the real YAMLs
    scenarios = [{"name": s, "tasks": [task_name(t) for t in ALL], "answers": _answers(smoke_dir, s)}
                 for s in ("right", "mixed")]
    scenarios.append({**scenarios[0], "name": "real", "include_path": str(TASK_DIR)})
    spec = {"include_path": str(smoke_dir), "guard_api": True, "check_task_dir": str(TASK_DIR), "scenarios": scenarios}
    (work / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(work / "cache"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "OPENAI_API_URL": "http://127.0.0.1:9/never", "OPENAI_API_KEY": "none"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "scripted_lmm.py"), "spec.json", "out.json"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"lmms-eval subprocess failed (rc={proc.returncode}):\n{proc.stderr[-6000:]}")
    out = json.loads((work / "out.json").read_text())
    out["workdir"] = work
    return out


def _metric(contract, scenario, stock, key):
    results = contract[scenario]["results"][task_name(stock)]
    assert key in results, f"{key!r} not in {task_name(stock)}'s results keys {sorted(results)}"
    return results[key]


def _seen(contract, scenario, stock):
    return {d: v for t, d, v in contract[scenario]["seen"] if t == task_name(stock)}


@pytest.mark.lmms
def test_real_yamls_run_offline_from_the_datasets_cache(contract):
    """The real overlays (hub ids, GQA's hub image join) read the smoke data primed into a datasets
    cache exactly as their smoke twins read the parquet files: same prompts, same scores."""
    for stock in ALL:
        assert missing_data(stock, cache_dir=contract["workdir"] / "cache") == [], stock
        name = task_name(stock)
        assert contract["real"]["dataset_path"][name] == dataset_ids(stock)[0]
        assert contract["right"]["dataset_path"][name] == "parquet"
        assert contract["real"]["results"][name] == contract["right"]["results"][name], stock
        assert _seen(contract, "real", stock) == _seen(contract, "right", stock), stock


@pytest.mark.lmms
def test_contract_run_leaves_no_files_behind(contract):
    leftovers = sorted(p.name for p in contract["workdir"].iterdir())
    assert leftovers == ["cache", "out.json", "spec.json"], leftovers  # no submission files


@pytest.mark.lmms
def test_every_spec_metric_key_is_reported(contract):
    for _, bench in _spec_benchmarks():
        _metric(contract, "right", bench.stock, f"{bench.metric},none")


@pytest.mark.lmms
def test_lmms_eval_indexes_and_imports_every_real_task(contract):
    assert contract["task_dir"]["import_errors"] == {}
    assert contract["task_dir"]["indexed"] == sorted(task_name(s) for s in ALL)


@pytest.mark.lmms
def test_spec_scales_put_all_right_answers_at_100(contract):
    for table, bench in _spec_benchmarks():
        if bench.stock != "mme":  # MME: 200 per category, checked below
            value = _metric(contract, "right", bench.stock, f"{bench.metric},none")
            assert value * bench.scale == pytest.approx(100, **EXACT), (table, bench.name)


@pytest.mark.lmms
def test_pope_f1(contract):
    assert _metric(contract, "right", "pope", "pope_f1_score,none") == 1.0
    assert _metric(contract, "right", "pope", "pope_accuracy,none") == 1.0
    # yes->yes, no->yes, yes->"Yes" (lower-cased: yes), no->no: TP 2, FP 1, FN 0, TN 1
    assert _metric(contract, "mixed", "pope", "pope_precision,none") == pytest.approx(2 / 3, **EXACT)
    assert _metric(contract, "mixed", "pope", "pope_recall,none") == 1.0
    assert _metric(contract, "mixed", "pope", "pope_f1_score,none") == pytest.approx(0.8, **EXACT)
    assert _metric(contract, "mixed", "pope", "pope_accuracy,none") == 0.75


@pytest.mark.lmms
def test_mme_pairs_accuracy_plus(contract):
    assert _metric(contract, "right", "mme", "mme_perception_score,none") == 200.0  # one category: 100 + 100
    assert _metric(contract, "right", "mme", "mme_cognition_score,none") == 200.0
    # existence pair half right: acc 50 + acc+ 0; "Yes, there is." / "No." parse as yes / no
    assert _metric(contract, "mixed", "mme", "mme_perception_score,none") == 50.0
    assert _metric(contract, "mixed", "mme", "mme_cognition_score,none") == 200.0
    prompts = [v["context"] for v in _seen(contract, "right", "mme").values()]
    assert all(p.endswith("?\nAnswer the question using a single word or phrase.") for p in prompts), prompts


@pytest.mark.lmms
@pytest.mark.parametrize("stock", MMB)
def test_mmbench_offline_static_scoring(contract, stock):
    # right: "B", "B. text", "The answer is (B)." all parse; 3 main questions
    assert _metric(contract, "right", stock, "gpt_eval_score,none") == 100.0
    # item 0 right, item 1 wrong, item 2 right but its circular variant unparseable -> 1 of 3
    assert _metric(contract, "mixed", stock, "gpt_eval_score,none") == pytest.approx(100 / 3, **EXACT)
    assert contract["api_calls"] == 0
    prompt = _seen(contract, "right", stock)[0]["context"]
    lines = prompt.split("\n")
    assert [ln[:3] for ln in lines[-5:-1]] == ["A. ", "B. ", "C. ", "D. "], prompt  # one option per line
    assert lines[-1] == {"mmbench_en_dev": "Answer with the option's letter from the given choices directly.",
                         "mmbench_cn_dev": "请直接回答选项字母。"}[stock]
    assert "There are several options" not in prompt


@pytest.mark.lmms
def test_scienceqa_letter_parsing(contract):
    assert _metric(contract, "right", "scienceqa_img", "exact_match,none") == 1.0
    assert _metric(contract, "mixed", "scienceqa_img", "exact_match,none") == 0.5


@pytest.mark.lmms
def test_vqav2_accuracy(contract):
    assert _metric(contract, "right", "vqav2_val", "exact_match,none") == pytest.approx(1.0, **EXACT)
    # per question: 1, 2-of-10 agree -> (2 * 1/3 + 8 * 2/3) / 10 = 0.6, 0, 1
    assert _metric(contract, "mixed", "vqav2_val", "exact_match,none") == pytest.approx(2.6 / 4, **EXACT)


@pytest.mark.lmms
def test_textvqa_accuracy_and_ocr_prompt(contract, smoke_dir):
    assert _metric(contract, "right", "textvqa_val", "exact_match,none") == pytest.approx(1.0, **EXACT)
    # "unanswerable" given by 1 of 10: (9 * 1/3 + 0) / 10 = 0.3; then 1, 0, 1
    assert _metric(contract, "mixed", "textvqa_val", "exact_match,none") == pytest.approx(2.3 / 4, **EXACT)
    textvqa = _table(smoke_dir, "textvqa_val")
    seen = _seen(contract, "right", "textvqa_val")
    for i, row in textvqa.iterrows():
        question = row["question"][0].upper() + row["question"][1:]
        expected = f"{question}\nReference OCR token: {', '.join(row['ocr_tokens'])}\nAnswer the question using a single word or phrase."
        assert seen[i]["context"] == expected


@pytest.mark.lmms
def test_gqa_local_join_and_exact_match(contract, smoke_dir):
    assert _metric(contract, "right", "gqa", "exact_match,none") == 1.0
    assert _metric(contract, "mixed", "gqa", "exact_match,none") == 0.5  # "White." counts (case, punctuation)
    images = _table(smoke_dir, "gqa", "_images").set_index("id")["image"]
    questions = _table(smoke_dir, "gqa")
    seen = _seen(contract, "right", "gqa")
    from PIL import Image
    import io

    for i, image_id in enumerate(questions["imageId"]):
        assert seen[i]["image_sizes"] == [list(Image.open(io.BytesIO(images[image_id]["bytes"])).size)]


@pytest.mark.lmms
@pytest.mark.parametrize("stock", REC)
def test_rec_internvl_boxes(contract, smoke_dir, stock):
    assert _metric(contract, "right", stock, "refcoco_ACC@0.5,none") == 1.0
    assert _metric(contract, "right", stock, "refcoco_IoU,none") == pytest.approx(1.0, **EXACT)
    # IoU per doc: 1, 1/3, 0 (unparseable), 1, 1, 0
    assert _metric(contract, "mixed", stock, "refcoco_ACC@0.5,none") == pytest.approx(3 / 6, **EXACT)
    assert _metric(contract, "mixed", stock, "refcoco_ACC@0.3,none") == pytest.approx(4 / 6, **EXACT)
    assert _metric(contract, "mixed", stock, "refcoco_IoU,none") == pytest.approx((3 + 1 / 3) / 6, **EXACT)
    seen = _seen(contract, "right", stock)
    docs = _rec_docs(smoke_dir, stock)
    assert sorted(seen) == list(range(len(docs)))
    for i, doc in enumerate(docs):
        assert seen[i]["context"] == REC_PROMPT.format(doc["expression"])
        assert seen[i]["gen_kwargs"]["max_new_tokens"] == 100


@pytest.mark.lmms
def test_generation_settings_reach_the_model(contract):
    for stock in ALL:
        config = load_task_yaml(TASK_DIR / f"{task_name(stock)}.yaml")
        for doc_id, seen in _seen(contract, "right", stock).items():
            for key, value in config["generation_kwargs"].items():
                assert seen["gen_kwargs"][key] == value, (stock, doc_id, key)


def test_parse_internvl_box_reads_only_four_number_boxes():
    assert parse_internvl_box("<box>[[1, 2, 3]]</box>") is None
    assert parse_internvl_box("<box>[[1, 2, 3, 4]]</box> [[9, 9, 9, 9]]") == [1.0, 2.0, 3.0, 4.0]
    assert parse_internvl_box("see [[9, 8, 7, 6]] <box>[[1, 2, 3, 4]]</box>") == [1.0, 2.0, 3.0, 4.0]
    assert parse_internvl_box("[[-5, 0, 1000.5, 999]]") == [-5.0, 0.0, 1000.5, 999.0]
