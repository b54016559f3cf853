"""Models that need onnx's inliner (model-local functions, operators kiln runs through their
ONNX function body) read and run in a fresh interpreter, where nothing else has imported
`onnx.inliner` before kiln does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

from tests.shared_models import ROOT

SCRIPT = textwrap.dedent("""
    import json, numpy as np
    from onnx import TensorProto, helper
    from kiln.build import BuilderConfig, build_engine
    from kiln.runtime import ExecutionContext

    double = helper.make_function(  # a model-local function: y = x + x
        "local", "Double", ["x"], ["y"], [helper.make_node("Add", ["x", "x"], ["y"])],
        [helper.make_opsetid("", 17)])
    graph = helper.make_graph(
        [helper.make_node("HannWindow", ["size"], ["w"]),  # kiln runs its function body
         helper.make_node("Double", ["w"], ["y"], domain="local")],
        "functions", [helper.make_tensor_value_info("size", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, functions=[double], opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
    context = ExecutionContext(build_engine(model, BuilderConfig(device="cpu")))
    print(json.dumps({n: context.run({"size": np.array(n)})["y"].tolist() for n in (5, 16)}))
""")


def test_inlined_functions_in_a_fresh_interpreter():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for size, got in json.loads(result.stdout.splitlines()[-1]).items():
        n = np.arange(int(size))
        hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / int(size))  # periodic, as ONNX defines it
        np.testing.assert_allclose(got, 2 * hann, atol=1e-6)
