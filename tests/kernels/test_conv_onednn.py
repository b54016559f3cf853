"""oneDNN's fused convolution tactic against the plain NCHW one on the same layers: every
activation it fuses, residual adds, strides, dilations, groups (depthwise), asymmetric
and SAME pads, and a second input size (the reordered weights are kept per size); the same
layers with SiLU as kiln's native pass after oneDNN's convolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kiln.kernels import Target
from kiln.kernels.registry import LayerSpec, get_tactic

TACTIC = get_tactic("conv-onednn-fused")
CPU = Target(torch.device("cpu"), "fp32")
ACTIVATIONS = [("", None), ("Relu", None), ("SiLU", None), ("HardSwish", None),
               ("Sigmoid", None), ("Tanh", None), ("GeluErf", None), ("GeluTanh", None),
               ("LeakyRelu", [0.1]), ("Clip", [-0.5, 0.75])]
LAYERS = [  # (input shape, OC, window, strides, dilations, group, pads or auto_pad)
    ((2, 8, 11, 9), 12, (3, 3), (1, 1), (1, 1), 1, [1, 1, 1, 1]),
    ((1, 6, 13, 12), 6, (5, 5), (2, 1), (1, 1), 6, [2, 2, 2, 2]),
    ((3, 4, 10, 10), 8, (3, 3), (2, 2), (2, 2), 2, [1, 0, 2, 1]),
    ((1, 16, 7, 8), 32, (1, 1), (1, 1), (1, 1), 1, "SAME_UPPER"),
]


def _spec(shape, oc, window, strides, dilations, group, pads, act, params, residual, rng):
    w = rng.standard_normal((oc, shape[1] // group, *window)).astype(np.float32) * 0.3
    attrs = {"strides": list(strides), "dilations": list(dilations), "group": group,
             "activation": act}
    if params:
        attrs["activation_params"] = params
    attrs.update({"auto_pad": pads} if isinstance(pads, str) else {"pads": pads})
    constants = {1: w, 2: rng.standard_normal(oc).astype(np.float32)}
    return LayerSpec("conv", "FusedConv", "kiln", 1, ["x", "w", "b", "r" if residual else None],
                     ["y"], attrs, constant_inputs=constants, input_dtypes=["fp32"])


def _compare(spec, shapes, residual, rng, tactic=TACTIC):
    if not tactic.supports(spec, CPU):
        pytest.skip(f"{tactic.name} is not offered here (no oneDNN, C compiler or AVX-512)")
    runs = {name: t.bind(spec, t.prepare(spec, CPU), CPU.device)
            for name, t in (("fused", tactic), ("plain", get_tactic("conv-nchw")))}
    for shape in shapes:  # a second size after the first: its own reordered weights
        x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
        r = None
        if residual:
            out = runs["plain"](x).shape
            r = torch.from_numpy(rng.standard_normal(tuple(out)).astype(np.float32))
        want = runs["plain"](x, residual=r)
        got = runs["fused"](x.contiguous(memory_format=torch.channels_last), residual=r)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("act,params", ACTIVATIONS, ids=[a or "none" for a, _ in ACTIVATIONS])
def test_each_fused_activation_matches_the_plain_tactic(act, params):
    rng = np.random.default_rng(len(act))
    shape = (2, 8, 11, 9)
    spec = _spec(shape, 12, (3, 3), (1, 1), (1, 1), 1, [1, 1, 1, 1], act, params, False, rng)
    _compare(spec, [shape, (1, 8, 6, 14)], False, rng)


@pytest.mark.parametrize("name", ["conv-onednn-fused", "conv-onednn-native-silu"])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("layer", LAYERS, ids=str)
def test_layers_match_the_plain_tactic(layer, residual, name):
    rng = np.random.default_rng(sum(layer[0]))
    spec = _spec(*layer, "SiLU", None, residual, rng)
    _compare(spec, [layer[0], (1, *layer[0][1:])], residual, rng, get_tactic(name))


def test_native_silu_tactic_only_for_silu_layers():
    rng = np.random.default_rng(1)
    spec = _spec((1, 4, 5, 5), 4, (3, 3), (1, 1), (1, 1), 1, [1, 1, 1, 1], "Relu", None,
                 False, rng)
    assert not get_tactic("conv-onednn-native-silu").supports(spec, CPU)


def test_only_four_dimensional_fp32_convolutions_on_the_cpu():
    rng = np.random.default_rng(0)
    spec = _spec((1, 4, 5, 5), 4, (3, 3), (1, 1), (1, 1), 1, [1, 1, 1, 1], "", None, False, rng)
    assert not TACTIC.supports(spec, Target(torch.device("cuda"), "fp16"))
    one_d = LayerSpec("conv", "FusedConv", "kiln", 1, ["x", "w", None, None], ["y"], {},
                      constant_inputs={1: np.ones((4, 4, 3), np.float32)},
                      input_dtypes=["fp32"])
    assert not TACTIC.supports(one_d, CPU)


def test_reordered_weights_are_kept_for_a_few_sizes_only():
    rng = np.random.default_rng(4)
    spec = _spec((1, 4, 6, 6), 8, (3, 3), (1, 1), (1, 1), 1, [1, 1, 1, 1], "Relu", None, False,
                 rng)
    if not TACTIC.supports(spec, CPU):
        pytest.skip("torch has no oneDNN fused convolution here")
    run = TACTIC.bind(spec, TACTIC.prepare(spec, CPU), CPU.device)
    plain = get_tactic("conv-nchw")
    reference = plain.bind(spec, plain.prepare(spec, CPU), CPU.device)
    cells = dict(zip(run.__code__.co_freevars, run.__closure__))
    packed = cells["packed"].cell_contents
    for size in range(5, 12):  # more sizes than are kept, each still right
        x = torch.from_numpy(rng.standard_normal((1, 4, size, size)).astype(np.float32))
        torch.testing.assert_close(run(x), reference(x), rtol=1e-4, atol=1e-4)
        assert len(packed) <= 4
    assert len(packed) == 4
