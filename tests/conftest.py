"""Hypothesis profiles (``HYPOTHESIS_PROFILE`` = dev | ci | ci-quick | nightly) and shared helpers.

All test effort lives here: tests never set ``max_examples`` themselves.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from hypothesis import HealthCheck, Phase, settings

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_no_explain = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)
settings.register_profile("dev", max_examples=30, **_common)
# CI's second transformers version: the properties do not depend on transformers, so they run at full
# strength once (profile ci) and briefly here.
settings.register_profile("ci-quick", max_examples=20, phases=_no_explain, print_blob=True, **_common)
settings.register_profile("ci", max_examples=200, phases=_no_explain, print_blob=True, **_common)
settings.register_profile("nightly", max_examples=10_000, phases=_no_explain, print_blob=True, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

#: Devices the differential tests run on: the CPU always, CUDA when present.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param
