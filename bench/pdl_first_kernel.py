"""Does a CUDA graph whose first kernel was launched with programmatic dependent launch
start later after a copy on its stream? An engine's run copies its inputs into the graph's
static buffers, then replays it; the INT8 BERT engine (first kernel a Triton gather, with
PDL) ran 0.12 ms longer than its bare replay where the FP16 one (first kernel torch's)
ran 0.06 longer (bench/RESULTS.md, eighteenth session).

Captures a chain of the gather-dequantize kernel three ways (PDL on every kernel; PDL off;
PDL on after a first torch kernel) and times, per graph, a bare replay and a copy into the
static input followed by a replay, in alternating rounds; prints each one's extra time.

    PYTHONPATH=. python bench/pdl_first_kernel.py
"""

from __future__ import annotations

import os
import statistics

import torch
from peers import cuda_time

from kiln.kernels.triton.gather_dequantize import gather_dequantize

CHAIN = 30


def capture(pdl: bool, torch_first: bool, table, scales, ids):
    os.environ["KILN_PDL"] = "1" if pdl else "0"
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for _ in range(2):
            gather_dequantize(table, scales, ids)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        x = ids + 0 if torch_first else ids
        for _ in range(CHAIN):
            gather_dequantize(table, scales, x)
    os.environ.pop("KILN_PDL")
    return graph


def main() -> None:
    g = torch.Generator(device="cuda").manual_seed(0)
    table = torch.randint(-127, 128, (30522, 768), dtype=torch.int8, device="cuda",
                          generator=g)
    scales = torch.rand(30522, 1, device="cuda", generator=g).half()
    ids = torch.randint(0, 30522, (32, 128), device="cuda", generator=g)
    feed = ids.clone()
    graphs = {"pdl on": capture(True, False, table, scales, ids),
              "pdl off": capture(False, False, table, scales, ids),
              "pdl on, torch kernel first": capture(True, True, table, scales, ids)}
    results: dict[str, dict[str, list[float]]] = {k: {"bare": [], "copy": []} for k in graphs}
    for _ in range(5):
        for name, graph in graphs.items():
            results[name]["bare"].append(cuda_time(graph.replay, warmup=5, runs=50))
            results[name]["copy"].append(cuda_time(lambda gr=graph: (ids.copy_(feed), gr.replay()),
                                                   warmup=5, runs=50))
    print(f"{'graph':30s} {'bare ms':>9s} {'copy+replay':>12s} {'extra us':>9s}")
    for name, r in results.items():
        bare, copy = statistics.median(r["bare"]), statistics.median(r["copy"])
        print(f"{name:30s} {bare:9.4f} {copy:12.4f} {1000 * (copy - bare):9.1f}")


if __name__ == "__main__":
    main()
