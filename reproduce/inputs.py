"""What a table run reads besides the spec: a real run's inputs checked before anything is written, a
smoke run's inputs made.

A real run needs, locally, the checkpoint, each benchmark's data sets and (for the rows that read it)
the prior; :func:`check_inputs` lists every missing one with how to provide it. A smoke run builds
its prior on the tiny model (:func:`smoke_prior`) from the package sample photographs.
"""

from __future__ import annotations

import io
import pathlib

from reproduce.adapter import uses_prior  # the adapter module imports only torch and the stdlib


class MissingInputs(Exception):
    """A checkpoint, data set or prior that a real run needs is not available locally."""


def checkpoint_cached(model_id: str, revision: str | None) -> bool:
    """Whether ``model_id`` (a hub id or a local folder) is available without network."""
    if pathlib.Path(model_id).is_dir():
        return (pathlib.Path(model_id) / "config.json").exists()
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(model_id, "config.json", revision=revision)
    return isinstance(hit, str)


def check_inputs(spec: dict, rows: list, columns: list, model_id: str, revision: str | None,
                 prior: pathlib.Path | None) -> None:
    """Raise :class:`MissingInputs` listing every missing checkpoint, data set and prior, with how to get them.

    ``rows``: :class:`reproduce.specs.Row`; ``columns``: :class:`reproduce.benchmarks.Benchmark`.
    """
    from reproduce import tasks

    problems = []
    if not checkpoint_cached(model_id, revision):
        problems.append(f"checkpoint {model_id!r} is not in the local Hugging Face cache: on a machine with network run "
                        f"`huggingface-cli download {model_id}` and copy the cache (HF_HOME) here, or pass "
                        "--model-path DIR with a local copy")
    for bench in columns:
        missing = tasks.missing_data(bench.stock)
        if missing:
            problems.append(f"{bench.name} (task {bench.stock}): data set(s) {', '.join(missing)} not in the local "
                            "datasets cache: run once with network access (`python -m reproduce "
                            f"{spec['table']} --columns '{bench.name}' --limit 1` with HF_TOKEN set and without "
                            "HF_HUB_OFFLINE) or copy the cache (HF_HOME) here")
    # a text tower the family supplies (LLaVA: CLIP's) is a checkpoint of its own
    from d2pruner.methods.base import Need, get_method
    from d2pruner.models.family import get_family

    CLIP_FOR_LLAVA = get_family(spec["model"]["family"]).text_tower_checkpoint
    if CLIP_FOR_LLAVA and any(r.key and Need.TEXT_TOWER in get_method(r.key).needs for r in rows):
        if not checkpoint_cached(CLIP_FOR_LLAVA, None):
            problems.append(f"CLIP text tower {CLIP_FOR_LLAVA!r} (needed by the CDPruner rows) is not in the local "
                            f"Hugging Face cache: on a machine with network run `huggingface-cli download "
                            f"{CLIP_FOR_LLAVA}` and copy the cache (HF_HOME) here")
    if any(uses_prior(r.key) for r in rows) and (prior is None or not prior.exists()):
        problems.append(f"prior file {prior} not found (needed by the {', '.join(sorted({r.method for r in rows if uses_prior(r.key)}))} "
                        f"rows): measure it with `python -m d2pruner.models.prior --model {model_id} --images "
                        f"<folder of calibration images, e.g. 1000 COCO images> --out {prior}`, or pass --prior PATH")
    if problems:
        raise MissingInputs("cannot run " + spec["table"] + ":\n  - " + "\n  - ".join(problems))


def smoke_images() -> list:
    """The package sample photographs the smoke data is built from, as PIL images."""
    from PIL import Image

    from reproduce.tasks import smoke

    return [Image.open(io.BytesIO(smoke.sample_png(s))).convert("RGB") for s in smoke.SAMPLES]


def smoke_prior(model, processor, family: str, out: pathlib.Path, max_tiles: int) -> pathlib.Path:
    """A prior measured on the tiny model over three package sample images (the real command's code path,
    :func:`d2pruner.models.prior.measure`)."""
    from d2pruner.models.family import get_family
    from d2pruner.models.prior import DEFAULT_PROMPT, measure

    images = smoke_images()[:3]
    meta = {"model_id": f"tiny_{family}", "model_class": type(model).__name__, "prune_layer": 2, "prompt": DEFAULT_PROMPT,
            "per": "smoke: package sample images"}
    measure(model, processor, get_family(family), [(f"sample{i}", lambda im=im: im) for i, im in enumerate(images)],
            prompt=DEFAULT_PROMPT, prune_layer=2, max_tiles=max_tiles, meta=meta, out=out, progress=False)
    return out
