"""d2pruner.measure, the one measuring code of the tables and the latency benchmark: what it reports,
that it never changes what is generated, where a measurement was made, which attention runs. No test
here asserts a speed: only that the numbers exist, are positive and count the right things."""

import pytest
import torch

from d2pruner import measure
from d2pruner.models import llava, tiny

IDS = torch.tensor([[1, 5] + [tiny.IMAGE_TOKEN] * 576 + [7, 9]])


@pytest.fixture(scope="module")
def model():
    return tiny.tiny_llava()


def pixels():
    return torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))


def generate(model, n, **extra):
    return model.generate(input_ids=IDS, pixel_values=pixels(), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                          **extra)


def test_summary_is_median_p90_max_and_count_of_the_values_given():
    assert measure.summary([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]) == {"median": 5.5, "p90": 9.1,
                                                                                   "max": 10.0, "n": 10}
    assert measure.summary([None, 3.0]) == {"median": 3.0, "p90": 3.0, "max": 3.0, "n": 1}
    assert measure.summary([None]) is None and measure.summary([]) is None


@pytest.mark.parametrize("budget", [None, 64])
def test_the_measurement_does_not_change_the_generated_tokens(model, budget):
    """Unpruned and pruned (D2Pruner at 64 of 576): the same tokens with and without the meter; the meter
    counts the generated tokens and leaves no hook behind."""
    handle = llava.attach(model, budget=budget) if budget else None
    try:
        with torch.inference_mode():
            plain = generate(model, 4)
            meter = measure.GenerationMeter(model, "cpu")
            with meter.measure() as m:
                timed = generate(model, 4, logits_processor=m.logits_processor)
    finally:
        if handle:
            handle.remove()
    assert torch.equal(plain, timed)
    assert not model._forward_pre_hooks
    r = m.result
    assert r.new_tokens == timed.shape[1] - IDS.shape[1] == 4
    assert r.ttft_ms > 0 and r.decode_ms_per_token > 0
    assert r.peak_mib is None or r.peak_mib > 0
    assert set(r.as_dict()) == {"ttft_ms", "decode_ms_per_token", "new_tokens", "peak_mib"}


def test_one_token_has_no_decode_time_and_a_call_without_the_probe_is_named(model):
    meter = measure.GenerationMeter(model, "cpu")
    with torch.inference_mode():
        with meter.measure() as m:
            generate(model, 1, logits_processor=m.logits_processor)
        assert m.result.new_tokens == 1 and m.result.decode_ms_per_token is None
        with pytest.raises(RuntimeError, match="pass logits_processor=measurement.logits_processor"):
            with meter.measure():
                generate(model, 1)


def test_the_context_says_where_and_under_which_settings():
    ctx = measure.measurement_context("cpu", torch.float32, 2)
    assert {k: ctx[k] for k in ("device", "dtype", "batch_size", "world_size")} == {
        "device": "cpu", "dtype": "float32", "batch_size": 2, "world_size": 1}
    assert measure.context_id(ctx) == measure.context_id(measure.measurement_context("cpu", "float32", 2))
    for change in ({"device": "cuda"}, {"machine": "NVIDIA H100"}, {"host": "elsewhere"}, {"batch_size": 8},
                   {"dtype": "bfloat16"}, {"world_size": 2}, {"torch": "0"}):
        assert measure.context_id({**ctx, **change}) != measure.context_id(ctx), change
    label = measure.context_label(ctx)
    assert label.startswith("cpu (") and "float32, batch 2" in label
    assert measure.memory_kind("cpu").startswith("CPU peak resident") and measure.memory_kind("cuda:0").startswith("CUDA")


def test_attention_is_the_fastest_that_runs_here_and_that_the_hooks_support():
    from d2pruner.models.handle import SUPPORTED_ATTENTION

    prefs = ["flash_attention_3", "flash_attention_2", "sdpa"]
    name, why = measure.choose_attention(prefs, "cpu")
    assert name == "sdpa" and [w.split(" ")[0] for w in why] == ["flash_attention_3", "flash_attention_2"]
    assert measure.choose_attention(["eager", "sdpa"], "cpu", supported=("sdpa",))[0] == "sdpa"
    assert measure.choose_attention("eager", "cpu", SUPPORTED_ATTENTION) == ("eager", [])
    with pytest.raises(ValueError, match=r"none of the attention implementations \['flash_attention_2'\] can run on cpu"):
        measure.choose_attention(["flash_attention_2"], "cpu")
    if not torch.cuda.is_available():
        assert measure.attention_unavailable("flash_attention_2", "cuda") is not None


def test_use_attention_switches_a_loaded_model():
    model = tiny.tiny_llava()
    assert measure.use_attention(model, ["flash_attention_2", "eager"], "cpu")[0] == "eager"
    assert measure.attention_of(model) == "eager"
    assert measure.use_attention(model, ["sdpa"], "cpu") == ("sdpa", [])
    assert measure.attention_of(model) == "sdpa"
