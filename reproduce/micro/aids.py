"""The labels of the training-only auxiliary losses of :mod:`reproduce.micro.train`: what each visual
token of a micro model sees, read from the scene's pixels (:func:`colour_quadrants`) or from the scene
itself (:func:`word_labels`). The heads that use them exist only during training.
"""

from __future__ import annotations

import torch

__all__ = ["colour_quadrants", "word_labels"]


def colour_quadrants(images, regions) -> torch.Tensor:
    """Auxiliary labels: for each image, visual token (its region, fractions of the image) and quarter of
    that region, the index of the scene colour (1-based, :data:`reproduce.micro.scenes.COLOURS`) that
    covers at least 30 % of its pixels, else 0. Shape ``(images, tokens, 4)``.

    >>> from PIL import Image
    >>> im = Image.new("RGB", (8, 8)); im.paste((220, 40, 40), (0, 0, 4, 4))
    >>> colour_quadrants([im], [(0, 0, 1, 1)]).tolist()
    [[[1, 0, 0, 0]]]
    """
    import numpy as np

    from reproduce.micro.scenes import COLOURS

    out = []
    for image in images:
        arr = np.asarray(image.convert("RGB"), dtype=np.int32)
        h, w = arr.shape[:2]
        classes = np.zeros((h, w), dtype=np.int64)
        for k, rgb in enumerate(COLOURS.values(), start=1):
            classes[(arr == np.asarray(rgb)).all(-1)] = k
        onehot = np.eye(len(COLOURS) + 1, dtype=np.int64)[classes]
        integral = np.zeros((h + 1, w + 1, onehot.shape[-1]), dtype=np.int64)
        integral[1:, 1:] = onehot.cumsum(0).cumsum(1)
        boxes = []
        for x0, y0, x1, y1 in regions:
            xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
            boxes += [(x0, y0, xm, ym), (xm, y0, x1, ym), (x0, ym, xm, y1), (xm, ym, x1, y1)]
        b = np.asarray([[round(v * s) for v, s in zip(box, (w, h, w, h))] for box in boxes])
        counts = (integral[b[:, 3], b[:, 2]] - integral[b[:, 1], b[:, 2]] - integral[b[:, 3], b[:, 0]]
                  + integral[b[:, 1], b[:, 0]])
        area = np.maximum(1, (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
        best = counts[:, 1:].argmax(1) + 1
        label = np.where(counts[np.arange(len(b)), best] >= 0.3 * area, best, 0)
        out.append(label.reshape(len(regions), 4))
    return torch.as_tensor(np.stack(out))


def word_labels(images, regions, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """For each image (with its ``.micro_scene``) and visual token: the id of the colour word and of the
    shape word (with a leading space, as questions use them) of the object that covers most of the
    token's region (at least 30 %), else -100 (ignored). Shapes ``(images, tokens)`` each."""
    from reproduce.micro.scenes import GRID

    colours, shapes = torch.full((len(images), len(regions)), -100), torch.full((len(images), len(regions)), -100)
    for i, image in enumerate(images):
        scene = getattr(image, "micro_scene", None)
        if scene is None:
            continue
        things = [(o.cells_xyxy(), o.colour, o.shape) for o in scene.objects]
        things += [([x, y, x + 2, y + 2], colour, None) for x, y, _, colour in scene.digits]
        for t, (x0, y0, x1, y1) in enumerate(regions):
            rx0, ry0, rx1, ry1 = x0 * GRID, y0 * GRID, x1 * GRID, y1 * GRID
            area = (rx1 - rx0) * (ry1 - ry0)
            best, cover = None, 0.3 * area
            for (ox0, oy0, ox1, oy1), colour, shape in things:
                inter = max(0.0, min(rx1, ox1) - max(rx0, ox0)) * max(0.0, min(ry1, oy1) - max(ry0, oy0))
                if inter >= cover:
                    best, cover = (colour, shape), inter
            if best is not None:
                colours[i, t] = tokenizer.convert_tokens_to_ids(" " + best[0])
                if best[1] is not None:
                    shapes[i, t] = tokenizer.convert_tokens_to_ids(" " + best[1])
    return colours, shapes
