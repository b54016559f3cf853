"""Kiln's INT8 GEMM kernels compiled for the H100 (sm_90a) on this machine, no GPU needed
(kiln/kernels/triton/_sm90.py): the properties their compiles showed, held as tests, so a
change that loses them fails here rather than in a benchmark on a lent GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")
sm90 = pytest.importorskip("kiln.kernels.triton._sm90")
pytestmark = pytest.mark.skipif(not sm90.tools_present(),
                                reason="this Triton carries no ptxas/nvdisasm")

FC1 = (3072, 768, "GeluTanh", "int8")  # BERT-base's, as its INT8 engine runs them
FC2 = (768, 3072, "", "fp16")
QKV = (2304, 768, "", "int8")
_PROBE = """
import json, sys
from kiln.kernels.triton import _sm90 as sm90
tile, layer, fast = json.loads(sys.argv[1])
c = sm90.compile_gemm(tile, *layer, fast_tanh=fast)
print(json.dumps({**sm90.static_costs(c), "in flight": sm90.mma_groups_in_flight(c),
                  "ptx": c.asm["ptx"]}))
"""


def compiled(tile: str, layer: tuple, fast_tanh: bool = False) -> dict:
    """The tile's static costs for the layer, its waits' MMA groups left in flight and its
    PTX: compiled in a process of its own, since the tests run Triton's interpreter (whose
    kernels do not compile)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps([tile, layer, fast_tanh])],
                          capture_output=True, text=True, env=env, timeout=300, check=True)
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("layer", [FC1, FC2], ids=["fc1", "fc2"])
def test_tma_store_tiles_cut_the_epilogue(layer):
    """Storing the output tile by TMA removes the per-element addresses, bounds tests and
    stores of the pointer epilogue, and with them t4's register spills."""
    plain, stored = compiled("t4", layer), compiled("t4s", layer)
    assert plain["global stores"] > 0 and stored["global stores"] == 0
    assert stored["spill stores"] == 0 and stored["stack"] == 0
    assert stored["epilogue"] < 0.75 * plain["epilogue"]


def test_tanh_instruction_shortens_the_gelu_epilogue():
    exact, fast = compiled("t4s", FC1), compiled("t4s", FC1, fast_tanh=True)
    assert "tanh.approx.f32" in fast["ptx"] and "tanh.approx.f32" not in exact["ptx"]
    assert fast["epilogue"] < 0.8 * exact["epilogue"]


@pytest.mark.parametrize("layer", [FC1, FC2], ids=["fc1", "fc2"])
@pytest.mark.parametrize("tile", ["g3", "g4", "g4p", "g6p"])
def test_gluon_gemm_keeps_an_mma_in_flight(layer, tile):
    """The Gluon INT8 GEMM's K loop waits until one MMA group is left in flight (then none
    after the loop), where Triton 3.6's pipeliner makes int32-accumulator MMAs wait for
    all; it compiles without spills and stores by TMA."""
    costs = compiled(tile, layer, fast_tanh=True)
    assert costs["in flight"][0] == 1
    assert costs["stack"] == 0 and costs["global stores"] == 0
    assert "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8" in costs["ptx"]


@pytest.mark.parametrize("tile", ["g5", "g5p"])
def test_gluon_192_column_tile_is_two_mmas_per_step(tile):
    """A 128 x 192 tile is a 128-column and a 64-column MMA per K step, each its own group:
    the wait that leaves two in flight retires the previous step's pair (whose ring slot
    the next copy then overwrites), never one of them alone."""
    costs = compiled(tile, FC2)
    assert costs["in flight"] == [2, 0]
    assert costs["ptx"].count("wgmma.commit_group") == 2
    assert "m64n128k32.s32.s8.s8" in costs["ptx"] and "m64n64k32.s32.s8.s8" in costs["ptx"]
    assert costs["stack"] == 0 and costs["global stores"] == 0


@pytest.mark.parametrize("tile,layer,regs", [("g4p", FC1, 255), ("g5k64", QKV, 128),
                                             ("g5", FC2, 128)], ids=["fc1", "qkv", "fc2"])
def test_gluon_epilogue_reads_its_factors_from_shared_memory(tile, layer, regs):
    """The column factors and bias come before the K loop and wait in shared memory, so
    the epilogue issues no global load; staged there rather than converted into the
    accumulator's layout at once, a 128 x 192 tile keeps to 128 registers a thread (two
    programs an SM)."""
    costs = compiled(tile, layer, fast_tanh=True)
    assert costs["global loads"] == 0
    assert costs["regs"] <= regs and costs["stack"] == 0
