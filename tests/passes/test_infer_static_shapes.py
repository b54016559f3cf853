"""infer_static_shapes: shapes ONNX inference left open are completed, so shape arithmetic
behind them folds (torch's MultiheadAttention export is the case that needs it)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import torch

from kiln.build import BuilderConfig, build_engine
from kiln.ops.interpreter import run_graph
from kiln.passes.eliminate_dead import eliminate_dead
from kiln.passes.fold_constants import fold_constants
from kiln.passes.fold_shape_chains import fold_shape_chains
from kiln.passes.infer_static_shapes import infer_static_shapes
from kiln.runtime import ExecutionContext
from tests.graph_support import (
    apply,
    assert_close,
    assert_same_results,
    copy_graph,
    ops,
    ort_run,
    random_feeds,
)

HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'

# The reshape target's leading dims come from a Slice whose end ONNX cannot propagate
# (a Mod, as torch's unflatten export has); the scale is 1/sqrt of the last dim after it.
UNFLATTEN_THEN_SCALE = HEADER + """
g (float[B,3,12] x) => (float[B,3,3,4] y) {
  s = Shape(x)
  two = Constant <value = int64[1] {2}> ()
  three = Constant <value = int64[1] {3}> ()
  m = Mod(two, three)
  zero = Constant <value = int64[1] {0}> ()
  lead = Slice(s, zero, m)
  tail = Constant <value = int64[2] {3, 4}> ()
  t = Concat <axis = 0> (lead, tail)
  r = Reshape(x, t)
  rs = Shape(r)
  last = Constant <value = int64[1] {-1}> ()
  big = Constant <value = int64[1] {9223372036854775807}> ()
  d = Slice(rs, last, big)
  f = Cast <to = 1> (d)
  q = Sqrt(f)
  one = Constant <value = float {1.0}> ()
  scale = Div(one, q)
  y = Mul(r, scale)
}"""


def _specialized(text: str, batch: int) -> str:
    return text.replace("float[B,", f"float[{batch},")


@pytest.mark.parametrize("batch", [1, 5])
def test_reshape_output_shape_is_completed_and_the_scale_folds(batch):
    graph, before = copy_graph(_specialized(UNFLATTEN_THEN_SCALE, batch))
    reshaped = next(n for n in graph.nodes if n.op_type == "Reshape").output
    assert reshaped.static_shape is None  # what ONNX inference leaves
    for _ in range(4):  # the pipeline repeats its phase until nothing changes
        apply(graph, fold_constants, fold_shape_chains, infer_static_shapes, eliminate_dead)
    assert reshaped.static_shape == (batch, 3, 3, 4)
    assert sorted(ops(graph)) == ["Mul", "Reshape"]
    scale = next(n for n in graph.nodes if n.op_type == "Mul").inputs[1]
    assert scale.is_const and np.allclose(scale.const, 0.5)
    assert_same_results(before, graph, [random_feeds(before, {}, seed) for seed in (0, 1)])


def test_dynamic_dims_stay_unknown_and_the_named_ones_become_known():
    graph, before = copy_graph(UNFLATTEN_THEN_SCALE)
    reshaped = next(n for n in graph.nodes if n.op_type == "Reshape").output
    for _ in range(4):
        apply(graph, fold_constants, fold_shape_chains, infer_static_shapes, eliminate_dead)
    assert reshaped.static_shape is None  # the batch is only known at run time
    # ... but the sizes the target names are facts: the scale from the last one folds
    assert reshaped.shape[1:] == (3, 3, 4) and not isinstance(reshaped.shape[0], int)
    assert ops(graph) == ["Reshape", "Mul"]
    for b in (1, 4):
        feeds = random_feeds(before, {"B": b}, b)
        assert_close(run_graph(graph, feeds), run_graph(before, feeds))


def test_a_value_dependent_shape_is_not_guessed():
    graph, _ = copy_graph(HEADER + """
    g (float[4] x) => (int64[?, 1] y) {
      y = NonZero(x)
    }""")
    apply(graph, infer_static_shapes)
    assert graph.outputs[0].static_shape is None


class _TinyViT(torch.nn.Module):
    """torchvision's ViT encoder in miniature: nn.MultiheadAttention, GELU MLP whose biases
    are initialized at the 1e-6 scale (as torchvision does), a class token."""

    def __init__(self, dim: int = 32, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        nn = torch.nn
        self.proj = nn.Conv2d(3, dim, 4, 4)
        self.token = nn.Parameter(torch.randn(1, 1, dim))
        self.attn = nn.ModuleList(nn.MultiheadAttention(dim, heads, batch_first=True)
                                  for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(dim, eps=1e-6) for _ in range(2 * layers))
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(),
                                                nn.Linear(2 * dim, dim))
                                  for _ in range(layers))
        for mlp in self.mlps:
            for linear in (mlp[0], mlp[2]):
                nn.init.normal_(linear.bias, std=1e-6)
        self.head = nn.Linear(dim, 10)

    def forward(self, images):
        x = self.proj(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.token.expand(x.shape[0], -1, -1), x], dim=1)
        for i, (attn, mlp) in enumerate(zip(self.attn, self.mlps)):
            y = self.norms[2 * i](x)
            x = x + attn(y, y, y, need_weights=False)[0]
            x = x + mlp(self.norms[2 * i + 1](x))
        return self.head(x[:, 0])


@pytest.fixture(scope="module")
def tiny_vit() -> bytes:
    torch.manual_seed(0)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_TinyViT().eval(), (torch.randn(2, 3, 16, 16),), buffer,
                          dynamo=False, opset_version=17, input_names=["images"],
                          dynamic_axes={"images": {0: "batch"}})
    return buffer.getvalue()


@pytest.mark.parametrize("batch", [1, 3])
def test_vit_fp16_engine_has_no_fp32_islands(tiny_vit, batch):
    """Every GEMM and attention in fp16, no shape arithmetic left to run, ORT's answers."""
    shape = [batch, 3, 16, 16]
    engine = build_engine(tiny_vit, BuilderConfig(precision="fp16", device="cpu",
                                                  profiles=[{"opt": {"images": shape}}]))
    layers = engine.plan["graph"]["layers"]
    compute = [layer for layer in layers if layer["op"] in ("FusedGemm", "Attention")]
    assert len(compute) >= 9 and all(layer["precision"] == "fp16" for layer in compute)
    assert not [layer["name"] for layer in layers if layer["op"] in ("Shape", "Sqrt", "Mul")]
    images = np.random.default_rng(batch).standard_normal(shape).astype(np.float32)
    got = ExecutionContext(engine).run({"images": images})
    expected = ort_run(onnx.load_from_string(tiny_vit), {"images": images})
    name = next(iter(expected))
    np.testing.assert_allclose(got[name], expected[name], atol=3e-3, rtol=3e-3)
