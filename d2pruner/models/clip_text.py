"""CDPruner's instruction relevance: a CLIP text tower and the CLIP image-side projection.

CDPruner (NeurIPS'25) conditions its DPP kernel on how relevant each visual token is to the
instruction. For LLaVA-1.5 the relevance comes from CLIP itself (the checkpoint LLaVA's vision tower
was taken from, ``openai/clip-vit-large-patch14-336``): each visual token's *CLIP image embedding*
-- the feature LLaVA projects (vision layer -2, [CLS] dropped) put through CLIP's ``post_layernorm``
and ``visual_projection`` -- against the instruction's CLIP text embedding. Instructions longer than
the text tower's context (77 tokens for CLIP) are cut into consecutive segments, each embedded on its
own (zero-padded), and the cosine is averaged over the segments.

Nothing is downloaded: :func:`load_clip_text_tower` reads the local Hugging Face cache only and says
how to provide the checkpoint when it is missing. Tests build a tiny tower in code
(:func:`d2pruner.models.tiny.tiny_clip_text_tower`).

Shape legend: N visual tokens, Dv vision width, P CLIP projection width, S text segments.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

__all__ = ["CLIP_FOR_LLAVA", "CLIPTextTower", "load_clip_text_tower"]

#: The CLIP checkpoint of LLaVA-1.5's vision tower, whose text tower CDPruner uses for LLaVA-1.5.
CLIP_FOR_LLAVA = "openai/clip-vit-large-patch14-336"


@dataclasses.dataclass(eq=False)
class CLIPTextTower:
    """A CLIP text model with projection, its tokenizer, and the image-side ``post_layernorm`` and
    ``visual_projection`` of the same CLIP.

    Parameters
    ----------
    text_model : transformers.CLIPTextModelWithProjection
    tokenizer : callable
        Called as ``tokenizer(text=[str], return_tensors="pt")``, returning ``input_ids`` and
        ``attention_mask`` (1, L) -- a Hugging Face CLIP tokenizer or anything that behaves alike.
    image_norm, image_projection : torch.nn.Module
        CLIP's vision ``post_layernorm`` (Dv) and ``visual_projection`` (Dv -> P).
    model_id : str, optional
        Where it came from (for messages).
    """

    text_model: Any
    tokenizer: Any
    image_norm: torch.nn.Module
    image_projection: torch.nn.Module
    model_id: str | None = None

    @torch.no_grad()
    def text_embeds(self, text: str) -> torch.Tensor:
        """The instruction's CLIP text embeddings (S, P): one per segment of the text tower's context."""
        enc = self.tokenizer(text=[text], return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]  # (1, L)
        ctx = int(self.text_model.config.max_position_embeddings)
        n_seg = (ids.shape[1] - 1) // ctx + 1
        pad = n_seg * ctx - ids.shape[1]
        ids = torch.cat([ids, ids.new_zeros(1, pad)], dim=1).reshape(n_seg, ctx)  # (S, ctx)
        mask = torch.cat([mask, mask.new_zeros(1, pad)], dim=1).reshape(n_seg, ctx)  # (S, ctx)
        device = next(self.text_model.parameters()).device
        return self.text_model(input_ids=ids.to(device), attention_mask=mask.to(device)).text_embeds  # (S, P)

    @torch.no_grad()
    def image_embeds(self, vision_features: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings (N, P) of visual tokens given as the vision features (N, Dv)."""
        param = next(self.image_projection.parameters())
        x = self.image_norm(vision_features.to(device=param.device, dtype=param.dtype))
        return self.image_projection(x)  # (N, P)

    def relevance(self, vision_features: torch.Tensor, text: str) -> torch.Tensor:
        """Cosine of each visual token's CLIP image embedding with the instruction's text embedding,
        averaged over text segments: (N,) float64 on the features' device.

        Examples
        --------
        >>> from d2pruner.models.tiny import tiny_clip_text_tower
        >>> tower = tiny_clip_text_tower(vision_width=32)
        >>> rel = tower.relevance(torch.randn(5, 32), "what colour is the cat?")
        >>> rel.shape, bool((rel.abs() <= 1).all())
        (torch.Size([5]), True)
        """
        img = torch.nn.functional.normalize(self.image_embeds(vision_features).double(), dim=-1)  # (N, P)
        txt = torch.nn.functional.normalize(self.text_embeds(text).double(), dim=-1).to(img.device)  # (S, P)
        return (img @ txt.T).mean(dim=1).to(vision_features.device)  # (N,)


def load_clip_text_tower(model_id: str = CLIP_FOR_LLAVA, device: str | torch.device | None = None,
                         dtype: torch.dtype | None = None) -> CLIPTextTower:
    """The CLIP text tower, tokenizer and image projection of ``model_id`` from the local Hugging Face
    cache (never downloaded).

    Raises
    ------
    ValueError
        If the checkpoint is not in the local cache; the message names the id and how to provide it.
    """
    from transformers import AutoTokenizer, CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id, local_files_only=True)
        text_model = CLIPTextModelWithProjection.from_pretrained(model_id, local_files_only=True, dtype=dtype)
        vision = CLIPVisionModelWithProjection.from_pretrained(model_id, local_files_only=True, dtype=dtype)
    except (OSError, ValueError) as err:
        first_line = (str(err).splitlines() or [""])[0]
        raise ValueError(
            f"CDPruner needs the CLIP text tower {model_id!r} (text model, tokenizer and visual projection), which is "
            f"not in the local Hugging Face cache ({type(err).__name__}: {first_line}). Provide it with "
            f"`huggingface-cli download {model_id}` on a machine with network access (then copy the cache, "
            f"HF_HOME), or pass get_method('cdpruner', text_tower=CLIPTextTower(...)) built from local files"
        ) from None
    vm = vision.vision_model
    norm = getattr(vm, "post_layernorm", None) or vm.vision_model.post_layernorm
    tower = CLIPTextTower(text_model.eval(), tokenizer, norm, vision.visual_projection, model_id)
    if device is not None:
        for m in (tower.text_model, tower.image_norm, tower.image_projection):
            m.to(device)
    return tower
