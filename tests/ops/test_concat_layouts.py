"""Concat of inputs that are views in another memory order (channels-last outputs, a
Transpose's view) joins them in that order and hands on the same kind of view; against
ONNX Runtime on fresh random inputs, and with mixed layouts (the row-major path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from kiln.ops.slice import concat
from kiln.ops.tensors import memory_order
from tests.ops._kiln_vs_ort import assert_same, model, run_kiln, run_ort, tensor


@pytest.mark.parametrize("perm,axis,sizes", [
    ([0, 2, 1], 2, [(1, 6, 40), (1, 6, 12), (1, 6, 3)]),         # yolo heads: [1, C, HW] views
    ([0, 2, 3, 1], 1, [(2, 3, 4, 5), (2, 7, 4, 5)]),              # channels-last, channel axis
    ([1, 0], 0, [(9, 3), (2, 3), (4, 3)]),
    ([2, 0, 1], -1, [(4, 2, 3), (4, 2, 3)]),
])
@pytest.mark.parametrize("mixed", [False, True])
def test_concat_of_permuted_views_matches_onnx_runtime(perm, axis, sizes, mixed):
    rng = np.random.default_rng(len(sizes) * 10 + len(perm))
    inverse = [perm.index(d) for d in range(len(perm))]
    # each input is stored in the transposed shape and read through the Transpose
    stored = [tuple(s[i] for i in inverse) for s in sizes]
    nodes, names = [], []
    for k in range(len(sizes)):
        if mixed and k == 0:  # one input row-major: no common memory order
            names.append(f"x{k}")
            continue
        nodes.append(helper.make_node("Transpose", [f"x{k}"], [f"t{k}"], perm=perm))
        names.append(f"t{k}")
    nodes.append(helper.make_node("Concat", names, ["y"], axis=axis))
    shapes = [sizes[0] if mixed else stored[0]] + stored[1:]
    proto = model(nodes, [tensor(f"x{k}", TensorProto.FLOAT, list(s))
                          for k, s in enumerate(shapes)], [tensor("y", TensorProto.FLOAT, None)])
    feeds = {f"x{k}": rng.standard_normal(s).astype(np.float32) for k, s in enumerate(shapes)}
    assert_same(run_kiln(proto, feeds)[0], run_ort(proto, feeds)[0], rtol=0, atol=0)


def test_joined_views_keep_their_memory_order():
    # the last one is row-major too (size-1 dims have no order): it joins all the same
    xs = [torch.randn(1, h * h, 82).transpose(1, 2) for h in (4, 2, 1)]
    y = concat(*xs, axis=2)
    assert y.shape == (1, 82, 21) and memory_order(y) == memory_order(xs[0]) == [0, 2, 1]
    torch.testing.assert_close(y, torch.cat([x.contiguous() for x in xs], 2), rtol=0, atol=0)


@pytest.mark.parametrize("axis", [0, 1, 2, 3, -1])
def test_channels_last_inputs_join_channels_last(axis):
    g = torch.Generator().manual_seed(axis + 7)
    sizes = [[2, 4, 5, 6], [2, 4, 5, 6]]
    sizes[1][axis] = 3
    xs = [torch.randn(s, generator=g).contiguous(memory_format=torch.channels_last)
          for s in sizes]
    y = concat(*xs, axis=axis)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, torch.cat([x.contiguous() for x in xs], axis), rtol=0, atol=0)
