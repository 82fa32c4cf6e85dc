"""Bad input raises ValueError naming the value and the item, on both backends."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from d2pruner import D2PrunerConfig, TokenLayout, select_tokens
from d2pruner.fast import pack, select_tokens as fast_select

N = 4
GOOD = dict(attn=np.array([0.4, 0.3, 0.2, 0.1]), features=np.eye(N), layout=TokenLayout.grid(2, 2), budget=2)


def with_(**kw):
    return {**GOOD, **kw}


CASES = [
    (with_(attn=np.array([0.4, 0.3, np.nan, 0.1])), "attn of item 0 contains nan at index 2"),
    (with_(attn=np.array([0.4, np.inf, 0.2, 0.1])), "attn of item 0 contains inf at index 1"),
    (with_(attn=np.array([0.4, 0.3, 0.2, -0.1])), "attn of item 0 is negative (-0.1) at index 3"),
    (with_(prior=np.array([0.4, 0.0, 0.2, 0.1])), "prior of item 0 must be > 0, got 0.0 at index 1"),
    (with_(prior=np.array([0.4, 0.3, -2.0, 0.1])), "prior of item 0 must be > 0, got -2.0 at index 2"),
    (with_(prior=np.array([0.4, 0.3, 0.2])), "prior"),
    (with_(features=np.eye(3)), "features"),
    (with_(features=np.where(np.eye(N) > 0, np.nan, 0.0)), "features of item 0 contains nan"),
    (with_(layout=TokenLayout.grid(1, 3)), "covers 3 tokens"),
    (with_(budget=5), "n_keep=5 exceeds the 4 visual tokens of item 0"),
    (with_(budget=0), "n_keep=0 must be at least 1 (item 0)"),
    (with_(budget=1.5), "budget ratio 1.5 of item 0 must lie in (0, 1]"),
    (with_(budget=0.0), "budget ratio 0.0 of item 0"),
    (with_(budget=True), "budget must be an int count or a float ratio, got True"),
]


@pytest.mark.parametrize("backend", ["reference", "fast"])
@pytest.mark.parametrize("kwargs,message", CASES, ids=[m[:30] for _, m in CASES])
def test_bad_input_names_the_value(backend, kwargs, message):
    kwargs = dict(kwargs)
    with pytest.raises(ValueError, match=re.escape(message)):
        select_tokens(kwargs.pop("attn"), kwargs.pop("features"), kwargs.pop("layout"), kwargs.pop("budget"),
                      backend=backend, **kwargs)


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_error_names_the_item_in_a_batch(backend):
    bad = np.array([0.4, 0.3, 0.2, np.nan])
    with pytest.raises(ValueError, match=re.escape("attn of item 1 contains nan at index 3")):
        select_tokens([GOOD["attn"], bad], [np.eye(N)] * 2, GOOD["layout"], 2, backend=backend)
    with pytest.raises(ValueError, match=re.escape("n_keep=9 exceeds the 4 visual tokens of item 1")):
        select_tokens([GOOD["attn"]] * 2, [np.eye(N)] * 2, GOOD["layout"], [2, 9], backend=backend)


def test_fast_backend_direct_errors():
    attn, valid = pack([torch.rand(4), torch.rand(2)])
    feats, _ = pack([torch.rand(4, 3), torch.rand(2, 3)])
    lay, _ = pack([torch.tensor(TokenLayout.grid(2, 2).as_array()), torch.tensor(TokenLayout.grid(1, 2).as_array())])
    with pytest.raises(ValueError, match=re.escape("n_keep=3 exceeds the 2 visual tokens of item 1")):
        fast_select(attn, None, feats, lay, [2, 3], valid=valid)
    with pytest.raises(ValueError, match="not a prefix mask"):
        fast_select(attn, None, feats, lay, [2, 1], valid=valid.flip(1))
    with pytest.raises(ValueError, match=re.escape("features must have shape (2, 4, D)")):
        fast_select(attn, None, feats[:, :3], lay, [2, 1], valid=valid)
    with pytest.raises(ValueError, match="layout must be an integer tensor"):
        fast_select(attn, None, feats, lay.float(), [2, 1], valid=valid)
    with pytest.raises(ValueError, match=re.escape("n_keep has 1 entries for a batch of 2")):
        fast_select(attn, None, feats, lay, [2], valid=valid)
    # padding may hold anything: it is never read as input
    attn[1, 3] = float("nan")
    assert [len(s) for s in fast_select(attn, None, feats, lay, [2, 1], valid=valid).to_list()] == [2, 1]


@pytest.mark.parametrize("field,value,message", [
    ("pivot_ratio", 1.5, "pivot_ratio must lie in [0.0, 1.0], got 1.5"),
    ("spatial_weight", -0.1, "spatial_weight must lie in [0.0, 1.0], got -0.1"),
    ("sim_threshold", float("inf"), "sim_threshold must be a finite number, got inf"),
    ("spatial_radius", -1, "spatial_radius must be an integer >= 0, got -1"),
    ("prune_layer", 0, "prune_layer must be an integer >= 1, got 0"),
    ("eps", -1e-7, "eps must lie in [0.0, inf], got -1e-07"),
    ("pivots_block_neighbours", "yes", "pivots_block_neighbours must be a bool, got 'yes'"),
])
def test_config_rejects(field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        D2PrunerConfig(**{field: value})


def test_layout_rejects():
    with pytest.raises(ValueError, match=re.escape("same (view, row, col) [0, 0, 1]")):
        TokenLayout.from_array([[0, 0, 0], [0, 0, 1], [0, 0, 1]])
    with pytest.raises(ValueError, match=re.escape("TokenLayout.row must be >= 0, got -1 at token 1")):
        TokenLayout.from_array([[0, 0, 0], [0, -1, 1]])
    with pytest.raises(ValueError, match="grid width must be a positive integer, got 0"):
        TokenLayout.grid(3, 0)
    with pytest.raises(ValueError, match="backend must be one of"):
        select_tokens(GOOD["attn"], GOOD["features"], GOOD["layout"], 2, backend="gpu")


def test_features_whose_norm_overflows_are_not_refused():
    """Rows are scaled by a power of two before their norms (the spec's rule), so a finite feature
    vector is never refused and gives the selection of the same vector scaled down."""
    feats = torch.tensor([[[1e30, 1e30, 0.0], [1e30, 1e30, 1e30], [0.0, 0.0, 1e30]]])  # |x|^2 overflows float32
    lay = torch.tensor(TokenLayout.grid(1, 3).as_array())[None]
    attn = torch.tensor([[0.3, 0.2, 0.1]])
    want = fast_select(attn, None, feats / 1e30, lay, [2], D2PrunerConfig(pivot_ratio=0.0)).to_list()[0]
    assert want.kept.tolist() == [0, 2]  # cos(0, 1) = 0.816 > 0.8: token 1 is blocked
    for f in (feats, feats.double()):
        assert fast_select(attn, None, f, lay, [2], D2PrunerConfig(pivot_ratio=0.0)).to_list()[0] == want


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_error_names_the_item_whatever_its_group(backend):
    """Items run in groups of similar size; an error still names the item's place in the caller's list."""
    small, big = GOOD["attn"], np.linspace(1.0, 0.1, 16)
    bad_small = np.array([0.4, 0.3, -0.5, 0.1])
    with pytest.raises(ValueError, match=re.escape("attn of item 2 is negative (-0.5) at index 2")):
        select_tokens([small, big, bad_small], [np.eye(N), np.ones((16, 2)), np.eye(N)],
                      [GOOD["layout"], TokenLayout.grid(4, 4), GOOD["layout"]], 2, backend=backend)
