"""The transformers compatibility layer: the tripwire refuses what the hooks cannot serve, with a
message naming the version or the missing argument, and never lets a model run unpruned silently."""

from __future__ import annotations

import warnings

import pytest
import torch

from d2pruner import compat
from d2pruner.models import llava, tiny


@pytest.mark.parametrize("version, shown", [((5, 22, 2), "5.22.2"), ((4, 57, 6), "4.57.6"), ((6, 0, 0), "6.0.0"),
                                            ((6, 1, 0), "6.1.0")])
def test_unsupported_versions_are_refused_by_name(version, shown):
    with pytest.raises(compat.UnsupportedTransformersError, match=rf"transformers {shown}\b"):
        compat.check_transformers(version=version)


@pytest.mark.parametrize("version", [(5, 23, 0), (5, 24, 0), (5, 25, 0), (5, 25, 3)])
def test_known_versions_pass_silently(version):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compat.check_transformers(version=version)


def test_a_newer_untested_5x_warns_naming_it():
    with pytest.warns(UserWarning, match=r"transformers 5\.26\.0 is newer .* untested"):
        compat.check_transformers(version=(5, 26, 0))


@pytest.mark.parametrize("version, name", [((5, 23, 0), "past_key_values"), ((5, 23, 9), "past_key_values"),
                                           ((5, 24, 0), "cache"), ((5, 25, 0), "cache"), ((5, 31, 0), "cache")])
def test_cache_argument_follows_the_rename_in_5_24(version, name):
    assert compat.cache_argument(version) == name


def test_the_installed_version_names_the_cache_as_its_decoder_layers_do():
    """The name compat reads is the one the installed transformers' layers take (not only a table)."""
    import inspect

    layer = tiny.tiny_llava().model.language_model.layers[0]
    params = inspect.signature(layer.forward).parameters
    assert compat.CACHE_ARGUMENT in params
    other = "past_key_values" if compat.CACHE_ARGUMENT == "cache" else "cache"
    assert other not in params


def test_get_cache_reads_either_name_and_prefers_this_versions():
    mine, other = compat.CACHE_ARGUMENT, ("past_key_values" if compat.CACHE_ARGUMENT == "cache" else "cache")
    assert compat.get_cache({mine: 1, other: 2}) == 1
    assert compat.get_cache({other: 2}) == 2
    assert compat.get_cache({mine: None}) is None


@pytest.mark.parametrize("text, parsed", [("5.23.0", (5, 23, 0)), ("5.24.0.dev0", (5, 24, 0)), ("5.25", (5, 25, 0)),
                                          ("5.24.1+local", (5, 24, 1))])
def test_parse_version(text, parsed):
    assert compat.parse_version(text) == parsed


def test_parse_version_names_the_bad_text():
    with pytest.raises(ValueError, match="'main'"):
        compat.parse_version("main")


class _OldLayer(torch.nn.Module):
    """A decoder layer of an imagined version that renamed the rotary tables."""

    def forward(self, hidden_states, attention_mask=None, position_ids=None, rotary=None, **kwargs):
        return hidden_states


def test_a_layer_without_an_argument_the_hooks_read_is_refused_by_name():
    model = tiny.tiny_llava()
    with pytest.raises(compat.UnsupportedTransformersError, match=r"_OldLayer\.forward takes no 'position_embeddings'"):
        compat.check_transformers(model.model, _OldLayer())


def test_attach_refuses_an_unsupported_version_and_leaves_the_model_untouched(monkeypatch):
    model = tiny.tiny_llava()
    monkeypatch.setattr(compat, "TRANSFORMERS_VERSION", (5, 22, 0))
    with pytest.raises(compat.UnsupportedTransformersError, match="transformers 5.22.0 is older than the supported floor"):
        llava.attach(model, 64)
    hooks = [m for m in model.modules() if m._forward_pre_hooks]
    assert hooks == []


def test_attach_refuses_a_model_whose_layers_lost_an_argument(monkeypatch):
    model = tiny.tiny_llava()
    layers = model.model.language_model.layers
    monkeypatch.setattr(layers[0], "forward", _OldLayer().forward)
    with pytest.raises(compat.UnsupportedTransformersError, match="'position_embeddings'"):
        llava.attach(model, 64)


def test_a_text_model_without_the_deepstack_arguments_is_refused_for_qwen3_only():
    """A family's own arguments are checked too: Qwen3-VL's hooks read the text model's DeepStack inputs."""
    from d2pruner.models import qwen_vl

    class _PlainText(torch.nn.Module):
        def forward(self, inputs_embeds=None, attention_mask=None, position_ids=None, **kwargs):
            return inputs_embeds

    model = tiny.tiny_qwen3_vl()
    with pytest.raises(compat.UnsupportedTransformersError, match=r"_PlainText\.forward takes no 'visual_pos_masks'"):
        compat.check_transformers(model.model, text_model=_PlainText(), extra=qwen_vl.QWEN3_VL.hook_arguments)
    compat.check_transformers(model.model, text_model=_PlainText(), extra=qwen_vl.QWEN2_5_VL.hook_arguments)
    compat.check_transformers(model.model, model.model.language_model.layers[0], text_model=model.model.language_model,
                              extra=qwen_vl.QWEN3_VL.hook_arguments)  # the real one passes


def test_a_text_model_without_position_ids_is_refused():
    class _NoPositions(torch.nn.Module):
        def forward(self, inputs_embeds=None, attention_mask=None, **kwargs):
            return inputs_embeds

    with pytest.raises(compat.UnsupportedTransformersError, match="text model's call arguments"):
        compat.check_transformers(text_model=_NoPositions())
