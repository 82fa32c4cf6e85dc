"""The shipped micro models: small, loadable as ordinary checkpoints, as accurate as their model cards
say, and reproducible from their seeds (the first 50 training steps' losses)."""

import json
import shutil

import pytest
import torch

from reproduce.micro import card as cards
from reproduce.micro import models, teach, train

pytestmark = pytest.mark.micro

#: Largest |loss - recorded loss| over the first 50 steps: float sums differ between CPUs and thread
#: counts, and a difference grows with each step (measured here: docs/micro.md).
LOSS_TOLERANCE = 0.02


def shipped_card(family: str) -> dict:
    path = models.checkpoint_dir(family) / "card.json"
    assert path.exists(), f"no shipped micro {family} checkpoint: train it with python -m reproduce.micro train --family {family}"
    return json.loads(path.read_text())


@pytest.mark.parametrize("family", models.FAMILIES)
def test_checkpoint_is_small_and_loads_as_an_ordinary_checkpoint(family):
    from d2pruner.models.loading import load_model

    folder = models.checkpoint_dir(family)
    assert (folder / "model.safetensors").stat().st_size <= 10 * 2**20
    model, processor, name = load_model(str(folder), dtype=torch.float32)
    assert name == family and processor.tokenizer.padding_side == "left"
    card = shipped_card(family)
    assert card["parameters"] == sum(p.numel() for p in model.parameters())
    assert card["steps"] == card["settings"]["steps"] and card["train_seconds"] <= 30 * 60
    assert (folder / "prior.json").exists()


@pytest.mark.parametrize("family", models.FAMILIES)
def test_shipped_checkpoint_gives_its_model_card_accuracy(family):
    from d2pruner.models.loading import load_model
    from reproduce.micro.evaluate import evaluate

    card = shipped_card(family)
    model, processor, _ = load_model(str(models.checkpoint_dir(family)), dtype=torch.float32)
    measured = evaluate(model, processor, family, card["heldout"]["split"], card["heldout"]["items"])
    assert measured.keys() == card["heldout"]["accuracy"].keys()
    for task, value in measured.items():
        assert abs(value - card["heldout"]["accuracy"][task]) <= 1.0, (task, value, card["heldout"]["accuracy"][task])


def _trainer(family, work, **settings):
    work.mkdir(parents=True, exist_ok=True)
    shutil.copytree(models.checkpoint_dir(family), work / "tokenizer",
                    ignore=lambda d, names: [n for n in names if not n.startswith(("tokenizer", "special_tokens"))])
    return train.Trainer(train.Settings(family, **settings), work)


@pytest.mark.parametrize("family", models.FAMILIES)
def test_fifty_steps_from_the_seed_match_the_recorded_losses(family, tmp_path):
    card = shipped_card(family)
    settings = {k: v for k, v in card["settings"].items() if k != "family"}
    threads = torch.get_num_threads()
    torch.set_num_threads(card["versions"]["threads"])  # the training's own thread count: the same float sums
    try:
        losses = _trainer(family, tmp_path / "work", **settings).train(until=cards.LOSS_PREFIX, progress=False,
                                                                       heldout_every=0)
    finally:
        torch.set_num_threads(threads)
    recorded = card["loss_prefix"]
    assert len(recorded) == cards.LOSS_PREFIX
    worst = max(abs(a - b) for a, b in zip(losses, recorded))
    assert worst <= LOSS_TOLERANCE, f"largest loss difference {worst:.4f} over the first 50 steps"


def test_a_killed_run_resumes_to_the_same_weights(tmp_path):
    small = {"steps": 4, "batch": 6, "warmup": 2}
    straight = _trainer("internvl", tmp_path / "a", **small)
    straight.train(progress=False, heldout_every=0)
    first = _trainer("internvl", tmp_path / "b", **small)
    first.train(until=2, save_every=1, log_every=1, progress=False, heldout_every=0)
    with open(first.progress_path, "a") as f:  # it logged step 3, then died before saving its state
        f.write(json.dumps({"step": 3, "loss": 9.0}) + "\n" + '{"step": 4, "lo')  # the last line cut by the kill
    del first  # the process dies here; a new one starts from the work folder
    resumed = train.Trainer(train.Settings("internvl", **small), tmp_path / "b")
    assert resumed.step == 2
    resumed.train(progress=False, heldout_every=0, log_every=1)
    assert resumed.losses == straight.losses
    logged = [json.loads(line) for line in resumed.progress_path.read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3, 4] and logged[2]["loss"] == resumed.losses[2]
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="written with settings"):
        train.Trainer(train.Settings("internvl", steps=5, batch=6, warmup=2), tmp_path / "b")


def test_settings_refuse_bad_values():
    with pytest.raises(ValueError, match="'qwen2_5_vl'"):
        train.Settings("qwen2_5_vl")
    with pytest.raises(ValueError, match="steps=0"):
        train.Settings("llava", steps=0)
    assert sum(train.Settings("internvl", batch=7).mix().values()) == 7


@pytest.mark.parametrize("family", models.FAMILIES)
def test_tokenizer_covers_every_prompt_and_answer_and_decodes_them_back(family):
    from transformers import PreTrainedTokenizerFast

    from reproduce.micro.data import SPLITS

    tok = PreTrainedTokenizerFast.from_pretrained(models.checkpoint_dir(family))
    stocks = {b.stock for b in __import__("reproduce.benchmarks", fromlist=["x"]).all_benchmarks()} | set(teach.CAPTIONS)
    for stock in sorted(stocks):
        for _, context, target in teach.task_examples(stock, 16, teach.train_seed(77)) + teach.task_examples(
                stock, 16, SPLITS["test"]):
            for text in (context, " " + target):
                ids = tok(text, add_special_tokens=False)["input_ids"]
                assert tok.unk_token_id not in ids, (stock, text)
                assert tok.decode(ids) == text


def test_tokenizers_rebuild_from_their_corpus():
    from transformers import PreTrainedTokenizerFast

    rebuilt = {family: train.build_tokenizer(family).get_vocab() for family in models.FAMILIES[:1]}
    for family in models.FAMILIES:  # one corpus serves every family: the data and the prompts are shared
        shipped = PreTrainedTokenizerFast.from_pretrained(models.checkpoint_dir(family)).get_vocab()
        assert shipped == rebuilt[models.FAMILIES[0]], family
