"""The oracle diagnostic (``python -m reproduce.micro oracle``): slots stand exactly where the image was,
carry their own scene, and a language model can learn from them."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from reproduce.micro import data, models, oracle, teach, train
from reproduce.micro.scenes import COLOURS

pytestmark = pytest.mark.micro


def _examples(stock, n, objects=(2, 5), seed=1000):
    data.OBJECTS.append(objects)
    try:
        return teach.task_examples(stock, n, seed)
    finally:
        data.OBJECTS.pop()


def _trainer(work, settings):
    """An oracle trainer in ``work`` with the shipped InternVL tokenizer (not rebuilt from its corpus)."""
    if not (work / "tokenizer").exists():
        work.mkdir(parents=True, exist_ok=True)
        shutil.copytree(models.checkpoint_dir("internvl"), work / "tokenizer",
                        ignore=lambda d, names: [n for n in names if not n.startswith(("tokenizer", "special_tokens"))])
    return oracle.OracleTrainer(settings, work)


def test_slots_list_every_object_and_sign_in_reading_order():
    scenes = [e[0].micro_scene for e in _examples("textvqa_val", 4)]
    labels, counts = oracle.slot_labels(scenes)
    for scene, row, n in zip(scenes, labels, counts):
        assert n == len(scene.objects) + len(scene.digits)
        assert (row[n:] == 0).all() and (row[:n, 0] > 0).all(), "every slot has a colour, padding none"
        assert sorted(int(d) - 1 for d in row[:n, 3] if d > 0) == sorted(d for _, _, d, _ in scene.digits)
        order = sorted([(o.y, o.x, o.colour) for o in scene.objects] + [(y, x, c) for x, y, _, c in scene.digits])
        assert [list(COLOURS)[int(c) - 1] for c in row[:n, 0]] == [c for _, _, c in order], "reading order"


def test_splice_puts_each_scenes_slots_where_its_image_was(tmp_path):
    trainer = _trainer(tmp_path, train.Settings("internvl", steps=2, batch=4, mixture={"pope": 1}))
    examples = _examples("pope", 3)
    batch = train.make_batch("internvl", trainer.processor, examples, short=True)
    counts = [2, 5, 3]
    out = oracle.splice_slots(batch, counts, trainer.model.config.image_token_id, trainer.tokenizer.pad_token_id)
    image = trainer.model.config.image_token_id
    assert (out["input_ids"] == image).sum(1).tolist() == counts
    for i, (im, context, target) in enumerate(examples):
        real = out["input_ids"][i][out["attention_mask"][i].bool()]
        text = trainer.tokenizer.decode(real[real != image])
        assert context.split("\n")[0] in text and text.endswith(target + "<|im_end|>")
        assert trainer.tokenizer.decode(out["input_ids"][i][out["answer_mask"][i]]) == target + "<|im_end|>"
    with pytest.raises(ValueError, match="row 0: 81 slots but only 80 image tokens"):
        oracle.splice_slots(batch, [81, 1, 1], image, trainer.tokenizer.pad_token_id)


def test_the_trainer_learns_from_the_slots_and_not_the_vision_tower(tmp_path):
    """One-object captions ("small red disk.") are read off the single slot: within 60 steps the answers'
    loss with each item's own scene falls far below the loss with another item's scene (which a wrong
    splice or a slot from the wrong scene would keep equal); the vision tower is never run."""
    settings = train.Settings("internvl", steps=60, batch=16, warmup=6, mixture={"caption": 1},
                              curriculum=((1.0, (1, 1), 1.0),))
    trainer = _trainer(tmp_path, settings)
    vision = {k: v.clone() for k, v in trainer.model.model.vision_tower.state_dict().items()}
    trainer.train(progress=False, heldout_every=60)
    check = json.loads((tmp_path / "progress.jsonl").read_text().splitlines()[-1])["heldout_exact"]["caption"]
    assert check["loss"] < 0.5 * check["loss_rotated"], check
    assert all(torch.equal(v, trainer.model.model.vision_tower.state_dict()[k]) for k, v in vision.items())
    resumed = _trainer(tmp_path, settings)
    assert resumed.step == 60 and all(torch.equal(a, b) for a, b in zip(resumed.extras["slots"].parameters(),
                                                                          trainer.extras["slots"].parameters()))


def test_the_command_refuses_bad_objects_and_tasks(capsys, tmp_path):
    assert oracle.main(["--family", "llava", "--objects", "0,9", "--work", str(tmp_path)]) == 2
    assert "(0, 9)" in capsys.readouterr().err  # the curriculum it would make names the counts
    assert oracle.main(["--family", "llava", "--objects", "two", "--work", str(tmp_path)]) == 2
    assert "--objects 'two'" in capsys.readouterr().err
    assert oracle.main(["--family", "llava", "--tasks", "pope,nope", "--work", str(tmp_path)]) == 2
    assert "'nope'" in capsys.readouterr().err
    assert oracle.main(["--family", "llava", "--check-every", "0", "--work", str(tmp_path)]) == 2
    assert "--check-every 0" in capsys.readouterr().err


def test_settings_refuse_unknown_tasks_and_bad_curricula():
    with pytest.raises(ValueError, match="mixture"):
        train.Settings("llava", mixture={"pope": 0})
    for bad in (((0.5, (1, 2), 1.0),), ((0.6, (1, 2), 1.0), (0.4, (2, 5), 0.0), (1.0, (2, 5), 0.0)),
                ((1.0, (2, 5), 1.5),), ((1.0, (0, 5), 0.0),), ((1.0, 5),)):
        with pytest.raises(ValueError, match="curriculum"):
            train.Settings("llava", curriculum=bad)
    assert "curriculum" not in train.Settings("llava").as_dict(), "defaults stay out (older cards and states match)"
    assert train.Settings("llava", mixture={"pope": 1, "gqa": 3}, batch=8).mix() == {"pope": 2, "gqa": 6}
