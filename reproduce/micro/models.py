"""The micro models: transformers' own ``LlavaForConditionalGeneration`` and
``InternVLForConditionalGeneration``, small enough to train on a 2-core CPU, with a word-level tokenizer.

Geometry (why these numbers: docs/micro.md):

- **LLaVA** (one square view, as LLaVA-1.5): CLIP tower on 96 px with 8 px patches, a 12 x 12 = 144
  token grid (LLaVA-1.5: 24 x 24 = 576), feature layer -2, 2-layer MLP projector.
- **InternVL** (tiles + thumbnail, as InternVL-2.5): 64 px tiles with 8 px patches and pixel shuffle
  0.5, so 4 x 4 = 16 tokens per tile; the 128 px scenes become 2 x 2 tiles + a thumbnail = 80 tokens.
- Both: a Llama text model of 4 layers, width 128 (pruning from layer K = 2 leaves two pruned layers).

The tokenizer has one id per word, number, Chinese character or punctuation mark (with its leading
space, GPT-2 style, so decoding gives the text back exactly) over the words that the micro data and
the tasks' prompts use; anything else is ``<unk>``. The checkpoints are saved with ``save_pretrained``
(model and processor), so :func:`d2pruner.models.loading.load_model` loads them like any local
checkpoint.

>>> tok = word_tokenizer(["Is there a red disk?", "<|im_start|>user\\n"])
>>> ids = tok("Is there a red disk?").input_ids
>>> len(ids), tok.decode(ids)
(6, 'Is there a red disk?')
>>> tok.convert_ids_to_tokens(tok("<|im_start|>user\\n<image>").input_ids)
['<|im_start|>', 'user', '\\n', '<image>']
>>> tok.convert_ids_to_tokens(tok("Is there a blue disk?").input_ids)
['Is', ' there', ' a', '<unk>', ' disk', '?']
"""

from __future__ import annotations

import pathlib
import re

import torch

__all__ = ["FAMILIES", "SPECIALS", "PIECE", "word_tokenizer", "micro_config", "micro_processor", "checkpoint_dir",
           "answer_prefix", "answer_end", "token_regions"]

#: Families with a micro model.
FAMILIES = ("llava", "internvl")
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "<img>", "</img>", "<video>", "<|im_start|>", "<|im_end|>"]
#: One token: a word, a number, a Chinese character or a punctuation mark, each with an optional leading
#: space; or one whitespace character.
PIECE = r" ?[A-Za-z]+| ?\d+| ?[\u4e00-\u9fff]| ?[^\sA-Za-z\d\u4e00-\u9fff]|\s"
_PIECE = re.compile(PIECE)
#: Where the shipped checkpoints live: ``<CHECKPOINTS>/<family>/``.
CHECKPOINTS = pathlib.Path(__file__).resolve().parent / "checkpoints"


def checkpoint_dir(family: str) -> pathlib.Path:
    """The shipped checkpoint folder of a family's micro model; ``ValueError`` naming an unknown family."""
    if family not in FAMILIES:
        raise ValueError(f"no micro model for family {family!r}; micro models: {', '.join(FAMILIES)}")
    return CHECKPOINTS / family


def pieces(text: str) -> list[str]:
    """The tokens of ``text`` outside special tokens (what the tokenizer's pre-tokenizer cuts)."""
    return _PIECE.findall(text)


def word_tokenizer(corpus):
    """A ``PreTrainedTokenizerFast`` whose vocabulary is :data:`SPECIALS` and every piece of ``corpus``
    (sorted, so the same corpus gives the same ids), padding on the left like the tiny models'."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    found = set()
    for text in corpus:
        for part in re.split("(" + "|".join(re.escape(s) for s in SPECIALS) + ")", text):
            if part not in SPECIALS:
                found.update(pieces(part))
    vocab = {t: i for i, t in enumerate(SPECIALS + sorted(found - set(SPECIALS)))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(PIECE), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        padding_side="left",
        extra_special_tokens={"image_token": "<image>", "start_image_token": "<img>", "end_image_token": "</img>",
                              "context_image_token": "<image>", "video_token": "<video>"})


def _text_config(vocab_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=vocab_size, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                       max_position_embeddings=1024, tie_word_embeddings=True, attn_implementation="sdpa")


def _llava_config(vocab_size: int, image_token_id: int):
    from transformers import CLIPVisionConfig, LlavaConfig

    vision = CLIPVisionConfig(image_size=96, patch_size=8, hidden_size=96, intermediate_size=192, num_hidden_layers=3,
                              num_attention_heads=4, projection_dim=96)
    return LlavaConfig(vision_config=vision, text_config=_text_config(vocab_size), image_token_id=image_token_id,
                       vision_feature_layer=-2, vision_feature_select_strategy="default", attn_implementation="sdpa")


def _llava_processor(tokenizer):
    from transformers import CLIPImageProcessor, LlavaProcessor

    images = CLIPImageProcessor(size={"shortest_edge": 96}, crop_size={"height": 96, "width": 96})
    return LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=8,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1)


def _internvl_config(vocab_size: int, image_token_id: int):
    from transformers import InternVLConfig, InternVLVisionConfig

    vision = InternVLVisionConfig(image_size=64, patch_size=8, hidden_size=96, intermediate_size=192,
                                  num_hidden_layers=2, num_attention_heads=4)
    return InternVLConfig(vision_config=vision, text_config=_text_config(vocab_size), image_token_id=image_token_id,
                          downsample_ratio=0.5, attn_implementation="sdpa")


def _internvl_processor(tokenizer):
    from transformers import GotOcr2ImageProcessor

    from d2pruner.models.internvl import _TINY_TEMPLATE, image_only_internvl_processor

    images = GotOcr2ImageProcessor(size={"height": 64, "width": 64}, crop_to_patches=True, min_patches=1, max_patches=4,
                                   image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    return image_only_internvl_processor()(images, tokenizer, image_seq_length=16, chat_template=_TINY_TEMPLATE)


def _grid_regions(side: int, x0: float = 0.0, y0: float = 0.0, extent: float = 1.0) -> list:
    return [(x0 + extent * c / side, y0 + extent * r / side, x0 + extent * (c + 1) / side, y0 + extent * (r + 1) / side)
            for r in range(side) for c in range(side)]


def _llava_regions() -> list:
    return _grid_regions(12)


def _internvl_regions() -> list:
    # the processor's order: the 2 x 2 tiles row by row, then the thumbnail; 4 x 4 tokens each
    tiles = [_grid_regions(4, tc / 2, tr / 2, 0.5) for tr in range(2) for tc in range(2)]
    return [r for tile in tiles for r in tile] + _grid_regions(4)


#: Each family's micro recipe: (configuration builder, processor builder, the image region each visual token
#: sees, as (x0, y0, x1, y1) fractions of a square scene, in the projector's output order).
_RECIPES = {"llava": (_llava_config, _llava_processor, _llava_regions),
            "internvl": (_internvl_config, _internvl_processor, _internvl_regions)}


def _recipe(family: str):
    if family not in _RECIPES:
        raise ValueError(f"no micro model for family {family!r}; micro models: {', '.join(FAMILIES)}")
    return _RECIPES[family]


def micro_config(family: str, vocab_size: int, image_token_id: int):
    """The model configuration of a family's micro model (see the module docstring)."""
    return _recipe(family)[0](vocab_size, image_token_id)


def token_regions(family: str) -> list[tuple[float, float, float, float]]:
    """The region of a square scene each visual token of the micro model sees, in the projector's output order.

    >>> len(token_regions("llava")), len(token_regions("internvl")), token_regions("internvl")[4]
    (144, 80, (0.0, 0.125, 0.125, 0.25))
    """
    return _recipe(family)[2]()


def micro_processor(family: str, tokenizer):
    """The family's own transformers processor around ``tokenizer`` at the micro geometry."""
    return _recipe(family)[1](tokenizer)


def answer_prefix(family: str) -> str:
    """What the model writes before its answer: a space after a prompt that does not end in white space
    (LLaVA's ``ASSISTANT:``), nothing after one that does (InternVL's ``assistant\\n``).

    >>> answer_prefix("llava"), answer_prefix("internvl")
    (' ', '')
    """
    from d2pruner.models.family import get_family

    prompt = get_family(family).prompt_text(micro_processor(family, word_tokenizer([])), "q")
    return "" if prompt[-1].isspace() else " "


def answer_end(family: str) -> str:
    """The token that ends an answer: the family's chat turn end (InternVL's ``<|im_end|>``), else ``</s>``."""
    from d2pruner.models.family import get_family

    return get_family(family).chat_turn_end or "</s>"


def build_model(family: str, tokenizer, seed: int) -> torch.nn.Module:
    """The untrained micro model, weights drawn from ``seed`` (train mode)."""
    from d2pruner.models.family import get_family
    from d2pruner.models.tiny_parts import seeded

    config = micro_config(family, len(tokenizer), tokenizer.convert_tokens_to_ids("<image>"))
    with seeded(seed):
        model = get_family(family).model_classes()[0](config)
    model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids(answer_end(family))]
    model.generation_config.pad_token_id = 0
    return model
