"""kiln's AVX-512 GEMM (native/gemm.c) behind two tactics, against float64 references:
gemm-native over contiguous, permuted and transposed (column-major) rows, row counts off the
8-row tile and column counts off the 32-column panel, each epilogue (in the kernel or after
it); conv-native as an implicit im2col (a table of window offsets, or a padded copy) over
1-D and 2-D layers with strides, dilations, asymmetric and SAME pads, residuals, NCHW,
channels-last and channel-sliced inputs; and both falling back to torch where the kernel
cannot be built."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kiln.kernels import Target, get_tactic
from kiln.kernels.native import conv_native, gemm
from kiln.kernels.registry import LayerSpec
from kiln.ops.conv import resolve_pads
from kiln.ops.fused import activate

CPU = Target(torch.device("cpu"), "fp32")
pytestmark = pytest.mark.skipif(gemm.kernel() is None, reason="no C compiler or no AVX-512 here")


def _gemm_spec(rng, k, n, activation, bias=True, trans_b=1):
    weight = (rng.standard_normal((n, k) if trans_b else (k, n)) / np.sqrt(k)).astype(np.float32)
    constants = {1: weight}
    if bias:
        constants[2] = rng.standard_normal(n).astype(np.float32)
    return LayerSpec("gemm", "FusedGemm", "kiln", 1, ["a", "w", "b" if bias else None], ["y"],
                     {"trans_b": trans_b, "activation": activation},
                     constant_inputs=constants, input_dtypes=["fp32"] * 3)


def _bound(name, spec):
    tactic = get_tactic(name)
    assert tactic.supports(spec, CPU)
    return tactic.bind(spec, tactic.prepare(spec, CPU), CPU.device)


@pytest.mark.parametrize("layout", ["contiguous", "permuted", "transposed"])
@pytest.mark.parametrize("shape, n, activation, bias, trans_b", [
    ((98, 250), 128, "Relu", True, 1),  # fsmn-vad's
    ((1, 13, 40), 70, "", True, 0),  # rows and columns off the tiles
    ((3, 5, 16), 1, "SiLU", True, 1),  # one output column
    ((2, 9, 33), 17, "GeluErf", False, 1),  # an epilogue left to torch, no bias
    ((4, 8, 7), 32, "Sigmoid", True, 0),
    ((2, 3, 64), 48, "Relu", False, 0),
])
def test_gemm_matches_float64(shape, n, activation, bias, trans_b, layout):
    if layout == "permuted" and len(shape) < 3:
        pytest.skip("a 2-D input has no leading dims to permute")
    rng = np.random.default_rng(shape[-1] * n)
    spec = _gemm_spec(rng, shape[-1], n, activation, bias, trans_b)
    a = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    if layout == "permuted":  # stored [seq, batch, k], read as [batch, seq, k]
        a = a.transpose(0, 1).contiguous().transpose(0, 1)
    elif layout == "transposed":  # stored [..., k, rows]: the last dim strided
        a = a.transpose(-1, -2).contiguous().transpose(-1, -2)
    w = torch.from_numpy(spec.constant_inputs[1]).double()
    want = a.double() @ (w.T if trans_b else w)
    if bias:
        want = want + torch.from_numpy(spec.constant_inputs[2]).double()
    got = _bound("gemm-native", spec)(a)
    assert got.shape == want.shape
    torch.testing.assert_close(got.double(), activate(want, activation), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation, params", [
    ("HardSwish", None), ("Clip", [-0.3, 0.4]), ("Clip", [0.0, 6.0]), ("HardSigmoid", [0.2, 0.5]),
    ("LeakyRelu", None), ("LeakyRelu", [0.3]), ("SiLU", None), ("Relu", None)])
def test_each_epilogue_of_the_kernel(activation, params):
    """Done in the kernel, with the layer's parameters (or ONNX's defaults)."""
    rng = np.random.default_rng(len(activation) + len(params or []))
    spec = _gemm_spec(rng, 20, 37, activation)
    if params is not None:
        spec.attrs["activation_params"] = params
    a = torch.from_numpy((rng.standard_normal((3, 11, 20)) * 3).astype(np.float32))
    weight, bias = (torch.from_numpy(spec.constant_inputs[i]).double() for i in (1, 2))
    want = activate(a.double() @ weight.T + bias, activation, params)
    assert gemm.PackedGemm(weight.T.float(), None, activation, params).fused
    torch.testing.assert_close(_bound("gemm-native", spec)(a).double(), want, rtol=1e-5,
                               atol=1e-5)


CONVS = [  # (input shape, out channels, window, strides, dilations, pads, residual, act)
    ((1, 48, 131), 196, (9,), (1,), (2,), [8, 8], False, ""),  # attacut-c's
    ((2, 5, 23), 7, (3,), (2,), (1,), [1, 0], True, "Relu"),
    ((1, 3, 17, 19), 40, (3, 3), (2, 2), (1, 1), [1, 1, 1, 1], False, "SiLU"),
    ((2, 16, 9, 8), 33, (1, 1), (1, 1), (1, 1), [0, 0, 0, 0], True, "SiLU"),
    ((1, 6, 10, 12), 16, (3, 2), (1, 2), (2, 1), [2, 0, 1, 1], False, "HardSwish"),
    ((1, 4, 7, 7), 9, (3, 3), (1, 1), (1, 1), "SAME_UPPER", False, "Relu"),
]


def _conv_spec(rng, shape, oc, window, strides, dilations, pads, residual, act):
    c = shape[1]
    constants = {1: (rng.standard_normal((oc, c, *window)) / np.sqrt(c)).astype(np.float32),
                 2: rng.standard_normal(oc).astype(np.float32)}
    attrs = {"strides": list(strides), "dilations": list(dilations), "group": 1,
             "activation": act}
    attrs.update({"auto_pad": pads} if isinstance(pads, str) else {"pads": pads})
    inputs = ["x", "w", "b", "r" if residual else None]
    return LayerSpec("conv", "FusedConv", "kiln", 1, inputs, ["y"], attrs,
                     constant_inputs=constants, input_dtypes=["fp32"])


def _conv_reference(x, spec, residual):
    attrs = spec.attrs
    w = torch.from_numpy(spec.constant_inputs[1]).double()
    n = w.dim() - 2
    full = resolve_pads(x, list(w.shape[2:]), attrs["strides"], attrs["dilations"],
                        attrs.get("pads"), attrs.get("auto_pad", "NOTSET"))
    spec_pad = [p for i in reversed(range(n)) for p in (full[i], full[n + i])]
    conv = F.conv1d if n == 1 else F.conv2d
    y = conv(F.pad(x.double(), spec_pad), w, torch.from_numpy(spec.constant_inputs[2]).double(),
             attrs["strides"], 0, attrs["dilations"])
    return activate(y if residual is None else y + residual.double(), attrs["activation"])


@pytest.mark.parametrize("windows", ["table", "padded copy"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "channel_slice"])
@pytest.mark.parametrize("case", CONVS, ids=str)
def test_conv_matches_float64(case, layout, windows, monkeypatch):
    if windows == "padded copy":  # a layer too large for a table of offsets
        monkeypatch.setattr(conv_native._Windows, "TABLE_LIMIT", 0)
    rng = np.random.default_rng(sum(case[0]) + case[1])
    spec = _conv_spec(rng, *case)
    x = torch.from_numpy(rng.standard_normal(case[0]).astype(np.float32))
    if layout == "channels_last":
        x = x.movedim(1, -1).contiguous().movedim(-1, 1)
    elif layout == "channel_slice":  # the second half of a wider channels-last tensor (Split)
        wide = torch.cat([torch.randn_like(x), x], 1).movedim(1, -1).contiguous().movedim(-1, 1)
        x = wide[:, x.shape[1]:]
    residual = None
    if case[6]:
        shape = _conv_reference(x, spec, None).shape
        residual = torch.from_numpy(rng.standard_normal(tuple(shape)).astype(np.float32))
    run = _bound("conv-native", spec)
    for _ in range(2):  # the second call reuses the offsets made for this shape
        got = run(x, residual=residual)
        torch.testing.assert_close(got.double(), _conv_reference(x, spec, residual),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["gemm-native", "conv-native"])
def test_rows_shared_over_threads_give_the_same_values(name):
    """With the engine's threads above one, blocks of rows go to OpenMP threads: each row
    is computed as on one thread, so the results are identical."""
    rng = np.random.default_rng(31)
    if name == "gemm-native":
        spec, x = _gemm_spec(rng, 48, 70, "Relu"), torch.randn(3, 67, 48)
    else:
        spec = _conv_spec(rng, (2, 5, 17, 19), 24, (3, 3), (1, 1), (1, 1), [1] * 4, False,
                          "SiLU")
        x = torch.randn(2, 5, 17, 19)
    run = _bound(name, spec)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = run(x)
        torch.set_num_threads(2)
        shared = run(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(alone, shared)


def test_grouped_and_fp16_layers_are_left_to_the_others():
    rng = np.random.default_rng(3)
    spec = _conv_spec(rng, (1, 4, 6, 6), 4, (3, 3), (1, 1), (1, 1), [1] * 4, False, "")
    grouped = LayerSpec("conv", "FusedConv", "kiln", 1, spec.inputs, ["y"],
                        {**spec.attrs, "group": 2}, constant_inputs={
                            1: spec.constant_inputs[1][:, :2], 2: spec.constant_inputs[2]},
                        input_dtypes=["fp32"])
    assert not get_tactic("conv-native").supports(grouped, CPU)
    half = _gemm_spec(rng, 8, 4, "")
    half.input_dtypes = ["fp16"] * 3
    assert not get_tactic("gemm-native").supports(half, CPU)
    assert not get_tactic("gemm-native").supports(_gemm_spec(rng, 8, 4, ""),
                                                  Target(torch.device("cuda"), "fp32"))


@pytest.mark.parametrize("name", ["gemm-native", "conv-native"])
def test_bound_without_the_kernel_runs_torch(name, monkeypatch):
    """A plan built where the kernel was built, bound where it cannot be: torch's GEMM."""
    rng = np.random.default_rng(5)
    if name == "gemm-native":
        spec, x = _gemm_spec(rng, 24, 10, "Relu"), torch.randn(3, 24)
        want = _bound(name, spec)(x)
    else:
        spec = _conv_spec(rng, (1, 3, 9, 9), 8, (3, 3), (1, 1), (1, 1), [1] * 4, False, "Relu")
        x = torch.randn(1, 3, 9, 9)
        want = _conv_reference(x, spec, None).float()
    tactic = get_tactic(name)
    prepared = tactic.prepare(spec, CPU)
    monkeypatch.setattr(gemm, "kernel", lambda: None)
    got = tactic.bind(spec, prepared, CPU.device)(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
