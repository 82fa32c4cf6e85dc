"""A scripted lmms-eval model, and the subprocess driver the metric-contract tests run.

The model answers every request from a table keyed by ``(task, doc_id)`` and raises on a request
it has no answer for, so a test knows exactly which answers lmms-eval scored. It records what it
was asked (prompt, generation settings, image sizes) for the tests to inspect.

lmms-eval is imported only inside :func:`scripted_lmm_class` and :func:`main`: importing it
installs a process-wide warnings filter and resets loguru, so the tests run this file in a
subprocess::

    python tests/scripted_lmm.py SCENARIOS.json RESULTS.json

``SCENARIOS.json``: ``{"include_path": str, "guard_api": bool, "scenarios": [{"name": str, "tasks": [str],
"answers": [[task, doc_id, answer], ...], "include_path": optional override}]}``. ``RESULTS.json``: ``{name: {"results":
lmms-eval's results["results"], "dataset_path": {task: its config's dataset_path}, "seen": [[task, doc_id, {"context", "gen_kwargs",
"image_sizes"}], ...], "seconds": float}, "api_calls": int, "task_dir": {...}}``
(``task_dir`` when the spec has ``check_task_dir``, see :func:`check_task_dir`); with ``guard_api``
every HTTP call through ``requests`` fails at once and is counted in ``api_calls``.
"""

from __future__ import annotations

import json
import sys
import time


def scripted_lmm_class():
    """The scripted model class (a subclass of ``lmms_eval.api.model.lmms``).

    Returns
    -------
    type
        ``ScriptedLMM(answers)`` with ``answers`` a dict ``{(task, doc_id): str}``.
    """
    from lmms_eval.api.model import lmms

    class ScriptedLMM(lmms):
        """Answers from a table; raises KeyError on an unscripted request."""

        def __init__(self, answers: dict[tuple[str, int], str]) -> None:
            super().__init__()
            self.answers = dict(answers)
            self.seen: dict[tuple[str, int], dict] = {}

        def generate_until(self, requests) -> list[str]:
            out = []
            for request in requests:
                context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
                key = (task, doc_id)
                if key not in self.answers:
                    raise KeyError(f"no scripted answer for task {task!r} doc_id {doc_id} (prompt {context!r})")
                visuals = doc_to_visual(self.task_dict[task][split][doc_id])
                self.seen[key] = {
                    "context": context,
                    "gen_kwargs": {k: v for k, v in gen_kwargs.items() if isinstance(v, (str, int, float, bool, list, type(None)))},
                    "image_sizes": [list(v.size) for v in visuals],
                }
                out.append(self.answers[key])
            return out

        def loglikelihood(self, requests):
            raise NotImplementedError("ScriptedLMM only generates")

        def generate_until_multi_round(self, requests):
            raise NotImplementedError("ScriptedLMM only generates")

    return ScriptedLMM


def run_scenarios(spec: dict) -> dict:
    """Run each scenario of ``spec`` through ``lmms_eval.evaluator.simple_evaluate``.

    Parameters
    ----------
    spec : dict
        See the module docstring.

    Returns
    -------
    dict
        ``{scenario name: {"results", "seen", "seconds"}}``.
    """
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    api_calls = []
    if spec.get("guard_api"):
        _guard_http(api_calls)
    model_class = scripted_lmm_class()
    out = {}
    for scenario in spec["scenarios"]:
        start = time.perf_counter()
        model = model_class({(t, int(d)): a for t, d, a in scenario["answers"]})
        manager = TaskManager(include_path=scenario.get("include_path", spec["include_path"]), include_defaults=False)
        result = simple_evaluate(model=model, tasks=scenario["tasks"], task_manager=manager, log_samples=False,
                                 bootstrap_iters=0)
        out[scenario["name"]] = {
            "results": result["results"],
            "dataset_path": {task: config.get("dataset_path") for task, config in result["configs"].items()},
            "seen": [[t, d, v] for (t, d), v in sorted(model.seen.items())],
            "seconds": time.perf_counter() - start,
        }
    out["api_calls"] = len(api_calls)
    if spec.get("check_task_dir"):
        out["task_dir"] = check_task_dir(spec["check_task_dir"])
    return out


def check_task_dir(task_dir: str) -> dict:
    """What lmms-eval makes of a folder of task YAMLs without loading any data.

    Parameters
    ----------
    task_dir : str
        Folder of task YAMLs.

    Returns
    -------
    dict
        ``{"indexed": [task names TaskManager finds], "import_errors": {yaml name: error}}``;
        every YAML is read in lmms-eval's "full" mode, which imports each ``!function``.
    """
    import pathlib

    from lmms_eval.tasks import TaskManager
    from lmms_eval.utils import load_yaml_config

    errors = {}
    for path in sorted(pathlib.Path(task_dir).glob("*.yaml")):
        try:
            config = load_yaml_config(yaml_path=str(path), mode="full")
            if not callable(config.get("doc_to_text")):
                errors[path.name] = f"doc_to_text is not callable: {config.get('doc_to_text')!r}"
        except Exception as error:  # reported, not raised: the test names every broken YAML
            errors[path.name] = f"{type(error).__name__}: {error}"
    manager = TaskManager(include_path=task_dir, include_defaults=False)
    return {"indexed": sorted(manager.all_tasks), "import_errors": errors}


def _guard_http(calls: list) -> None:
    """Make every ``requests`` call in this process fail at once, counting it (no API may be used)."""
    import requests

    def refuse(*args, **kwargs):
        calls.append(args[:2])
        raise requests.ConnectionError(f"HTTP refused in the metric-contract run: {args[:2]}")

    requests.post = refuse
    requests.get = refuse
    requests.Session.request = refuse


def main(argv: list[str]) -> int:
    """``python tests/scripted_lmm.py SCENARIOS.json RESULTS.json``."""
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as f:
        spec = json.load(f)
    results = run_scenarios(spec)
    with open(argv[1], "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
