"""Which of kiln's kernels makes a CUDA graph start late? Under CUDA's profiler the INT8
BERT engine's first kernel began 0.12 ms after the copy before its replay, the FP16
engine's 0.04 ms (bench/RESULTS.md, nineteenth session), and PDL on the first kernel was
not the cause.

Captures graphs of 24 kernels of one kind each (torch adds; kiln's gather-dequantize;
its LayerNorm; its Gluon INT8 GEMM, plain and persistent, whose arguments are TMA
descriptors), small enough that launch costs show, then 90 of one kind and 90 of all
kinds in turn (the INT8 engine's size and mixture), and prints per graph: its kernels' time
back to back, a replay's start-up (one replay less its share of ten back to back), and a
copy-then-replay's time less a bare replay's.

    PYTHONPATH=. python bench/graph_startup.py
"""

from __future__ import annotations

import torch
from kernel_profile import startup_ms
from peers import cuda_time

from kiln.kernels.triton._int8_gluon import qgemm_gluon
from kiln.kernels.triton.gather_dequantize import gather_dequantize
from kiln.kernels.triton.int8_gluon import GLUON_CONFIGS
from kiln.kernels.triton.layernorm import add_layer_norm

CHAIN = 24


def kinds(rows: int = 512, width: int = 768) -> dict:
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(rows, width, device="cuda", generator=g).half()
    table = torch.randint(-127, 128, (30522, width), dtype=torch.int8, device="cuda",
                          generator=g)
    scales = torch.rand(30522, 1, device="cuda", generator=g).half()
    ids = torch.randint(0, 30522, (rows,), device="cuda", generator=g)
    a = torch.randint(-127, 128, (rows, width), dtype=torch.int8, device="cuda", generator=g)
    w = torch.randint(-127, 128, (width, width), dtype=torch.int8, device="cuda", generator=g)
    ws = torch.rand(width, device="cuda", generator=g) / 1000
    epi = {"out_dtype": "fp16"}
    weight, bias = torch.rand(width, device="cuda").half(), torch.rand(width, device="cuda").half()
    return {
        "torch add": lambda: x.add(1.0),
        "gather-dequantize": lambda: gather_dequantize(table, scales, ids),
        "layernorm": lambda: add_layer_norm(x, x, weight, bias, -1, 1e-5, False)[0],
        "gluon gemm g5": lambda: qgemm_gluon(a, w, ws, None, epi, GLUON_CONFIGS["g5"]),
        "gluon gemm g5p": lambda: qgemm_gluon(a, w, ws, None, epi, GLUON_CONFIGS["g5p"]),
    }


def capture(kernels: list, length: int = CHAIN) -> torch.cuda.CUDAGraph:
    """A graph of `length` kernels, taking `kernels` in turn."""
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for _ in range(2):
            for kernel in kernels:
                kernel()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        for i in range(length):
            kernels[i % len(kernels)]()
    return graph


def main() -> None:
    src = torch.randint(0, 9, (32, 128), device="cuda")
    dst = src.clone()
    print(f"{'graph of ' + str(CHAIN):22s} {'replay ms':>9s} {'start-up ms':>12s} "
          f"{'copy first, extra ms':>21s}")
    each = kinds()
    graphs = {name: ([kernel], CHAIN) for name, kernel in each.items()}
    # the engine's size and mixture: 90 kernels, the kinds in turn
    graphs["layernorm x90"] = ([each["layernorm"]], 90)
    graphs["all kinds in turn x90"] = (list(each.values()), 90)
    for name, (kernels, length) in graphs.items():
        try:
            graph = capture(kernels, length)
        except Exception as error:  # a kernel this GPU cannot run: say so, go on
            print(f"{name:22s} not captured: {type(error).__name__}: {error}"[:160])
            continue
        bare = cuda_time(graph.replay)
        copied = cuda_time(lambda gr=graph: (dst.copy_(src, non_blocking=True), gr.replay()))
        print(f"{name:22s} {bare:9.4f} {startup_ms(graph):12.4f} {copied - bare:21.4f}")


if __name__ == "__main__":
    main()
