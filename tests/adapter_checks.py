"""Checks of the lmms-eval adapter on the tiny models, run by tests/test_adapter.py in a subprocess
(importing lmms-eval changes process-wide logging and warning filters).

Each ``check_*`` function raises on failure; ``python tests/adapter_checks.py NAME`` runs one.
"""

from __future__ import annotations

import json
import pathlib
import sys
import tempfile
import types

from PIL import Image

from reproduce.adapter import adapter_class

GEN = {"until": ["\n\n"], "max_new_tokens": 6}


def requests(n: int, gen: dict = GEN, task: str = "t"):
    def to_visual(doc):
        return doc["images"]
    return [types.SimpleNamespace(args=(f"What is shown {i}?", dict(gen), to_visual, i, task, "test")) for i in range(n)]


def docs(n: int, images_per_doc: int = 1) -> dict:
    return {"t": {"test": [{"images": [Image.new("RGB", (40 + 13 * i, 30 + 5 * j), (40 * i % 255, 90, 20 * j))
                                       for j in range(images_per_doc)]} for i in range(n)]}}


def model(family: str, **kw):
    lm = adapter_class()(pretrained=f"tiny_{family}", dtype="float32", max_tiles=4, **kw)
    lm.task_dict = docs(6)
    return lm


def check_batches_give_the_answers_of_single_requests():
    for family, method, budget in (("llava", "none", None), ("llava", "divprune", "32"), ("internvl", "d2pruner", "10%")):
        one = model(family, method=method, budget=budget, batch_size=1).generate_until(requests(4))
        three = model(family, method=method, budget=budget, batch_size=3).generate_until(requests(4))
        assert one == three, (family, method, one, three)
        assert len(set(one)) > 1, one  # the tiny models do not answer everything alike


def check_stop_strings_cut_the_answer():
    lm = model("llava", method="fastv", budget="64")
    raw = lm.generate_until(requests(3, {"until": [], "max_new_tokens": 8}))
    stop = next(ch for text in raw for ch in text[1:] if ch.strip())
    cut = lm.generate_until(requests(3, {"until": [stop], "max_new_tokens": 8}))
    for full, short in zip(raw, cut):
        assert stop not in short and short == full.split(stop)[0].strip(), (full, short, stop)


def check_errors_are_raised_not_swallowed():
    lm = model("llava")
    for gen, message in (({"do_sample": True}, "sampling"), ({"num_beams": 3}, "num_beams=3"),
                         ({"length_penalty": 2.0}, "['length_penalty']")):
        try:
            lm.generate_until(requests(1, {**GEN, **gen}))
        except ValueError as err:
            assert message in str(err), err
        else:
            raise AssertionError(f"{gen} was accepted")
    lm.task_dict = docs(2, images_per_doc=2)
    try:
        lm.generate_until(requests(1))
    except ValueError as err:
        assert "has 2 images" in str(err), err
    else:
        raise AssertionError("two images were accepted")
    for kwargs, message in (({"budgett": 3}, "unknown model_args ['budgett']"),
                            ({"method": "fastv", "budget": "100%"}, "needs a budget below 100%"),
                            ({"budget": "ten"}, "budget 'ten'"), ({"batch_size": 0}, "batch_size=0")):
        try:
            adapter_class()(pretrained="tiny_llava", dtype="float32", **kwargs)
        except ValueError as err:
            assert message in str(err), err
        else:
            raise AssertionError(f"{kwargs} was accepted")


def check_cached_answers_are_not_recomputed():
    cache = pathlib.Path(tempfile.mkdtemp()) / "answers.jsonl"
    first = model("internvl", method="d2pruner", budget="10%", batch_size=2, cache=str(cache)).generate_until(requests(4))
    assert cache.read_text().count("\n") == 1 + 4
    again = model("internvl", method="d2pruner", budget="10%", batch_size=2, cache=str(cache))

    def refuse(*args, **kwargs):
        raise AssertionError("a cached sample was computed again")
    again.model.generate = refuse
    assert again.generate_until(requests(4)) == first
    # a crash mid-line: the cut line is dropped and only that sample is computed again
    text = cache.read_text()
    cache.write_text(text[: text.rfind("\n", 0, len(text) - 1) + 1] + '{"answer": "cut sh')
    resumed = model("internvl", method="d2pruner", budget="10%", batch_size=2, cache=str(cache))
    assert resumed.generate_until(requests(4)) == first
    lines = [json.loads(line) for line in cache.read_text().splitlines()[1:]]
    assert len(lines) == 4 and len({r["key"] for r in lines}) == 4
    try:
        model("internvl", method="fastv", budget="10%", cache=str(cache))
    except ValueError as err:
        assert "holds answers of another run" in str(err)
    else:
        raise AssertionError("a cache of another run was accepted")


def check_pruning_is_applied_and_recorded():
    cache = pathlib.Path(tempfile.mkdtemp()) / "answers.jsonl"
    model("llava", method="d2pruner", budget="64", cache=str(cache)).generate_until(requests(2))
    lines = [json.loads(line) for line in cache.read_text().splitlines()[1:]]
    assert [r["visual_tokens"] for r in lines] == [[576, 64], [576, 64]], lines


def check_every_method_of_the_tables_answers_through_the_adapter():
    """Each method a table row names, by name through the adapter, on the tiny model of each family that
    accepts it: exact budgets recorded, and CDPruner's kept tokens follow the instruction it is given."""
    from d2pruner.methods import get_method
    from d2pruner.models.family import get_family
    from reproduce.specs import TABLES, load_spec

    keys = sorted({k for t in TABLES for k in load_spec(t)["method_keys"].values() if k})
    assert {"sparsevlm", "visionzip", "cdpruner", "pyramiddrop"} <= set(keys), keys
    ran = []
    for family, budget, want in (("llava", "45%", 259), ("internvl", "45%", None)):
        for key in keys:
            if get_family(family).refusal(get_method(key)) is not None:
                continue
            cache = pathlib.Path(tempfile.mkdtemp()) / "answers.jsonl"
            answers = model(family, method=key, budget=budget, batch_size=2, cache=str(cache)).generate_until(requests(3))
            assert len(answers) == 3 and all(isinstance(a, str) for a in answers), (family, key, answers)
            lines = [json.loads(line) for line in cache.read_text().splitlines()[1:]]
            method = get_method(key)
            for r in lines:
                before, after = r["visual_tokens"]
                keep = want or int(0.45 * before + 0.5)
                if hasattr(method, "stage_budgets"):  # progressive: the last stage's count under the equivalent-token rule
                    keep = method.stage_budgets(before, keep, 4)[-1]
                assert after == keep, (family, key, r["visual_tokens"], keep)
            ran.append((family, key))
    assert ("llava", "cdpruner") in ran and ("internvl", "sparsevlm") in ran and ("llava", "visionzip") in ran, ran
    kept = []
    for question in ("What is on the left?", "How many red cats sit on the mat?"):
        lm = model("llava", method="cdpruner", budget="10%")
        handle = lm._attach()
        try:
            lm._generate([(0, "k", types.SimpleNamespace(args=(question, dict(GEN), lambda d: d["images"], 0, "t",
                                                                      "test")))], handle, *_build())
            kept.append(handle.stats[0].kept.tolist())
        finally:
            handle.remove()
    assert kept[0] != kept[1], "CDPruner's kept tokens must depend on the instruction the adapter passes"


def check_internvl_answers_end_with_the_chat_turn():
    """InternVL's generation stops at ``<|im_end|>`` as well as at the checkpoint's own end id, also where
    its generation config names none; LLaVA keeps the checkpoint's own."""
    lm = model("internvl")
    end = lm.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert lm._eos_ids() == sorted({end, lm.model.generation_config.eos_token_id}), lm._eos_ids()
    assert model("llava")._eos_ids() is None
    lm.model.generation_config.eos_token_id = None
    calls = []
    original = lm.model.generate

    def spy(**kwargs):
        calls.append(kwargs.get("eos_token_id"))
        return original(**kwargs)
    lm.model.generate = spy
    lm.generate_until(requests(3, {"until": [], "max_new_tokens": 8}))
    assert calls and all(c == [end] for c in calls), calls
    llava = model("llava")  # LLaVA's generate is left its checkpoint's own end id (no eos_token_id=None passed)
    seen = []
    plain = llava.model.generate
    llava.model.generate = lambda **kw: seen.append("eos_token_id" in kw) or plain(**kw)
    llava.generate_until(requests(2, {"until": [], "max_new_tokens": 4}))
    assert seen and not any(seen), seen


def check_measurement_does_not_change_answers():
    """The same answers with and without the measurement (d2pruner.measure: a pre-hook, a logits
    processor, a warm-up call), unpruned and pruned, both families; measured lines carry positive
    timings of one context, unmeasured lines none. No speed is asserted."""
    from d2pruner import measure

    for family, method, budget in (("llava", "none", None), ("llava", "fastv", "64"), ("internvl", "d2pruner", "10%"),
                                   ("llava", "pyramiddrop", "45%")):
        answers, lines = {}, {}
        for on in (False, True):
            cache = pathlib.Path(tempfile.mkdtemp()) / "answers.jsonl"
            lm = model(family, method=method, budget=budget, batch_size=2, cache=str(cache), measure=on)
            answers[on] = lm.generate_until(requests(3, {"until": [], "max_new_tokens": 5}))
            lines[on] = [json.loads(line) for line in cache.read_text().splitlines()[1:]]
        assert answers[False] == answers[True], (family, method, answers)
        assert [r["raw"] for r in lines[False]] == [r["raw"] for r in lines[True]], (family, method)
        assert not any("timing" in r for r in lines[False]), lines[False]
        context = measure.context_id(measure.measurement_context("cpu", "float32", 2))
        for r in lines[True]:
            t = r["timing"]
            assert t["context"] == context and t["ttft_ms"] > 0 and 1 <= t["new_tokens"] <= 5, t
            assert t["decode_ms_per_token"] is None if t["new_tokens"] == 1 else t["decode_ms_per_token"] > 0, t
            assert (t["selection_ms"] is None) == (method == "none") and t["batch"] in (1, 2), t
            assert t["peak_mib"] is None or t["peak_mib"] > 0, t


def _build():
    """The arguments after ``handle`` of the adapter's ``_generate``."""
    from d2pruner.models.loading import build_batch

    return (build_batch,)


if __name__ == "__main__":
    import time

    import traceback

    names = sys.argv[1:] or [n for n in dict(globals()) if n.startswith("check_")]
    failed = 0
    for name in names:
        start = time.time()
        try:
            globals()[name]()
        except Exception:  # report every check, then fail
            failed += 1
            print(f"FAIL {name}\n{traceback.format_exc()}", flush=True)
        else:
            print(f"ok {name} ({time.time() - start:.1f} s)", flush=True)
    sys.exit(1 if failed else 0)
