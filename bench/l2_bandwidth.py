"""How fast the GPU's L2 feeds the SMs, and what that allows the INT8 GEMM tiles.

A BERT-base GEMM tile of 128 x 256 reads (128 + 256) x 128 bytes of int8 operands per K
step of 128 for 128 x 256 x 128 x 2 operations: 171 operations a byte (128 x 128 tiles:
128). If the tiles' operands come from L2 (TMA copies bypass L1), L2's bandwidth times
that intensity caps the GEMM's rate, whatever the tensor cores could do. This script
measures the bandwidth (a Triton kernel reading an L2-resident buffer through L2 only,
`.cg` loads, many passes; then a buffer far larger than L2, for HBM), and prints the cap
for each tile beside it.

    python bench/l2_bandwidth.py            # on a GPU
    TRITON_INTERPRET=1 python bench/l2_bandwidth.py --smoke   # the wiring, on the CPU
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kiln.runtime.cuda_graphs import replayed_ms

TILES = {"128x128": (128, 128, 128), "128x256": (128, 256, 128)}  # BLOCK_M, BLOCK_N, BLOCK_K


@triton.jit
def _read(x_ptr, out_ptr, words, PASSES: tl.constexpr, STEPS: tl.constexpr,
          BLOCK: tl.constexpr):
    """Each program XORs STEPS BLOCK-word slices a pass, every programs-th one, starting
    at another slice each pass (so that no SM reads the same lines twice), loaded past L1
    (.cg), and writes the result so that the loads are not optimized away."""
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    for p in range(PASSES):
        first = (pid + p * 7) % programs
        for i in range(STEPS):
            offs = (first + i * programs) * BLOCK + tl.arange(0, BLOCK)
            acc ^= tl.load(x_ptr + offs, mask=offs < words, other=0, cache_modifier=".cg")
    tl.store(out_ptr + pid * BLOCK + tl.arange(0, BLOCK), acc)


def read_rate(megabytes: float, passes: int, programs: int, device: str) -> float:
    """Bytes per second read from a buffer of this size, `passes` times over."""
    block = 1024
    words = int(megabytes * 2**20) // 4
    x = torch.randint(-2**31, 2**31 - 1, (words,), dtype=torch.int32, device=device)
    out = torch.empty(programs * block, dtype=torch.int32, device=device)

    def run():
        _read[(programs,)](x, out, words, PASSES=passes,
                           STEPS=triton.cdiv(triton.cdiv(words, block), programs),
                           BLOCK=block, num_warps=8)

    if device == "cpu":  # the interpreter: the wiring only
        run()
        expected = torch.zeros(block, dtype=torch.int32)
        for chunk in x.split(block):
            expected[:len(chunk)] ^= chunk
        got = torch.zeros(block, dtype=torch.int32)
        for row in out.view(programs, block):
            got ^= row
        # every word XORed `passes` times: an odd count leaves the buffer's XOR
        want = expected if passes % 2 else torch.zeros_like(expected)
        assert torch.equal(got, want), "the kernel did not read every word once a pass"
        return float("nan")
    ms = replayed_ms(run, reps=20, rounds=5)
    return words * 4 * passes / (ms / 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (works on CPU)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.smoke or device == "cpu":
        read_rate(0.01, 3, 4, device)
        print("smoke: the read kernel covers the buffer once a pass")
        return
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 * 2**20) / 2**20
    sms = props.multi_processor_count
    print(f"{torch.cuda.get_device_name()}: {sms} SMs, L2 {l2:.0f} MiB")
    for megabytes, passes in ((l2 / 4, 20), (l2 / 2, 10), (4096, 1)):
        for waves in (4, 8):
            rate = read_rate(megabytes, passes, sms * waves, device)
            line = (f"{megabytes:8.1f} MiB x{passes:3d}, {waves} programs an SM: "
                    f"{rate / 1e12:6.2f} TB/s")
            if megabytes < l2:
                caps = ", ".join(f"{name} {rate * bm * bn * bk * 2 / ((bm + bn) * bk) / 1e12:.0f}"
                                 for name, (bm, bn, bk) in TILES.items())
                line += f"   INT8 GEMM cap if every operand comes from L2, TOPS: {caps}"
            print(line)


if __name__ == "__main__":
    main()
