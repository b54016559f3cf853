"""Engines on the CPU run without page faults for their layers' outputs: the first CPU
context keeps freed blocks in the heap (glibc's malloc would otherwise hand blocks over
its threshold back to the OS and fault them in again on the next run). Each case runs in
a fresh process, since malloc's settings are the process's; both start malloc with its
threshold fixed at 128 KiB, the state in which every run faulted."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import ctypes, resource, sys
    import numpy as np, onnx, torch
    from onnx import TensorProto, helper
    from kiln.build import BuilderConfig, build_engine
    from kiln.runtime import ExecutionContext
    from kiln.runtime.host_memory import keep_freed_host_memory

    torch.set_num_threads(1)
    # malloc as a process may find it: threshold at its 128 KiB start, fixed there
    ctypes.CDLL(None).mallopt(-3, 128 << 10)
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((32, 8, 3, 3)).astype(np.float32)
    graph = helper.make_graph(   # outputs of 1-2 MB: over malloc's first mmap threshold
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Sigmoid", ["r"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 96, 96])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 96, 96])],
        [helper.make_tensor("w", TensorProto.FLOAT, weight.shape, weight.ravel())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    engine = build_engine(model.SerializeToString(), BuilderConfig(device="cpu"))
    context = ExecutionContext(engine)
    x = torch.from_numpy(rng.standard_normal((1, 8, 96, 96)).astype(np.float32))
    for _ in range(5):
        context.run({"x": x})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        context.run({"x": x})
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(keep_freed_host_memory(), faults)
""")


def _run(env: dict[str, str]) -> tuple[bool, int]:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": root, **env}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    applied, faults = done.stdout.split()[-2:]
    return applied == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_cpu_runs_fault_in_no_pages():
    applied, faults = _run({})
    if not applied:
        pytest.skip("not glibc: malloc's settings are left alone")
    # a run's outputs alone are ~3 MB, 750 pages: a faulting run would show hundreds
    assert faults < 40, f"{faults} page faults in 20 runs"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_left_alone_the_same_runs_fault_pages_in():
    """What the setting prevents (and that the count above would see it)."""
    applied, faults = _run({"KILN_HOST_MALLOC": "0"})
    assert not applied
    assert faults > 20 * 200, f"only {faults} page faults in 20 runs"
