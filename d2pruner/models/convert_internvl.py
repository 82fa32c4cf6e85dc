"""Convert a remote-code InternVL-2.5 checkpoint (InternViT + InternLM2) into transformers' InternVL layout.

The paper's InternVL-2.5-8B (``OpenGVLab/InternVL2_5-8B``) exists only as remote code: an
``InternVLChatModel`` whose text model is InternLM2. transformers' own conversion covers only the
preference-tuned (MPO) repositories. This module turns a **local copy** of such a checkpoint into a
folder that ``InternVLForConditionalGeneration.from_pretrained`` and
:func:`d2pruner.models.loading.load_model` read without remote code::

    python -m d2pruner.models.convert_internvl SRC OUT

What changes (nothing else does; every tensor keeps its dtype and values):

* **InternLM2 -> Llama.** The fused ``attention.wqkv`` is laid out per KV group: for each of the
  ``num_key_value_heads`` groups, its ``heads / kv_heads`` query heads, then its key head, then its
  value head (``head_dim`` rows each). It is split into ``q_proj`` (the query heads of every group, in
  group order), ``k_proj`` and ``v_proj``; a bias (``"bias": true``) is split the same way.
  ``attention.wo`` -> ``o_proj``, ``feed_forward.w1/w2/w3`` -> ``gate/down/up_proj``,
  ``attention_norm``/``ffn_norm`` -> ``input_layernorm``/``post_attention_layernorm``,
  ``tok_embeddings`` -> ``embed_tokens``, ``output`` -> ``lm_head``. InternLM2's ``rope_theta`` and
  ``rope_scaling`` (``dynamic`` or ``linear``, with its factor) become the Llama config's rope parameters.
* **InternViT.** The fused ``attn.qkv`` (q, k, v blocks of ``hidden`` rows) is split; the other names
  follow transformers' InternVL vision tower (``ls1`` -> ``lambda_1``, ``norm1`` -> ``layernorm_before``, ...).
  ``mlp1.0/1/3`` (LayerNorm, Linear, Linear) -> the multimodal projector.
* **Config.** ``downsample_ratio``, ``select_layer`` (-> ``vision_feature_layer``) and the image token id
  (``<IMG_CONTEXT>`` in the checkpoint's tokenizer) are carried over; a pixel shuffle other than ``v2``
  is refused.
* **Tokenizer, processor, chat template.** The tokenizer files and the chat template of the tokenizer
  come from the checkpoint (its remote ``auto_map`` dropped, the image tokens named for transformers'
  processor). The processor's template is the chat layout of the checkpoint's ``template``
  (``internvl2_5``: ``<|im_start|>role\\n...<|im_end|>``, the image placeholder first in the user turn);
  its tiling (tile size, 1 to ``max_dynamic_patch`` tiles, thumbnail) comes from the checkpoint's config.

The weights are written as safetensors shards, one per source shard, each under a temporary name and
then renamed, and a progress file (``conversion.json``) records every finished shard: a conversion that
is stopped and started again skips them. The same file, once complete, records what was converted (the
source folder, its config and shard list, this converter's version) and is how ``reproduce`` says which
weights a table used. A key that is not in the known layout stops the conversion with an error naming it,
as does a text model other than InternLM2.

Examples
--------
>>> fused = torch.arange(2 * (2 + 2) * 3 * 1.0).reshape(-1, 1)  # 2 KV groups, 2 query heads each, head_dim 3
>>> q, k, v = split_wqkv(fused, num_heads=4, num_kv_heads=2)
>>> q[:, 0].tolist(), k[:, 0].tolist(), v[:, 0].tolist()
([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0], [6.0, 7.0, 8.0, 18.0, 19.0, 20.0], [9.0, 10.0, 11.0, 21.0, 22.0, 23.0])
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import re
import sys
from typing import Callable

import torch

__all__ = ["CONVERTER_VERSION", "PROGRESS_FILE", "conversion_record", "convert", "convert_config", "main",
           "map_key", "split_wqkv"]

CONVERTER_VERSION = 1
PROGRESS_FILE = "conversion.json"
_SHARD = "model-{:05d}-of-{:05d}.safetensors"
_TEMPLATES = {  # the checkpoint's conversation template -> the processor's chat template (image first)
    "internvl2_5": (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for content in message['content'] %}{% if content['type'] == 'image' %}<IMG_CONTEXT>\n"
        "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
}
_IMAGE_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>"}
_TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "special_tokens_map.json", "added_tokens.json")


# --- tensors ---------------------------------------------------------------------------------------

def split_wqkv(fused: torch.Tensor, num_heads: int, num_kv_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(q, k, v)`` rows of InternLM2's fused ``wqkv`` weight ``(kv * (g + 2) * d, hidden)`` or bias
    ``(kv * (g + 2) * d,)``, laid out per KV group (``g = num_heads / num_kv_heads`` query heads, then
    one key and one value head, ``d`` rows each): q ``(num_heads * d, ...)``, k and v ``(kv * d, ...)``."""
    groups = num_heads // num_kv_heads
    if groups * num_kv_heads != num_heads or fused.shape[0] % (num_kv_heads * (groups + 2)):
        raise ValueError(f"a fused wqkv of {fused.shape[0]} rows does not split into {num_kv_heads} KV groups of "
                         f"{groups} query heads + 1 key + 1 value head")
    d = fused.shape[0] // (num_kv_heads * (groups + 2))
    rest = tuple(fused.shape[1:])
    per_group = fused.reshape(num_kv_heads, groups + 2, d, *rest)  # (kv, g + 2, d, [hidden])
    q = per_group[:, :groups].reshape(num_heads * d, *rest)  # query head h * g + j = group h's j-th
    k = per_group[:, groups].reshape(num_kv_heads * d, *rest)
    v = per_group[:, groups + 1].reshape(num_kv_heads * d, *rest)
    return q.contiguous(), k.contiguous(), v.contiguous()


def _split_vit_qkv(fused: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(t.contiguous() for t in fused.chunk(3, dim=0))  # q, k, v blocks of `hidden` rows


_V = "model.vision_tower."
_L = "model.language_model."
#: (pattern on the remote-code key, new key(s), how the tensor is split). ``None`` drops the key (buffers).
_RULES: list[tuple[str, object, str | None]] = [
    (r"vision_model\.embeddings\.class_embedding", _V + "embeddings.cls_token", None),
    (r"vision_model\.embeddings\.position_embedding", _V + "embeddings.position_embeddings", None),
    (r"vision_model\.embeddings\.patch_embedding\.(weight|bias)", _V + r"embeddings.patch_embeddings.projection.\1", None),
    (r"vision_model\.encoder\.layers\.(\d+)\.attn\.qkv\.(weight|bias)",
     tuple(_V + rf"encoder.layer.\1.attention.{p}_proj.\2" for p in "qkv"), "vit_qkv"),
    (r"vision_model\.encoder\.layers\.(\d+)\.attn\.proj\.(weight|bias)", _V + r"encoder.layer.\1.attention.projection_layer.\2", None),
    (r"vision_model\.encoder\.layers\.(\d+)\.attn\.(q_norm|k_norm)\.(weight|bias)", _V + r"encoder.layer.\1.attention.\2.\3", None),
    (r"vision_model\.encoder\.layers\.(\d+)\.ls([12])", _V + r"encoder.layer.\1.lambda_\2", None),
    (r"vision_model\.encoder\.layers\.(\d+)\.norm1\.(weight|bias)", _V + r"encoder.layer.\1.layernorm_before.\2", None),
    (r"vision_model\.encoder\.layers\.(\d+)\.norm2\.(weight|bias)", _V + r"encoder.layer.\1.layernorm_after.\2", None),
    (r"vision_model\.encoder\.layers\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", _V + r"encoder.layer.\1.mlp.\2.\3", None),
    (r"mlp1\.0\.(weight|bias)", r"model.multi_modal_projector.layer_norm.\1", None),
    (r"mlp1\.1\.(weight|bias)", r"model.multi_modal_projector.linear_1.\1", None),
    (r"mlp1\.3\.(weight|bias)", r"model.multi_modal_projector.linear_2.\1", None),
    (r"language_model\.model\.tok_embeddings\.weight", _L + "embed_tokens.weight", None),
    (r"language_model\.model\.layers\.(\d+)\.attention\.wqkv\.(weight|bias)",
     tuple(_L + rf"layers.\1.self_attn.{p}_proj.\2" for p in "qkv"), "wqkv"),
    (r"language_model\.model\.layers\.(\d+)\.attention\.wo\.(weight|bias)", _L + r"layers.\1.self_attn.o_proj.\2", None),
    (r"language_model\.model\.layers\.(\d+)\.feed_forward\.w1\.weight", _L + r"layers.\1.mlp.gate_proj.weight", None),
    (r"language_model\.model\.layers\.(\d+)\.feed_forward\.w2\.weight", _L + r"layers.\1.mlp.down_proj.weight", None),
    (r"language_model\.model\.layers\.(\d+)\.feed_forward\.w3\.weight", _L + r"layers.\1.mlp.up_proj.weight", None),
    (r"language_model\.model\.layers\.(\d+)\.attention_norm\.weight", _L + r"layers.\1.input_layernorm.weight", None),
    (r"language_model\.model\.layers\.(\d+)\.ffn_norm\.weight", _L + r"layers.\1.post_attention_layernorm.weight", None),
    (r"language_model\.model\.norm\.weight", _L + "norm.weight", None),
    (r"language_model\.output\.weight", "lm_head.weight", None),
    (r"language_model\.model\.layers\.(\d+)\.attention\.rotary_emb\.inv_freq", None, None),
]


def map_key(key: str) -> tuple[tuple[str, ...], str | None]:
    """``(new keys, split)`` of a remote-code key (``split``: ``"wqkv"``, ``"vit_qkv"`` or None; no new
    keys: a buffer that is dropped). ``ValueError`` naming a key outside the known layout.

    >>> map_key("language_model.model.layers.3.feed_forward.w2.weight")
    (('model.language_model.layers.3.mlp.down_proj.weight',), None)
    >>> map_key("vision_model.encoder.layers.0.ls1")
    (('model.vision_tower.encoder.layer.0.lambda_1',), None)
    """
    for pattern, new, split in _RULES:
        match = re.fullmatch(pattern, key)
        if match is None:
            continue
        if new is None:
            return (), None
        names = new if isinstance(new, tuple) else (new,)
        return tuple(match.expand(n) for n in names), split
    raise ValueError(f"unknown key {key!r}: not in the remote-code InternVL-2.5 layout (InternViT + InternLM2) this "
                     "converter knows; nothing was guessed")


# --- config ----------------------------------------------------------------------------------------

def _read_json(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: SRC must be a local copy of a remote-code InternVL checkpoint") from None


def _added_tokens(src: pathlib.Path) -> dict[str, int]:
    """Special token -> id, from the checkpoint's tokenizer_config.json (and added_tokens.json)."""
    tokens = {}
    config = _read_json(src / "tokenizer_config.json")
    for idx, entry in (config.get("added_tokens_decoder") or {}).items():
        tokens[entry["content"] if isinstance(entry, dict) else str(entry)] = int(idx)
    if (src / "added_tokens.json").exists():
        tokens.update({k: int(v) for k, v in _read_json(src / "added_tokens.json").items()})
    if (src / "tokenizer.json").exists():
        for entry in _read_json(src / "tokenizer.json").get("added_tokens", []):
            tokens.setdefault(entry["content"], int(entry["id"]))
    return tokens


def _rope_parameters(llm: dict) -> dict:
    theta = float(llm.get("rope_theta", 10000.0))
    scaling = llm.get("rope_scaling")
    if not scaling:
        return {"rope_type": "default", "rope_theta": theta}
    kind = scaling.get("type") or scaling.get("rope_type")
    if kind not in ("dynamic", "linear"):
        raise ValueError(f"llm_config.rope_scaling type {kind!r} is not InternLM2's dynamic or linear scaling")
    return {"rope_type": kind, "factor": float(scaling["factor"]), "rope_theta": theta}


def convert_config(src: pathlib.Path | str):
    """The transformers ``InternVLConfig`` of a remote-code checkpoint folder (Llama text model), and the
    processor settings ``{"image_seq_length", "tile_pixels", "min_tiles", "max_tiles", "chat_template"}``.
    ``ValueError`` naming what this converter does not know."""
    from transformers import InternVLConfig, InternVLVisionConfig, LlamaConfig

    src = pathlib.Path(src)
    cfg = _read_json(src / "config.json")
    if "InternVLChatModel" not in (cfg.get("architectures") or []):
        raise ValueError(f"{src / 'config.json'}: architectures {cfg.get('architectures')!r} is not the remote-code "
                         "['InternVLChatModel']")
    llm, vis = cfg.get("llm_config") or {}, cfg.get("vision_config") or {}
    arch = (llm.get("architectures") or [None])[0]
    if arch != "InternLM2ForCausalLM":
        raise ValueError(f"llm_config.architectures {llm.get('architectures')!r}: this converter rewrites InternLM2 "
                         "(InternLM2ForCausalLM) only")
    if cfg.get("ps_version", "v2") != "v2":
        raise ValueError(f"ps_version {cfg['ps_version']!r}: transformers' InternVL implements the v2 pixel shuffle only")
    template = cfg.get("template")
    if template not in _TEMPLATES:
        raise ValueError(f"template {template!r} is not a conversation template this converter knows "
                         f"({', '.join(_TEMPLATES)})")
    tokens = _added_tokens(src)
    if _IMAGE_TOKENS["context_image_token"] not in tokens:
        raise ValueError(f"the tokenizer in {src} has no {_IMAGE_TOKENS['context_image_token']} token")
    heads = int(llm["num_attention_heads"])
    text = LlamaConfig(
        vocab_size=int(llm["vocab_size"]), hidden_size=int(llm["hidden_size"]),
        intermediate_size=int(llm["intermediate_size"]), num_hidden_layers=int(llm["num_hidden_layers"]),
        num_attention_heads=heads, num_key_value_heads=int(llm.get("num_key_value_heads") or heads),
        head_dim=int(llm["hidden_size"]) // heads, hidden_act=llm.get("hidden_act", "silu"),
        max_position_embeddings=int(llm["max_position_embeddings"]), rms_norm_eps=float(llm.get("rms_norm_eps", 1e-6)),
        initializer_range=float(llm.get("initializer_range", 0.02)), attention_bias=bool(llm.get("bias", False)),
        mlp_bias=False, rope_parameters=_rope_parameters(llm), tie_word_embeddings=bool(llm.get("tie_word_embeddings", False)),
        bos_token_id=llm.get("bos_token_id"), eos_token_id=llm.get("eos_token_id"), pad_token_id=llm.get("pad_token_id"))
    image_size = int(cfg.get("force_image_size") or vis["image_size"])
    vision = InternVLVisionConfig(
        hidden_size=int(vis["hidden_size"]), intermediate_size=int(vis["intermediate_size"]),
        num_hidden_layers=int(vis["num_hidden_layers"]), num_attention_heads=int(vis["num_attention_heads"]),
        attention_bias=bool(vis.get("qkv_bias", True)), use_qk_norm=bool(vis.get("qk_normalization", False)),
        hidden_act=vis.get("hidden_act", "gelu"), norm_type=vis.get("norm_type", "layer_norm"),
        layer_norm_eps=float(vis.get("layer_norm_eps", 1e-6)), image_size=image_size,
        patch_size=int(vis["patch_size"]), num_channels=int(vis.get("num_channels", 3)),
        use_absolute_position_embeddings=True, use_mean_pooling=True)
    config = InternVLConfig(vision_config=vision, text_config=text, image_token_id=tokens[_IMAGE_TOKENS["context_image_token"]],
                            downsample_ratio=float(cfg.get("downsample_ratio", 0.5)),
                            vision_feature_layer=int(cfg.get("select_layer", -1)), vision_feature_select_strategy="default",
                            tie_word_embeddings=text.tie_word_embeddings)
    config.architectures = ["InternVLForConditionalGeneration"]
    dtype = llm.get("torch_dtype") or cfg.get("torch_dtype")
    if dtype:
        config.dtype = dtype
    side = image_size // int(vis["patch_size"])
    processor = {"image_seq_length": int(round(side * config.downsample_ratio)) ** 2, "tile_pixels": image_size,
                 "min_tiles": int(cfg.get("min_dynamic_patch", 1)),
                 "max_tiles": int(cfg.get("max_dynamic_patch", 12)) if cfg.get("dynamic_image_size", True) else 1,
                 "chat_template": _TEMPLATES[template]}
    return config, processor


# --- shards and progress ---------------------------------------------------------------------------

def _source_shards(src: pathlib.Path) -> list[str]:
    index = src / "model.safetensors.index.json"
    if index.exists():
        return sorted(set(_read_json(index)["weight_map"].values()))
    if (src / "model.safetensors").exists():
        return ["model.safetensors"]
    found = sorted(p.name for p in src.glob("*.bin"))
    raise FileNotFoundError(f"no safetensors weights in {src} (model.safetensors or model.safetensors.index.json)"
                            + (f"; found {found}: convert them to safetensors first" if found else ""))


def _fingerprint(src: pathlib.Path, shards: list[str]) -> str:
    h = hashlib.sha256((src / "config.json").read_bytes())
    for name in shards:
        h.update(f"{name}:{(src / name).stat().st_size}".encode())
    return h.hexdigest()


def _write_json_atomic(path: pathlib.Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _convert_shard(path: pathlib.Path, config) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    text = config.text_config
    out: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            names, split = map_key(key)
            if not names:
                continue
            tensor = f.get_tensor(key)
            if split == "wqkv":
                parts = split_wqkv(tensor, text.num_attention_heads, text.num_key_value_heads)
            elif split == "vit_qkv":
                parts = _split_vit_qkv(tensor)
            else:
                parts = (tensor.contiguous(),)
            for name, part in zip(names, parts):
                if name in out:
                    raise ValueError(f"{path.name}: two keys map to {name!r}")
                out[name] = part
    return out


def _progress_bar(total: int, show: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="shard", desc="converting InternVL", disable=not show)


def convert(src: pathlib.Path | str, out: pathlib.Path | str, *, progress: bool = True,
            after_shard: Callable[[str], None] | None = None) -> pathlib.Path:
    """Convert the remote-code checkpoint ``src`` into ``out`` (created); returns ``out``.

    Resumable: shards already written by an earlier run into ``out`` (recorded in ``conversion.json``)
    are skipped. ``after_shard`` is called with each written shard's name (tests stop a run there).
    ``ValueError`` for an unknown layout or a ``out`` holding another source's conversion.
    """
    from safetensors.torch import save_file

    src, out = pathlib.Path(src), pathlib.Path(out)
    config, proc = convert_config(src)
    shards = _source_shards(src)
    fingerprint = _fingerprint(src, shards)
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / PROGRESS_FILE
    record = _read_json(record_path) if record_path.exists() else None
    if record is not None and record.get("source_fingerprint") != fingerprint:
        raise ValueError(f"{out} holds a conversion of another source ({record.get('source')}); choose an empty OUT")
    if record is None:
        if any(out.iterdir()):
            raise ValueError(f"{out} is not empty and holds no {PROGRESS_FILE}: choose an empty OUT")
        record = {"source": str(src.resolve()), "source_fingerprint": fingerprint,
                  "source_config": _read_json(src / "config.json").get("_name_or_path") or src.name,
                  "converter": f"d2pruner.models.convert_internvl v{CONVERTER_VERSION}", "complete": False,
                  "shards": {}}
        _write_json_atomic(record_path, record)
    n = len(shards)
    bar = _progress_bar(n, progress)
    for i, name in enumerate(shards, start=1):
        target = _SHARD.format(i, n)
        if name in record["shards"] and (out / target).exists():
            bar.update(1)
            continue
        tensors = _convert_shard(src / name, config)
        tmp = out / (target + ".tmp")
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, out / target)
        record["shards"][name] = {"file": target, "keys": {k: list(v.shape) for k, v in tensors.items()}}
        _write_json_atomic(record_path, record)
        del tensors
        bar.update(1)
        if after_shard is not None:
            after_shard(name)
    bar.close()
    written = {k: (s["file"], shape) for s in record["shards"].values() for k, shape in s["keys"].items()}
    _check_keys(config, written)
    weight_map = {k: f for k, (f, _) in sorted(written.items())}
    _write_json_atomic(out / "model.safetensors.index.json", {"metadata": {}, "weight_map": weight_map})
    config.save_pretrained(out)
    _write_generation_config(src, out, config)
    _write_processor(src, out, proc)
    record["complete"] = True
    _write_json_atomic(record_path, record)
    return out


def _check_keys(config, written: dict) -> None:
    """The written keys and shapes are exactly the model's (built on the meta device)."""
    from transformers import InternVLForConditionalGeneration

    with torch.device("meta"):
        model = InternVLForConditionalGeneration(config)
    want = {k: list(v.shape) for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        want.pop("lm_head.weight", None)
    missing = sorted(set(want) - set(written))
    extra = sorted(set(written) - set(want))
    wrong = sorted(k for k in set(want) & set(written) if want[k] != list(written[k][1]))
    if missing or extra or wrong:
        raise ValueError(f"the converted weights do not fit InternVLForConditionalGeneration: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}, wrong shape {[(k, written[k][1], want[k]) for k in wrong[:5]]}")


def _write_generation_config(src: pathlib.Path, out: pathlib.Path, config) -> None:
    """The checkpoint's end-of-text id and its chat turn's end ``<|im_end|>``: an answer stops at either."""
    from transformers import GenerationConfig

    eos = config.text_config.eos_token_id
    ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    end = _added_tokens(src).get("<|im_end|>")
    if end is not None and end not in ids:
        ids.append(end)
    GenerationConfig(eos_token_id=ids or None, bos_token_id=config.text_config.bos_token_id,
                     pad_token_id=config.text_config.pad_token_id).save_pretrained(out)


def _write_processor(src: pathlib.Path, out: pathlib.Path, proc: dict) -> None:
    """The checkpoint's tokenizer (files and chat template, remote ``auto_map`` dropped, image tokens
    named) and transformers' InternVL processor around it with the checkpoint's tiling."""
    import shutil

    from transformers import AutoTokenizer, GotOcr2ImageProcessor

    from d2pruner.models.internvl import image_only_internvl_processor

    for name in _TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copyfile(src / name, out / name)
    config = _read_json(src / "tokenizer_config.json")
    config.pop("auto_map", None)
    if str(config.get("tokenizer_class", "")).startswith("InternLM2"):
        # InternLM2's sentencepiece tokenizer without remote code: Llama's, no prefix space added
        config.update(tokenizer_class="LlamaTokenizer", legacy=False, add_prefix_space=False)
    named = dict(_IMAGE_TOKENS)
    # transformers' processor also names a video token; InternVL-2.5's tokenizer has none, and images never use it
    named["video_token"] = "<video>"
    extra = config.get("extra_special_tokens") or {}
    if isinstance(extra, list):  # unnamed special tokens: they stay special in the vocabulary; keep them listed
        config["additional_special_tokens"] = sorted(set(config.get("additional_special_tokens") or []) | set(extra))
        extra = {}
    config["extra_special_tokens"] = {**extra, **named}
    _write_json_atomic(out / "tokenizer_config.json", config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with what to do
        raise RuntimeError(f"the checkpoint's tokenizer does not load without remote code ({err}); converting "
                           "tokenizer.model needs the sentencepiece package") from err
    images = GotOcr2ImageProcessor(size={"height": proc["tile_pixels"], "width": proc["tile_pixels"]},
                                   crop_to_patches=proc["max_tiles"] > 1, min_patches=proc["min_tiles"],
                                   max_patches=proc["max_tiles"], image_mean=[0.485, 0.456, 0.406],
                                   image_std=[0.229, 0.224, 0.225])
    processor = image_only_internvl_processor()(images, tokenizer, image_seq_length=proc["image_seq_length"],
                                                chat_template=proc["chat_template"])
    processor.save_pretrained(str(out))
    path = out / "processor_config.json"
    if path.exists():  # transformers' class name, as the -hf conversions ship it
        _write_json_atomic(path, {**_read_json(path), "processor_class": "InternVLProcessor"})


def conversion_record(model_path: pathlib.Path | str) -> dict | None:
    """The completed ``conversion.json`` of a converted folder (what it was converted from), or None."""
    path = pathlib.Path(model_path) / PROGRESS_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    return record if record.get("complete") else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m d2pruner.models.convert_internvl", description=__doc__.splitlines()[0])
    p.add_argument("src", type=pathlib.Path, help="local folder of the remote-code checkpoint (e.g. InternVL2_5-8B)")
    p.add_argument("out", type=pathlib.Path, help="output folder (empty, or a stopped conversion of the same SRC)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        out = convert(args.src, args.out, progress=not args.no_progress)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}: load it with d2pruner.models.loading.load_model({str(out)!r}) or "
          f"python -m reproduce table3 --model-path {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
