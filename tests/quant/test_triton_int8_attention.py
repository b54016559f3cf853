"""The Triton INT8 attention kernel and its tactics against kiln.QAttention's reference.
Without a GPU they run in Triton's interpreter (tests/conftest.py), at small sizes; on a GPU
the same cases run compiled.

The integer products are exact and the kernel takes the reference's float32 factors, so
the two differ only where the kernel's exponential, sum order or division lands a float
bit away from torch's. That moves a probability across a rounding boundary of p * 127
(one step of 1/127) only where p * 127 lay within that float error of a half step: rare.
One such step changes the row's outputs by at most v_factor * max|v| = v_scale * 128 / 127,
so float outputs are held within two such steps (two flips in a row) of the reference, and
int8 outputs, whose step here (OUT_SCALE) is larger than one probability step, within two
output steps (one step before rounding can become two after it). A flip touches one row,
so the elements that differ at all are held to a small fraction: under the interpreter
(numpy's float32 arithmetic) none do.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from kiln.ops.qattention import P_STEPS, qattention, score_factor, softmax_scale, value_factor
from kiln.ops.quantized import inverse_scale
from tests.quant._triton_cases import DEVICE
from tests.quant._triton_cases import ints as _ints

triton = pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or Triton's interpreter (set by tests/conftest.py on CPU machines)")
kernels = pytest.importorskip("kiln.kernels.triton._int8_attention")

# scores of a spread of a few units (q.k of int8 vectors over sqrt(D) has a standard
# deviation near 5500, times 0.02 * 0.02), so the softmax is neither flat nor one-hot
Q_SCALE = K_SCALE = 0.02
V_SCALE = 0.05
OUT_SCALE = 0.06  # > V_SCALE * 128 / 127: one probability step moves an output < 1 step
MAX_DIFFERING = 0.02  # of the elements: rows where a probability crossed a boundary

# (B, H, Sq, Skv, D, q/k/v layout, mask, output, out_layout)
CASES = [
    (1, 1, 16, 16, 32, "bshd", None, "int8", "bshd"),
    (2, 3, 40, 40, 64, "bshd", "pad", "int8", "bshd"),  # 40: no power of two
    (2, 2, 40, 40, 64, "bshd", "pad-fp16", "int8", "bshd"),  # BERT's FP16 engines' mask
    (2, 3, 40, 40, 32, "bhsd", "pad-inf", "fp16", "bhsd"),
    (1, 3, 72, 72, 64, "bshd", "random", "fp32", "bhsd"),
    (2, 1, 72, 72, 32, "bhsd", "bool", "int8", "bhsd"),
    (2, 3, 16, 40, 64, "bshd", "blocked", "fp32", "bshd"),  # Sq != Skv
    (1, 3, 40, 16, 32, "bhsd", "blocked", "int8", "bshd"),
    (2, 2, 40, 40, 32, "mha", "pad", "int8", "bhsd"),  # torch MHA: [S, B, 3, H, D] picked
    (2, 2, 64, 64, 64, "bshd", "pad", "int8", "bshd"),  # keys fill the tile; one mask row
    (1, 2, 40, 32, 32, "bhsd", "random", "fp32", "bhsd"),  # keys fill it; a mask per row
]


def _qkv(rng, b: int, h: int, s_q: int, s_kv: int, d: int, layout: str) -> tuple:
    """Random int8 q [B, H, Sq, D], k and v [B, H, Skv, D] on DEVICE: for 'bshd' strided
    views of the column blocks of one GEMM output [B, S, 3 * H * D] (q from its own
    [B, Sq, H * D] where the lengths differ), for 'bhsd' contiguous tensors, for 'mha' (a
    'bhsd' layer) the views torch's MultiheadAttention export takes of [S, B, 3 * H * D]."""
    if layout == "mha":
        qkv = _ints(rng, (s_q, b, 3, h, d)).to(DEVICE)
        return tuple(qkv[:, :, i].permute(1, 2, 0, 3) for i in range(3))
    if layout == "bhsd":
        return tuple(_ints(rng, (b, h, s, d)).to(DEVICE) for s in (s_q, s_kv, s_kv))
    if s_q == s_kv:
        qkv = _ints(rng, (b, s_q, 3 * h * d)).to(DEVICE)
        q, k, v = (qkv[..., i * h * d:(i + 1) * h * d].reshape(b, s_q, h, d) for i in range(3))
    else:
        q = _ints(rng, (b, s_q, h * d)).to(DEVICE).reshape(b, s_q, h, d)
        kv = _ints(rng, (b, s_kv, 2 * h * d)).to(DEVICE)
        k, v = (kv[..., i * h * d:(i + 1) * h * d].reshape(b, s_kv, h, d) for i in range(2))
    return tuple(t.transpose(1, 2) for t in (q, k, v))


def _mask(rng, kind: str | None, b: int, s_q: int, s_kv: int) -> torch.Tensor | None:
    if kind is None:
        return None
    if kind.startswith("pad"):  # [B, 1, 1, Skv]: the last keys of the second sequence
        mask = torch.zeros(b, 1, 1, s_kv)
        mask[-1, ..., -s_kv // 3:] = float("-inf") if kind == "pad-inf" else -10000.0
        return mask.half() if kind == "pad-fp16" else mask
    if kind == "random":
        return torch.from_numpy(rng.standard_normal((b, 1, s_q, s_kv)).astype(np.float32) * 3)
    if kind == "bool":
        return torch.from_numpy(rng.random((b, 1, s_q, s_kv)) > 0.3)
    mask = torch.zeros(1, 1, s_q, s_kv)  # "blocked": rows 1 and 5 see no key at all
    mask[..., 1, :] = mask[..., 5, :] = float("-inf")
    mask[..., 2, : s_kv // 2] = float("-inf")
    return mask


def _attrs(layout: str, output: str, out_layout: str) -> dict:
    attrs = {"q_scale": Q_SCALE, "k_scale": K_SCALE, "v_scale": V_SCALE, "q_layout": layout,
             "k_layout": layout, "v_layout": layout, "out_layout": out_layout}
    if output == "int8":
        attrs.update(out_scale=OUT_SCALE, out_zero_point=0, out_type="int8")
    else:
        attrs["out_dtype"] = output
    return attrs


def _stored(t: torch.Tensor, layout: str) -> torch.Tensor:
    """A [B, H, S, D] view as the layer's input in `layout`."""
    if layout == "bshd":
        return t.transpose(1, 2)
    return t.transpose(-1, -2) if layout == "bhds" else t


def _check(got: torch.Tensor, want: torch.Tensor, v: torch.Tensor) -> None:
    """Within the bounds the module docstring derives, and identical almost everywhere."""
    got, want = got.cpu(), want.cpu()
    assert got.dtype == want.dtype and got.shape == want.shape
    if want.dtype == torch.int8:
        diff = (got.int() - want.int()).abs()
        assert int(diff.max()) <= 2
    else:
        step = V_SCALE * float(v.abs().max()) / P_STEPS  # one probability step's effect
        ulp = 2.0 ** -10 if want.dtype == torch.float16 else 0.0  # rounding each to fp16
        diff = (got.float() - want.float()).abs()
        assert float((diff - 2 * step - ulp * want.float().abs()).max()) <= 0.0
    assert float((diff > 0).float().mean()) <= MAX_DIFFERING


@pytest.mark.parametrize("exp2", [False, True], ids=["base-e", "base-2"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_kernel_matches_the_reference(case, exp2):
    """The base-2 softmax (exp2) rounds its scores, exponentials and steps differently
    from the reference's float32 ops, each within an ulp: held to the same bounds."""
    b, h, s_q, s_kv, d, layout, kind, output, out_layout = case
    rng = np.random.default_rng(b * 1000 + h * 100 + s_q + s_kv + d)
    q, k, v = _qkv(rng, b, h, s_q, s_kv, d, layout)
    layout = "bhsd" if layout == "mha" else layout
    mask = _mask(rng, kind, b, s_q, s_kv)
    attrs = _attrs(layout, output, out_layout)
    want = qattention(*(_stored(t, layout).cpu() for t in (q, k, v)), mask, **attrs)
    shape = (b, s_q, h, d) if out_layout == "bshd" else (b, h, s_q, d)
    out = torch.empty(shape, dtype=want.dtype, device=DEVICE)
    got = kernels.int8_attention(
        q, k, v, None if mask is None else mask.to(DEVICE),
        out.transpose(1, 2) if out_layout == "bshd" else out,
        factor=score_factor(Q_SCALE, K_SCALE, softmax_scale(None, d)),
        v_factor=value_factor(V_SCALE),
        out_inv_scale=inverse_scale(OUT_SCALE) if output == "int8" else None,
        block_m=32, warps=4, exp2=exp2)
    assert got.data_ptr() == out.data_ptr()
    _check(out, want, v)
    if kind == "blocked":  # rows the mask blocks entirely: exactly zero
        rows = out.cpu() if out_layout == "bhsd" else out.cpu().transpose(1, 2)
        assert not rows[:, :, [1, 5]].float().abs().max()


def _spec(q_shape: tuple, k_shape: tuple, v_shape: tuple, attrs: dict,
          types: tuple = ("int8", "int8", "int8")):
    from kiln.kernels import LayerSpec

    return LayerSpec("attn", "QAttention", "kiln", 1, ["q", "k", "v", "mask"], ["y"], attrs,
                     input_shapes=[q_shape, k_shape, v_shape, None],
                     input_dtypes=[*types, "float32"])


@pytest.mark.parametrize("name,layouts,kind,output,out_layout", [
    ("int8-triton-attention-64w4", ("bshd", "bshd", "bshd"), "pad", "int8", "bshd"),
    ("int8-triton-attention-64w4", ("bhsd", "bhds", "bhsd"), "bool", "fp16", "bhsd"),
    ("int8-triton-attention-128w4", ("bshd", "bshd", "bshd"), "blocked", "fp32", "bshd"),
    ("int8-triton-attention-128w8", ("bhsd", "bhsd", "bhsd"), None, "int8", "bhsd"),
    ("int8-triton-attention-64w4-recip", ("bshd", "bshd", "bshd"), "pad", "int8", "bshd"),
    ("int8-triton-attention-128w8-recip", ("bhsd", "bhsd", "bhsd"), "blocked", "fp16",
     "bhsd"),
    ("int8-triton-attention-32w4-recip", ("bshd", "bshd", "bshd"), "pad", "int8", "bshd"),
    # persistent: 6 blocks over 2 programs here (the interpreter counts 2 SMs), so each
    # program walks 3 blocks; and over 4 (two walk 2, two walk 1)
    ("int8-triton-attention-128w8-recip-p1", ("bshd", "bshd", "bshd"), "pad", "int8", "bshd"),
    ("int8-triton-attention-128w8-recip-p2", ("bhsd", "bhds", "bhsd"), "blocked", "fp16",
     "bhsd"),
    ("int8-triton-attention-64w4-recip-p4", ("bshd", "bshd", "bshd"), "bool", "int8",
     "bshd"),
    ("int8-triton-attention-128w8-recip-early-v", ("bshd", "bshd", "bshd"), "pad", "int8",
     "bshd"),
    ("int8-triton-attention-128w8-exp2", ("bshd", "bshd", "bshd"), "pad", "int8", "bshd"),
    ("int8-triton-attention-64w4-exp2", ("bhsd", "bhds", "bhsd"), "blocked", "fp16", "bhsd"),
    ("int8-triton-attention-32w4-exp2", ("bshd", "bshd", "bshd"), "random", "fp32",
     "bshd")])
def test_tactic_matches_the_reference(name, layouts, kind, output, out_layout, monkeypatch):
    """Bound through the registry as an engine binds it: inputs in the layer's layouts (a
    pre-transposed key among them), the output allocated in its out_layout."""
    from kiln.kernels import Target, get_tactic

    monkeypatch.setenv("KILN_TRITON_ON_CPU", "1")  # the interpreter stands in for a GPU
    b, h, s, d = 2, 3, 40, 32
    rng = np.random.default_rng(len(name) + len(out_layout) + len(output))
    q, k, v = _qkv(rng, b, h, s, s, d, layouts[0] if layouts[0] == layouts[1] else "bhsd")
    mask = _mask(rng, kind, b, s, s)
    # a pre-transposed key ('bhds') is stored [B, H, D, S] in memory
    q, k, v = (_stored(t, layout).contiguous() if layout == "bhds" else _stored(t, layout)
               for t, layout in zip((q, k, v), layouts))
    attrs = {**_attrs("bhsd", output, out_layout), "q_layout": layouts[0],
             "k_layout": layouts[1], "v_layout": layouts[2]}
    device, tactic = torch.device(DEVICE), get_tactic(name)
    spec = _spec(tuple(q.shape), tuple(k.shape), tuple(v.shape), attrs)
    assert tactic.supports(spec, Target(device, "int8"))
    run = tactic.bind(spec, tactic.prepare(spec, Target(device, "int8")), device)
    got = run(q, k, v, None if mask is None else mask.to(device))
    want = qattention(q.cpu(), k.cpu(), v.cpu(), mask, **attrs)
    assert got.shape == ((b, s, h, d) if out_layout == "bshd" else (b, h, s, d))
    assert got.is_contiguous()
    _check(got, want, v)


BASE = {"q_scale": Q_SCALE, "k_scale": K_SCALE, "v_scale": V_SCALE, "q_layout": "bshd",
        "k_layout": "bshd", "v_layout": "bshd", "out_layout": "bshd", "out_scale": OUT_SCALE,
        "out_zero_point": 0, "out_type": "int8"}


@pytest.mark.parametrize("change,offered", [
    ({}, True),
    ({"shapes": [("batch", 128, 12, 64)] * 3}, True),  # a dynamic batch
    ({"shapes": [(2, 128, 12, 48)] * 3}, False),  # head dim 48
    ({"shapes": [(2, 300, 12, 64)] * 3}, False),  # 300 keys
    ({"shapes": [(2, "seq", 12, 64)] * 3}, False),  # key length unknown at build time
    ({"shapes": [(2, 128, 12, 64), (2, 12, 64, 128), (2, 128, 12, 64)],
      "k_layout": "bhds"}, True),
    ({"shapes": [(2, 128, 12, 64), (2, 12, 64, 300), (2, 128, 12, 64)],
      "k_layout": "bhds"}, False),
    ({"shapes": [(2, 128, 12, 64), None, (2, 128, 12, 64)]}, False),
    ({"types": ("int8", "int8", "float16")}, False),
    ({"out_zero_point": 3}, False), ({"out_type": "uint8"}, False),
    ({"is_causal": 1}, False),
    ({"out_scale": 0.0, "out_dtype": "bf16"}, True)])
def test_tactic_offered_where_the_kernel_fits(change, offered, monkeypatch):
    from kiln.kernels import Target, get_tactic
    from kiln.kernels.triton.int8_attention import attention_fits

    monkeypatch.setenv("KILN_TRITON_ON_CPU", "1")
    change = dict(change)
    about_shapes = set(change) <= {"shapes", "k_layout"}
    shapes = change.pop("shapes", [(2, 128, 12, 64)] * 3)
    types = change.pop("types", ("int8", "int8", "int8"))
    spec = _spec(*shapes, {**BASE, **change}, types)
    assert attention_fits(spec) == (offered or not about_shapes)
    for name in ("int8-triton-attention-64w4", "int8-triton-attention-128w8"):
        assert get_tactic(name).supports(spec, Target(torch.device(DEVICE), "int8")) == offered


def test_tactics_come_before_the_reference(monkeypatch):
    from kiln.kernels import Target, candidates

    monkeypatch.setenv("KILN_TRITON_ON_CPU", "1")
    spec = _spec(*[(2, 128, 12, 64)] * 3, BASE)
    names = [t.name for t in candidates(spec, Target(torch.device(DEVICE), "int8"), level=0)]
    assert names[0] == "int8-triton-attention-64w4"
    assert set(names) >= {"int8-triton-attention-128w4", "int8-triton-attention-128w8"}


def test_too_many_keys_at_run_time_is_a_clear_error(monkeypatch):
    """A layer built for a dynamic key length that turns out longer than the kernel holds."""
    from kiln.kernels import get_tactic

    monkeypatch.setenv("KILN_TRITON_ON_CPU", "1")
    device, tactic = torch.device(DEVICE), get_tactic("int8-triton-attention-64w4")
    attrs = {**BASE, "q_layout": "bhsd", "k_layout": "bhsd", "v_layout": "bhsd"}
    run = tactic.bind(_spec((1, 1, 8, 32), (1, 1, 300, 32), (1, 1, 300, 32), attrs), {},
                      device)
    rng = np.random.default_rng(3)
    q, k, v = (_ints(rng, shape).to(device) for shape in
               ((1, 1, 8, 32), (1, 1, 300, 32), (1, 1, 300, 32)))
    with pytest.raises(ValueError, match=r"300 keys.*256"):
        run(q, k, v)
    with pytest.raises(ValueError, match="head dim 48"):
        kernels.check_shapes(48, 16)


def test_bound_tactic_refuses_a_zero_point():
    from kiln.kernels import get_tactic

    spec = _spec(*[(2, 16, 1, 32)] * 3, {**BASE, "out_zero_point": 1})
    with pytest.raises(ValueError, match="out_zero_point"):
        get_tactic("int8-triton-attention-64w4").bind(spec, {}, torch.device(DEVICE))


def test_not_offered_on_the_cpu_unless_asked(monkeypatch):
    """Without KILN_TRITON_ON_CPU the interpreter is no device of an engine's."""
    from kiln.kernels import Target, get_tactic

    monkeypatch.delenv("KILN_TRITON_ON_CPU", raising=False)
    spec = _spec(*[(2, 16, 1, 32)] * 3, BASE)
    tactic = get_tactic("int8-triton-attention-64w4")
    assert not tactic.supports(spec, Target(torch.device("cpu"), "int8"))
