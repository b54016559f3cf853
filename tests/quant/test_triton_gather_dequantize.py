"""The Triton kernel for kiln.GatherDequantize (INT8 embedding tables) against the reference
op: the same floats, bit for bit, for each output type, several table and id shapes, and
negative ids; an engine with an INT8 table picks the tactic and keeps its answers. Without
a GPU it runs in Triton's interpreter (tests/conftest.py), at small sizes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from kiln.ops.quantized import gather_dequantize
from kiln.quant.quantize_embeddings import per_row
from tests.quant._triton_cases import DEVICE

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or Triton's interpreter (set by tests/conftest.py on CPU machines)")
kernel = pytest.importorskip("kiln.kernels.triton.gather_dequantize")


@pytest.mark.parametrize("vocab,width,ids_shape", [(50, 64, (3, 7)), (300, 48, (130,)),
                                                   (17, 1100, (2, 2, 3))], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_rows_match_the_reference(vocab, width, ids_shape, dtype):
    rng = np.random.default_rng(vocab + width)
    q, scales = per_row(rng.standard_normal((vocab, width)).astype(np.float32))
    ids = rng.integers(-vocab, vocab, ids_shape)  # negative ids count from the end
    table, row_scales = torch.from_numpy(q), torch.from_numpy(scales).to(dtype)
    want = gather_dequantize(table, row_scales, torch.from_numpy(ids))
    got = kernel.gather_dequantize(table.to(DEVICE), row_scales.to(DEVICE),
                                   torch.from_numpy(ids).to(DEVICE)).cpu()
    assert got.dtype == want.dtype and got.shape == want.shape == (*ids_shape, width)
    if DEVICE == "cpu" and dtype == torch.bfloat16:
        # the interpreter's float32 -> bfloat16 conversion truncates where the GPU's
        # rounds to nearest: a unit in the last place apart at most
        ulp = want.float().abs() * 2.0**-7
        assert bool(((got.float() - want.float()).abs() <= ulp).all())
    else:
        assert torch.equal(got, want)


def test_ids_outside_the_table_give_zero_rows():
    q = torch.randint(-127, 128, (10, 32), dtype=torch.int8)
    scales = torch.rand(10, 1) + 0.5
    got = kernel.gather_dequantize(q.to(DEVICE), scales.to(DEVICE),
                                   torch.tensor([3, 10, -11, -1]).to(DEVICE)).cpu()
    assert torch.equal(got[0], q[3].float() * scales[3]) and torch.equal(got[3], q[9] * scales[9])
    assert not got[1].any() and not got[2].any()


def test_tactic_is_offered_for_int8_tables_only(monkeypatch):
    from kiln.kernels import Target, get_tactic
    from kiln.kernels.registry import LayerSpec

    monkeypatch.setenv("KILN_TRITON_ON_CPU", "1")  # the interpreter stands in for a GPU
    q, scales = per_row(np.random.default_rng(0).standard_normal((40, 16)).astype(np.float32))
    tactic, target = get_tactic("gather-dequantize-triton"), Target(torch.device(DEVICE))

    def spec(table):
        return LayerSpec("g", "GatherDequantize", "kiln", 1, ["t", "s", "ids"], ["y"], {},
                         constant_inputs={0: table, 1: scales})

    assert tactic.supports(spec(q), target)
    assert not tactic.supports(spec(q.astype(np.float32)), target)
    run = tactic.bind(spec(q), {}, torch.device(DEVICE))
    ids = torch.tensor([[1, 39], [0, -2]])
    got = run(torch.from_numpy(q).to(DEVICE), torch.from_numpy(scales).to(DEVICE),
              ids.to(DEVICE)).cpu()
    assert torch.equal(got, gather_dequantize(torch.from_numpy(q), torch.from_numpy(scales), ids))
