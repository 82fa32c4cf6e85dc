"""Training a micro model from scratch: ``python -m reproduce.micro train --family llava``.

Deterministic from ``--seed`` (weights, data, order): step ``s`` takes, from each task of the
family's mixture (:data:`reproduce.micro.teach.MIXES`), the next examples of that task's endless
stream, so the data of a step is a function of the step alone. Every ``--save-every`` steps the
whole state (weights, optimizer, schedule position, loss history) is written atomically to
``<work>/state.pt``; a run started again with the same ``--work`` resumes from it and gives the
same weights as one that was never killed.

Aids for the 30-minute CPU budget, each measured necessary here (docs/micro.md): a curriculum
(:data:`CURRICULUM`: short prompts and small scenes first), auxiliary losses on the projector's
output (which colour covers each quarter of each visual token's region, read from the pixels; the
alignment of each token with the word embeddings of what it shows), both on heads that exist only in
training, so the checkpoint is the unmodified architecture; and two length-sorted half batches per
step. Even so, the shipped models stay far below the targets (their model cards). Progress goes to a bar on stderr and, one JSON line per
logged step, to ``<work>/progress.jsonl``. At the end the model and processor are saved with
``save_pretrained`` to ``--out`` with a model card (``README.md`` + ``card.json``): command, seeds,
versions, loss curve and held-out accuracy per task (:mod:`reproduce.micro.evaluate`).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import pathlib
import sys
import time

import torch

from reproduce.micro import models, teach
from reproduce.micro.aids import colour_quadrants, word_labels

__all__ = ["Settings", "build_tokenizer", "make_batch", "batch_loss", "Trainer", "main"]

#: Weight of the auxiliary colour loss beside the answers' loss.
AUX_WEIGHT = 0.5


#: The curriculum: (share of the steps until which it holds, scenes' object counts, share of examples
#: asked in the short form), in order; the last entry runs to the end.
CURRICULUM = ((0.2, (1, 2), 1.0), (0.45, (1, 3), 0.5), (1.0, (2, 5), 0.0))


class Settings:
    """The training settings (one place; the model card records them). ``mixture``: task -> weight
    (default the family's, :data:`reproduce.micro.teach.MIXES`); ``curriculum``: as :data:`CURRICULUM`."""

    def __init__(self, family: str, seed: int = 0, steps: int = 1500, batch: int = 32, lr: float = 2e-3,
                 warmup: int = 100, weight_decay: float = 0.01, clip: float = 1.0, mixture: dict | None = None,
                 curriculum=CURRICULUM) -> None:
        if family not in models.FAMILIES:
            raise ValueError(f"--family {family!r}: micro models exist for {', '.join(models.FAMILIES)}")
        if steps < 1 or batch < 1:
            raise ValueError(f"steps={steps!r}, batch={batch!r}: both must be >= 1")
        if mixture is not None:
            known = set(teach.MIXES["llava"]) | set(teach.MIXES["internvl"])
            bad = [k for k, v in mixture.items() if k not in known or not (isinstance(v, int) and v > 0)]
            if bad or not mixture:
                raise ValueError(f"mixture {mixture!r}: need positive int weights of tasks among {sorted(known)}")
        try:
            stages = tuple((float(u), (int(o[0]), int(o[1])), float(sh)) for u, o, sh in curriculum)
        except (TypeError, ValueError):
            stages = ()
        untils = [u for u, _, _ in stages]
        if (not stages or untils[-1] != 1.0 or untils != sorted(set(untils)) or untils[0] <= 0
                or any(not 1 <= lo <= hi <= 5 or not 0.0 <= sh <= 1.0 for _, (lo, hi), sh in stages)):
            raise ValueError(f"curriculum {curriculum!r}: need entries (until, (lo, hi), short share) with increasing "
                             "until in (0, 1] ending at 1.0, 1 <= lo <= hi <= 5 objects and a share in [0, 1]")
        curriculum = stages
        self.family, self.seed, self.steps, self.batch = family, int(seed), int(steps), int(batch)
        self.lr, self.warmup, self.weight_decay, self.clip = float(lr), int(warmup), float(weight_decay), float(clip)
        self.mixture, self.curriculum = (dict(mixture) if mixture is not None else None), curriculum

    def as_dict(self) -> dict:
        """The settings as keyword arguments of :class:`Settings` (``mixture`` and ``curriculum`` only when
        they are not the defaults, so work folders and cards of runs before they existed still match)."""
        out = dict(vars(self))
        if out["mixture"] is None:
            del out["mixture"]
        if out["curriculum"] == CURRICULUM:
            del out["curriculum"]
        return out

    def mix(self) -> dict[str, int]:
        """Examples per step of each task: the mixture scaled to :attr:`batch` (largest remainders)."""
        base = self.mixture or teach.MIXES[self.family]
        total = sum(base.values())
        exact = {k: v * self.batch / total for k, v in base.items()}
        counts = {k: int(math.floor(v)) for k, v in exact.items()}
        for k in sorted(exact, key=lambda k: (counts[k] - exact[k], k))[: self.batch - sum(counts.values())]:
            counts[k] += 1
        return counts

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to 5 % of the peak."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        t = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def vocabulary_corpus(family: str) -> list[str]:
    """Texts the tokenizer's vocabulary is read from: every task's prompts and answers over two training
    chunks and the held-out splits' first items, the family's prompt around a question, and every box
    coordinate and count."""
    from d2pruner.models.llava import LLAVA_SYSTEM
    from reproduce.micro.data import SPLITS

    # "abcdef": the string transformers' stop-string matcher tokenizes to learn how the vocabulary decodes
    corpus = [LLAVA_SYSTEM, " USER: ASSISTANT:", "<|im_start|>user\n<|im_start|>assistant\n", "<box></box><ref></ref>",
              "abcdef"]
    corpus += [f" {v} {v}, [[{v}, " for v in range(0, 1001, 125)] + [f" {k} {k}" for k in range(10)]
    stocks = set(teach.MIXES["llava"]) | set(teach.MIXES["internvl"]) | set(teach.CAPTIONS)
    from reproduce.benchmarks import all_benchmarks

    stocks |= {b.stock for b in all_benchmarks() if b.micro is not None}
    for stock in sorted(stocks):
        for seed in (teach.train_seed(0), teach.train_seed(1), SPLITS["validation"], SPLITS["test"]):
            for _, context, target in teach.task_examples(stock, teach.CHUNK, seed):
                corpus += [context, " " + target, target]
    return corpus


def build_tokenizer(family: str):
    return models.word_tokenizer(vocabulary_corpus(family))


def make_batch(family: str, processor, examples: list[tuple], short: bool = False) -> dict:
    """Model inputs for ``(image, context, target)`` examples: the family's prompt with the target and the
    answer end appended, padded on the left (the same prompt as evaluation), and ``answer_mask`` marking
    the target and end tokens. ``short``: the curriculum's first form instead, the image and the
    question's first line only (no system prompt, no chat template, no instruction)."""
    from d2pruner.models.family import get_family

    fam = get_family(family)
    images = [im for im, _, _ in examples]
    questions = [c for _, c, _ in examples]
    answers = [models.answer_prefix(family) + t + models.answer_end(family) for _, _, t in examples]
    if short:
        batch = processor(images=images, text=["<image>\n" + q.strip().split("\n")[0] + "\n" for q in questions],
                          padding=True, return_tensors="pt")
        answers = [a.lstrip(" ") for a in answers]
    else:
        batch = fam.build_batch(processor, images, questions, max_tiles=4)
    tok = processor.tokenizer
    answer_ids = [tok(a, add_special_tokens=False)["input_ids"] for a in answers]
    n = max(len(a) for a in answer_ids)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    b = ids.shape[0]
    # the prompt is left-padded: append each answer then move the padding of the ragged tail to the left
    full = torch.zeros((b, ids.shape[1] + n), dtype=ids.dtype)
    full_mask = torch.zeros_like(full)
    answer_mask = torch.zeros_like(full, dtype=torch.bool)
    for i, a in enumerate(answer_ids):
        pad = n - len(a)
        row = torch.cat([ids[i], torch.tensor(a, dtype=ids.dtype)])
        m = torch.cat([mask[i], torch.ones(len(a), dtype=mask.dtype)])
        full[i, pad:], full_mask[i, pad:] = row, m
        answer_mask[i, full.shape[1] - len(a):] = True
    out = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
    return {**out, "input_ids": full, "attention_mask": full_mask, "answer_mask": answer_mask}


def batch_loss(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over the answer tokens, and per example whether every answer token is the argmax."""
    inputs = {k: v for k, v in batch.items() if k != "answer_mask"}
    logits = model(**inputs).logits[:, :-1]
    labels = batch["input_ids"][:, 1:]
    mask = batch["answer_mask"][:, 1:]
    loss = torch.nn.functional.cross_entropy(logits[mask], labels[mask])
    right = ((logits.argmax(-1) == labels) | ~mask).all(dim=1)
    return loss, right


class Trainer:
    """One training run in a work folder (resumable)."""

    def __init__(self, settings: Settings, work: pathlib.Path, command: str = "") -> None:
        self.s, self.work, self.command = settings, pathlib.Path(work), command
        self.work.mkdir(parents=True, exist_ok=True)
        self.state_path, self.progress_path = self.work / "state.pt", self.work / "progress.jsonl"
        tok_dir = self.work / "tokenizer"
        if not (tok_dir / "tokenizer.json").exists():
            tok = build_tokenizer(settings.family)
            tmp = self.work / "tokenizer.tmp"
            tok.save_pretrained(tmp)
            os.replace(tmp, tok_dir)
        from transformers import PreTrainedTokenizerFast

        self.tokenizer = PreTrainedTokenizerFast.from_pretrained(tok_dir)
        self.processor = models.micro_processor(settings.family, self.tokenizer)
        self.model = models.build_model(settings.family, self.tokenizer, settings.seed)
        from d2pruner.models.tiny_parts import seeded

        self.regions = models.token_regions(settings.family)
        with seeded(settings.seed + 1):
            self.extras = self.build_extras()
        self._projected: list = []
        self.model.model.multi_modal_projector.register_forward_hook(
            lambda m, i, o: self._projected.append(o) if self.model.training else None)
        params = [*self.model.named_parameters(),
                  *((f"{k}.{n}", p) for k, m in self.extras.items() for n, p in m.named_parameters())]
        decay = [p for n, p in params if p.ndim >= 2]
        rest = [p for n, p in params if p.ndim < 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                      {"params": rest, "weight_decay": 0.0}], lr=settings.lr, betas=(0.9, 0.98))
        self.step, self.losses, self.seconds = 0, [], 0.0
        self.streams = {k: teach.Stream(k, objects=functools.partial(self._objects, n)) for k, n in settings.mix().items()}
        if self.state_path.exists():
            state = torch.load(self.state_path, weights_only=False)
            if state["settings"] != settings.as_dict():
                raise ValueError(f"{self.state_path} was written with settings {state['settings']}, not "
                                 f"{settings.as_dict()}: use another --work folder or the same settings")
            self.model.load_state_dict(state["model"])
            saved = state.get("extras") or {"aux_head": state.get("aux_head")}  # states before extras: the head only
            for k, m in self.extras.items():
                m.load_state_dict(saved[k])
            self.opt.load_state_dict(state["opt"])
            self.step, self.losses, self.seconds = state["step"], state["losses"], state["seconds"]
        self._forget_progress_after(self.step)  # also a fresh start's: lines of a run killed before its first save

    def _forget_progress_after(self, step: int) -> None:
        """Drop the progress lines of steps after ``step`` (logged after the last saved state by a run that
        was then killed; the resumed run logs them again)."""
        if not self.progress_path.exists():
            return

        def logged(line: str) -> int | None:
            try:
                return int(json.loads(line)["step"])
            except (ValueError, KeyError, TypeError):  # a line cut short by the kill
                return None

        lines = self.progress_path.read_text(encoding="utf-8").splitlines()
        keep = [line for line in lines if (n := logged(line)) is not None and n <= step]
        if len(keep) != len(lines):
            tmp = self.progress_path.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
            os.replace(tmp, self.progress_path)

    def build_extras(self) -> dict[str, torch.nn.Module]:
        """Modules trained beside the model and saved in the state, never in the checkpoint: here the
        auxiliary colour head (:meth:`step_loss`)."""
        from reproduce.micro.scenes import COLOURS

        return {"aux_head": torch.nn.Linear(self.model.config.text_config.hidden_size, 4 * (len(COLOURS) + 1))}

    def _objects(self, per_step: int, chunk: int) -> tuple[int, int]:
        """Object counts of a stream's chunk: by the share of training at which the chunk starts."""
        at = chunk * teach.CHUNK / per_step / self.s.steps
        return next(objects for until, objects, _ in self.s.curriculum if at < until or until == 1.0)

    def short_form(self, step: int, n: int) -> list[bool]:
        """Which of a step's ``n`` examples are asked in the short form (the curriculum's share, by a draw
        seeded with the step)."""
        import numpy as np

        at = step / self.s.steps
        share = next(short for until, _, short in self.s.curriculum if at < until or until == 1.0)
        return list(np.random.default_rng([self.s.seed, step]).random(n) < share)

    def examples(self, step: int) -> list[tuple]:
        """The examples of step ``step`` (a function of the step alone)."""
        out = []
        for stock, n in self.s.mix().items():
            out += self.streams[stock].take(step * n, n)
        return out

    def heldout(self, n: int = 32) -> dict[str, float]:
        """Per task, the share of ``n`` validation examples whose whole answer is the argmax under teacher
        forcing -- exactly the share that greedy decoding answers word for word."""
        from reproduce.micro.data import SPLITS

        if not hasattr(self, "_heldout"):
            self._heldout = {k: teach.task_examples(k, n, SPLITS["validation"]) for k in self.s.mix()}
        was = self.model.training
        self.model.eval()
        out = {}
        with torch.no_grad():
            for stock, examples in self._heldout.items():
                right = [batch_loss(self.model, make_batch(self.s.family, self.processor, examples[i:i + 32]))[1]
                         for i in range(0, len(examples), 32)]
                out[stock] = round(float(torch.cat(right).float().mean()), 4)
        self.model.train(was)
        return out

    def step_loss(self, examples: list[tuple]) -> tuple[float, torch.Tensor]:
        """Forward and backward over ``examples`` in two length-sorted halves; the loss (answers' cross-entropy
        per answer token + AUX_WEIGHT x the colour loss) and, per example, whether its answer was the argmax."""
        short = self.short_form(self.step, len(examples))
        order = sorted(range(len(examples)), key=lambda i: (not short[i], len(examples[i][1]) + len(examples[i][2]), i))
        if 0 < sum(short) < len(examples):  # short and full forms in batches of their own
            halves = [[i for i in order if short[i]], [i for i in order if not short[i]]]
        else:
            halves = [order[: (len(order) + 1) // 2], order[(len(order) + 1) // 2:]]
        halves = [h for h in halves if h]
        batches = [make_batch(self.s.family, self.processor, [examples[i] for i in h], short=short[h[0]]) for h in halves]
        tokens = sum(int(b["answer_mask"][:, 1:].sum()) for b in batches)
        total, right = 0.0, torch.zeros(len(examples), dtype=torch.bool)
        for idx, batch in zip(halves, batches):
            self._projected.clear()
            loss, ok = batch_loss(self.model, batch)
            share = int(batch["answer_mask"][:, 1:].sum()) / tokens
            feats = self._projected[-1].reshape(len(idx), len(self.regions), -1)
            labels = colour_quadrants([examples[i][0] for i in idx], self.regions)
            aux = torch.nn.functional.cross_entropy(self.extras["aux_head"](feats).reshape(labels.numel(), -1), labels.reshape(-1))
            aux = aux + self.align_loss(feats, [examples[i][0] for i in idx])
            part = loss * share + AUX_WEIGHT * aux * len(idx) / len(examples)
            part.backward()
            total += float(part.detach())
            right[idx] = ok
        return total, right

    def align_loss(self, feats: torch.Tensor, images) -> torch.Tensor:
        """Alignment of each visual token with the words for what it shows: cross-entropy of its projected
        feature's dot products with the (tied) word embeddings of the colours, and of the shapes, against
        the colour and shape of the object it covers (:func:`word_labels`)."""
        from reproduce.micro.scenes import COLOURS, SHAPES

        colour_ids, shape_ids = word_labels(images, self.regions, self.tokenizer)
        embed = self.model.get_input_embeddings().weight
        total = feats.new_zeros(())
        for words, labels in ((COLOURS, colour_ids), (SHAPES, shape_ids)):
            ids = torch.tensor([self.tokenizer.convert_tokens_to_ids(" " + w) for w in words])
            mask = labels >= 0
            if mask.any():
                target = (labels[mask][:, None] == ids[None]).float().argmax(-1)
                total = total + torch.nn.functional.cross_entropy(feats[mask] @ embed[ids].T, target)
        return total

    def save_state(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        torch.save({"settings": self.s.as_dict(), "model": self.model.state_dict(),
                    "extras": {k: m.state_dict() for k, m in self.extras.items()},
                    "opt": self.opt.state_dict(),
                    "step": self.step, "losses": self.losses, "seconds": self.seconds}, tmp)
        os.replace(tmp, self.state_path)

    def log(self, record: dict) -> None:
        with open(self.progress_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def train(self, until: int | None = None, save_every: int = 50, log_every: int = 10, progress: bool = True,
              heldout_every: int = 250) -> list:
        """Train up to step ``until`` (default: all steps); the losses of every step so far."""
        from tqdm import tqdm

        until = self.s.steps if until is None else min(until, self.s.steps)
        self.model.train()
        bar = tqdm(total=until, initial=self.step, desc=f"micro {self.s.family}", disable=not progress, file=sys.stderr)
        start = time.perf_counter() - self.seconds
        while self.step < until:
            for group in self.opt.param_groups:
                group["lr"] = self.s.lr_at(self.step)
            self.opt.zero_grad(set_to_none=True)
            loss, right = self.step_loss(self.examples(self.step))
            torch.nn.utils.clip_grad_norm_([*self.model.parameters(),
                                            *(p for m in self.extras.values() for p in m.parameters())], self.s.clip)
            self.opt.step()
            self.losses.append(round(float(loss), 6))
            self.step += 1
            self.seconds = time.perf_counter() - start
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss):.3f}", acc=f"{float(right.float().mean()):.2f}")
            if self.step % log_every == 0 or self.step == until:
                record = {"step": self.step, "loss": self.losses[-1], "batch_exact": round(float(right.float().mean()), 4),
                          "lr": round(self.s.lr_at(self.step - 1), 6), "seconds": round(self.seconds, 1)}
                if heldout_every and (self.step % heldout_every == 0 or self.step == until):
                    record["heldout_exact"] = self.heldout()
                self.log(record)
            if self.step % save_every == 0 or self.step == until:
                self.save_state()
        bar.close()
        return self.losses


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reproduce.micro train", description=__doc__.splitlines()[0])
    p.add_argument("--family", required=True, choices=models.FAMILIES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the family's, see docs/micro.md)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--work", type=pathlib.Path, help="work folder for the resumable state (default work/micro-<family>)")
    p.add_argument("--out", type=pathlib.Path, help="checkpoint folder (default: the shipped one, "
                                                     "reproduce/micro/checkpoints/<family>)")
    p.add_argument("--eval-items", type=int, default=200, help="held-out items per task for the model card")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps = args.steps or DEFAULT_STEPS[args.family]
    try:
        settings = Settings(args.family, args.seed, steps, args.batch, args.lr)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    work = args.work or pathlib.Path("work") / f"micro-{args.family}"
    command = "python -m reproduce.micro train " + " ".join(argv if argv is not None else sys.argv[1:])
    trainer = Trainer(settings, work, command)
    trainer.train()
    from reproduce.micro import card

    out = args.out or models.checkpoint_dir(args.family)
    card.write_checkpoint(trainer, out, command, args.eval_items)
    print(f"wrote {out}")
    return 0


#: Default steps per family: what fit 30 minutes when the two were trained side by side, one thread each.
DEFAULT_STEPS = {"llava": 950, "internvl": 950}
