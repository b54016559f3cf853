"""gemm_keeps_leading_dims (with split_before_transpose): a Gemm wrapped in Reshapes that
merge and split leading dims runs N-D. Checked end to end on torch's MultiheadAttention
(the export these passes are for) against ONNX Runtime on the original file, on fresh
random inputs of several static shapes."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from kiln.onnx import read_onnx
from kiln.ops.interpreter import run_graph
from kiln.passes import PassContext, run_pipeline


def _export(module: nn.Module, x: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), buffer, dynamo=False, opset_version=17,
                          input_names=["x"])
    return buffer.getvalue()


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, batch_first: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=batch_first)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


def _optimize_and_compare(model: bytes, shape: tuple[int, ...], seeds=(0, 1)):
    graph = read_onnx(model)
    ctx = PassContext()
    run_pipeline(graph, ctx)
    graph.lint()
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    for seed in seeds:
        feeds = {"x": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}
        want = session.run(None, feeds)[0]
        got = next(iter(run_graph(graph, feeds).values()))
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
    return graph, ctx


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("seq, batch, dim, heads", [(7, 2, 16, 4), (5, 3, 24, 2), (9, 1, 8, 2)])
def test_multihead_attention_runs_without_merging_leading_dims(batch_first, seq, batch, dim,
                                                               heads):
    torch.manual_seed(seq + batch)
    shape = (batch, seq, dim) if batch_first else (seq, batch, dim)
    model = _export(SelfAttention(dim, heads, batch_first), torch.randn(shape))
    graph, ctx = _optimize_and_compare(model, shape)
    gemms = [n for n in graph.nodes if n.op_type == "FusedGemm"]
    assert len(gemms) == 2  # the packed QKV projection and the output projection
    if batch > 1:  # with one sequence the merges are views already and nothing is rewritten
        assert ctx.rewrites.get("gemm_keeps_leading_dims") == 1
        assert ctx.rewrites.get("split_before_transpose", 0) >= 1
    assert all(len(g.inputs[0].shape) == 3 for g in gemms)
    # no Reshape merges two dims that the heads' permutation put apart: every Reshape left
    # either splits dims or merges the last two (heads with their width)
    for node in graph.nodes:
        if node.op_type == "Reshape":
            src, dst = node.inputs[0].shape, node.output.shape
            assert len(dst) >= len(src) - 1


def test_reshape_read_elsewhere_is_left_alone():
    model = _export(_ReadTwice(), torch.randn(3, 4, 8))
    _, ctx = _optimize_and_compare(model, (3, 4, 8))
    assert "gemm_keeps_leading_dims" not in ctx.rewrites


class _ReadTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        flat = x.reshape(12, 8)
        return self.fc(flat).reshape(3, 4, 5) + flat.sum()
