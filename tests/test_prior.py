"""The positional prior: measured as the mean attention row, stored with provenance, resumable,
refusing to mix runs, checked when loaded, and used by the model hooks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from d2pruner import D2PrunerConfig
from d2pruner.models import internvl, llava, tiny
from d2pruner.models.prior import Prior, attention_rows, compute
from d2pruner.models.prior.__main__ import main
from model_inputs import left_padded_batch

META = {"model_id": "tiny", "revision": None, "model_class": "LlavaForConditionalGeneration", "prune_layer": 2,
        "prompt": "p", "max_tiles": None}


def llava_samples(n, fail_at=None, built=None):
    def make(i):
        def build():
            if built is not None:
                built.append(i)
            if i == fail_at:
                raise RuntimeError("simulated crash")
            batch, _ = left_padded_batch("llava", [(2, 3)], item_offset=i)
            batch.pop("attention_mask")
            return batch
        return build
    return [(f"img{i}", make(i)) for i in range(n)]


def find(model):
    return lambda ids: llava.find_items(ids, tiny.IMAGE_TOKEN, llava.grid_side(model))


def test_prior_is_the_mean_row_with_provenance(tmp_path):
    model = tiny.tiny_llava()
    prior = compute(model, llava_samples(4), prune_layer=2, find_items=find(model), block=576, meta=META,
                    out=tmp_path / "prior.json", progress=False)
    rows = [attention_rows(model, make(), 2, find(model))[0][0] for _, make in llava_samples(4)]
    np.testing.assert_allclose(prior.values, torch.stack(rows).mean(0).numpy(), rtol=1e-12)
    saved = json.loads((tmp_path / "prior.json").read_text())
    assert saved["meta"]["n_images"] == 4 and saved["meta"]["prune_layer"] == 2 and "torch" in saved["meta"]
    assert len(saved["meta"]["images_sha256"]) == 64
    assert not (tmp_path / "prior.json.partial.json").exists()


def test_prior_resumes_after_a_crash_without_recomputing(tmp_path):
    model = tiny.tiny_llava()
    out = tmp_path / "prior.json"
    with pytest.raises(RuntimeError, match="simulated crash"):
        compute(model, llava_samples(5, fail_at=3), prune_layer=2, find_items=find(model), block=576, meta=META,
                out=out, progress=False)
    assert json.loads((tmp_path / "prior.json.partial.json").read_text())["done"] == ["img0", "img1", "img2"]
    built = []
    resumed = compute(model, llava_samples(5, built=built), prune_layer=2, find_items=find(model), block=576,
                      meta=META, out=out, progress=False)
    assert built == [3, 4], "images done before the crash were computed again"
    fresh = compute(model, llava_samples(5), prune_layer=2, find_items=find(model), block=576, meta=META,
                    out=tmp_path / "fresh.json", progress=False)
    np.testing.assert_allclose(resumed.values, fresh.values, rtol=1e-12)
    assert resumed.meta["n_images"] == 5


def test_prior_refuses_to_mix_runs(tmp_path):
    model = tiny.tiny_llava()
    out = tmp_path / "prior.json"
    with pytest.raises(RuntimeError):
        compute(model, llava_samples(3, fail_at=1), prune_layer=2, find_items=find(model), block=576, meta=META,
                out=out, progress=False)
    with pytest.raises(ValueError, match="prune_layer=2; this run has prune_layer=3. Refusing to mix"):
        compute(model, llava_samples(3), prune_layer=3, find_items=find(model), block=576,
                meta={**META, "prune_layer": 3}, out=out, progress=False)


def test_loading_checks_model_and_layer(tmp_path):
    model = tiny.tiny_llava()
    Prior(np.full(576, 0.01), dict(META)).save(tmp_path / "p.json")
    handle = llava.attach(model, 64, prior=tmp_path / "p.json")
    handle.remove()
    with pytest.raises(ValueError, match="measured for prune_layer K=2, but pruning is at K=3"):
        llava.attach(model, 64, prior=tmp_path / "p.json", config=D2PrunerConfig(prune_layer=3))
    with pytest.raises(ValueError, match="measured on a LlavaForConditionalGeneration, not a InternVLForConditionalGeneration"):
        internvl.attach(tiny.tiny_internvl(), 64, prior=Prior(np.full(256, 0.01), dict(META)))
    with pytest.raises(ValueError, match="finite and > 0"):
        llava.attach(model, 64, prior=np.zeros(576))


def test_prior_changes_the_selection_and_says_so():
    model = tiny.tiny_llava()
    batch, _ = left_padded_batch("llava", [(3, 4)])
    prior = np.linspace(0.001, 1.0, 576)  # strongly favours early tokens after debiasing
    with torch.no_grad():
        with llava.attach(model, 32) as plain:
            model(**batch)
        with llava.attach(model, 32, prior=prior) as debiased:
            model(**batch)
    assert plain.stats[0].debiased is False and debiased.stats[0].debiased is True
    assert plain.stats[0].kept.tolist() != debiased.stats[0].kept.tolist()


def test_internvl_prior_is_per_tile_position(tmp_path):
    model = tiny.tiny_internvl()
    grids = [None]

    def find_ivl(ids):
        return internvl.find_items(ids, tiny.IMAGE_TOKEN, internvl.tile_side(model), grids)

    def make(i, grid):
        def build():
            grids[0] = grid
            batch, _ = left_padded_batch("internvl", [(2, 3)], grids=[grid], item_offset=i)
            batch.pop("attention_mask")
            return batch
        return build

    samples = [("a", make(0, (1, 2))), ("b", make(1, (1, 1)))]
    meta = {**META, "model_class": "InternVLForConditionalGeneration"}
    prior = compute(model, samples, prune_layer=2, find_items=find_ivl, block=256, meta=meta, out=tmp_path / "p.json",
                    progress=False)
    assert prior.values.shape == (256,) and prior.meta["n_blocks"] == 3 + 1  # 2 tiles + thumbnail, then 1 tile
    blocks = []
    for _, build in samples:
        (row, _), = attention_rows(model, build(), 2, find_ivl)
        blocks.append(row.view(-1, 256))
    np.testing.assert_allclose(prior.values, torch.cat(blocks).mean(0).numpy(), rtol=1e-12)


def test_command_names_the_missing_checkpoint(tmp_path, capsys, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "imgs" / "a.png")
    code = main(["--model", "nobody/not-a-cached-model", "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "p.json")])
    assert code == 2
    err = capsys.readouterr().err
    assert "'nobody/not-a-cached-model' is not in the local Hugging Face cache" in err
    assert not (tmp_path / "p.json").exists()
    assert main(["--model", "x", "--images", str(tmp_path / "nothing"), "--out", str(tmp_path / "p.json")]) == 2


def test_internvl_prior_applies_to_every_tile_and_the_thumbnail():
    model = tiny.tiny_internvl()
    batch, items = left_padded_batch("internvl", [(3, 4)], grids=[(1, 2)])
    prior = np.tile(np.linspace(1.0, 0.001, 256), 1)  # favours late positions of every tile after debiasing
    with torch.no_grad(), internvl.attach(model, 0.1, prior=prior) as handle:
        handle.set_tile_grids(items.grids)
        model(**batch)
    stats = handle.stats[0]
    assert stats.debiased and stats.n_visual_before == 768 and stats.n_visual_after == 77
    within_tile = stats.kept % 256
    assert np.mean(within_tile) > 128, "the per-position prior did not reach the tiles"


def test_unreadable_images_are_skipped_counted_and_tried_again_on_resume(tmp_path):
    from d2pruner.models.prior import SkippedImageWarning, UnreadableImage

    model = tiny.tiny_llava()
    out = tmp_path / "prior.json"
    good = dict(llava_samples(4))

    def unreadable():
        raise UnreadableImage("image /data/img1.png cannot be read: truncated")

    samples = [("img0", good["img0"]), ("img1", unreadable), ("img2", good["img2"]),
               ("img3", llava_samples(4, fail_at=3)[3][1])]
    with pytest.warns(SkippedImageWarning, match="img1.png cannot be read"), pytest.raises(RuntimeError, match="simulated"):
        compute(model, samples, prune_layer=2, find_items=find(model), block=576, meta=META, out=out, progress=False)
    state = json.loads((tmp_path / "prior.json.partial.json").read_text())
    assert state["done"] == ["img0", "img2"] and list(state["skipped"]) == ["img1"]
    with pytest.warns(SkippedImageWarning):  # still unreadable on resume: skipped again, counted once
        prior = compute(model, [*samples[:3], ("img3", good["img3"])], prune_layer=2, find_items=find(model), block=576,
                        meta=META, out=tmp_path / "prior.json", progress=False)
    assert prior.meta["n_images"] == 3 and prior.meta["n_skipped_images"] == 1
    assert prior.meta["skipped_images"] == {"img1": "image /data/img1.png cannot be read: truncated"}
    out.unlink()
    fixed = compute(model, llava_samples(4), prune_layer=2, find_items=find(model), block=576, meta=META, out=out,
                    progress=False)
    assert fixed.meta["n_images"] == 4 and fixed.meta["n_skipped_images"] == 0


def test_attention_rows_refuse_a_layer_outside_the_model():
    model = tiny.tiny_llava()
    batch, _ = left_padded_batch("llava", [(2, 3)])
    for k in (0, 4, 9):
        with pytest.raises(ValueError, match=f"prune layer K={k} is out of range for a 4-layer language model: K must be 1 to 3"):
            attention_rows(model, batch, k, find(model))
