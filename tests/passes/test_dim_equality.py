"""DimEquality claims only what holds at run time: checked against real runs.

Every value of the main graph is made an output, the model runs in ONNX Runtime at several
input sizes, and every class of dims the analysis calls equal (and every static size it
gives) must match the sizes observed.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from kiln.ir import Graph
from kiln.onnx import read_onnx, write_onnx
from kiln.passes._dim_equality import DimEquality, DimRef
from tests.graph_support import ort_run, parse, random_feeds, require_models


def _observed_shapes(graph: Graph, feeds: dict) -> dict[str, tuple[int, ...]]:
    model = write_onnx(graph)
    typed = {v.name for v in model.graph.output}
    for info in list(model.graph.value_info):
        if info.name not in typed and info.type.tensor_type.elem_type:
            model.graph.output.append(helper.make_value_info(info.name, onnx.TypeProto()))
            model.graph.output[-1].type.tensor_type.elem_type = info.type.tensor_type.elem_type
            model.graph.output[-1].type.tensor_type.shape.SetInParent()
            for _ in info.type.tensor_type.shape.dim:
                model.graph.output[-1].type.tensor_type.shape.dim.add()
    return {name: np.shape(value) for name, value in ort_run(model, feeds).items()}


def _check_claims(graph: Graph, feeds_list: list[dict]) -> int:
    """Checks every claim against every run; returns how many dims were grouped."""
    eq = DimEquality(graph)
    main = {id(v) for v in graph.values()}
    classes = [[r for r in c if id(r.value) in main] for c in eq.classes()]
    for feeds in feeds_list:
        shapes = _observed_shapes(graph, feeds)
        for refs in classes:
            sizes = {shapes[r.value.name][r.axis] for r in refs if r.value.name in shapes}
            assert len(sizes) <= 1, [(r.value.name, r.axis) for r in refs]
            static = eq.static(refs[0]) if refs else None
            assert static is None or sizes <= {static}
    return sum(len(c) for c in classes)


def test_claims_hold_for_every_rule():
    graph = parse("""<ir_version: 8, opset_import: ["" : 18]>
    g (float[N,C,H] x, float[1,C,1] b, float[H,K] w) => (float[A,B] out) {
      r = Relu(x)
      s = Add(r, b)
      m = Mul(s, r)
      t = Transpose <perm = [2, 0, 1]> (m)
      c = Concat <axis = 0> (t, t)
      p1, p2 = Split <axis = 0, num_outputs = 2> (c)
      mm = MatMul(s, w)
      one = Constant <value = int64[1] {1}> ()
      red = ReduceMean <keepdims = 0> (mm, one)
      u = Unsqueeze(red, one)
      q = Squeeze(u, one)
      zero = Constant <value = int64[1] {0}> ()
      end = Constant <value = int64[1] {9223372036854775807}> ()
      sl = Slice(q, zero, end, zero)
      idx = Constant <value = int64[2] {0, 0}> ()
      gt = Gather <axis = 1> (sl, idx)
      flat = Constant <value = int64[2] {-1, 2}> ()
      rs = Reshape(gt, flat)
      ones = Constant <value = int64[2] {1, 1}> ()
      ex = Expand(rs, ones)
      total = ReduceSum <keepdims = 0> (p2)
      out = Add(ex, total)
    }""")
    feeds = [random_feeds(graph, {"N": n, "C": c, "H": h, "K": 4}, n)
             for n, c, h in [(1, 2, 3), (3, 4, 5), (2, 6, 2)]]
    assert _check_claims(graph, feeds) > 30


def test_declared_dim_names_are_not_claims():
    graph = parse("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[N,3] a, float[N,3] b) => (float[N,3] y) {
      y = Add(a, b)
    }""")
    eq = DimEquality(graph)
    a, b = graph.inputs
    # inference names both dims N; only the Add (valid only if they agree) relates them,
    # and it relates each to the output, not a to b, unless one side is 1
    assert not eq.same(DimRef(a, 0), DimRef(b, 0))
    assert eq.same(DimRef(a, 1), DimRef(b, 1)) and eq.static(DimRef(a, 1)) == 3


@pytest.mark.parametrize(("name", "extra"), [
    ("nudenet-yolov8n", {"images": (2, 3, 160, 224)}),
    ("khmersm", None),
    ("magika-v3.3", None),
])
def test_claims_hold_on_real_models(name, extra):
    folder = require_models() / name
    graph = read_onnx(folder / "model.onnx")
    feeds_list = []
    for path in sorted(folder.glob("samples/*.npz"))[:2]:
        with np.load(path) as data:
            feeds_list.append({k.removeprefix("input."): data[k] for k in data.files
                               if k.startswith("input.")})
    if extra:
        rng = np.random.default_rng(1)
        feeds_list.append({k: rng.uniform(-1, 1, s).astype(np.float32)
                           for k, s in extra.items()})
    assert _check_claims(graph, feeds_list) > 20
