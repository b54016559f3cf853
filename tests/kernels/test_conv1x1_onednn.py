"""The pointwise-convolution tactic (1x1 as oneDNN's prepacked fused linear over the rows)
against the plain NCHW convolution: every activation it fuses, residual adds (same shape
and broadcast), batches and sizes, channels-last and row-major inputs; and the layers it
must leave to others (other windows, strides, pads, groups)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kiln.kernels import Target
from kiln.kernels.registry import LayerSpec, get_tactic

TACTIC = get_tactic("conv1x1-onednn-linear")
CPU = Target(torch.device("cpu"), "fp32")
ACTIVATIONS = [("", None), ("Relu", None), ("SiLU", None), ("HardSwish", None),
               ("Sigmoid", None), ("GeluErf", None), ("LeakyRelu", [0.1]),
               ("Clip", [-0.5, 0.75])]


def _spec(c: int, oc: int, act: str, params, residual: bool, rng, **attrs) -> LayerSpec:
    window = attrs.pop("window", (1, 1))
    group = attrs.get("group", 1)
    w = rng.standard_normal((oc, c // group, *window)).astype(np.float32) * 0.3
    attrs = {"strides": [1, 1], "pads": [0, 0, 0, 0], "activation": act, **attrs}
    if params:
        attrs["activation_params"] = params
    constants = {1: w, 2: rng.standard_normal(oc).astype(np.float32)}
    return LayerSpec("conv", "FusedConv", "kiln", 1, ["x", "w", "b", "r" if residual else None],
                     ["y"], attrs, constant_inputs=constants, input_dtypes=["fp32"])


def _check(spec: LayerSpec, shape: tuple, residual_shape: tuple | None, channels_last: bool,
           rng) -> None:
    if not TACTIC.supports(spec, CPU):
        pytest.skip("torch has no oneDNN fused linear here")
    got_fn = TACTIC.bind(spec, TACTIC.prepare(spec, CPU), CPU.device)
    plain = get_tactic("conv-nchw")
    want_fn = plain.bind(spec, plain.prepare(spec, CPU), CPU.device)
    x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    r = None if residual_shape is None else torch.from_numpy(
        rng.standard_normal(residual_shape).astype(np.float32))
    want = want_fn(x, residual=None if r is None else r.clone())
    given = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    got = got_fn(given, residual=r)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("act,params", ACTIVATIONS, ids=[a or "none" for a, _ in ACTIVATIONS])
def test_each_fused_activation_matches_the_plain_convolution(act, params):
    rng = np.random.default_rng(len(act) + 3)
    _check(_spec(24, 40, act, params, False, rng), (2, 24, 9, 11), None, True, rng)


@pytest.mark.parametrize("shape,oc", [((1, 32, 20, 20), 32), ((3, 16, 5, 7), 48),
                                      ((2, 192, 4, 4), 64), ((1, 8, 1, 1), 8)])
@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
def test_sizes_and_layouts(shape, oc, channels_last):
    rng = np.random.default_rng(sum(shape) + oc)
    _check(_spec(shape[1], oc, "SiLU", None, False, rng), shape, None, channels_last, rng)


@pytest.mark.parametrize("act", ["Relu", "SiLU", ""])
@pytest.mark.parametrize("broadcast", [False, True], ids=["same-shape", "broadcast"])
def test_residual_then_activation(act, broadcast):
    rng = np.random.default_rng(7 + len(act) + broadcast)
    shape, oc = (2, 16, 6, 5), 24
    residual = (1, oc, 1, 1) if broadcast else (2, oc, 6, 5)
    _check(_spec(16, oc, act, None, True, rng), shape, residual, True, rng)


@pytest.mark.parametrize("change", [{"window": (3, 3)}, {"strides": [2, 2]},
                                    {"pads": [1, 1, 1, 1]}, {"group": 2},
                                    {"auto_pad": "SAME_UPPER"}])
def test_only_pointwise_layers(change):
    rng = np.random.default_rng(1)
    spec = _spec(16, 16, "Relu", None, False, rng, **change)
    assert not TACTIC.supports(spec, CPU)
    assert TACTIC.supports(_spec(16, 16, "Relu", None, False, rng), CPU) or not \
        torch.backends.mkldnn.is_available()
