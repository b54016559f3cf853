"""The CPU attention tactics against kiln's reference Attention (kiln.ops.fused), on random
inputs in the layouts the fusion pass produces, with float and boolean masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kiln.kernels import LayerSpec, Target, get_tactic
from kiln.kernels.native import softmax as native_softmax
from kiln.ops.fused import attention

CPU = Target(torch.device("cpu"), "fp32")
STORE = {"bhsd": (0, 1, 2, 3), "bshd": (0, 2, 1, 3), "bhds": (0, 1, 3, 2)}


def _stored(t: torch.Tensor, layout: str) -> torch.Tensor:
    """A [B, H, S, D] tensor in the shape and memory order `layout` names."""
    return t.permute(STORE[layout]).contiguous()


CASES = [  # (B, H, S, D, layouts q/k/v, out layout, mask, scale)
    (2, 3, 7, 8, ("bhsd", "bhsd", "bhsd"), "bhsd", None, None),
    (1, 6, 19, 32, ("bhsd", "bhds", "bhsd"), "bhsd", "float", 0.18),  # khmersm's layout
    (2, 4, 9, 16, ("bshd", "bshd", "bshd"), "bshd", "bool", None),
    (3, 2, 5, 4, ("bshd", "bhds", "bhsd"), "bshd", "float-full", 0.5),
]


@pytest.mark.parametrize("name", ["attention-explicit", "attention-explicit-native", "sdpa"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_cpu_attention_tactics_match_the_reference(case, name):
    if name.endswith("native") and native_softmax.in_place() is None:
        pytest.skip("no C compiler or no AVX-512 here: kiln's native kernels are off")
    b, h, s, d, layouts, out_layout, mask_kind, scale = case
    rng = np.random.default_rng(b * h + s)
    q, k, v = (torch.from_numpy(rng.standard_normal((b, h, s, d)).astype(np.float32))
               for _ in range(3))
    mask = None
    if mask_kind == "float":  # a padding bias over keys, broadcast over heads and queries
        mask = torch.from_numpy(np.where(rng.random((b, 1, 1, s)) < 0.3, -1e4, 0.0)
                                .astype(np.float32))
    elif mask_kind == "float-full":
        mask = torch.from_numpy(rng.standard_normal((b, h, s, s)).astype(np.float32))
    elif mask_kind == "bool":
        keep = rng.random((b, 1, 1, s)) < 0.7
        keep[1] = False  # every key of the second sample masked: zeros with the guard
        mask = torch.from_numpy(keep)
    attrs = {"q_layout": layouts[0], "k_layout": layouts[1], "v_layout": layouts[2],
             "out_layout": out_layout, "zero_nan_rows": int(mask_kind == "bool")}
    if scale is not None:
        attrs["scale"] = scale
    # as their producers store them: [B, S, H, D] for bshd, the key as [B, H, D, S] for bhds
    given = [_stored(t, lay) for t, lay in zip((q, k, v), layouts)]
    want = attention(*given, mask, **attrs)
    spec = LayerSpec("attn", "Attention", "kiln", 1, ["q", "k", "v", "mask"], ["y"], attrs)
    tactic = get_tactic(name)
    assert tactic.supports(spec, CPU)
    got = tactic.bind(spec, {}, CPU.device)(*given, mask)
    assert got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5, rtol=1e-4)
    if mask_kind == "bool":
        assert not torch.isnan(got).any() and not got[1].any()


def test_explicit_attention_is_a_cpu_tactic_without_causal_masks():
    tactic = get_tactic("attention-explicit")
    spec = LayerSpec("attn", "Attention", "kiln", 1, ["q", "k", "v"], ["y"], {})
    assert tactic.supports(spec, CPU)
    assert not tactic.supports(LayerSpec("attn", "Attention", "kiln", 1, ["q", "k", "v"],
                                         ["y"], {"is_causal": 1}), CPU)
    assert not tactic.supports(spec, Target(torch.device("cuda"), "fp16"))
