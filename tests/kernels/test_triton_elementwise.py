"""The generated element-wise Triton kernels (compiled on a GPU, else run by Triton's
interpreter on the CPU) against the torch reference of the same programs (several shapes,
broadcasting, strided inputs, float32 and float16)."""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from kiln.kernels.triton import elementwise  # noqa: E402
from kiln.ops.elementwise_program import run_program  # noqa: E402

PROGRAMS = {
    "mul_add_sigmoid": [["Mul", ["i0", "i1"], []], ["Add", ["t0", "i2"], []],
                        ["Sigmoid", ["t1"], []]],
    "gelu_tanh_then_clip": [["GeluTanh", ["i0"], []], ["Clip", ["t0"], [-0.5, 0.75]],
                            ["Sub", ["t1", "i1"], []]],
    "leaky_scalar_div": [["LeakyRelu", ["i0"], [0.1]], ["Div", ["t0", 3.0], []],
                         ["Max", ["t1", "i1"], []], ["Tanh", ["t2"], []]],
    "erf_gelu_square_sqrt": [["GeluErf", ["i0"], []], ["Square", ["t0"], []],
                             ["Add", ["t1", 1.0], []], ["Sqrt", ["t2"], []],
                             ["PRelu", ["t3", "i1"], []]],
    "hardswish_softplus": [["HardSwish", ["i0"], []], ["Softplus", ["t0"], []],
                           ["Mul", ["t1", "i1"], []], ["Elu", ["t2"], [0.7]]],
}

SHAPES = [  # (output shape, shape of the other inputs: broadcast against it)
    ((7,), (1,)),
    ((3, 5, 33), (5, 1)),
    ((2, 4, 6, 9), (1, 4, 1, 1)),
    ((1, 1030), (1030,)),
]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # compiled on a GPU, else interpreted


pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and __import__("os").environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or Triton's interpreter (set by tests/conftest.py on CPU machines)")


@pytest.mark.parametrize("name", sorted(PROGRAMS))
@pytest.mark.parametrize("shapes", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernel_matches_reference(name, shapes, dtype):
    program = PROGRAMS[name]
    n_inputs = 1 + max(int(a[1:]) for _, args, _ in program for a in args
                       if isinstance(a, str) and a[0] == "i")
    g = torch.Generator().manual_seed(hash((name, shapes)) % 2**31)
    full, other = shapes
    inputs = [torch.randn(full, generator=g).to(dtype)]
    inputs += [torch.randn(other, generator=g).to(dtype) for _ in range(n_inputs - 1)]
    inputs = [t.to(DEVICE) for t in inputs]
    got = elementwise.launch(program, inputs)
    want = run_program(program, inputs)
    assert got.shape == want.shape and got.dtype == want.dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)


def test_strided_inputs_and_output_layout():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 6, 5, 3, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randn(2, 3, 5, 6, generator=g).permute(0, 3, 2, 1)  # a transposed view
    x, y = x.to(DEVICE), y.to(DEVICE)  # .to keeps both layouts
    program = [["Mul", ["i0", "i1"], []], ["Relu", ["t0"], []]]
    got = elementwise.launch(program, [x, y])
    torch.testing.assert_close(got, torch.relu(x * y))
    assert got.is_contiguous(memory_format=torch.channels_last)  # keeps the input's layout


def test_rank_above_four_falls_back_to_reference():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 1, 3, 1, 4, generator=g).to(DEVICE)
    program = [["Exp", ["i0"], []], ["Neg", ["t0"], []]]
    torch.testing.assert_close(elementwise.launch(program, [x]), -torch.exp(x))
