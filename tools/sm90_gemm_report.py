"""Compile kiln's INT8 GEMM kernels for the H100 (sm_90a) on any machine, no GPU needed, and
print what each tile costs statically for BERT-base's GEMMs: registers, spilled bytes,
the instructions a thread runs after its last tensor-core MMA (the epilogue), and how
many MMA groups the K loop leaves in flight at its wait (kiln/kernels/triton/_sm90.py).

    PYTHONPATH=. python tools/sm90_gemm_report.py [--tiles a,t3,t3s,t4,t4s,g4] [--layers qkv,fc1]
        [--fast-tanh]
"""

from __future__ import annotations

import argparse

from kiln.kernels.triton._sm90 import compile_gemm, mma_groups_in_flight, static_costs

# BERT-base at batch 32, sequence 128, as its INT8 engine runs them: (N, K, activation,
# output type); M does not enter the compiled code
LAYERS = {"qkv": (2304, 768, "", "int8"), "out": (768, 768, "", "fp16"),
          "fc1": (3072, 768, "GeluTanh", "int8"), "fc2": (768, 3072, "", "fp16")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", default="a,t3,t3s,t4,t4s,t6,t6s,g3,g4")
    parser.add_argument("--layers", default=",".join(LAYERS))
    parser.add_argument("--fast-tanh", action="store_true",
                        help="the TMA and Gluon tiles' GELU by the tanh instruction")
    args = parser.parse_args()
    print(f"{'layer':6s} {'tile':6s} {'regs':>5s} {'stack':>6s} {'epilogue':>9s} "
          f"{'spills':>7s} {'STG':>5s}  MMA groups left in flight at each wait")
    for layer in args.layers.split(","):
        for tile in args.tiles.split(","):
            compiled = compile_gemm(tile, *LAYERS[layer], args.fast_tanh)
            costs = static_costs(compiled)
            print(f"{layer:6s} {tile:6s} {costs['regs']:5d} {costs['stack']:6d} "
                  f"{costs['epilogue']:9d} {costs['spill stores']:7d} "
                  f"{costs['global stores']:5d}  {mma_groups_in_flight(compiled)}")


if __name__ == "__main__":
    main()
