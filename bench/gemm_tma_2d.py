"""Does the 5-D box view cost the TMA kernel its speed on plain GEMMs? A minimal 2-D TMA
GEMM (A [M, K] and W [N, K] by TMA, one tl.dot per K step, the product stored as fp16)
against kiln's QGemm kernel (qgemm_tma), cuBLAS FP16 and cuBLASLt FP8, on BERT-base's
GEMMs at batch 32, INT8 and FP8, several tiles. A probe for where kiln's FP8 GEMM lost to
cuBLASLt (0.4-0.7x), not a kiln kernel: when it was written qgemm_tma viewed the rows as
1x1 images; it now takes the same plain 2-D boxes, so what is left between the two is
kiln's epilogue.

    PYTHONPATH=. python bench/gemm_tma_2d.py
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from kiln.kernels.triton import _int8_tma as tma
from kiln.kernels.triton.int8 import TMA_CONFIGS
from kiln.runtime.cuda_graphs import replayed_ms

GEMMS = [("qkv", 4096, 768, 2304), ("out", 4096, 768, 768), ("fc1", 4096, 768, 3072),
         ("fc2", 4096, 3072, 768)]  # (name, M, K, N)
TILES = {"t4": TMA_CONFIGS["t4"], "t6": TMA_CONFIGS["t6"]}
SCALE = 1 / 4096  # keeps int8 sums inside fp16


@triton.jit
def _gemm_2d(a_desc, w_desc, out_ptr, M, N, scale, K: tl.constexpr, IS_FP8: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
             GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    grid_m, grid_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    width = GROUP_M * grid_n
    first_m = pid // width * GROUP_M
    size_m = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m
    if IS_FP8:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        a = a_desc.load([pid_m * BLOCK_M, k0])
        w = w_desc.load([pid_n * BLOCK_N, k0])
        acc += tl.dot(a, tl.trans(w))  # kiln's form (_int8_tma)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    tl.store(out_ptr + rm[:, None] * N + rn[None, :], (acc.to(tl.float32) * scale).to(tl.float16),
             mask=(rm < M)[:, None] & (rn < N)[None, :])


def gemm_2d(a: torch.Tensor, w: torch.Tensor, config: tuple) -> torch.Tensor:
    block_m, block_n, block_k, warps, stages = config[:5]
    m, k = a.shape
    n = w.shape[0]
    out = torch.empty((m, n), dtype=torch.float16, device=a.device)
    grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
    _gemm_2d[grid](TensorDescriptor.from_tensor(a, [block_m, block_k]),
                   TensorDescriptor.from_tensor(w, [block_n, block_k]), out, m, n, SCALE, K=k,
                   IS_FP8=a.dtype == torch.float8_e4m3fn, BLOCK_M=block_m, BLOCK_N=block_n,
                   BLOCK_K=block_k, GROUP_M=8, num_warps=warps, num_stages=stages)
    return out


def _ms(fn, *args) -> float:
    try:
        ms = replayed_ms(lambda: fn(*args), reps=100, rounds=5)
    except Exception as exc:  # a tile that does not compile is a row, not a crash
        print(f"  {getattr(fn, '__name__', fn)}: {type(exc).__name__}: {str(exc)[:120]}")
        return float("nan")
    return float("nan") if ms is None else ms


def main() -> None:
    rows = []
    epi = {"out_dtype": "fp16"}
    for name, m, k, n in GEMMS:
        ops = 2 * m * n * k
        af = torch.randn(m, k, device="cuda", dtype=torch.half)
        wf = torch.randn(n, k, device="cuda", dtype=torch.half)
        fp16 = _ms(F.linear, af, wf)
        rows.append((name, "cublas fp16", fp16, ops, fp16))
        a8 = torch.randint(-128, 128, (m, k), dtype=torch.int8, device="cuda")
        w8 = torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda")
        f8a, f8w = (a8.float() / 16).to(torch.float8_e4m3fn), (w8.float() / 16).to(
            torch.float8_e4m3fn)
        one = torch.ones((), device="cuda")
        scaled_mm = partial(torch._scaled_mm, out_dtype=torch.half)
        rows.append((name, "cublaslt fp8", _ms(scaled_mm, f8a, f8w.t(), one, one), ops, fp16))
        scales = torch.ones(n, device="cuda")
        for kind, a, w in (("int8", a8, w8), ("fp8", f8a, f8w)):
            want = (a.float() @ w.float().t() * SCALE).half().float()
            for key, config in TILES.items():
                got = gemm_2d(a, w, config)
                ok = torch.allclose(got.float(), want, rtol=1e-2, atol=1e-2)
                exact = "" if ok else " (differs)"
                rows.append((name, f"2-D {kind} {key}{exact}", _ms(gemm_2d, a, w, config), ops,
                             fp16))
                rows.append((name, f"5-D {kind} {key}", _ms(
                    tma.qgemm_tma, a, w, scales, None, epi, config), ops, fp16))
    print(f"\n{'gemm':6} {'kernel':28} {'ms':>8} {'TOPS':>7} {'fp16/this':>9}")
    for name, kernel, ms, ops, fp16 in rows:
        print(f"{name:6} {kernel:28} {ms:8.4f} {ops / ms / 1e9:7.1f} {fp16 / ms:9.2f}")


if __name__ == "__main__":
    main()
