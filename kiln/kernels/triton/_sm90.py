"""Compile a Triton or Gluon kernel for the H100 (sm_90a) on any machine, no GPU needed, and
read its static costs: registers, spilled bytes, and the instructions a thread runs after
its last tensor-core MMA (an epilogue is straight-line code, so that count is also what
runs). Triton's wheel carries ptxas, cuobjdump and nvdisasm; device time is scarce, so
what a compile can answer is answered here (tools/sm90_gemm_report.py, and tests that
hold kernels to what their compiles showed)."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

HOPPER = GPUTarget("cuda", 90, 32)


def compile_for_hopper(kernel: Any, signature: dict[str, str], constants: dict[str, Any],
                       warps: int, stages: int) -> Any:
    """kernel compiled for sm_90a: signature maps every parameter (in order) to its type
    string ("*i8", "i32", "tensordesc<i8[128, 64]>", "constexpr"), constants give the
    constexpr values. A Gluon kernel compiles through Gluon's source (its layouts need
    the warp count up front)."""
    source = ASTSource
    if getattr(kernel, "is_gluon", lambda: False)():
        from triton.experimental.gluon._runtime import GluonASTSource as source
    return triton.compile(source(kernel, signature, constants), target=HOPPER,
                          options={"num_warps": warps, "num_stages": stages})


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def tools_present() -> bool:
    """Whether this Triton carries the NVIDIA tools the costs are read with."""
    return all(os.path.exists(_tool(name)) for name in ("ptxas", "cuobjdump", "nvdisasm"))


def _read_cubin(compiled: Any, tool: str, *flags: str) -> str:
    """What one of the NVIDIA tools prints for the compiled kernel's cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        return subprocess.run([_tool(tool), *flags, f.name], capture_output=True, text=True,
                              check=True).stdout


def sass(compiled: Any) -> list[str]:
    """The kernel's machine instructions, one per line."""
    text = _read_cubin(compiled, "nvdisasm", "-c")
    return [re.sub(r"^\s+/\*[0-9a-f]+\*/\s+", "", line) for line in text.splitlines()
            if re.match(r"\s+/\*[0-9a-f]+\*/", line)]


def static_costs(compiled: Any) -> dict[str, int]:
    """Registers, stack bytes, and the epilogue's instruction, spill-store, global-store
    and global-load counts (after the last MMA)."""
    usage = _read_cubin(compiled, "cuobjdump", "--dump-resource-usage")
    regs, stack = (int(v) for v in re.search(r"REG:(\d+) STACK:(\d+)", usage).groups())
    lines = sass(compiled)
    last_mma = max((i for i, line in enumerate(lines) if "MMA" in line), default=0)
    epilogue = lines[last_mma:]
    return {"regs": regs, "stack": stack, "epilogue": len(epilogue),
            "spill stores": sum(line.startswith("STL") or " STL" in line for line in epilogue),
            "global stores": sum(line.startswith("STG") or " STG" in line
                                 for line in epilogue),
            "global loads": sum(line.startswith("LDG") or " LDG" in line for line in epilogue)}


def mma_groups_in_flight(compiled: Any) -> list[int]:
    """For each wait on warpgroup MMAs in the kernel, how many it leaves in flight
    (WARPGROUP.DEPBAR.LE gsb0, n)."""
    return [int(m.group(1), 16) for line in sass(compiled)
            if (m := re.search(r"WARPGROUP\.DEPBAR\.LE gsb0, 0x([0-9a-f]+)", line))]


# -------------------------------------------------------------- kiln's INT8 GEMM kernels
_TYPES = {"int8": "i8", "fp16": "fp16", "fp32": "fp32"}
_SCALARS = {"M": "i32", "stride_om": "i32", "stride_rm": "i32", "res_scale": "fp32",
            "res_zp": "i32", "out_inv_scale": "fp32", "out_zp": "i32", "p0": "fp32",
            "p1": "fp32", "stride_am": "i32", "zp": "i32"}


def compile_gemm(tile: str, n: int, k: int, activation: str, out: str,
                 fast_tanh: bool = False) -> Any:
    """The kernel a QGemm of N outputs over K, this epilogue (activation, "int8" or "fp16"
    output, bias, no residual) and tile launches, compiled for sm_90a: a gathering tile
    (GEMM_CONFIGS: "a"), a TMA one (TMA_CONFIGS / TMA_STORE_CONFIGS: "t4", "t4s") or a
    Gluon one (GLUON_CONFIGS: "g4"). fast_tanh: the tanh instruction's GELU (TMA, Gluon)."""
    from kiln.kernels.triton import _int8_gluon, _int8_kernels, _int8_tma
    from kiln.kernels.triton.int8 import GEMM_CONFIGS, TMA_CONFIGS, TMA_STORE_CONFIGS

    out_t = _TYPES[out]
    const = {"N": n, "K": k, "HAS_BIAS": True, "ACT": _int8_kernels.ACTIVATIONS[activation],
             "OUT_MODE": _int8_kernels.OUT_MODES[out]}
    if tile in _int8_gluon.GLUON_CONFIGS:
        config = _int8_gluon.GLUON_CONFIGS[tile]
        return _int8_gluon.compile_for_hopper_offline(config, const, fast_tanh)
    const.update(RES_MODE=0, IS_FP8=False, GROUP_M=8, PDL=True)
    if tile in GEMM_CONFIGS:
        bm, bn, bk, warps, stages = GEMM_CONFIGS[tile]
        kernel = _int8_kernels._qgemm_kernel
        sig = {"a_ptr": "*i8", "w_ptr": "*i8", "out_ptr": f"*{out_t}", "scales_ptr": "*fp32",
               "bias_ptr": "*fp32", "wsum_ptr": "*fp32", "res_ptr": "*fp16"}
        const.update(A_UINT8=False, HAS_ZP=False)
    else:
        config = {**TMA_CONFIGS, **TMA_STORE_CONFIGS}[tile]
        bm, bn, bk, warps, stages = config[:5]
        tma_out = len(config) > 5 and config[5]
        kernel = _int8_tma._qgemm_tma_kernel
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
    return compile_for_hopper(kernel, {name: sig[name] for name in params}, const, warps,
                              stages)
