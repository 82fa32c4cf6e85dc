"""``python -m d2pruner.models.prior``: measure the positional prior of a checkpoint in the local cache.

    python -m d2pruner.models.prior --model llava-hf/llava-1.5-7b-hf --images DIR --out prior.json

Shows a progress bar, writes its running sum after every image to ``OUT.partial.json`` and, when run
again, resumes from there; refuses to mix models, layers or prompts in one file. Works for every
registered model family (:mod:`d2pruner.models.family`).

Every flag is checked before the model is loaded (``--prune-layer`` against the checkpoint's number of
layers, read from its config; ``--device`` against this machine), and so are the files it resumes from.
An image that cannot be decoded (corrupt, truncated, not an image) is skipped with a warning naming
it, and counted in the prior's provenance (``n_skipped_images``, ``skipped_images``): one bad file among
a thousand should neither stop the measurement nor stop every resumed run on the same file again, and
the count says how many images the prior really averages.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch

from d2pruner.models.prior import DEFAULT_PROMPT, IMAGE_SUFFIXES, Prior, check_prune_layer, image_key, load_image, measure

EPILOG = ("Unreadable images are skipped with a warning naming them and counted in the output's provenance "
          "(meta.n_skipped_images, meta.skipped_images); a resumed run tries them again.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m d2pruner.models.prior", description=__doc__.splitlines()[0],
                                     epilog=EPILOG)
    parser.add_argument("--model", required=True, help="checkpoint id in the local HF cache (or a folder)")
    parser.add_argument("--revision", default=None)
    parser.add_argument("--images", required=True, type=pathlib.Path,
                        help="folder of calibration images (unreadable ones are skipped and counted)")
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--prune-layer", type=int, default=2,
                        help="K: the prior is the attention row at layer K-1's input; 1 to the model's layers - 1")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-tiles", type=int, default=12, help="InternVL only: the processor's tile limit (>= 1)")
    args = parser.parse_args(argv)
    if args.prune_layer < 1:
        parser.error(f"--prune-layer {args.prune_layer}: K must be at least 1 (the prior is the attention row at "
                     "the input of layer K-1)")
    if args.max_tiles < 1:
        parser.error(f"--max-tiles {args.max_tiles} must be >= 1")
    from d2pruner.models.loading import device_problem

    if (why := device_problem(args.device)) is not None:
        parser.error(f"--device: {why}")

    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if args.images.is_dir() else []
    if not paths:
        print(f"error: no images ({', '.join(IMAGE_SUFFIXES)}) in {args.images}", file=sys.stderr)
        return 2
    from transformers import AutoConfig

    from d2pruner.models.family import get_family
    from d2pruner.models.loading import load_model, missing_checkpoint_message

    try:  # the config alone (no weights) says how many layers K may range over
        config = AutoConfig.from_pretrained(args.model, revision=args.revision, local_files_only=True)
    except OSError:
        print(f"error: {missing_checkpoint_message(args.model, args.revision)}", file=sys.stderr)
        return 2
    try:
        check_prune_layer(args.prune_layer, int(getattr(config, "text_config", config).num_hidden_layers))
    except ValueError as err:
        print(f"error: --prune-layer {args.prune_layer}: {err}", file=sys.stderr)
        return 2
    try:  # a prior to resume from that is not one is named now, not after the model has loaded
        if args.out.exists():
            Prior.load(args.out)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        model, processor, name = load_model(args.model, revision=args.revision, dtype=getattr(torch, args.dtype),
                                            device=args.device)
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    family = get_family(name)
    meta = {"model_id": args.model, "revision": args.revision, "model_class": type(model).__name__,
            "prune_layer": args.prune_layer, "prompt": args.prompt, "dtype": args.dtype, "device": args.device,
            "max_tiles": args.max_tiles if family.uses_max_tiles else None, "per": family.prior_per}
    try:
        images = [(image_key(p), lambda p=p: load_image(p)) for p in paths]
    except OSError as err:  # a file that cannot even be read for its hash
        print(f"error: cannot read {err.filename}: {err.strerror}", file=sys.stderr)
        return 2
    try:
        prior = measure(model, processor, family, images, prompt=args.prompt, prune_layer=args.prune_layer,
                        max_tiles=args.max_tiles, meta=meta, out=args.out)
    except ValueError as err:  # e.g. a partial state of another run, or nothing readable
        print(f"error: {err}", file=sys.stderr)
        return 2
    skipped = prior.meta.get("n_skipped_images", 0)
    print(f"wrote {args.out}: {prior.values.size} values from {prior.meta['n_images']} images"
          + (f" ({skipped} unreadable images skipped: see meta.skipped_images)" if skipped else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
