"""Selection methods behind one interface, by name, for the model hooks.

A method has a ``name``, the decoder layer it prunes at by default (``default_layer``; 0 = before the
LLM, where the kept tokens are renumbered as if the image placeholders had been shortened), whether
it reads the attention row of layer K-1 (``needs_attention``), and ``select(items, n_keep) ->
list[Selection]`` over :class:`d2pruner.models.hooks.ItemInputs`. Baselines tag every kept token
with :attr:`~d2pruner.spec.Role.KEPT` (they have no pivots or MIS).

>>> sorted(METHODS)
['cdpruner', 'd2pruner', 'dart', 'divprune', 'fastv', 'mmr-d2score', 'pyramiddrop', 'random', 'sparsevlm', 'visionzip']
>>> get_method("fastv").default_layer, get_method("divprune").default_layer
(2, 0)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import torch

from d2pruner import baselines
from d2pruner.spec import D2PrunerConfig, Role, Selection, round_half_up

__all__ = ["METHODS", "CDPrunerMethod", "DARTMethod", "DivPruneMethod", "FastVMethod", "MMRMethod", "PyramidDropMethod", "RandomMethod",
           "SparseVLMMethod", "VisionZipMethod", "get_method"]


def _kept(kept_row: torch.Tensor) -> Selection:
    kept = kept_row[kept_row >= 0].cpu().numpy()
    return Selection(kept, np.full(len(kept), int(Role.KEPT), np.int8))


def _need_attention(name: str, items) -> None:
    if any(it.attn is None for it in items):
        raise ValueError(f"{name} needs the attention row of layer K-1, which is not available before the LLM")


@dataclasses.dataclass(frozen=True)
class FastVMethod:
    """FastV (ECCV'24): the top-n tokens of the raw last-token attention at layer K-1, K = 2."""

    name: str = "fastv"
    default_layer: int = 2
    needs_attention: bool = True

    def select(self, items, n_keep: Sequence[int]) -> list[Selection]:
        _need_attention(self.name, items)
        return [_kept(baselines.fastv_selection(it.attn[None].float(), [k])[0]) for it, k in zip(items, n_keep)]


@dataclasses.dataclass(frozen=True)
class RandomMethod:
    """Uniform sampling without replacement, drawn from ``seed`` and the item's prompt: an item's choice
    depends only on ``seed``, its token ids (:attr:`~d2pruner.models.hooks.ItemInputs.token_key`), N and
    its budget -- reproducible, the same alone or in any batch and at any pruning point, and different
    for prompts with different token ids (so a benchmark is not pruned with one fixed mask). The image
    enters only through its placeholder count: on LLaVA, whose 576 placeholders are alike, the same
    question about two images draws the same tokens."""

    seed: int = 0
    name: str = "random"
    default_layer: int = 0
    needs_attention: bool = False
    needs_token_key: bool = True

    def item_seed(self, item) -> int:
        """The seed of one item's draw: ``seed`` mixed with the item's token key (``seed`` alone without one)."""
        key = getattr(item, "token_key", None)
        return int(self.seed) if key is None else (int(self.seed) * 0x9E3779B1 + int(key)) % 2**63

    def select(self, items, n_keep: Sequence[int]) -> list[Selection]:
        return [_kept(baselines.random_selection(len(it.layout), [k], self.item_seed(it))[0])
                for it, k in zip(items, n_keep)]


@dataclasses.dataclass(frozen=True)
class DivPruneMethod:
    """DivPrune (CVPR'25): greedy max-min diversity of the projected visual features, before the LLM."""

    name: str = "divprune"
    default_layer: int = 0
    needs_attention: bool = False

    def select(self, items, n_keep: Sequence[int]) -> list[Selection]:
        return [_kept(baselines.divprune_selection(it.features[None], [k])[0]) for it, k in zip(items, n_keep)]


@dataclasses.dataclass(frozen=True)
class MMRMethod:
    """Training-free IDPruner variant: maximal marginal relevance with D2Pruner's debiased attention as
    the importance (the published IDPruner uses a trained scorer), at layer K = 2."""

    lam: float = 0.5
    eps: float = D2PrunerConfig.eps
    name: str = "mmr-d2score"
    default_layer: int = 2
    needs_attention: bool = True

    def select(self, items, n_keep: Sequence[int]) -> list[Selection]:
        _need_attention(self.name, items)
        out = []
        for it, k in zip(items, n_keep):
            imp = it.attn.double() if it.prior is None else it.attn.double() / (it.prior.double() + self.eps)
            out.append(_kept(baselines.mmr_selection(imp[None], it.features[None], [k], self.lam)[0]))
        return out


@dataclasses.dataclass(frozen=True)
class DARTMethod:
    """DART (EMNLP'25) at layer K = 2: pivots by the L1 norm of layer K-1's keys (4 visual tokens and 4
    of the text tokens after the image), then duplication-based picks on the hidden states entering
    layer K after the final norm (:func:`d2pruner.baselines.dart_selection`)."""

    image_pivots: int = 4
    text_pivots: int = 4
    name: str = "dart"
    default_layer: int = 2
    needs_attention: bool = False
    needs_keys: bool = True

    def select(self, items, n_keep: Sequence[int]) -> list[Selection]:
        out = []
        for it, k in zip(items, n_keep):
            if it.key_norms is None:
                raise ValueError("dart needs the pruning layer's key norms; attach it through the model hooks")
            feats = it.features if it.normed_features is None else it.normed_features
            kept, _ = baselines.dart_selection(feats, it.key_norms, k, it.text_features, it.text_key_norms,
                                               self.image_pivots, self.text_pivots)
            out.append(Selection(np.array(kept, np.int64), np.full(len(kept), int(Role.KEPT), np.int8)))
        return out


@dataclasses.dataclass(frozen=True)
class PyramidDropMethod:
    """PyramidDrop (CVPR'25): three stages at 1/4, 1/2 and 3/4 of the depth (layers 8/16/24 of 32),
    each keeping the top of the last token's attention among the remaining visual tokens, the count
    shrinking by ``lam`` = 0.5 from stage to stage. As in the public code, a stage layer scores with
    its *own* queries and keys on its input (the sequence the previous stage left; softmax over the
    whole causal row, mean over heads) and the cut is made at that input.

    Budget (our equivalent-token rule): the visual tokens *averaged over the layers* equal the budget
    to within one token (rounding); the first stage's count follows,
    ``n1 = (B*L - s1*N) / ((s2-s1) + lam*(s3-s2) + lam^2*(L-s3))``, then ``n2 = max(1, round(lam*n1))``,
    ``n3 = max(1, round(lam*n2))``, halves rounded up. The first 1/4 of the layers see all N tokens,
    so budgets below N/4 (e.g. 128 or 64 of 576) cannot be met and raise.

    >>> PyramidDropMethod().stage_budgets(576, 192, 32)
    [110, 55, 28]
    """

    lam: float = 0.5
    name: str = "pyramiddrop"
    needs_attention: bool = True
    scores_at_stage_layer: bool = True
    default_layer: int | None = None

    def stage_layers(self, n_layers: int) -> list[int]:
        layers = [n_layers // 4, n_layers // 2, 3 * n_layers // 4]
        if layers[0] < 1 or len(set(layers)) < 3:
            raise ValueError(f"pyramiddrop needs at least 4 decoder layers, the model has {n_layers}")
        return layers

    def stage_budgets(self, n_visual: int, n_keep: int, n_layers: int) -> list[int]:
        s1, s2, s3 = self.stage_layers(n_layers)
        lam = self.lam
        n1 = (n_keep * n_layers - s1 * n_visual) / ((s2 - s1) + lam * (s3 - s2) + lam * lam * (n_layers - s3))
        counts = [round_half_up(n1)]
        counts += [max(1, round_half_up(lam * counts[-1]))]
        counts += [max(1, round_half_up(lam * counts[-1]))]
        if counts[0] < 1 or counts[0] > n_visual:
            low = -(-(s1 * n_visual + (n_layers - s1)) // n_layers)
            high = n_visual
            raise ValueError(f"{self.name} cannot average {n_keep} visual tokens per layer: its first {s1} of {n_layers} "
                             f"layers see all {n_visual}; reachable averages lie between about {low} and {high}")
        return counts

    def select(self, items, n_keep: Sequence[int]) -> list[Selection]:
        _need_attention(self.name, items)
        return [_kept(baselines.fastv_selection(it.attn[None].float(), [k])[0]) for it, k in zip(items, n_keep)]


@dataclasses.dataclass(frozen=True)
class VisionZipMethod:
    """VisionZip (CVPR'25), before the LLM: dominant tokens by the [CLS] attention of the vision layer
    whose output the model projects (LLaVA-1.5: ``vision_feature_layer=-2``, the penultimate CLIP
    layer), contextual tokens by merging every other token into uniform-stride targets by the
    similarity of that layer's head-averaged keys (:func:`d2pruner.baselines.visionzip_selection`).
    A merged token is the mean of its group's vision features, put through the model's projector, and
    takes its target's place in the sequence. Dominant + contextual = the budget exactly
    (:func:`d2pruner.baselines.visionzip_split`: 54 + 10 at 64 tokens).

    Models without a [CLS] token in the projected features (InternVL after pixel shuffle) refuse it at
    attach time.
    """

    name: str = "visionzip"
    default_layer: int = 0
    needs_attention: bool = False
    needs_vision: bool = True
    needs_cls_attention: bool = True

    def select(self, items, n_keep: Sequence[int]) -> list[Selection]:
        from d2pruner.models.hooks import MergedSelection

        out = []
        for i, (it, k) in enumerate(zip(items, n_keep)):
            if it.cls_attention is None or it.vision_keys is None or it.vision_features is None or it.project is None:
                raise ValueError(f"visionzip needs the vision tower's [CLS] attention, keys and features of item {i}; "
                                 "attach it through the model hooks of a model with a [CLS] token (LLaVA)")
            plan = baselines.visionzip_selection(it.cls_attention, it.vision_keys, k)
            merged = it.project(baselines.visionzip_merge(it.vision_features, plan))  # (C, D)
            kept = plan.kept.cpu().numpy()
            out.append(MergedSelection(kept, np.full(len(kept), int(Role.KEPT), np.int8),
                                       replaced=plan.targets.cpu().numpy(), features=merged))
        return out


@dataclasses.dataclass(frozen=True)
class CDPrunerMethod:
    """CDPruner (NeurIPS'25), before the LLM: greedy MAP of the conditional DPP ``L = diag(q) S diag(q)``
    (:func:`d2pruner.baselines.cdpruner_selection`), ``S`` the cosine similarity of the projected
    visual features (the LLM's input) and ``q`` the min-max normalised relevance of each token to the
    item's instruction from a CLIP text tower (:class:`d2pruner.models.clip_text.CLIPTextTower`).

    ``negate_relevance=True`` (default) is CDPruner's public code for CLIP-based models (LLaVA): it uses
    minus the cosine before the min-max normalisation, which its authors describe as intended for CLIP
    (Theia-4869/CDPruner issues #14 and #19); ``False`` is the relevance as the paper writes it.

    The instruction reaches the method through :meth:`~d2pruner.models.hooks.PruningHandle.set_instructions`.
    ``text_tower=None`` loads ``openai/clip-vit-large-patch14-336`` from the local cache when attached
    to LLaVA; InternVL has no CLIP, so a tower must be given explicitly (its image side must then accept
    InternVL's pixel-shuffled features).
    """

    text_tower: Any = None
    negate_relevance: bool = True
    name: str = "cdpruner"
    default_layer: int = 0
    needs_attention: bool = False
    needs_vision: bool = True
    needs_instruction: bool = True

    def relevance(self, item) -> torch.Tensor:
        """The raw (not yet normalised) relevance (N,) of one item's visual tokens."""
        rel = self.text_tower.relevance(item.vision_features, item.instruction)
        return -rel if self.negate_relevance else rel

    def select(self, items, n_keep: Sequence[int]) -> list[Selection]:
        if self.text_tower is None:
            raise ValueError("cdpruner needs a CLIP text tower: get_method('cdpruner', text_tower=...) or attach it to "
                             "LLaVA, which loads openai/clip-vit-large-patch14-336 from the local cache")
        out = []
        for i, (it, k) in enumerate(zip(items, n_keep)):
            if it.vision_features is None or it.instruction is None:
                raise ValueError(f"cdpruner needs the vision features and the instruction of item {i}; attach it "
                                 "through the model hooks and call handle.set_instructions([...])")
            rel = self.relevance(it).to(it.features.device)
            out.append(_kept(baselines.cdpruner_selection(it.features[None], rel[None], [k])[0]))
        return out


@dataclasses.dataclass(frozen=True)
class SparseVLMMethod(PyramidDropMethod):
    """SparseVLM (ICML'25), in the LLM, progressive: after decoder layers 2, 6 and 15 of 32 (cuts at the
    inputs of layers 3, 7 and 16, from the attention and the hidden states of layers 2, 6 and 15).

    * Raters, once per prompt pass on the LLM's input embeddings: the text tokens after the image whose
      relevance to the visual tokens is above the mean (:func:`d2pruner.baselines.sparsevlm_raters`).
    * At each stage the current visual tokens are ranked by the raters' attention, mean over raters
      and heads (softmax over the full causal key length), and the top ones kept; of the dropped ones
      the 30% ranked highest are recycled: clustered by density peaks (DPC-kNN) on their hidden states
      and each cluster averaged into one token that takes its centre's slot
      (:func:`d2pruner.baselines.sparsevlm_selection`). Recycled tokens count in the stage's budget.

    Stages on other depths: ``p_j = max(p_{j-1} + 1, floor(p_j * L / 32 + 1/2))`` for p = 2, 6, 15, cut
    at ``p_j + 1`` (layers 1, 2, 3 of a 4-layer model).

    Budget (our equivalent-token rule, shared with PyramidDrop): the visual tokens averaged over the
    layers equal the budget (within one token), with counts ``n1``, ``round(lam n1)``, ``round(lam n2)`` after the three
    stages (``lam`` = 0.5) and ``n1`` solved from the average; budgets the first ``p_1 + 1`` full layers
    make unreachable raise.

    >>> SparseVLMMethod().stage_layers(32), SparseVLMMethod().stage_budgets(576, 192, 32)
    ([3, 7, 16], [353, 177, 89])
    """

    lam: float = 0.5
    name: str = "sparsevlm"
    needs_attention: bool = False
    needs_rater_attention: bool = True
    scores_at_stage_layer: bool = False  # the layer before each cut, whose output the cut acts on
    default_layer: int | None = None

    def stage_layers(self, n_layers: int) -> list[int]:
        points = []
        for p in (2, 6, 15):
            scaled = int(np.floor(p * n_layers / 32 + 0.5))
            points.append(max(points[-1] + 1 if points else 0, scaled))
        layers = [p + 1 for p in points]
        if layers[-1] > n_layers - 1:
            raise ValueError(f"sparsevlm needs at least 4 decoder layers, the model has {n_layers}")
        return layers

    def select(self, items, n_keep: Sequence[int]) -> list[Selection]:
        from d2pruner.models.hooks import MergedSelection

        out = []
        for i, (it, k) in enumerate(zip(items, n_keep)):
            if it.rater_attention is None:
                raise ValueError(f"sparsevlm needs the text raters' attention of item {i}; attach it through the model hooks")
            stage = baselines.sparsevlm_selection(it.rater_attention.double().mean(dim=0), it.features, k)
            kept = stage.kept.cpu().numpy()
            out.append(MergedSelection(kept, np.full(len(kept), int(Role.KEPT), np.int8),
                                       replaced=stage.centres.cpu().numpy(), features=stage.merged))
        return out


def _d2pruner(**kw):
    from d2pruner.models.hooks import D2PrunerMethod

    return D2PrunerMethod(**kw)


METHODS = {"d2pruner": _d2pruner, "dart": DARTMethod, "fastv": FastVMethod, "random": RandomMethod, "divprune": DivPruneMethod,
           "mmr-d2score": MMRMethod, "pyramiddrop": PyramidDropMethod, "visionzip": VisionZipMethod,
           "cdpruner": CDPrunerMethod, "sparsevlm": SparseVLMMethod}


def get_method(name: str, **options):
    """A method by name, with its options (e.g. ``get_method("random", seed=3)``)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name](**options)
