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
    # FAMILY: LLaVA's CDPruner rows read CLIP's text tower, a checkpoint of its own
    if spec["model"]["family"] == "llava" and any(r.key == "cdpruner" for r in rows):
        from d2pruner.models.clip_text import CLIP_FOR_LLAVA

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
    """A prior measured on the tiny model over three package sample images (the real command's code path)."""
    from d2pruner.models import internvl, llava
    from d2pruner.models.loading import build_inputs
    from d2pruner.models.prior import DEFAULT_PROMPT, compute

    grids: list = [None]
    # FAMILY: where the visual tokens are, and InternVL's tile grid per image
    if family == "llava":
        side = llava.grid_side(model)
        find = lambda ids: llava.find_items(ids, int(model.config.image_token_id), side)  # noqa: E731
    else:
        side = internvl.tile_side(model)
        find = lambda ids: internvl.find_items(ids, int(model.config.image_token_id), side, grids)  # noqa: E731

    def make(image):
        def build():
            if family == "internvl":  # FAMILY: InternVL's tiles
                grids[0] = internvl.tile_grid((image.height, image.width), max_tiles, tile_pixels=internvl.tile_pixels(processor))
            return build_inputs(processor, family, image, DEFAULT_PROMPT, max_tiles, model.device)
        return build

    images = smoke_images()[:3]
    meta = {"model_id": f"tiny_{family}", "model_class": type(model).__name__, "prune_layer": 2, "prompt": DEFAULT_PROMPT,
            "per": "smoke: package sample images"}
    compute(model, [(f"sample{i}", make(im)) for i, im in enumerate(images)], prune_layer=2, find_items=find,
            block=side * side, meta=meta, out=out, progress=False)
    return out
