"""Compile kiln's INT8 GEMM kernels for the H100 (sm_90a) on any machine, no GPU needed, and
print what each tile costs statically: registers, spilled bytes, and the instructions a
thread runs after its last tensor-core MMA (the epilogue, straight-line code, so the
count is also what runs). Triton's wheel carries ptxas and nvdisasm; device time is
scarce, so questions a compile can answer are answered here first.

    PYTHONPATH=. python tools/sm90_gemm_report.py [--tiles a,t3,t3s,t4,t4s] [--layers qkv,fc1]
        [--fast-tanh]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kiln.kernels.triton._int8_kernels import ACTIVATIONS, OUT_MODES, _qgemm_kernel
from kiln.kernels.triton._int8_tma import _qgemm_tma_kernel
from kiln.kernels.triton.int8 import GEMM_CONFIGS, TMA_CONFIGS, TMA_STORE_CONFIGS

# BERT-base at batch 32, sequence 128, as its INT8 engine runs them: (N, K, activation,
# output type); M does not enter the compiled code
LAYERS = {"qkv": (2304, 768, "", "int8"), "out": (768, 768, "", "fp16"),
          "fc1": (3072, 768, "GeluTanh", "int8"), "fc2": (768, 3072, "", "fp16")}
_TYPES = {"int8": "i8", "fp16": "fp16", "fp32": "fp32"}
_SCALARS = {"M": "i32", "stride_om": "i32", "stride_rm": "i32", "res_scale": "fp32",
            "res_zp": "i32", "out_inv_scale": "fp32", "out_zp": "i32", "p0": "fp32",
            "p1": "fp32", "stride_am": "i32", "zp": "i32"}


def compile_tile(tile: str, n: int, k: int, activation: str, out: str,
                 fast_tanh: bool = False) -> Any:
    """The kernel a QGemm tactic of this tile launches for the layer, compiled for sm_90a
    (fast_tanh: the TMA kernel's tanh-instruction GELU)."""
    out_t = _TYPES[out]
    const = {"N": n, "K": k, "HAS_BIAS": True, "RES_MODE": 0, "IS_FP8": False,
             "ACT": ACTIVATIONS[activation], "OUT_MODE": OUT_MODES[out], "GROUP_M": 8,
             "PDL": True}
    if tile in GEMM_CONFIGS:  # the gathering kernel
        bm, bn, bk, warps, stages = GEMM_CONFIGS[tile]
        kernel = _qgemm_kernel
        sig = {"a_ptr": "*i8", "w_ptr": "*i8", "out_ptr": f"*{out_t}", "scales_ptr": "*fp32",
               "bias_ptr": "*fp32", "wsum_ptr": "*fp32", "res_ptr": "*fp16"}
        const.update(A_UINT8=False, HAS_ZP=False)
    else:
        config = {**TMA_CONFIGS, **TMA_STORE_CONFIGS}[tile]
        bm, bn, bk, warps, stages = config[:5]
        tma_out = len(config) > 5 and config[5]
        kernel = _qgemm_tma_kernel
        stand_in = f"tensordesc<i8[{bn}, {bk}]>"
        sig = {"a_desc": f"tensordesc<i8[{bm}, {bk}]>", "w_desc": stand_in,
               "out_desc": f"tensordesc<{out_t}[{bm}, {bn}]>" if tma_out else stand_in,
               "res_desc": stand_in, "out_ptr": f"*{out_t}", "scales_ptr": "*fp32",
               "bias_ptr": "*fp32", "res_ptr": "*fp16"}
        const.update(TMA_OUT=tma_out, FAST_TANH=fast_tanh)
    const.update(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    params = kernel.arg_names
    sig.update({name: _SCALARS[name] for name in params if name in _SCALARS})
    sig.update({name: "constexpr" for name in const})
    sig = {name: sig[name] for name in params}  # the kernel's own order
    return triton.compile(ASTSource(kernel, sig, const), target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": warps, "num_stages": stages})


def static_costs(compiled: Any) -> dict[str, int]:
    """Registers, stack bytes, and the epilogue's instruction, spill and store counts."""
    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([os.path.join(tools, "cuobjdump"), "--dump-resource-usage",
                                f.name], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([os.path.join(tools, "nvdisasm"), "-c", f.name],
                              capture_output=True, text=True, check=True).stdout
    regs, stack = (int(v) for v in re.search(r"REG:(\d+) STACK:(\d+)", usage).groups())
    lines = [line for line in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]+\*/", line)]
    last_mma = max((i for i, line in enumerate(lines) if "MMA" in line), default=0)
    epilogue = lines[last_mma:]
    return {"regs": regs, "stack": stack, "epilogue": len(epilogue),
            "spill stores": sum(" STL" in line for line in epilogue),
            "global stores": sum(" STG" in line for line in epilogue)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", default="a,t3,t3s,t4,t4s,t6,t6s")
    parser.add_argument("--layers", default=",".join(LAYERS))
    parser.add_argument("--fast-tanh", action="store_true",
                        help="the TMA tiles' GELU by the tanh instruction")
    args = parser.parse_args()
    print(f"{'layer':6s} {'tile':5s} {'regs':>5s} {'stack':>6s} {'epilogue':>9s} "
          f"{'spills':>7s} {'STG':>5s}")
    for layer in args.layers.split(","):
        for tile in args.tiles.split(","):
            costs = static_costs(compile_tile(tile, *LAYERS[layer], args.fast_tanh))
            print(f"{layer:6s} {tile:5s} {costs['regs']:5d} {costs['stack']:6d} "
                  f"{costs['epilogue']:9d} {costs['spill stores']:7d} "
                  f"{costs['global stores']:5d}")


if __name__ == "__main__":
    main()
