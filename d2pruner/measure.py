"""Measured efficiency of one ``generate()`` call: time to first token, decode time per token, peak memory.

The one place where the tables (``reproduce.adapter``, every answered sample) and the latency benchmark
(``benchmarks/latency.py``, full-size random-weight models) measure, so that both measure the same thing:

* **time to first token** (TTFT): from the start of the model's first forward call inside ``generate``
  (the prompt pass: vision encoder, any pruning work, the language model) to the moment the first new
  token's logits reach the logits processors. ``generate``'s own set-up before the prompt pass (stopping
  criteria, input preparation) and the processor's image preprocessing are not included;
* **decode time per token**: the time from the first new token's logits to the last one's, divided by the
  number of tokens decoded after the first (``None`` when only one token was generated);
* **peak memory** of the call: on CUDA ``torch.cuda.max_memory_allocated`` after a reset (the weights
  included: what the device holds at its fullest); on CPU the process's peak resident set size (Linux
  ``VmHWM``, reset through ``/proc/self/clear_refs``: the whole process, Python and libraries included),
  ``None`` where that cannot be read. :data:`MEMORY_KIND` names which one a number is;
* the pruning method's own selection time is the handle's ``stats[i].selection_ms`` (not measured here).

Clocks: CUDA events on a GPU (recorded on the current stream, read after one synchronisation at the end,
so the measurement adds no synchronisation inside the prompt pass); ``time.perf_counter`` (monotonic)
on CPU. The measurement never changes what is generated: a forward pre-hook that returns nothing and a
logits processor that returns the scores it is given (``tests/test_measure.py`` checks the answers).

>>> summary([4.0, 1.0, 3.0, 2.0])
{'median': 2.5, 'p90': 3.7, 'max': 4.0, 'n': 4}
>>> summary([]) is None
True
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import socket
import time
from typing import Iterator, Sequence

import torch

__all__ = ["FAST_ATTENTION", "GenerationMeter", "PassTiming", "attention_of", "attention_unavailable", "choose_attention",
           "context_id", "context_label", "machine_name", "measurement_context", "memory_kind", "summary",
           "use_attention"]

#: Attention implementations faster than ``sdpa`` that transformers can load, fastest first.
FAST_ATTENTION = ("flash_attention_3", "flash_attention_2")


@dataclasses.dataclass(frozen=True)
class PassTiming:
    """What one measured ``generate`` call took (milliseconds, MiB)."""

    ttft_ms: float
    decode_ms_per_token: float | None
    new_tokens: int
    peak_mib: float | None

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}


def summary(values: Sequence[float | None]) -> dict | None:
    """Median, 90th percentile (linear interpolation between order statistics, as numpy's default),
    maximum and count of the values that are not None; None when there are none."""
    xs = sorted(float(v) for v in values if v is not None)
    if not xs:
        return None

    def quantile(q: float) -> float:
        pos = q * (len(xs) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    return {"median": round(quantile(0.5), 4), "p90": round(quantile(0.9), 4), "max": round(xs[-1], 4), "n": len(xs)}


# -- memory ---------------------------------------------------------------------------------------------

def memory_kind(device: str | torch.device) -> str:
    """What :class:`GenerationMeter` reports as peak memory on ``device``.

    >>> memory_kind("cpu")
    'CPU peak resident set size of the process (VmHWM)'
    """
    if torch.device(device).type == "cuda":
        return "CUDA max_memory_allocated (weights included)"
    return "CPU peak resident set size of the process (VmHWM)"


def _reset_peak(device: torch.device) -> bool:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:  # Linux: "5" resets the peak RSS (VmHWM) to the current RSS, and nothing else
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _read_peak_mib(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


# -- the meter ------------------------------------------------------------------------------------------

class _Marks:
    """Time marks: CUDA events on a GPU, ``perf_counter`` seconds on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()  # on the current stream; no synchronisation here
            return event
        return time.perf_counter()

    def elapsed_ms(self, start, end) -> float:
        if self.cuda:
            return float(start.elapsed_time(end))
        return 1e3 * (end - start)

    def finish(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)  # the one host-device sync of a measurement, after generate


class _Probe:
    """The logits processor of one measured call: marks the time of each step's logits, returns them unchanged."""

    def __init__(self, marks: _Marks) -> None:
        self.marks = marks
        self.first = self.last = None
        self.steps = 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        now = self.marks.mark()
        if self.first is None:
            self.first = now
        self.last = now
        self.steps += 1
        return scores


class _Measurement:
    """One measured call: pass :attr:`logits_processor` to ``generate``; :attr:`result` afterwards."""

    def __init__(self, marks: _Marks) -> None:
        from transformers import LogitsProcessor, LogitsProcessorList

        probe = _Probe(marks)
        processor = type("TimingProbe", (LogitsProcessor,), {"__call__": lambda self, ids, scores: probe(ids, scores)})()
        self.probe, self.marks = probe, marks
        self.logits_processor = LogitsProcessorList([processor])
        self.start = None
        self.result: PassTiming | None = None

    def on_forward(self, module, args, kwargs):
        if self.start is None:  # the prompt pass: the first forward of this call
            self.start = self.marks.mark()
        return None

    def finish(self, peak_mib: float | None) -> None:
        self.marks.finish()
        p = self.probe
        if self.start is None or p.first is None:
            raise RuntimeError("the measured generate() made no forward pass or produced no token; pass "
                               "logits_processor=measurement.logits_processor to it")
        decode = self.marks.elapsed_ms(p.first, p.last) / (p.steps - 1) if p.steps > 1 else None
        self.result = PassTiming(self.marks.elapsed_ms(self.start, p.first), decode, p.steps, peak_mib)


class GenerationMeter:
    """Measures ``generate`` calls of one model on one device.

    Examples
    --------
    >>> import torch
    >>> from d2pruner.models import tiny
    >>> model = tiny.tiny_llava()
    >>> ids = torch.tensor([[1, 5] + [tiny.IMAGE_TOKEN] * 576 + [7, 9]])
    >>> meter = GenerationMeter(model, "cpu")
    >>> with meter.measure() as m:
    ...     out = model.generate(input_ids=ids, pixel_values=torch.zeros(1, 3, 48, 48), max_new_tokens=3,
    ...                          min_new_tokens=3, do_sample=False, logits_processor=m.logits_processor)
    >>> m.result.new_tokens, m.result.ttft_ms > 0, m.result.decode_ms_per_token > 0
    (3, True, True)
    """

    def __init__(self, model: torch.nn.Module, device: str | torch.device) -> None:
        self.model = model
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.memory_kind = memory_kind(self.device)

    @contextlib.contextmanager
    def measure(self) -> Iterator[_Measurement]:
        """A context around one ``generate`` call; its ``logits_processor`` must be passed to that call."""
        marks = _Marks(self.device)
        m = _Measurement(marks)
        hook = self.model.register_forward_pre_hook(m.on_forward, with_kwargs=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # nothing queued before the call counts towards it
        reset = _reset_peak(self.device)
        try:
            yield m
        finally:
            hook.remove()
        m.finish(_read_peak_mib(self.device) if reset else None)


# -- where a measurement was made -----------------------------------------------------------------------

def machine_name(device: str | torch.device) -> str:
    """The GPU's name, or the CPU's model and core count.

    >>> "cores" in machine_name("cpu")
    True
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def measurement_context(device: str | torch.device, dtype: str | torch.dtype, batch_size: int,
                        world_size: int = 1) -> dict:
    """Everything that must be equal for two timings to be compared: host, device type, machine (GPU or
    CPU model), dtype, batch size, process count, torch and transformers versions. Not the attention
    implementation: the unpruned baseline is measured with the fastest one on purpose.

    >>> ctx = measurement_context("cpu", torch.float32, 2)
    >>> ctx["device"], ctx["dtype"], ctx["batch_size"], context_id(ctx) == context_id(dict(ctx))
    ('cpu', 'float32', 2, True)
    """
    import transformers

    device = torch.device(device)
    return {"host": socket.gethostname(), "device": device.type, "machine": machine_name(device),
            "dtype": str(dtype).removeprefix("torch."), "batch_size": int(batch_size), "world_size": int(world_size),
            "torch": torch.__version__, "transformers": transformers.__version__}


def context_id(context: dict) -> str:
    """A short stable id of a :func:`measurement_context` (12 hex digits)."""
    return hashlib.sha256(json.dumps(context, sort_keys=True).encode()).hexdigest()[:12]


def context_label(context: dict) -> str:
    """How a table names a measurement context.

    >>> context_label({"host": "h", "device": "cpu", "machine": "AMD EPYC, 2 cores", "dtype": "float32",
    ...                "batch_size": 2, "world_size": 1, "torch": "2.13.0", "transformers": "5.23.0"})
    'cpu (AMD EPYC, 2 cores) on h, float32, batch 2, torch 2.13.0, transformers 5.23.0'
    """
    procs = f", {context['world_size']} processes" if context.get("world_size", 1) > 1 else ""
    return (f"{context['device']} ({context['machine']}) on {context['host']}, {context['dtype']}, batch "
            f"{context['batch_size']}{procs}, torch {context['torch']}, transformers {context['transformers']}")


# -- attention implementations --------------------------------------------------------------------------

def attention_unavailable(name: str, device: str | torch.device) -> str | None:
    """Why attention implementation ``name`` cannot run on ``device`` here, or None when it can (as far as
    can be told without loading a model: :func:`use_attention` asks the model itself).

    >>> attention_unavailable("sdpa", "cpu") is None, attention_unavailable("flash_attention_2", "cpu")
    (True, 'flash_attention_2 needs a CUDA device (device cpu)')
    """
    device = torch.device(device)
    if name in ("sdpa", "eager"):
        return None
    if name.startswith("flash_attention"):
        if device.type != "cuda" or not torch.cuda.is_available():
            return f"{name} needs a CUDA device (device {device})"
        from transformers.utils import import_utils

        check = getattr(import_utils, f"is_{name.replace('attention', 'attn')}_available", None)
        if check is None:
            return f"the installed transformers does not know {name}"
        if not check():
            return f"{name}: its package is not installed or does not fit this GPU"
        if name == "flash_attention_3" and torch.cuda.get_device_capability(device)[0] < 9:
            return f"{name} needs a Hopper GPU or newer ({torch.cuda.get_device_name(device)})"
        return None
    return None  # another kernel name: the model decides (use_attention)


def choose_attention(preferences: Sequence[str] | str, device: str | torch.device,
                     supported: Sequence[str] | None = None) -> tuple[str, list[str]]:
    """The first of ``preferences`` that runs on ``device`` (and is in ``supported``, when given), and why
    each one before it was passed over.

    >>> choose_attention(["flash_attention_2", "sdpa"], "cpu")
    ('sdpa', ['flash_attention_2 needs a CUDA device (device cpu)'])
    >>> choose_attention(["flash_attention_2", "eager", "sdpa"], "cpu", supported=("sdpa",))[0]
    'sdpa'
    """
    prefs = [preferences] if isinstance(preferences, str) else list(preferences)
    why = []
    for name in prefs:
        if supported is not None and name not in supported:
            why.append(f"{name}: not supported here (supported: {', '.join(supported)})")
            continue
        reason = attention_unavailable(name, device)
        if reason is None:
            return name, why
        why.append(reason)
    raise ValueError(f"none of the attention implementations {prefs} can run on {device}: {'; '.join(why)}")


def use_attention(model: torch.nn.Module, preferences: Sequence[str] | str, device: str | torch.device,
                  supported: Sequence[str] | None = None, part: str | None = None) -> tuple[str, list[str]]:
    """Switch ``model`` (a loaded transformers model) to the first of ``preferences`` that runs here
    (:func:`choose_attention`; one that the model itself then refuses is passed over too) and return it,
    with why each earlier one was passed over. ``part``: only that sub-model (a key of the config's
    ``sub_configs``, e.g. ``"text_config"``: the language model; the others keep theirs).

    >>> from d2pruner.models import tiny
    >>> model = tiny.tiny_llava(attn_implementation="eager")
    >>> use_attention(model, ["flash_attention_2", "sdpa"], "cpu", part="text_config")[0]
    'sdpa'
    >>> attention_of(model), model.config.vision_config._attn_implementation
    ('sdpa', 'eager')
    """
    prefs = [preferences] if isinstance(preferences, str) else list(preferences)
    why: list[str] = []
    while prefs:
        name, skipped = choose_attention(prefs, device, supported)
        why += skipped
        try:
            model.set_attn_implementation({part: name} if part in getattr(model.config, "sub_configs", {}) else name)
        except (ImportError, ValueError, RuntimeError) as err:
            why.append(f"{name}: {err}")
            prefs = prefs[prefs.index(name) + 1:]
            continue
        return name, why
    raise ValueError(f"no attention implementation of {preferences} can run on {device}: {'; '.join(why)}")


def attention_of(model: torch.nn.Module) -> str:
    """The attention implementation the language model of ``model`` runs with."""
    config = model.config
    text = getattr(config, "text_config", None) or config
    return str(getattr(text, "_attn_implementation", None) or getattr(config, "_attn_implementation", None) or "eager")
