"""``python -m d2pruner.models.prior``: measure the positional prior of a checkpoint in the local cache.

    python -m d2pruner.models.prior --model llava-hf/llava-1.5-7b-hf --images DIR --out prior.json

Shows a progress bar, writes its running sum after every image to ``OUT.partial.json`` and, when run
again, resumes from there; refuses to mix models, layers or prompts in one file. Works for every
registered model family (:mod:`d2pruner.models.family`).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch

from d2pruner.models.prior import DEFAULT_PROMPT, IMAGE_SUFFIXES, image_key, measure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m d2pruner.models.prior", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint id in the local HF cache (or a folder)")
    parser.add_argument("--revision", default=None)
    parser.add_argument("--images", required=True, type=pathlib.Path, help="folder of calibration images")
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--prune-layer", type=int, default=2)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-tiles", type=int, default=12, help="InternVL only: the processor's tile limit")
    args = parser.parse_args(argv)

    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if args.images.is_dir() else []
    if not paths:
        print(f"error: no images ({', '.join(IMAGE_SUFFIXES)}) in {args.images}", file=sys.stderr)
        return 2
    from PIL import Image

    from d2pruner.models.family import get_family
    from d2pruner.models.loading import load_model

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
    images = [(image_key(p), lambda p=p: Image.open(p).convert("RGB")) for p in paths]
    prior = measure(model, processor, family, images, prompt=args.prompt, prune_layer=args.prune_layer,
                    max_tiles=args.max_tiles, meta=meta, out=args.out)
    print(f"wrote {args.out}: {prior.values.size} values from {prior.meta['n_images']} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
