"""The fusion passes on small networks exported from torch, checked against ONNX Runtime.

Each case exports a module with torch's ONNX exporter, optimizes the graph with kiln's
pipeline, asserts which fused layers appear, and compares the optimized graph's outputs
(reference interpreter) with ONNX Runtime on the original file, on seeded random inputs of
two shapes.
"""

from __future__ import annotations

import io
import math
import warnings
from collections import Counter

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kiln.onnx import read_onnx
from kiln.ops.interpreter import run_graph
from kiln.passes import PassContext, run_pipeline


def export(module: nn.Module, args: tuple, names: list[str], dynamic: dict, opset: int) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, buffer, dynamo=False, opset_version=opset,
                          input_names=names, dynamic_axes=dynamic)
    return buffer.getvalue()


def optimized_counts_and_check(model: bytes, feeds_list: list[dict[str, np.ndarray]],
                               atol: float = 1e-4) -> Counter:
    graph = read_onnx(model)
    run_pipeline(graph, PassContext())
    graph.lint()
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for feeds in feeds_list:
        expected = session.run(None, feeds)
        got = run_graph(graph, feeds)
        for name, want in zip(names, expected):
            np.testing.assert_allclose(got[name], want, atol=atol, rtol=1e-4)
    return Counter(n.op_type for n in graph.walk_nodes())


class Bottleneck(nn.Module):
    def __init__(self, channels: int, act: nn.Module) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1),
                               nn.BatchNorm2d(channels), act)
        self.b = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels))
        self.down = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False),
                                  nn.BatchNorm2d(channels))
        self.act = act

    def forward(self, x):
        return self.act(self.b(self.a(x)) + self.down(x))


def _randomize_bn(module: nn.Module) -> None:
    torch.manual_seed(0)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)


@pytest.mark.parametrize("act,fused_act", [(nn.ReLU(), "Relu"), (nn.SiLU(), "SiLU"),
                                           (nn.Hardswish(), "HardSwish")])
def test_conv_epilogue_with_residual(act, fused_act):
    block = Bottleneck(8, act)
    _randomize_bn(block)
    rng = np.random.default_rng(1)
    model = export(block, (torch.randn(1, 8, 12, 12),), ["x"], {"x": {0: "n", 2: "h", 3: "w"}}, 17)
    feeds = [{"x": rng.standard_normal((n, 8, s, s)).astype(np.float32)} for n, s in
             ((1, 12), (3, 9))]
    counts = optimized_counts_and_check(model, feeds)
    assert counts["FusedConv"] == 3 and counts["Conv"] == 0
    assert counts["Add"] == 0 and counts.get("Relu", 0) == 0 and counts.get("Sigmoid", 0) == 0
    graph = read_onnx(model)
    run_pipeline(graph, PassContext())
    acts = sorted(n.attrs.get("activation", "") for n in graph.nodes if n.op_type == "FusedConv")
    assert acts == sorted(["", fused_act, fused_act])
    residuals = [n for n in graph.nodes if n.op_type == "FusedConv" and n.inputs[3] is not None]
    assert len(residuals) == 1


class EncoderLayer(nn.Module):
    """A BERT layer: self-attention with an additive mask, post-LayerNorm, GELU FFN."""

    def __init__(self, d: int = 32, heads: int = 4, gelu: str = "none") -> None:
        super().__init__()
        self.heads, self.gelu = heads, gelu
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def split(self, t):
        b, s, d = t.shape
        return t.view(b, s, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x, mask):
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + mask
        ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape)
        h = self.ln1(x + self.o(ctx))
        return self.ln2(h + self.down(F.gelu(self.up(h), approximate=self.gelu)))


def _encoder_feeds(rng, shapes):
    feeds = []
    for b, s in shapes:
        mask = np.where(rng.random((b, 1, 1, s)) < 0.2, -1e4, 0).astype(np.float32)
        feeds.append({"x": rng.standard_normal((b, s, 32)).astype(np.float32), "mask": mask})
    return feeds


@pytest.mark.parametrize("opset,gelu", [(17, "none"), (14, "none"), (17, "tanh")])
def test_encoder_layer_fuses_attention_layernorm_gemms(opset, gelu):
    torch.manual_seed(0)
    layer = EncoderLayer(gelu=gelu)
    args = (torch.randn(2, 8, 32), torch.zeros(2, 1, 1, 8))
    dynamic = {"x": {0: "b", 1: "s"}, "mask": {0: "b", 3: "s"}}
    model = export(layer, args, ["x", "mask"], dynamic, opset)
    rng = np.random.default_rng(2)
    counts = optimized_counts_and_check(model, _encoder_feeds(rng, [(2, 8), (1, 5)]))
    assert counts["Attention"] == 1
    assert counts["LayerNorm"] == 2 and counts.get("LayerNormalization", 0) == 0
    assert counts.get("Softmax", 0) == 0 and counts.get("Erf", 0) == 0
    # q, k and v merged into one GEMM; out-projection and the two FFN layers stay separate
    assert counts["FusedGemm"] == 4 and counts["Split"] == 1
    assert counts.get("MatMul", 0) == 0


def test_sdpa_export_scale_on_both_operands():
    class Sdpa(nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v)

    args = tuple(torch.randn(2, 4, 6, 8) for _ in range(3))
    model = export(Sdpa(), args, ["q", "k", "v"], {}, 17)
    rng = np.random.default_rng(3)
    feeds = [{n: rng.standard_normal((2, 4, 6, 8)).astype(np.float32) for n in "qkv"}]
    counts = optimized_counts_and_check(model, feeds)
    assert counts["Attention"] == 1 and counts.get("Softmax", 0) == 0


def test_attention_not_fused_when_scores_are_reused():
    class Leaky(nn.Module):
        def forward(self, q, k):
            s = q @ k.transpose(-1, -2)
            return s.softmax(-1) @ k, s

    args = (torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8))
    model = export(Leaky(), args, ["q", "k"], {}, 17)
    rng = np.random.default_rng(4)
    feeds = [{n: rng.standard_normal((1, 2, 4, 8)).astype(np.float32) for n in "qk"}]
    counts = optimized_counts_and_check(model, feeds)
    assert counts.get("Attention", 0) == 0 and counts["Softmax"] == 1


def test_gemm_epilogue_not_fused_into_nonconstant_weights():
    class TwoInputs(nn.Module):
        def forward(self, a, b):
            return torch.relu(a @ b + 1.0)

    args = (torch.randn(3, 4), torch.randn(4, 5))
    model = export(TwoInputs(), args, ["a", "b"], {}, 17)
    rng = np.random.default_rng(5)
    feeds = [{"a": rng.standard_normal((3, 4)).astype(np.float32),
              "b": rng.standard_normal((4, 5)).astype(np.float32)}]
    counts = optimized_counts_and_check(model, feeds)
    assert counts.get("FusedGemm", 0) == 0 and counts["MatMul"] == 1


class Pointwise(nn.Module):
    """Element-wise chains no other fusion takes: quick-GELU, a Mish, a scaled residual."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.randn(16))

    def forward(self, x, y):
        quick = x * torch.sigmoid(1.702 * x) + self.bias
        mish = y * torch.tanh(F.softplus(y))
        return (quick - mish) * 0.5, torch.exp(-x.abs())


def test_elementwise_chains_become_one_node_each(monkeypatch):
    torch.manual_seed(0)
    args = (torch.randn(2, 3, 16), torch.randn(2, 3, 16))
    model = export(Pointwise(), args, ["x", "y"], {"x": {0: "b"}, "y": {0: "b"}}, 17)
    rng = np.random.default_rng(6)
    feeds = [{n: rng.standard_normal((b, 3, 16)).astype(np.float32) for n in "xy"}
             for b in (2, 5)]
    counts = optimized_counts_and_check(model, feeds, atol=1e-5)
    assert counts["Elementwise"] == 2
    assert sum(counts.values()) == 2  # nothing else is left


@pytest.mark.skipif(not __import__("os").environ.get("TRITON_INTERPRET"),
                    reason="Triton's interpreter is off (set by tests/conftest.py on CPUs)")
def test_elementwise_engine_with_triton_tactic_matches_ort(monkeypatch):
    pytest.importorskip("triton")
    from kiln.build import BuilderConfig, build_engine
    from kiln.runtime import ExecutionContext

    monkeypatch.setenv("KILN_TRITON_ON_CPU", "1")
    torch.manual_seed(1)
    args = (torch.randn(2, 3, 16), torch.randn(2, 3, 16))
    model = export(Pointwise(), args, ["x", "y"], {}, 17)
    engine = build_engine(model, BuilderConfig(device="cpu", optimization_level=0))
    tactics = {layer["tactic"] for layer in engine.layers()}
    assert tactics == {"triton-elementwise"}
    rng = np.random.default_rng(7)
    feeds = {n: rng.standard_normal((2, 3, 16)).astype(np.float32) for n in "xy"}
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)
    got = list(ExecutionContext(engine).run(feeds).values())
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)


def test_sdpa_with_boolean_mask_and_nan_guard():
    """torch exports a boolean-masked SDPA as Where(mask, 0, -inf) + Softmax and guards rows
    whose mask removed every key with Where(IsNaN(p), 0, p): one Attention node, same output
    (zeros) for such rows."""

    class Masked(nn.Module):
        def forward(self, q, k, v, keep):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=keep)

    shape = (2, 3, 5, 8)
    args = (*(torch.randn(shape) for _ in range(3)), torch.ones(2, 1, 1, 5, dtype=torch.bool))
    model = export(Masked(), args, ["q", "k", "v", "keep"], {}, 17)
    rng = np.random.default_rng(9)
    keep = rng.random((2, 1, 1, 5)) < 0.6
    keep[1] = False  # every key of the second sample masked: its rows must come out as 0
    feeds = {n: rng.standard_normal(shape).astype(np.float32) for n in "qkv"}
    feeds["keep"] = keep
    counts = optimized_counts_and_check(model, [feeds])
    assert counts["Attention"] == 1 and counts.get("Softmax", 0) == 0
    assert counts.get("IsNaN", 0) == 0
    from kiln.build import BuilderConfig, build_engine
    from kiln.runtime import ExecutionContext

    engine = build_engine(model, BuilderConfig(device="cpu", optimization_level=0))
    assert any(layer["tactic"] == "sdpa" for layer in engine.layers())
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = next(iter(ExecutionContext(engine).run(feeds).values()))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
    assert np.all(got[1] == 0)


def test_sdpa_export_output_transpose_is_absorbed():
    """SDPA exports (Hugging Face's) end in a Reshape to [0, -1, S, D] (the identity); with it gone,
    the heads' transpose back to [B, S, H, D] becomes the Attention's output layout, so no
    copy of the output remains."""

    class Heads(nn.Module):
        def forward(self, x):
            b, s = x.shape[0], x.shape[1]
            # heads as -1, as Hugging Face writes them: the head count is not inferred
            q, k, v = (t.view(b, s, -1, 8).transpose(1, 2) for t in (x, x * 0.5, x + 1.0))
            out = F.scaled_dot_product_attention(q, k, v)
            out = out.reshape(out.shape[0], -1, s, 8)  # as SDPA exports write it
            return out.transpose(1, 2).reshape(b, s, 32)

    model = export(Heads(), (torch.randn(2, 6, 32),), ["x"], {"x": {0: "b"}}, 17)
    rng = np.random.default_rng(4)
    feeds = [{"x": rng.standard_normal((n, 6, 32)).astype(np.float32)} for n in (2, 3)]
    counts = optimized_counts_and_check(model, feeds)
    assert counts["Attention"] == 1 and counts.get("Transpose", 0) == 0
    graph = read_onnx(model)
    run_pipeline(graph, PassContext())
    attention = next(n for n in graph.nodes if n.op_type == "Attention")
    assert attention.attrs["out_layout"] == "bshd"


def test_residual_add_joins_the_layernorm_when_its_dims_are_not_proven_equal():
    """Exporters name a residual's dims apart from the other operand's (BERT's 'unk__48'
    beside 'batch', or none at all): the Add still joins the LayerNorm, whose kernels
    broadcast x and the residual as the Add did (here a residual of batch 1, and an x of
    batch 1 beside a residual of 3)."""
    from onnx import TensorProto, helper

    width = 16
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Add", ["x", "r"], ["s"]),
             helper.make_node("LayerNormalization", ["s", "g", "b"], ["y"], axis=-1)]
    inits = [helper.make_tensor(n, TensorProto.FLOAT, [width],
                                rng.standard_normal(width).astype(np.float32))
             for n in ("g", "b")]
    graph = helper.make_graph(
        nodes, "residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["unk__1", "s", width]),
         helper.make_tensor_value_info("r", TensorProto.FLOAT, [None, None, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    feeds = [{"x": rng.standard_normal(xs).astype(np.float32),
              "r": rng.standard_normal(rs).astype(np.float32)}
             for xs, rs in (((2, 5, width), (2, 5, width)), ((3, 4, width), (1, 4, width)),
                            ((1, 4, width), (3, 4, width)))]
    counts = optimized_counts_and_check(model.SerializeToString(), feeds)
    assert counts == Counter({"LayerNorm": 1})



class Embeddings(nn.Module):
    """BERT's embeddings: word rows, plus token-type and position rows whose ids are
    constants, then LayerNorm."""

    def __init__(self, vocab: int = 50, width: int = 24, positions: int = 16) -> None:
        super().__init__()
        self.word, self.token = nn.Embedding(vocab, width), nn.Embedding(2, width)
        self.position = nn.Embedding(positions, width)
        self.norm = nn.LayerNorm(width)
        self.register_buffer("position_ids", torch.arange(positions)[None])

    def forward(self, ids):
        seq = ids.shape[1]
        token = self.token(torch.zeros_like(self.position_ids[:, :seq]))
        return self.norm(self.word(ids) + token + self.position(self.position_ids[:, :seq]))


def test_embedding_sum_becomes_the_layernorms_residual():
    """The token-type and position rows fold to constants, combine into one table
    (combine_constant_addends) and join the LayerNorm as a broadcast residual: the word
    rows' Gather and one LayerNorm remain, no Add."""
    model = export(Embeddings(), (torch.randint(0, 50, (2, 16)),), ["ids"],
                   {"ids": {0: "batch"}}, 17)
    rng = np.random.default_rng(11)
    feeds = [{"ids": rng.integers(0, 50, (b, 16)).astype(np.int64)} for b in (1, 3)]
    counts = optimized_counts_and_check(model, feeds, atol=1e-5)
    assert counts["LayerNorm"] == 1 and counts["Gather"] == 1 and "Add" not in counts
