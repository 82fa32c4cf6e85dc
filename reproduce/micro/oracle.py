"""The language side alone: a micro language model trained on oracle visual inputs.

``python -m reproduce.micro oracle --family internvl --tasks pope --objects 2,5 --steps 600``

Why: when a micro model does not learn a task in its training budget, is it the vision tower that
cannot see, or the language model that cannot learn to use what it is shown? This command takes
vision out of the question. Each image's block of visual tokens is replaced by one *slot* per thing
in the scene (object or digit sign, in reading order), whose embedding is the sum of learned
embeddings of its attributes -- colour, shape, size, digit, and the column and row of its centre on a
16-bin grid -- the best features a vision tower could hand over. Only the language model and these
embeddings are trained, on the same tasks, prompts and answers as :mod:`reproduce.micro.train` (the
same :class:`~reproduce.micro.train.Trainer`: deterministic, resumable, ``progress.jsonl``).

Held-out checks (validation split, scenes of the same object counts) give per task the exact-answer
rate and the answers' loss twice: with each question's own scene and with the scenes rotated by one
(every question paired with another item's slots). A model that uses the slots has a lower loss with
its own scenes; equal losses mean it answers from the question alone.

The report (``--out``, JSON, written atomically at the end) holds the command, settings, versions and
every check. It is a diagnostic: nothing of it is shipped as a model.

>>> from reproduce.micro.scenes import Obj, Scene
>>> scene = Scene((Obj("bar", "blue", "large", 4, 4, 3, 1), Obj("disk", "red", "small", 0, 0, 1, 1)), ("moon", 0, 0, .5))
>>> slot_labels([scene])[0].tolist()  # reading order: the red disk first
[[[1, 1, 1, 0, 1, 1], [3, 4, 2, 0, 11, 9]]]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import torch

from reproduce.micro import models, train

__all__ = ["ATTRIBUTES", "things", "slot_labels", "OracleSlots", "splice_slots", "OracleTrainer", "main"]

#: Per slot, the attributes embedded and how many values each takes (0: none, e.g. a sign has no size).
ATTRIBUTES = {"colour": 7, "shape": 6, "size": 3, "digit": 11, "x": 16, "y": 16}


def things(scene) -> list[tuple]:
    """The scene's objects and digit signs in reading order (top to bottom, then left to right), each as
    its attribute indices in :data:`ATTRIBUTES` order: colour, shape, size and digit 1-based (0 where it
    has none), then the column and row bins (0-based) of its centre."""
    from reproduce.micro.scenes import COLOURS, GRID, SHAPES, SIZES

    colours, shapes, sizes = list(COLOURS), list(SHAPES), list(SIZES)
    out = [((o.y, o.x), (colours.index(o.colour) + 1, shapes.index(o.shape) + 1, sizes.index(o.size) + 1, 0),
            o.cells_xyxy()) for o in scene.objects]
    out += [((y, x), (colours.index(c) + 1, len(shapes) + 1, 0, d + 1), [x, y, x + 2, y + 2])
            for x, y, d, c in scene.digits]
    bins = ATTRIBUTES["x"]
    return [(*attrs, min(bins - 1, int((x0 + x1) / 2 / GRID * bins)), min(bins - 1, int((y0 + y1) / 2 / GRID * bins)))
            for _, attrs, (x0, y0, x1, y1) in sorted(out, key=lambda t: t[0])]


def slot_labels(scenes) -> tuple[torch.Tensor, list[int]]:
    """``(labels, counts)``: the attribute indices of every scene's slots, ``(scenes, most slots, 6)``
    (zero rows past a scene's own), and each scene's number of slots."""
    rows = [things(s) for s in scenes]
    counts = [len(r) for r in rows]
    labels = torch.zeros(len(rows), max(counts), len(ATTRIBUTES), dtype=torch.long)
    for i, r in enumerate(rows):
        labels[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return labels, counts


class OracleSlots(torch.nn.Module):
    """The slot embeddings: one learned table per attribute, summed."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.tables = torch.nn.ModuleDict({k: torch.nn.Embedding(n, width) for k, n in ATTRIBUTES.items()})
        for table in self.tables.values():
            torch.nn.init.normal_(table.weight, std=0.02)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return sum(table(labels[..., j]) for j, table in enumerate(self.tables.values()))


def splice_slots(batch: dict, counts: list[int], image_token_id: int, pad_token_id: int) -> dict:
    """``batch`` (from :func:`reproduce.micro.train.make_batch`) with each row's run of image tokens cut to
    its scene's slot count, padded on the left again; ``ValueError`` if a scene has more slots than its
    row has image tokens."""
    ids, mask, answer = batch["input_ids"], batch["attention_mask"], batch["answer_mask"]
    rows = []
    for i, count in enumerate(counts):
        where = (ids[i] == image_token_id).nonzero().flatten()
        if count > len(where):
            raise ValueError(f"row {i}: {count} slots but only {len(where)} image tokens to put them in")
        keep = torch.ones(ids.shape[1], dtype=torch.bool)
        keep[where[count:]] = False
        rows.append((ids[i][keep], mask[i][keep], answer[i][keep]))
    length = max(len(r[0]) for r in rows)

    def left(t: torch.Tensor, value) -> torch.Tensor:
        return torch.cat([torch.full((length - len(t),), value, dtype=t.dtype), t])

    return {"input_ids": torch.stack([left(r[0], pad_token_id) for r in rows]),
            "attention_mask": torch.stack([left(r[1], 0) for r in rows]),
            "answer_mask": torch.stack([left(r[2], False) for r in rows])}


class OracleTrainer(train.Trainer):
    """A :class:`~reproduce.micro.train.Trainer` whose language model reads oracle slots instead of the
    vision tower's output (the vision tower and projector are never run, so they stay untrained)."""

    def build_extras(self) -> dict[str, torch.nn.Module]:
        return {"slots": OracleSlots(self.model.config.text_config.hidden_size)}

    def forward(self, examples: list[tuple], short: bool, scenes=None) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Answers' mean cross-entropy, per example whether the whole answer is the argmax, and the number
        of answer tokens, with the slots of ``scenes`` (default each example's own)."""
        scenes = scenes if scenes is not None else [e[0].micro_scene for e in examples]
        labels, counts = slot_labels(scenes)
        batch = train.make_batch(self.s.family, self.processor, examples, short=short)
        batch = splice_slots(batch, counts, self.model.config.image_token_id, self.tokenizer.pad_token_id)
        ids = batch["input_ids"]
        embeds = self.model.get_input_embeddings()(ids)
        slots = self.extras["slots"](labels).to(embeds.dtype)
        slots = torch.cat([slots[i, :n] for i, n in enumerate(counts)])
        embeds = embeds.masked_scatter((ids == self.model.config.image_token_id)[..., None], slots)
        hidden = self.model.model.language_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"])
        logits = self.model.lm_head(hidden.last_hidden_state)[:, :-1]
        target, mask = ids[:, 1:], batch["answer_mask"][:, 1:]
        loss = torch.nn.functional.cross_entropy(logits[mask], target[mask])
        return loss, ((logits.argmax(-1) == target) | ~mask).all(dim=1), int(mask.sum())

    def step_loss(self, examples: list[tuple]) -> tuple[float, torch.Tensor]:
        """As the trainer's, without the auxiliary losses: the short-form and full-form examples in a
        batch each, weighted by their answer tokens."""
        short = self.short_form(self.step, len(examples))
        groups = [[i for i in range(len(examples)) if short[i]], [i for i in range(len(examples)) if not short[i]]]
        parts, right = [], torch.zeros(len(examples), dtype=torch.bool)
        for group in (g for g in groups if g):
            loss, ok, tokens = self.forward([examples[i] for i in group], short[group[0]])
            parts.append((loss, tokens))
            right[group] = ok
        total = sum(loss * tokens for loss, tokens in parts) / sum(tokens for _, tokens in parts)
        total.backward()
        return float(total.detach()), right

    def heldout(self, n: int = 64) -> dict[str, dict]:
        """Per task, on ``n`` validation items of the final curriculum stage's object counts, asked as that
        stage asks (short form when its short share is at least a half): the exact-answer rate, and the
        answers' loss with each item's own scene and with the scenes rotated by one."""
        from reproduce.micro import data, teach

        _, objects, short_share = self.s.curriculum[-1]
        if not hasattr(self, "_heldout"):
            data.OBJECTS.append(objects)
            try:
                self._heldout = {k: teach.task_examples(k, n, data.SPLITS["validation"]) for k in self.s.mix()}
            finally:
                data.OBJECTS.pop()
        was = self.model.training
        self.model.eval()
        out = {}
        with torch.no_grad():
            for stock, examples in self._heldout.items():
                scenes = [e[0].micro_scene for e in examples]
                loss, ok, _ = self.forward(examples, short_share >= 0.5)
                rotated, _, _ = self.forward(examples, short_share >= 0.5, scenes[1:] + scenes[:1])
                out[stock] = {"exact": round(float(ok.float().mean()), 4), "loss": round(float(loss), 4),
                              "loss_rotated": round(float(rotated), 4)}
        self.model.train(was)
        return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reproduce.micro oracle", description=__doc__.splitlines()[0])
    p.add_argument("--family", required=True, choices=models.FAMILIES)
    p.add_argument("--tasks", help="comma-separated stock tasks, equal weights (default: the family's mixture)")
    p.add_argument("--objects", default="2,5", help="object counts of the scenes, LO,HI (default 2,5)")
    p.add_argument("--full-prompts", action="store_true", help="ask in the tasks' own prompts (default: the short "
                                                                "form, image and question only)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check-every", type=int, default=100, help="held-out checks every N steps")
    p.add_argument("--work", type=pathlib.Path, help="work folder (resumable; default work/oracle-<family>)")
    p.add_argument("--out", type=pathlib.Path, help="report JSON (default <work>/report.json)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        try:
            lo, hi = (int(v) for v in args.objects.split(","))
        except ValueError:
            raise ValueError(f"--objects {args.objects!r}: need LO,HI, two integers") from None
        mixture = None if not args.tasks else {t.strip(): 1 for t in args.tasks.split(",") if t.strip()}
        settings = train.Settings(args.family, args.seed, args.steps, args.batch, args.lr, warmup=min(100, args.steps // 10),
                                  mixture=mixture, curriculum=((1.0, (lo, hi), 0.0 if args.full_prompts else 1.0),))
        if args.check_every < 1:
            raise ValueError(f"--check-every {args.check_every!r}: need >= 1 (the report is the held-out checks)")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    work = args.work or pathlib.Path("work") / f"oracle-{args.family}"
    try:
        trainer = OracleTrainer(settings, work)
    except ValueError as err:  # a work folder of other settings
        print(f"error: {err}", file=sys.stderr)
        return 2
    trainer.train(heldout_every=args.check_every)
    checks = [json.loads(line) for line in trainer.progress_path.read_text(encoding="utf-8").splitlines()]
    from reproduce.micro.card import versions
    from reproduce.records import write_json_atomic

    report = {"command": "python -m reproduce.micro oracle " + " ".join(argv if argv is not None else sys.argv[1:]),
              "settings": settings.as_dict(), "mix": settings.mix(), "versions": versions(),
              "train_seconds": round(trainer.seconds, 1),
              "checks": [{"step": c["step"], "train_loss": c["loss"], "heldout": c["heldout_exact"]}
                         for c in checks if "heldout_exact" in c]}
    out = args.out or work / "report.json"
    write_json_atomic(out, report)
    last = report["checks"][-1]
    print(f"step {last['step']}: " + "; ".join(f"{k} exact {v['exact']:.2f}, loss {v['loss']:.3f} "
                                                 f"(rotated scenes {v['loss_rotated']:.3f})" for k, v in last["heldout"].items()))
    print(f"wrote {out}")
    return 0
