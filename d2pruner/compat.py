"""Everything that differs between the transformers versions d2pruner supports, in one place.

The pruning hooks read a few call arguments of the multimodal model, its language model and its
decoder layers (:data:`MODEL_ARGUMENTS`, :data:`LAYER_ARGUMENTS`). Their names are part of
transformers' internals, not of its public API, and they change: transformers 5.24 renamed the KV
cache argument from ``past_key_values`` to ``cache`` (the old name stays a deprecated alias of the
public ``forward`` until 5.40, but the hooks receive whatever the calling module passes, i.e. the
new name). A hook that looks for the wrong name reads ``None`` and takes every cached decoding step
for a new prompt; so the hooks never spell such a name themselves, they ask this module.

:func:`check_transformers` is the tripwire ``attach`` runs first: a version below the floor or at 6
or above raises, a 5.x above the newest known one warns, and a model whose forward signatures lack
an argument the hooks read raises with the argument's name, whatever the version number says.

Versions, as read from transformers' own source:

=========  ====================  ========================================================
version    cache argument        status
=========  ====================  ========================================================
< 5.23     --                    refused (below the tested floor)
5.23       ``past_key_values``   tested in CI (the floor)
5.24       ``cache``             tested in CI
5.25       ``cache``             supported from its source (layer and model signatures as in
                                 5.24); CI cannot install it here (it needs a ``kernels``
                                 release the registry lacks)
5.26+ 5.x  ``cache``             untested: attaching warns
>= 6       --                    refused
=========  ====================  ========================================================

Examples
--------
>>> parse_version("5.24.0.dev0")
(5, 24, 0)
>>> cache_argument((5, 23, 0)), cache_argument((5, 24, 0))
('past_key_values', 'cache')
>>> get_cache({"cache": "C"}), get_cache({"past_key_values": "P"}), get_cache({})
('C', 'P', None)
"""

from __future__ import annotations

import inspect
import re
import warnings
from typing import Any, Mapping

__all__ = ["FLOOR", "NEWEST_KNOWN", "CEILING", "TRANSFORMERS_VERSION", "CACHE_ARGUMENT", "MODEL_ARGUMENTS",
           "LAYER_ARGUMENTS", "TEXT_MODEL_ARGUMENTS", "UnsupportedTransformersError", "parse_version", "cache_argument", "get_cache",
           "check_transformers"]

FLOOR = (5, 23, 0)  # the oldest version CI runs the suite on
NEWEST_KNOWN = (5, 25, 999)  # every 5.25.x: the newest version whose source was read
CEILING = (6, 0, 0)  # refused from here on
_CACHE_RENAMED = (5, 24, 0)  # ``past_key_values`` -> ``cache`` in the arguments of models and layers


class UnsupportedTransformersError(RuntimeError):
    """The installed transformers is outside the supported range, or its models do not take the
    arguments the pruning hooks read."""


def parse_version(text: str) -> tuple[int, int, int]:
    """``(major, minor, patch)`` of a version string; pre-release and local tails are ignored."""
    m = re.match(r"\s*(\d+)\.(\d+)(?:\.(\d+))?", str(text))
    if m is None:
        raise ValueError(f"cannot read a version from {text!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def _installed() -> tuple[int, int, int]:
    import transformers

    return parse_version(transformers.__version__)


TRANSFORMERS_VERSION = _installed()


def cache_argument(version: tuple[int, int, int] = TRANSFORMERS_VERSION) -> str:
    """The name under which a model or decoder layer of ``version`` receives its KV cache."""
    return "cache" if version >= _CACHE_RENAMED else "past_key_values"


CACHE_ARGUMENT = cache_argument()

#: What the hooks read from the multimodal model's (``model.model``) call arguments.
MODEL_ARGUMENTS = ("input_ids", "inputs_embeds", "pixel_values", "attention_mask", "mm_encoder_outputs",
                   CACHE_ARGUMENT)
#: What the hooks read from (and, when cutting, write into) a decoder layer's call arguments.
LAYER_ARGUMENTS = ("hidden_states", "attention_mask", "position_ids", "position_embeddings", CACHE_ARGUMENT)
#: What the hooks read from (and, pruning before the LLM, write into) the text model's call arguments.
TEXT_MODEL_ARGUMENTS = ("inputs_embeds", "attention_mask", "position_ids")


def get_cache(kwargs: Mapping[str, Any]) -> Any:
    """The KV cache among a forward's keyword arguments, under this version's name or the other one
    (a caller may still pass the deprecated ``past_key_values`` to a model's public forward)."""
    cache = kwargs.get(CACHE_ARGUMENT)
    if cache is None:
        cache = kwargs.get("past_key_values" if CACHE_ARGUMENT == "cache" else "cache")
    return cache


def _accepts(fn, names) -> list[str]:
    """Of ``names``, those ``fn``'s signature does not take (``**kwargs`` does not count: an argument
    that only lands there is one the model never passes under that name)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return []
    return [n for n in names if n not in params]


def check_transformers(inner=None, layer=None, version: tuple[int, int, int] | None = None, *, text_model=None,
                       extra: Mapping[str, tuple[str, ...]] | None = None) -> None:
    """Refuse a transformers version (or model) the hooks cannot serve; warn for an untested newer 5.x.

    ``inner`` is the multimodal model's inner module (whose forward receives :data:`MODEL_ARGUMENTS`),
    ``layer`` one decoder layer (:data:`LAYER_ARGUMENTS`), ``text_model`` the language model
    (:data:`TEXT_MODEL_ARGUMENTS`); ``extra`` adds a family's own names per part (``"model"``,
    ``"text_model"``, ``"layer"``: e.g. Qwen-VL's image grids). When given, their forward signatures
    must name every argument the hooks read.

    >>> check_transformers(version=(5, 22, 0))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    d2pruner.compat.UnsupportedTransformersError: transformers 5.22.0 is older than the supported floor 5.23.0; ...
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     check_transformers(version=(5, 31, 0))
    >>> "untested" in str(caught[0].message)
    True
    """
    given = version is not None
    version = TRANSFORMERS_VERSION if version is None else version
    shown = ".".join(map(str, version))
    if version < FLOOR:
        raise UnsupportedTransformersError(
            f"transformers {shown} is older than the supported floor {'.'.join(map(str, FLOOR))}; "
            f"install a newer one (pip install 'transformers>={'.'.join(map(str, FLOOR))},<6')")
    if version >= CEILING:
        raise UnsupportedTransformersError(
            f"transformers {shown} is not supported (d2pruner supports 5.x from {'.'.join(map(str, FLOOR))}); "
            "its models' call arguments were never read by d2pruner's hooks, so pruning could go silently wrong")
    if version > NEWEST_KNOWN:
        warnings.warn(f"transformers {shown} is newer than the newest version d2pruner was checked against "
                      f"({NEWEST_KNOWN[0]}.{NEWEST_KNOWN[1]}) and untested; the hooks read the cache as "
                      f"{cache_argument(version)!r} and check the model's signatures, but compare a pruned run "
                      "with tests/test_models.py before trusting it", stacklevel=3)
    arg = cache_argument(version) if given else CACHE_ARGUMENT
    extra = extra or {}
    for module, names, what, part in ((inner, MODEL_ARGUMENTS[:-1] + (arg,), "multimodal model", "model"),
                                      (text_model, TEXT_MODEL_ARGUMENTS, "text model", "text_model"),
                                      (layer, LAYER_ARGUMENTS[:-1] + (arg,), "decoder layer", "layer")):
        if module is None:
            continue
        missing = _accepts(module.forward, names + tuple(extra.get(part, ())))
        if missing:
            raise UnsupportedTransformersError(
                f"transformers {shown}: {type(module).__name__}.forward takes no {', '.join(map(repr, missing))}, "
                f"which the pruning hooks read from the {what}'s call arguments; this version is not supported")
