"""The lmms-eval model adapter: a LLaVA-1.5 or InternVL-2.5 checkpoint with a pruning method attached.

Registered with lmms-eval as model ``d2pruner`` through the ``lmms_eval.models`` entry point, so::

    python -m lmms_eval --model d2pruner --model_args pretrained=llava-hf/llava-1.5-7b-hf,method=d2pruner,budget=64,prior=prior.json --tasks d2p_pope --include_path reproduce/tasks

works as well as ``python -m reproduce``. What it does that lmms-eval's own ``llava_hf`` / ``internvl_hf``
do not (see the docs' evaluation notes):

* batches of ``batch_size`` requests, padded on the left (pruning keeps the last token last);
* the models' official prompts (LLaVA-1.5 ``vicuna_v1`` with images padded to a square; InternVL-2.5's
  chat template with dynamic tiles), built by each family's record;
* greedy decoding only, stop strings honoured (generation stops at them and the answer is cut there);
* any error is raised, never turned into an empty answer;
* every answer is appended to a per-sample cache file (``cache=``) as soon as its batch is done, and
  answers already there are not recomputed: a run killed at any moment resumes where it stopped.

``pretrained=tiny_<family>`` (``tiny_llava``, ``tiny_internvl``, ...) builds the family's tiny random
model (:mod:`d2pruner.models.tiny`) with its in-code processor (CPU smoke runs). Everything that
differs between model families comes from the family record (:mod:`d2pruner.models.family`).
lmms-eval is imported lazily (:func:`adapter_class`), because importing it changes process-wide
logging and warning filters.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import time
from typing import Any

import torch

from reproduce.records import file_sha256, method_settings, run_fingerprint, uses_prior  # noqa: F401 (re-exported)
from reproduce.tasks.utils import REC_PROMPT

#: A referring-expression request as the REC tasks write it; group 1 is the expression.
_REC_REQUEST = re.compile(re.escape(REC_PROMPT).replace(r"\{\}", "(.*)", 1), re.DOTALL)

__all__ = ["GREEDY_KEYS", "SampleCache", "adapter_class", "grounding_answer", "grounding_question", "manifest", "parse_budget",
           "uses_prior"]

#: The generation arguments a task may pass; anything else (sampling, beams) is refused.
GREEDY_KEYS = {"until", "max_new_tokens", "temperature", "do_sample", "num_beams", "top_p", "top_k"}
#: This process's id in the answer cache (``run`` of each line): which run computed an answer.
RUN_ID = f"{os.getpid()}-{time.time_ns()}"


def parse_budget(value: Any) -> int | float | None:
    """A budget from a table spec or model_args: ``"64"`` -> 64 tokens, ``"10%"`` -> 0.1, ``"100%"`` -> None.

    >>> parse_budget("64"), parse_budget("25%"), parse_budget("100%"), parse_budget(None)
    (64, 0.25, None, None)
    >>> parse_budget("abc")
    Traceback (most recent call last):
    ...
    ValueError: budget 'abc' is neither a token count ('64') nor a percentage ('10%')
    """
    if value is None or value == "":
        return None
    text = str(value).strip()
    try:
        if text.endswith("%"):
            pct = float(text[:-1])
            if not 0 < pct <= 100:
                raise ValueError
            return None if pct == 100 else pct / 100
        count = int(text)
        if count < 0:
            raise ValueError
        return count
    except ValueError:
        raise ValueError(f"budget {value!r} is neither a token count ('64') nor a percentage ('10%')") from None


def process_device(device: str | None) -> str:
    """The device of this process: ``cuda`` (default when available) becomes ``cuda:LOCAL_RANK`` when
    several processes share the machine (``accelerate launch`` / ``torchrun``: one GPU per process).

    >>> process_device("cpu")
    'cpu'
    """
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    check_device(device)
    if str(device) == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return str(device)


def check_device(device: str) -> None:
    """``ValueError`` naming ``device`` when this machine cannot run on it (CUDA asked for, none available;
    a GPU index beyond the visible ones).

    >>> check_device("cpu")
    """
    from d2pruner.models.loading import device_problem

    why = device_problem(str(device))
    if why:
        raise ValueError(why)


class SampleCache:
    """Answers of one (model, method, budget) run, one JSON line per sample, appended and synced per batch.

    ``fingerprint`` identifies the run; a cache file written by another run is refused rather than mixed.
    A line cut short by a crash (the last, without its newline) is dropped on opening; any other line that
    is not JSON stops with :class:`reproduce.records.CorruptFile` naming the file and the line.

    >>> import tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "answers.jsonl"
    >>> cache = SampleCache(path, {"method": "fastv"})
    >>> cache.add([{"key": "a", "answer": "yes"}]); cache.get("a")["answer"]
    'yes'
    >>> len(SampleCache(path, {"method": "fastv"}))
    1
    >>> SampleCache(path, {"method": "random"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: ...answers.jsonl holds answers of another run ({'method': 'fastv'}), not of {'method': 'random'}; use another cache path
    """

    def __init__(self, path: str | os.PathLike, fingerprint: dict) -> None:
        self.path = pathlib.Path(path)
        self.fingerprint = json.loads(json.dumps(fingerprint))
        self.records: dict[str, dict] = {}
        if self.path.exists():
            raw = self.path.read_bytes()
            if raw and not raw.endswith(b"\n"):  # killed mid-line: keep only the complete lines
                raw = raw[: raw.rfind(b"\n") + 1]
                self.path.write_bytes(raw)
            lines = raw.decode().splitlines()
            if lines:
                from reproduce.records import json_line  # names the file and line of a corrupt one

                head = json_line(self.path, 1, lines[0])
                if head.get("fingerprint") != self.fingerprint:
                    raise ValueError(f"{self.path} holds answers of another run ({head.get('fingerprint')}), "
                                     f"not of {self.fingerprint}; use another cache path")
                for n, line in enumerate(lines[1:], start=2):
                    record = json_line(self.path, n, line)
                    self.records[record["key"]] = record
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists() or self.path.stat().st_size == 0:
            self._append([{"fingerprint": self.fingerprint}])

    def __len__(self) -> int:
        return len(self.records)

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def add(self, records: list[dict]) -> None:
        for record in records:
            if record["key"] in self.records:
                raise ValueError(f"sample {record['key']} is already in {self.path}")
        self._append(records)
        self.records.update((r["key"], r) for r in records)

    def _append(self, records: list[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())


def sample_key(task: str, split: str, doc_id: int, context: str, gen_kwargs: dict) -> str:
    """A stable id of one request: its task, split, document, prompt and generation arguments."""
    payload = json.dumps([task, split, int(doc_id), context, {k: gen_kwargs[k] for k in sorted(gen_kwargs)}],
                         default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _greedy_settings(gen_kwargs: dict, where: str) -> tuple[list[str], int]:
    unknown = sorted(set(gen_kwargs) - GREEDY_KEYS)
    if unknown:
        raise ValueError(f"{where}: generation arguments {unknown} are not supported (only greedy decoding: "
                         f"{sorted(GREEDY_KEYS)})")
    if gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature", 0) or 0) > 0:
        raise ValueError(f"{where}: sampling (do_sample={gen_kwargs.get('do_sample')}, temperature="
                         f"{gen_kwargs.get('temperature')}) is not supported; the paper's protocol is greedy")
    if int(gen_kwargs.get("num_beams", 1) or 1) != 1:
        raise ValueError(f"{where}: num_beams={gen_kwargs['num_beams']} is not supported; pruning is tested with greedy search")
    until = gen_kwargs.get("until") or []
    until = [until] if isinstance(until, str) else list(until)
    return until, int(gen_kwargs.get("max_new_tokens", 128))


def cut_at_stops(text: str, until: list[str]) -> str:
    """``text`` up to the first stop string (the stop string excluded), stripped.

    >>> cut_at_stops(" yes\\n\\nUSER: more", ["\\n\\n", "USER:"])
    'yes'
    """
    end = min([i for i in (text.find(s) for s in until if s) if i >= 0], default=len(text))
    return text[:end].strip()


def grounding_question(family, context: str) -> str:
    """The question the model is asked: a referring-expression request in the benchmarks' format
    (InternVL-2.5's prompt, :data:`reproduce.tasks.utils.REC_PROMPT`) rewritten in the family's own
    grounding format when it has one (:attr:`ModelFamily.grounding_template`); anything else as is.

    >>> from d2pruner.models.family import get_family
    >>> grounding_question(get_family("qwen2_5_vl"), REC_PROMPT.format("the red cup"))
    'Locate "the red cup" in the image and output its bbox coordinates in JSON format.'
    >>> grounding_question(get_family("internvl"), REC_PROMPT.format("the red cup")) == REC_PROMPT.format("the red cup")
    True
    """
    if family.grounding_template is None:
        return context
    match = _REC_REQUEST.fullmatch(context)
    return context if match is None else family.grounding_template.format(match.group(1))


def grounding_answer(family, model, answer: str, inputs: dict, item: int) -> str:
    """A grounding answer in the family's format as the benchmarks' tasks read one:
    ``<box>[[x1, y1, x2, y2]]</box>`` in [0, 1000] (no box: the answer unchanged, which scores 0)."""
    box = family.grounding_box(model, answer, inputs, item)
    if box is None:
        return answer
    return "<box>[[" + ", ".join(f"{v:.1f}" for v in box) + "]]</box>"


def load(pretrained: str, *, revision: str | None, dtype: str, device: str, attn_implementation: str, max_tiles: int):
    """``(model, processor, family name)`` for a checkpoint id in the local cache, or a tiny in-code model
    (``tiny_<family>``)."""
    from d2pruner.models.family import get_family, tiny_name

    name = tiny_name(pretrained)
    if name is not None:
        family = get_family(name)
        model = family.tiny_model(attn_implementation=attn_implementation, dtype=getattr(torch, dtype)).to(device)
        return model, family.tiny_processor(max_tiles=max_tiles), name
    from d2pruner.models.loading import load_model

    return load_model(pretrained, revision=revision, dtype=getattr(torch, dtype), device=device,
                      attn_implementation=attn_implementation)


def _make_class():
    from lmms_eval.api.model import lmms
    from tqdm.auto import tqdm

    class D2PrunerLMM(lmms):
        """lmms-eval model ``d2pruner``: see :mod:`reproduce.adapter`.

        model_args: ``pretrained`` (checkpoint id or ``tiny_<family>``), ``method`` (a name
        from :func:`d2pruner.methods.method_names`, or ``none`` for the unpruned model), ``budget`` (``64`` or
        ``10%``), ``prior`` (path of a prior file), ``config`` (``default`` or ``localization``),
        ``batch_size``, ``device``, ``dtype``, ``attn_implementation``, ``max_tiles``, ``revision``, ``cache``
        (per-sample answer file; none = no cache), ``max_new_tokens_cap`` (smoke runs only: a bound on every
        task's ``max_new_tokens``, since a random model rarely stops by itself), ``measure`` (default true:
        each computed batch's time to first token, decode time per token, peak memory and selection time
        go into its answer lines, after one unrecorded warm-up call; :mod:`d2pruner.measure`).
        """

        def __init__(self, pretrained: str, method: str = "none", budget: Any = None, prior: str | None = None,
                     config: str = "default", batch_size: Any = 1, device: str | None = None, dtype: str = "float16",
                     attn_implementation: str = "sdpa", max_tiles: Any = 12, revision: str | None = None,
                     cache: str | None = None, max_new_tokens_cap: Any = None, model: Any = None,
                     measure: Any = True, **unknown: Any) -> None:
            super().__init__()
            unknown = {k: v for k, v in unknown.items() if v is not None}
            if unknown:
                raise ValueError(f"unknown model_args {sorted(unknown)} for the d2pruner adapter")
            device = process_device(device)
            self.method = None if str(method).lower() in ("none", "vanilla", "") else str(method)
            self.budget = parse_budget(budget)
            if self.method is not None and self.budget is None:
                raise ValueError(f"method {self.method!r} needs a budget below 100% (got {budget!r})")
            if config not in ("default", "localization"):
                raise ValueError(f"config {config!r} is neither 'default' nor 'localization'")
            self.batch_size_per_gpu = int(batch_size)
            if self.batch_size_per_gpu < 1:
                raise ValueError(f"batch_size={batch_size!r} must be >= 1")
            self.max_tiles = int(max_tiles)
            self.max_new_tokens_cap = None if max_new_tokens_cap in (None, "") else int(max_new_tokens_cap)
            self.config_name = config
            self.prior = prior
            self.pretrained = pretrained
            self._device = torch.device(device)
            if model is not None:  # an already-loaded (model, processor, family), shared between rows
                self.model, self.processor, self.family_name = model
            else:
                self.model, self.processor, self.family_name = load(
                    pretrained, revision=revision, dtype=dtype, device=device,
                    attn_implementation=attn_implementation, max_tiles=self.max_tiles)
            self.fingerprint = run_fingerprint(pretrained=pretrained, revision=revision, method=self.method,
                                               budget=budget, config=config, dtype=dtype, prior=prior,
                                               max_tiles=self.max_tiles, max_new_tokens_cap=self.max_new_tokens_cap,
                                               attn_implementation=attn_implementation)
            self.cache_path = pathlib.Path(cache) if cache else None
            self._cache: SampleCache | None = None
            if self.cache_path is not None and int(os.environ.get("WORLD_SIZE", "1")) == 1:
                self._cache = SampleCache(self.cache_path, self.fingerprint)  # refuses another run's file now
            self.last_stats: list[dict] = []
            #: Whether every computed batch is measured (:mod:`d2pruner.measure`; ``measure=false`` switches it off).
            self.measure = str(measure).lower() not in ("false", "0", "no", "off")
            self._meter = None
            self._warm = False
            self._dtype = self.model.dtype  # lmms-eval deletes the model (lmms.clean) after an evaluation

        @property
        def cache(self) -> SampleCache | None:
            """The answer cache; under ``accelerate launch`` one file per rank (resume with the same number of processes)."""
            if self.cache_path is None:
                return None
            if self._cache is None:
                path = self.cache_path
                if self.world_size > 1:
                    path = path.with_name(f"{path.stem}.rank{self.rank}-of-{self.world_size}{path.suffix}")
                self._cache = SampleCache(path, self.fingerprint)
            return self._cache

        @property
        def device(self):
            return self._device

        @property
        def batch_size(self):
            return self.batch_size_per_gpu

        @property
        def family(self):
            from d2pruner.models.family import get_family

            return get_family(self.family_name)

        def _attach(self):
            if self.method is None:
                return None
            from d2pruner.models.handle import attach
            from d2pruner.spec import D2PrunerConfig

            cfg = D2PrunerConfig.for_localization() if self.config_name == "localization" else D2PrunerConfig()
            prior = self.prior if uses_prior(self.method) else None
            options = {"max_tiles": self.max_tiles} if self.family.uses_max_tiles else {}
            return attach(self.model, self.budget, family=self.family, config=cfg, prior=prior,
                          method=self._method_object(), **options)

        def _method_object(self):
            """The method by name; on a tiny model of a family that supplies a text tower (LLaVA: CLIP's),
            a method that needs one (CDPruner) gets the tiny CLIP text tower built in code (the real model
            loads its tower from the local cache when attached)."""
            from d2pruner.methods.base import Need, get_method
            from d2pruner.models.family import tiny_name

            method = get_method(self.method)
            if (tiny_name(self.pretrained) is not None and Need.TEXT_TOWER in method.needs
                    and Need.TEXT_TOWER not in self.family.refuses):
                from d2pruner.models import tiny

                width = int(self.model.config.vision_config.hidden_size)
                return get_method(self.method, text_tower=tiny.tiny_clip_text_tower(vision_width=width))
            return self.method  # by name: D2Pruner then gets the run's config (localization or default)

        def _eos_ids(self) -> list[int] | None:
            """End-of-answer ids beyond the checkpoint's own (the family's: InternVL-2.5's ``<|im_end|>``)."""
            return self.family.eos_ids(self.model, self.processor)

        @property
        def timing_context(self) -> dict | None:
            """Where this adapter's timings are made (:func:`d2pruner.measure.measurement_context`), or None
            when it does not measure."""
            if not self.measure:
                return None
            from d2pruner import measure

            return measure.measurement_context(self.device, self._dtype, self.batch_size_per_gpu, self.world_size)

        def generate_until(self, requests) -> list[str]:
            from d2pruner.models.loading import build_batch

            answers: list[str | None] = [None] * len(requests)
            cache = self.cache
            pending, first, copies = [], {}, []
            for i, request in enumerate(requests):
                context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
                key = sample_key(task, split, doc_id, context, gen_kwargs)
                hit = cache.get(key) if cache is not None else None
                if hit is not None:
                    answers[i] = hit["answer"]
                elif key in first:  # the same request twice (lmms-eval pads a short shard with copies): answer once
                    copies.append((i, first[key]))
                else:
                    first[key] = i
                    pending.append((i, key, request))
            handle = self._attach()
            bar = tqdm(total=len(pending), desc=f"{self.method or 'unpruned'}", disable=self.rank != 0)
            try:
                for start in range(0, len(pending), self.batch_size_per_gpu):
                    chunk = pending[start:start + self.batch_size_per_gpu]
                    settings = {json.dumps(r.args[1], sort_keys=True, default=str) for _, _, r in chunk}
                    groups = [chunk] if len(settings) == 1 else [[c] for c in chunk]
                    for group in groups:
                        records = self._generate(group, handle, build_batch)
                        for (i, _, _), record in zip(group, records):
                            answers[i] = record["answer"]
                        if cache is not None:
                            cache.add(records)
                        bar.update(len(group))
            finally:
                bar.close()
                if handle is not None:
                    handle.remove()
            for i, j in copies:
                answers[i] = answers[j]
            return answers

        def _generate(self, group, handle, build_batch) -> list[dict]:
            images, questions = [], []
            for _, _, request in group:
                context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
                visuals = doc_to_visual(self.task_dict[task][split][doc_id])
                if len(visuals) != 1:
                    raise ValueError(f"{task}/{split} doc {doc_id} has {len(visuals)} images; the paper's protocol "
                                     "has exactly one image per question")
                images.append(visuals[0])
                questions.append(grounding_question(self.family, context))
            context, gen_kwargs, _, doc_id, task, split = group[0][2].args
            until, max_new_tokens = _greedy_settings(gen_kwargs, f"{task} doc {doc_id}")
            if self.max_new_tokens_cap is not None:  # smoke runs: a random model never stops by itself
                max_new_tokens = min(max_new_tokens, self.max_new_tokens_cap)
            inputs = build_batch(self.processor, self.family, images, questions, max_tiles=self.max_tiles,
                                 device=self.device)
            if handle is not None:  # the instruction of each item, as the task phrases it (CDPruner's relevance)
                handle.set_instructions(questions)
            if handle is not None:  # what the token ids do not say (InternVL's tile grids)
                handle.set_item_hints(self.family.item_hints(self.processor, images, self.max_tiles))
            tokenizer = self.processor.tokenizer
            eos = self._eos_ids()  # passed only when set: eos_token_id=None would switch the checkpoint's own off

            def generate(n_tokens: int, **extra):
                with torch.inference_mode():
                    return self.model.generate(**inputs, max_new_tokens=n_tokens, do_sample=False, num_beams=1,
                                               stop_strings=[s for s in until if s] or None, tokenizer=tokenizer,
                                               pad_token_id=tokenizer.pad_token_id,
                                               **({"eos_token_id": eos} if eos else {}),
                                               suppress_tokens=[int(self.model.config.image_token_id)],  # never an answer
                                               **extra)

            timing, where = None, None
            if not self.measure:
                out = generate(max_new_tokens)
            else:  # d2pruner.measure: the same generate call, a pre-hook and a logits processor that change nothing
                from d2pruner import measure

                if self._meter is None:
                    self._meter = measure.GenerationMeter(self.model, self.device)
                if not self._warm:  # warm-up (kernels, allocator, the method's code): measured nowhere
                    generate(min(2, max_new_tokens))
                    self._warm = True
                with self._meter.measure() as m:
                    out = generate(max_new_tokens, logits_processor=m.logits_processor)
                timing, where = m.result.as_dict(), measure.context_id(self.timing_context)
            new = out[:, inputs["input_ids"].shape[1]:]
            texts = tokenizer.batch_decode(new, skip_special_tokens=True)
            stats = handle.stats if handle is not None else [None] * len(group)
            records = []
            for item, ((_, key, request), text, st) in enumerate(zip(group, texts, stats)):
                context, _, _, doc_id, task, split = request.args
                answer = cut_at_stops(text, until)
                if questions[item] != context:  # asked in the family's own grounding format: read it back
                    answer = grounding_answer(self.family, self.model, answer, inputs, item)
                record = {"key": key, "task": task, "split": split, "doc_id": int(doc_id),
                          "answer": answer, "raw": text, "run": RUN_ID}
                if st is not None:
                    record["visual_tokens"] = [int(st.n_visual_before), int(st.n_visual_after)]
                if timing is not None:  # the batch's prompt pass and decoding, shared by its items
                    record["timing"] = {**timing, "selection_ms": None if st is None else round(float(st.selection_ms), 4),
                                        "batch": len(group), "context": where}
                records.append(record)
            return records

        def loglikelihood(self, requests):
            raise NotImplementedError("the d2pruner adapter generates answers; loglikelihood tasks are not supported")

        def generate_until_multi_round(self, requests):
            raise NotImplementedError("the d2pruner adapter runs single-turn tasks only")

    return D2PrunerLMM


_CLASS = None


def adapter_class():
    """The lmms-eval model class (imports lmms-eval on first use)."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _make_class()
    return _CLASS


def __getattr__(name: str):  # ``reproduce.adapter.D2PrunerLMM`` for lmms-eval's class path
    if name == "D2PrunerLMM":
        return adapter_class()
    if name == "NEEDS_PRIOR":  # the registered methods that read the prior
        from d2pruner.methods.base import method_names

        return tuple(m for m in method_names() if uses_prior(m))
    raise AttributeError(name)


def manifest():
    """The ``lmms_eval.models`` entry point: model id ``d2pruner``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="d2pruner", simple_class_path="reproduce.adapter.D2PrunerLMM")


