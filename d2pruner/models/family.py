"""Model families: one :class:`ModelFamily` record per family file, looked up by name everywhere else.

A family file (``d2pruner/models/llava.py``, ``internvl.py``) subclasses :class:`ModelFamily`, fills
in what only that family knows -- where its visual tokens are and how they are laid out, how its
processor and prompt work, which vision-side records it can give, what it cannot do and why, its
tiny random twin -- and registers one instance with :func:`register_family`. Every other module
(the handle, loading, the prior command, ``reproduce``, benchmarks) asks the registry:
:func:`get_family` by name, :func:`family_for_model` / :func:`family_for_config` from a model. Family
files are discovered on first use (every module of :mod:`d2pruner.models` is imported), so a new
family is one file plus its FLOPs config under ``d2pruner/data``.

>>> {'internvl', 'internvl3', 'llava', 'qwen2_5_vl', 'qwen3_vl'} <= set(family_names())
True
>>> get_family("internvl").refusal(__import__("d2pruner.methods", fromlist=["x"]).get_method("visionzip"))[:44]
'visionzip needs the [CLS] attention of the v'
>>> get_family("llava").checkpoint
'llava-hf/llava-1.5-7b-hf'
"""

from __future__ import annotations

import importlib
import json
import pathlib
import pkgutil
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
import torch

from d2pruner.methods.base import Need
from d2pruner.models.attention import RotaryScheme, llama_rope

DATA = pathlib.Path(__file__).resolve().parents[1] / "data"

__all__ = ["ModelFamily", "family_for_config", "family_for_model", "family_names", "get_family", "register_family"]


class ModelFamily:
    """What the generic machinery needs to know of one model family (override in a family file).

    Class attributes: ``name`` (registry key, also the ``tiny_<name>`` model), ``title``,
    ``model_types`` (``config.model_type`` values), ``checkpoint`` (the default hub id),
    ``flops_config`` (file under ``d2pruner/data`` with the full-size config), ``prior_per`` (what one
    prior value stands for), ``refuses`` (needs this family cannot supply, each with its reason),
    ``rotary`` (the text model's rotary scheme, for attention rows computed from q/k).
    """

    name: ClassVar[str]
    title: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    #: ``text_config.model_type`` values the family takes (empty: any). Families that share a
    #: ``model_type`` and model class and differ only in their text model (InternVL-2.5's Llama,
    #: InternVL3's Qwen2) are told apart here, in their records, and nowhere else.
    text_model_types: ClassVar[tuple[str, ...]] = ()
    checkpoint: ClassVar[str]
    flops_config: ClassVar[str]
    prior_per: ClassVar[str] = "grid position"
    #: The checkpoint of the text tower the family supplies to methods that need one (None: none).
    text_tower_checkpoint: ClassVar[str | None] = None
    #: Whether the processor cuts images into a bounded number of tiles (``max_tiles`` matters).
    uses_max_tiles: ClassVar[bool] = False
    refuses: ClassVar[Mapping[Need, str]] = {}
    rotary: ClassVar[RotaryScheme] = staticmethod(llama_rope)
    #: Pruning before the LLM renumbers the kept tokens' positions as if the dropped placeholders had
    #: never been there (1-D positions: LLaVA, InternVL); False keeps their original positions (M-RoPE).
    renumber_before_llm: ClassVar[bool] = True
    #: The visual tokens a table row is counted for on the full-size model (percent budgets resolve
    #: against it and the FLOPs column counts it), and what it stands for when images vary.
    row_visual_tokens: ClassVar[int | None] = None
    row_visual_note: ClassVar[str] = ""
    #: How a prior block can be resampled to a view of another size (``attach(..., prior_resampling=...)``);
    #: empty: the blocks fit the views as they are.
    prior_resamplings: ClassVar[tuple[str, ...]] = ()
    #: Call arguments the family's own hooks read beyond the shared ones (:mod:`d2pruner.compat`), per
    #: part: ``"model"`` (the inner multimodal model), ``"text_model"``, ``"layer"``; checked by ``attach``.
    hook_arguments: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    #: The forward arguments that carry images or videos to encode (a pass with any of them is a prompt pass).
    pixel_inputs: ClassVar[tuple[str, ...]] = ("pixel_values",)
    #: The token that ends an assistant turn in the chat template (answers stop there), or None.
    chat_turn_end: ClassVar[str | None] = None

    # -- the model ----------------------------------------------------------------------------------
    def model_classes(self) -> tuple[type, ...]:
        """``(ForConditionalGeneration, Model)`` classes of the family (imported lazily)."""
        raise NotImplementedError

    def accepts(self, config) -> bool:
        """Whether a transformers config is of this family: its ``model_type`` and, where the family
        names them (:attr:`text_model_types`), its text model's."""
        if getattr(config, "model_type", "") not in self.model_types:
            return False
        return not self.text_model_types or getattr(getattr(config, "text_config", None), "model_type", None) in self.text_model_types

    def inner(self, model: torch.nn.Module) -> torch.nn.Module:
        """The inner multimodal model (``language_model``, ``vision_tower``, ``multi_modal_projector``)."""
        return model.model if isinstance(model, self.model_classes()[0]) else model

    def check_model(self, model: torch.nn.Module) -> None:
        if not isinstance(model, self.model_classes()):
            raise ValueError(f"{self.name}.attach expects a {self.model_classes()[0].__name__}, got {type(model).__name__}")

    # -- visual tokens --------------------------------------------------------------------------------
    def prior_block(self, model: torch.nn.Module) -> int:
        """Positions of one prior block (one value each): LLaVA's grid, InternVL's tile."""
        raise NotImplementedError

    def items(self, model: torch.nn.Module, input_ids: torch.Tensor, hints: Sequence | None,
              inputs: Mapping | None = None) -> list:
        """For each item, ``(positions (N,), TokenLayout)`` of its visual tokens, or None (no image).
        ``hints`` are what :meth:`item_hints` computed for the batch (None when not given); ``inputs``
        are the model's forward arguments (the processor's outputs: pixel values, image grids, ...)."""
        raise NotImplementedError

    def expand_prior(self, prior: torch.Tensor, layout, resampling: str = "bilinear") -> torch.Tensor:
        """The prior (one block) spread over an item's visual tokens (N,). ``resampling`` matters to
        families whose views vary in size (the prior block is then resampled to each view)."""
        return prior.repeat(len(layout) // prior.numel())

    def prior_blocks(self, model: torch.nn.Module, row: torch.Tensor, layout) -> np.ndarray:
        """One image's visual attention row (N,) as prior blocks (blocks, block), for averaging."""
        block = self.prior_block(model)
        values = row.double().cpu().numpy()
        if values.size % block:
            raise ValueError(f"{values.size} visual tokens are not a whole number of {block}-position blocks")
        return values.reshape(-1, block)

    def decode_position_ids(self, model: torch.nn.Module, start: int, q: int,
                            mask2d: torch.Tensor | None = None) -> torch.Tensor | None:
        """Position ids of a decoding step of ``q`` tokens that follows ``start`` tokens of the original
        (unpruned) numbering (``mask2d``: the step's 2-D mask over that numbering, when given), for
        families that keep original positions when pruning before the LLM (None: let the model number it)."""
        return None

    def extra_hooks(self, handle) -> list:
        """Hooks the family adds to a pruning handle (removed with it), e.g. to keep model-internal
        additions aligned with the kept tokens."""
        return []

    def item_hints(self, processor, images: Sequence, max_tiles: int) -> list | None:
        """Per-item layout facts the token ids do not carry (InternVL's tile grids), or None."""
        return None

    # -- what methods read ----------------------------------------------------------------------------
    def refusal(self, method: Any) -> str | None:
        """Why ``method`` cannot run on this family (a need it cannot supply), or None."""
        for need in sorted(method.needs, key=lambda n: n.value):
            if need in self.refuses:
                return self.refuses[need].format(name=method.name)
        return None

    def prepare_method(self, method: Any, model: torch.nn.Module) -> Any:
        """The method with what the family supplies filled in (a text tower for ``Need.TEXT_TOWER``)."""
        return method

    def vision_capture(self, model: torch.nn.Module, method: Any):
        """The probe recording the vision-side inputs ``method`` needs (projector input, [CLS] row)."""
        from d2pruner.models.probes import VisionCapture

        inner = self.inner(model)
        return VisionCapture(inner.vision_tower, inner.multi_modal_projector)

    # -- processor, prompts, generation ---------------------------------------------------------------
    def load_processor(self, model_id: str, revision: str | None):
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(model_id, revision=revision, local_files_only=True)

    def prompt_text(self, processor, question: str) -> str:
        """The official prompt around ``question`` with the model's image placeholder, for one image."""
        raise NotImplementedError

    def build_batch(self, processor, images: Sequence, questions: Sequence[str], max_tiles: int) -> dict:
        """Processor outputs (tensors on the CPU) for (image, question) pairs, padded on the left."""
        raise NotImplementedError

    #: The family's own referring-expression prompt around ``{}`` (the expression), when the model is
    #: asked for boxes its own way; None: the benchmark's prompt (InternVL-2.5's) is used as written.
    grounding_template: ClassVar[str | None] = None

    def grounding_box(self, model: torch.nn.Module, text: str, inputs: Mapping, item: int) -> list[float] | None:
        """The first box of a grounding answer as ``[x1, y1, x2, y2]`` in [0, 1000] of the image, or None
        (only for families with a :attr:`grounding_template`); ``inputs`` are the batch's model inputs."""
        raise NotImplementedError(f"{self.name} has no grounding protocol of its own")

    def eos_ids(self, model: torch.nn.Module, processor) -> list[int] | None:
        """End-of-answer ids: the checkpoint's own and :attr:`chat_turn_end`, whatever the generation
        config says (the answer ends with the assistant's turn); None: the checkpoint's own only."""
        if self.chat_turn_end is None:
            return None
        own = model.generation_config.eos_token_id
        ids = [] if own is None else [own] if isinstance(own, int) else list(own)
        end = processor.tokenizer.convert_tokens_to_ids(self.chat_turn_end)
        if isinstance(end, int) and end != processor.tokenizer.unk_token_id:
            ids.append(end)
        return sorted(set(ids)) or None

    # -- full-size models with random weights and synthetic inputs (benchmarks) ----------------------
    def shipped_config(self) -> dict:
        """The full-size checkpoint's config as shipped in ``d2pruner/data/<flops_config>`` (a dict with
        its ``_source``)."""
        return json.loads((DATA / self.flops_config).read_text())

    def full_size_config(self, attn_implementation: str):
        """The transformers config of the full-size checkpoint, from :meth:`shipped_config`."""
        raise NotImplementedError

    def full_size_model(self, attn_implementation: str, dtype: torch.dtype, device: str):
        """The full-size model with random weights, built directly on ``device`` (timing and memory do
        not depend on weight values)."""
        config = self.full_size_config(attn_implementation)
        with torch.device(device):
            model = self.model_classes()[0](config)
        return model.to(dtype).eval()

    def synthetic_image(self, model: torch.nn.Module, tiles: int, generator: torch.Generator):
        """``(visual tokens, pixel_values, hint)`` of one random image of ``tiles`` tiles (families
        without tiles ignore ``tiles``), for benchmarks and tests."""
        raise NotImplementedError

    def synthetic_inputs(self, model: torch.nn.Module, tiles: int, generator: torch.Generator,
                         words: torch.Tensor) -> tuple[dict, Any]:
        """``(batch, hint)``: one prompt of ``words`` (1-D token ids) around one random image of ``tiles``
        tiles (:meth:`synthetic_image`), as the model's forward takes it, for benchmarks."""
        n_img, pixels, hint = self.synthetic_image(model, tiles, generator)
        half = len(words) // 2
        ids = torch.cat([torch.tensor([1]), words[:half], torch.full((n_img,), int(model.config.image_token_id)),
                         words[half:]])[None]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}, hint

    #: Benchmark cases: budgets (None = unpruned) and tile counts (full size, smoke).
    latency_budgets: ClassVar[tuple] = (None,)
    latency_tiles: ClassVar[tuple[tuple[int, ...], tuple[int, ...]]] = ((1,), (1,))

    # -- tiny random twin -----------------------------------------------------------------------------
    def tiny_model(self, seed: int = 0, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32):
        raise NotImplementedError

    def tiny_processor(self, max_tiles: int = 6):
        raise NotImplementedError

    def tiny_pixels(self) -> int:
        """Side in pixels of one tiny image (LLaVA) or tile (InternVL)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<model family {self.name!r}>"


_FAMILIES: dict[str, ModelFamily] = {}
_DISCOVERED = False


def register_family(family: ModelFamily) -> ModelFamily:
    """Add a family instance to the registry under its name (a family file calls it once)."""
    if not isinstance(family, ModelFamily):
        raise TypeError(f"register_family expects a ModelFamily instance, got {family!r}")
    known = _FAMILIES.get(family.name)
    if known is not None and type(known).__qualname__ != type(family).__qualname__:
        raise ValueError(f"model family {family.name!r} is registered twice")
    _FAMILIES[family.name] = family
    return family


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    package = __name__.rpartition(".")[0]  # d2pruner.models, whose modules include every family file
    for info in pkgutil.iter_modules([str(pathlib.Path(__file__).resolve().parent)]):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
    _DISCOVERED = True


def family_names() -> list[str]:
    _discover()
    return sorted(_FAMILIES)


def get_family(name: str) -> ModelFamily:
    """The family registered as ``name``; ``ValueError`` naming the known ones."""
    _discover()
    if name not in _FAMILIES:
        raise ValueError(f"unknown model family {name!r}; available: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[name]


def family_for_config(config) -> ModelFamily:
    """The family of a transformers config, by its ``model_type`` (and its text model's, where families
    share a ``model_type``: :attr:`ModelFamily.text_model_types`)."""
    _discover()
    kind = getattr(config, "model_type", "")
    for family in _FAMILIES.values():
        if family.accepts(config):
            return family
    text_kinds = sorted(t for f in _FAMILIES.values() if kind in f.model_types for t in f.text_model_types)
    if text_kinds:
        text = getattr(getattr(config, "text_config", None), "model_type", None)
        raise ValueError(f"model_type {kind!r} with a {text!r} text model is not a supported family; supported text "
                         f"models of {kind!r}: {', '.join(text_kinds)}")
    known = sorted({t for f in _FAMILIES.values() for t in f.model_types})
    raise ValueError(f"model_type {kind!r} is not a supported family; supported: {', '.join(known)}")


def family_for_model(model: torch.nn.Module) -> ModelFamily:
    """The family of a loaded model, by its class (and its config, where families share a class)."""
    _discover()
    for family in _FAMILIES.values():
        if isinstance(model, family.model_classes()) and (not family.text_model_types or family.accepts(model.config)):
            return family
    raise ValueError(f"{type(model).__name__} is not a supported model; supported families: {', '.join(sorted(_FAMILIES))}")


def tiny_name(name: str) -> str | None:
    """The family of a tiny model id ``tiny_<family>``, or None."""
    return name[len("tiny_"):] if name.startswith("tiny_") and name[len("tiny_"):] in family_names() else None


Builder = Callable[..., torch.nn.Module]
