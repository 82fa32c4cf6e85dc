"""The lmms-eval adapter on the tiny models (checks in tests/adapter_checks.py, run in a subprocess), and
the official prompt building it relies on (in-process: no lmms-eval import)."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from d2pruner.models import llava, loading, tiny_processor

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHECKS = [n for n in (ROOT / "tests" / "adapter_checks.py").read_text().split("\ndef ")[1:] if n.startswith("check_")]


@pytest.fixture(scope="module")
def checks_output():
    env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    return subprocess.run([sys.executable, str(ROOT / "tests" / "adapter_checks.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.lmms
@pytest.mark.parametrize("name", [n.split("(")[0] for n in CHECKS])
def test_adapter(name, checks_output):
    assert f"ok {name} " in checks_output.stdout, (checks_output.stdout + checks_output.stderr)[-4000:]


def test_llava_prompt_is_vicuna_v1_and_images_are_padded_to_a_square():
    proc = tiny_processor.tiny_processor("llava")
    wide = Image.new("RGB", (96, 48), (255, 255, 255))
    batch = loading.build_batch(proc, "llava", [wide, Image.new("RGB", (48, 48))], ["Short?", "A longer question?"])
    text = proc.tokenizer.decode(batch["input_ids"][1][batch["attention_mask"][1].bool()]).replace("<image>" * 576, "<image>")
    assert text == f"{llava.LLAVA_SYSTEM} USER: <image>\nA longer question? ASSISTANT:"
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][0, -1] == 1  # left padding
    # the top quarter of the padded square is the mean colour, normalised by CLIP's statistics
    mean, std = np.array(proc.image_processor.image_mean), np.array(proc.image_processor.image_std)
    pad = (np.array(llava.LLAVA_PAD_COLOUR) / 255 - mean) / std
    top = batch["pixel_values"][0, :, :10].mean(dim=(1, 2)).numpy()
    centre = batch["pixel_values"][0, :, 24].mean(dim=1).numpy()
    np.testing.assert_allclose(top, pad, atol=0.02)
    np.testing.assert_allclose(centre, (1.0 - mean) / std, atol=0.02)


def test_internvl_prompt_follows_the_chat_template_with_dynamic_tiles():
    proc = tiny_processor.tiny_processor("internvl", max_tiles=4)
    batch = loading.build_batch(proc, "internvl", [Image.new("RGB", (200, 90))], ["Where?"], max_tiles=4)
    ids = batch["input_ids"][0]
    assert int((ids == tiny_processor.IMAGE_TOKEN).sum()) == 256 * 3  # 2 tiles + thumbnail
    text = proc.tokenizer.decode(ids[ids != tiny_processor.IMAGE_TOKEN])
    assert text.startswith("<|im_start|>system\n") and text.endswith("Where?<|im_end|>\n<|im_start|>assistant\n")
    assert "<|im_start|>user\n<img></img>\nWhere?" in text
    assert tuple(batch["pixel_values"].shape) == (3, 3, 64, 64)
    with pytest.raises(ValueError, match="2 images for 1 questions"):
        loading.build_batch(proc, "internvl", [Image.new("RGB", (9, 9))] * 2, ["q"])
    assert torch.equal(batch["input_ids"], loading.build_inputs(proc, "internvl", Image.new("RGB", (200, 90)), "Where?",
                                                                max_tiles=4)["input_ids"])
