"""The remote-code InternVL-2.5 converter (d2pruner.models.convert_internvl) on a tiny checkpoint built here.

The tiny checkpoint has the remote code's config schema (InternVLChatModel, an InternLM2 ``llm_config``,
an InternViT ``vision_config``) and key names, random weights, two safetensors shards and a tokenizer
with InternVL's image tokens. The converted transformers model is compared with an independent forward
of the original-layout weights written below in plain torch -- InternViT (fused qkv), pixel shuffle,
the mlp1 projector, and the InternLM2 decoder (RMSNorm, the fused ``wqkv`` read per KV group, RoPE with
InternLM2's own scaling rule, GQA, SwiGLU) -- which shares no code with the converter or transformers.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from d2pruner.models import convert_internvl as conv

IMG_CONTEXT = 127
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<img>", "</img>", "<|im_start|>", "<|im_end|>"]
LLM = {"architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2", "vocab_size": 128, "hidden_size": 64,
       "intermediate_size": 96, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
       "hidden_act": "silu", "max_position_embeddings": 64, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
       "bias": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": False,
       "torch_dtype": "float32"}
VIT = {"architectures": ["InternVisionModel"], "model_type": "intern_vit_6b", "hidden_size": 32, "intermediate_size": 64,
       "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 64, "patch_size": 2, "qkv_bias": True,
       "qk_normalization": False, "norm_type": "layer_norm", "layer_norm_eps": 1e-6, "hidden_act": "gelu",
       "num_channels": 3}


def remote_config(rope_scaling):
    return {"architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "downsample_ratio": 0.5,
            "select_layer": -1, "template": "internvl2_5", "ps_version": "v2", "force_image_size": 64,
            "dynamic_image_size": True, "use_thumbnail": True, "min_dynamic_patch": 1, "max_dynamic_patch": 4,
            "llm_config": {**LLM, "rope_scaling": rope_scaling}, "vision_config": VIT}


def remote_state_dict(seed=0) -> dict[str, torch.Tensor]:
    """Random weights under the remote code's key names and shapes."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape, s=0.2: torch.randn(*shape, generator=g) * s  # noqa: E731
    C, H, V = VIT["hidden_size"], LLM["hidden_size"], LLM["vocab_size"]
    d = H // LLM["num_attention_heads"]
    kv, groups = LLM["num_key_value_heads"], LLM["num_attention_heads"] // LLM["num_key_value_heads"]
    n_patches = (VIT["image_size"] // VIT["patch_size"]) ** 2
    sd = {"vision_model.embeddings.class_embedding": r(1, 1, C),
          "vision_model.embeddings.position_embedding": r(1, n_patches + 1, C),
          "vision_model.embeddings.patch_embedding.weight": r(C, 3, 2, 2),
          "vision_model.embeddings.patch_embedding.bias": r(C)}
    for i in range(VIT["num_hidden_layers"]):
        p = f"vision_model.encoder.layers.{i}."
        sd.update({p + "attn.qkv.weight": r(3 * C, C), p + "attn.qkv.bias": r(3 * C), p + "attn.proj.weight": r(C, C),
                   p + "attn.proj.bias": r(C), p + "ls1": 1 + r(C), p + "ls2": 1 + r(C), p + "norm1.weight": 1 + r(C),
                   p + "norm1.bias": r(C), p + "norm2.weight": 1 + r(C), p + "norm2.bias": r(C),
                   p + "mlp.fc1.weight": r(64, C), p + "mlp.fc1.bias": r(64), p + "mlp.fc2.weight": r(C, 64),
                   p + "mlp.fc2.bias": r(C)})
    sd.update({"mlp1.0.weight": 1 + r(4 * C), "mlp1.0.bias": r(4 * C), "mlp1.1.weight": r(H, 4 * C), "mlp1.1.bias": r(H),
               "mlp1.3.weight": r(H, H), "mlp1.3.bias": r(H)})
    sd["language_model.model.tok_embeddings.weight"] = r(V, H, s=1.0)
    for i in range(LLM["num_hidden_layers"]):
        p = f"language_model.model.layers.{i}."
        sd.update({p + "attention.wqkv.weight": r(kv * (groups + 2) * d, H), p + "attention.wo.weight": r(H, H),
                   p + "feed_forward.w1.weight": r(96, H), p + "feed_forward.w2.weight": r(H, 96),
                   p + "feed_forward.w3.weight": r(96, H), p + "attention_norm.weight": 1 + r(H),
                   p + "ffn_norm.weight": 1 + r(H)})
    sd["language_model.model.norm.weight"] = 1 + r(H)
    sd["language_model.output.weight"] = r(V, H)
    return sd


def write_tokenizer(folder):
    """A character-level tokenizer with InternVL's image tokens, saved as the remote code ships it (its
    tokenizer_config names a remote class in ``auto_map``)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = SPECIALS + [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {t: i for i, t in enumerate(tokens)}
    vocab["<IMG_CONTEXT>"] = IMG_CONTEXT
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>", additional_special_tokens=SPECIALS[4:] + ["<IMG_CONTEXT>"])
    tok.save_pretrained(folder)
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["auto_map"] = {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]}
    path.write_text(json.dumps(config))


def write_checkpoint(folder, rope_scaling=None, sd=None):
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    sd = remote_state_dict() if sd is None else sd
    (folder / "config.json").write_text(json.dumps(remote_config(rope_scaling)))
    vision = {k: v for k, v in sd.items() if not k.startswith("language_model")}
    text = {k: v for k, v in sd.items() if k.startswith("language_model")}
    save_file(vision, str(folder / "model-00001-of-00002.safetensors"))
    save_file(text, str(folder / "model-00002-of-00002.safetensors"))
    weight_map = {**{k: "model-00001-of-00002.safetensors" for k in vision},
                  **{k: "model-00002-of-00002.safetensors" for k in text}}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    write_tokenizer(folder)
    return sd


# --- the independent forward of the original layout ------------------------------------------------

def internvit_features(sd, pixels):
    """InternViT (last layer, [CLS] dropped) -> pixel shuffle v2 -> mlp1, as the remote code computes them."""
    C, heads = VIT["hidden_size"], VIT["num_attention_heads"]
    x = F.conv2d(pixels, sd["vision_model.embeddings.patch_embedding.weight"],
                 sd["vision_model.embeddings.patch_embedding.bias"], stride=VIT["patch_size"])
    n = x.shape[0]
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["vision_model.embeddings.class_embedding"].expand(n, -1, -1), x], 1)
    x = x + sd["vision_model.embeddings.position_embedding"]
    N = x.shape[1]
    for i in range(VIT["num_hidden_layers"]):
        w = lambda name: sd[f"vision_model.encoder.layers.{i}.{name}"]  # noqa: E731
        h = F.layer_norm(x, (C,), w("norm1.weight"), w("norm1.bias"), VIT["layer_norm_eps"])
        q, k, v = (h @ w("attn.qkv.weight").T + w("attn.qkv.bias")).reshape(n, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(C // heads), dim=-1) @ v
        att = att.transpose(1, 2).reshape(n, N, C) @ w("attn.proj.weight").T + w("attn.proj.bias")
        x = x + w("ls1") * att
        h = F.layer_norm(x, (C,), w("norm2.weight"), w("norm2.bias"), VIT["layer_norm_eps"])
        h = F.gelu(h @ w("mlp.fc1.weight").T + w("mlp.fc1.bias")) @ w("mlp.fc2.weight").T + w("mlp.fc2.bias")
        x = x + w("ls2") * h
    x = x[:, 1:]
    side = int(round(x.shape[1] ** 0.5))
    x = x.reshape(n, side, side, C)
    # pixel shuffle 0.5, version v2 (the remote code's steps)
    x = x.reshape(n, side, side // 2, C * 2).permute(0, 2, 1, 3).reshape(n, side // 2, side // 2, C * 4).permute(0, 2, 1, 3)
    x = x.reshape(n, -1, 4 * C)
    x = F.layer_norm(x, (4 * C,), sd["mlp1.0.weight"], sd["mlp1.0.bias"], 1e-5)
    return F.gelu(x @ sd["mlp1.1.weight"].T + sd["mlp1.1.bias"]) @ sd["mlp1.3.weight"].T + sd["mlp1.3.bias"]


def rms(x, weight, eps=LLM["rms_norm_eps"]):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def internlm2_rope(seq_len, d, scaling):
    """cos, sin (T, d) by InternLM2's rotary classes: plain, linear (positions / factor) or dynamic NTK
    (base grown once the sequence passes max_position_embeddings), in float32 as the remote code computes it."""
    base, max_pos = LLM["rope_theta"], LLM["max_position_embeddings"]
    t = torch.arange(seq_len, dtype=torch.float32)
    if scaling and scaling["type"] == "linear":
        t = t / scaling["factor"]
    if scaling and scaling["type"] == "dynamic" and seq_len > max_pos:
        f = scaling["factor"]
        base = base * ((f * seq_len / max_pos) - (f - 1)) ** (d / (d - 2))
    inv = 1.0 / base ** (torch.arange(0, d, 2).float() / d)
    freqs = torch.outer(t, inv)
    emb = torch.cat([freqs, freqs], -1)
    return emb.cos(), emb.sin()


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


def internlm2_logits(sd, embeds, scaling):
    """InternLM2's decoder on (T, H) input embeddings, one sequence, causal: (T, vocab) logits."""
    T, H = embeds.shape
    heads, kv = LLM["num_attention_heads"], LLM["num_key_value_heads"]
    groups, d = heads // kv, H // heads
    cos, sin = internlm2_rope(T, d, scaling)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    x = embeds
    for i in range(LLM["num_hidden_layers"]):
        w = lambda name: sd[f"language_model.model.layers.{i}.{name}"]  # noqa: E731
        h = rms(x, w("attention_norm.weight"))
        qkv = (h @ w("attention.wqkv.weight").T).reshape(T, kv, groups + 2, d)  # per KV group: g queries, key, value
        q = qkv[:, :, :groups].reshape(T, heads, d).transpose(0, 1)  # (heads, T, d), head h*g + j
        k = qkv[:, :, groups].transpose(0, 1)  # (kv, T, d)
        v = qkv[:, :, groups + 1].transpose(0, 1)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        k, v = k.repeat_interleave(groups, 0), v.repeat_interleave(groups, 0)
        scores = (q @ k.transpose(-1, -2) / math.sqrt(d)).masked_fill(~causal, float("-inf"))
        att = (torch.softmax(scores, -1) @ v).transpose(0, 1).reshape(T, H)
        x = x + att @ w("attention.wo.weight").T
        h = rms(x, w("ffn_norm.weight"))
        x = x + (F.silu(h @ w("feed_forward.w1.weight").T) * (h @ w("feed_forward.w3.weight").T)) @ w("feed_forward.w2.weight").T
    return rms(x, sd["language_model.model.norm.weight"]) @ sd["language_model.output.weight"].T


def reference_logits(sd, ids, pixels, scaling):
    embeds = sd["language_model.model.tok_embeddings.weight"][ids]
    feats = internvit_features(sd, pixels).reshape(-1, LLM["hidden_size"])
    embeds = embeds.clone()
    embeds[ids == IMG_CONTEXT] = feats
    return internlm2_logits(sd, embeds, scaling)


def prompt(tiles):
    g = torch.Generator().manual_seed(tiles)
    text = lambda n: torch.randint(8, IMG_CONTEXT, (n,), generator=g).tolist()  # noqa: E731
    ids = [1] + text(5) + [4] + [IMG_CONTEXT] * 256 * tiles + [5] + text(7)
    return torch.tensor(ids), torch.randn(tiles, 3, 64, 64, generator=g)


# --- tests -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("rope_scaling", [{"type": "dynamic", "factor": 2.0}, {"type": "linear", "factor": 2.0}, None])
def test_converted_model_equals_the_original_layout_forward(tmp_path, rope_scaling):
    """Logits of the converted transformers model == the plain-torch forward of the remote-code weights,
    on an image prompt of 3 tiles (777 positions, past max_position_embeddings=64, so dynamic scaling acts)."""
    from transformers import InternVLForConditionalGeneration

    sd = write_checkpoint(tmp_path / "src", rope_scaling)
    out = conv.convert(tmp_path / "src", tmp_path / "out", progress=False)
    model = InternVLForConditionalGeneration.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    ids, pixels = prompt(3)
    with torch.no_grad():
        got = model(input_ids=ids[None], pixel_values=pixels).logits[0]
        want = reference_logits(sd, ids, pixels, rope_scaling)
        text_only = model(input_ids=ids[None, :6]).logits[0]
    delta = (got - want).abs().max().item()
    print(f"rope_scaling={rope_scaling}: max |logit difference| {delta:.2e}")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(text_only, internlm2_logits(sd, sd["language_model.model.tok_embeddings.weight"][ids[:6]],
                                                           rope_scaling), atol=1e-5, rtol=0)
    if rope_scaling is not None:  # the scaling matters here: dropping it would be caught
        assert (reference_logits(sd, ids, pixels, None) - want).abs().max() > 1e-3


def test_converted_folder_loads_as_internvl_with_its_processor(tmp_path):
    from PIL import Image

    from d2pruner.models import internvl, loading

    write_checkpoint(tmp_path / "src")
    out = conv.convert(tmp_path / "src", tmp_path / "out", progress=False)
    model, processor, family = loading.load_model(str(out), dtype=torch.float32)
    assert family == "internvl" and model.config.image_token_id == IMG_CONTEXT
    assert model.config.text_config.model_type == "llama"
    assert model.generation_config.eos_token_id == [2, 7]  # </s> and <|im_end|>
    text = loading.prompt_text(processor, family, "What?")
    assert text == (f"<|im_start|>system\n{internvl.INTERNVL_SYSTEM}<|im_end|>\n<|im_start|>user\n<IMG_CONTEXT>\nWhat?"
                    "<|im_end|>\n<|im_start|>assistant\n")
    image = Image.new("RGB", (128, 64), (20, 200, 30))  # 1x2 tiles + thumbnail
    batch = loading.build_inputs(processor, family, image, "What?", max_tiles=4)
    assert int((batch["input_ids"] == IMG_CONTEXT).sum()) == 256 * 3 and batch["pixel_values"].shape[0] == 3
    with internvl.attach(model, 0.1) as handle, torch.no_grad():
        handle.set_image_sizes([(image.height, image.width)])
        model(**batch)
    assert handle.stats[0].n_visual_before == 768 and handle.stats[0].n_visual_after == 77
    assert len(processor.tokenizer) <= model.config.text_config.vocab_size + 1  # at most the unused <video> name added
    record = conv.conversion_record(out)
    assert record["complete"] and record["source"] == str((tmp_path / "src").resolve())
    assert "auto_map" not in json.loads((out / "tokenizer_config.json").read_text())


def test_a_stopped_conversion_resumes_and_skips_finished_shards(tmp_path):
    write_checkpoint(tmp_path / "src")

    class Stop(Exception):
        pass

    def stop(name):
        raise Stop(name)

    with pytest.raises(Stop):
        conv.convert(tmp_path / "src", tmp_path / "out", progress=False, after_shard=stop)
    first = tmp_path / "out" / "model-00001-of-00002.safetensors"
    assert first.exists() and not (tmp_path / "out" / "model-00002-of-00002.safetensors").exists()
    assert conv.conversion_record(tmp_path / "out") is None  # not complete
    stamp = first.stat().st_mtime_ns
    written = []
    conv.convert(tmp_path / "src", tmp_path / "out", progress=False, after_shard=written.append)
    assert written == ["model-00002-of-00002.safetensors"] and first.stat().st_mtime_ns == stamp
    conv.convert(tmp_path / "src", tmp_path / "out", progress=False)  # complete: nothing rewritten
    fresh = conv.convert(tmp_path / "src", tmp_path / "fresh", progress=False)
    from safetensors.torch import load_file

    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        a, b = load_file(str(tmp_path / "out" / name)), load_file(str(fresh / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_layouts_are_refused_naming_the_key(tmp_path):
    sd = remote_state_dict()
    sd["language_model.model.layers.0.attention.lora_A.weight"] = torch.zeros(2, 2)
    write_checkpoint(tmp_path / "src", sd=sd)
    with pytest.raises(ValueError, match=r"unknown key 'language_model\.model\.layers\.0\.attention\.lora_A\.weight'"):
        conv.convert(tmp_path / "src", tmp_path / "out", progress=False)
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    config["llm_config"]["architectures"] = ["Qwen2ForCausalLM"]
    (tmp_path / "src" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"InternLM2 \(InternLM2ForCausalLM\) only"):
        conv.convert(tmp_path / "src", tmp_path / "other", progress=False)
    assert conv.main([str(tmp_path / "src"), str(tmp_path / "third"), "--no-progress"]) == 2
    write_checkpoint(tmp_path / "src2")
    with pytest.raises(ValueError, match="holds a conversion of another source"):
        (tmp_path / "out2").mkdir()
        conv.convert(tmp_path / "src2", tmp_path / "out2", progress=False)
        config = json.loads((tmp_path / "src2" / "config.json").read_text())
        config["downsample_ratio"] = 0.5 + 1e-9
        (tmp_path / "src2" / "config.json").write_text(json.dumps(config))
        conv.convert(tmp_path / "src2", tmp_path / "out2", progress=False)


def test_wqkv_split_matches_the_per_group_reading():
    heads, kv, d, hidden = 8, 2, 3, 5
    fused = torch.randn(kv * (heads // kv + 2) * d, hidden)
    q, k, v = conv.split_wqkv(fused, heads, kv)
    grouped = fused.reshape(kv, heads // kv + 2, d, hidden)
    for h in range(heads):
        assert torch.equal(q[h * d:(h + 1) * d], grouped[h // (heads // kv), h % (heads // kv)])
    for g in range(kv):
        assert torch.equal(k[g * d:(g + 1) * d], grouped[g, -2]) and torch.equal(v[g * d:(g + 1) * d], grouped[g, -1])
    qb, kb, vb = conv.split_wqkv(fused[:, 0], heads, kv)
    assert torch.equal(qb, q[:, 0]) and torch.equal(kb, k[:, 0]) and torch.equal(vb, v[:, 0])
    with pytest.raises(ValueError, match="does not split into 2 KV groups"):
        conv.split_wqkv(fused[:-1], heads, kv)


def test_tables_choose_the_base_weights_for_a_converted_folder(tmp_path, capsys):
    """``--model PATH`` with a converted folder: the spec's base model, its prior, and the words every
    table heading and cell record carry; ``reproduce list`` shows the choice."""
    from reproduce import listing
    from reproduce.run import parse_args
    from reproduce.specs import load_spec, model_choice

    write_checkpoint(tmp_path / "src")
    out = conv.convert(tmp_path / "src", tmp_path / "out", progress=False)
    for table in ("table2", "table3"):
        spec = load_spec(table)
        default = model_choice(spec)
        assert default["model"] == "OpenGVLab/InternVL2_5-8B-MPO-hf" and "preference-tuned (MPO) weights" in default["weights"]
        chosen = model_choice(spec, str(out))
        assert chosen["model"] == str(out) and chosen["prior"] == "priors/internvl2_5-8b.json"
        assert chosen["weights"].startswith("OpenGVLab/InternVL2_5-8B: the paper's InternVL-2.5-8B (base weights)")
        assert str((tmp_path / "src").resolve()) in chosen["weights"]
    assert parse_args("table3", ["--model", str(out)]).model_path == str(out)
    assert parse_args("table3", ["--model-path", str(out)]).model_path == str(out)
    listing.main([])
    shown = capsys.readouterr().out
    assert "weights: OpenGVLab/InternVL2_5-8B-MPO-hf: MPO" in shown
    assert "base weights (OpenGVLab/InternVL2_5-8B): python -m d2pruner.models.convert_internvl" in shown
