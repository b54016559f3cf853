"""An INT8 GEMM for Hopper written in Gluon (Triton's explicit layer), whose tensor-core
MMAs stay in flight while the next K step's operands are checked in (sm_90a only; its
tactics are int8_gluon.py's).

Why Gluon: Triton 3.6's software pipeliner makes a wgmma asynchronous only where the
accumulator is float32 ("Rule 2.1" of its WGMMAPipeline), so every INT8 K loop it builds
waits for all of a step's MMAs to finish (`warp_group_dot_wait {pendings = 0}`) before the
next step's loads and MMAs issue, while its FP16 loops keep one step in flight.
Here the loop is written out: a STAGES-deep ring of TMA copies into shared memory, each
slot with its mbarrier; per K step one asynchronous warpgroup MMA, then a wait that leaves
that one in flight (`num_outstanding=1`), which frees the previous step's slot for the
copy STAGES - 1 steps ahead.

The epilogue is QGemm's for the layers BERT-like encoders have: per-column factors and
bias, no activation, ReLU or the tanh-form GELU (by the tanh instruction with FAST_TANH),
then an int8 output requantized with zero point 0 (OUT_MODE 3) or a float16 one (1),
written by TMA. Its arithmetic is the reference's order (kiln/ops/quantized.epilogue:
factors, bias, activation, then the output step) except that the output step is folded
into the factors and bias (no activation, ReLU) or into GELU's half, as the Triton
epilogue folds it: either may round an element a step away from the reference.
"""

from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from kiln.kernels.triton import _pdl
from kiln.kernels.triton._int8_kernels import ACTIVATIONS, OUT_MODES
from kiln.kernels.triton.int8_gluon import GLUON_CONFIGS  # noqa: F401 (its tiles, here too)

_OUT = {OUT_MODES["int8"]: (torch.int8, gl.int8), OUT_MODES["fp16"]: (torch.float16, gl.float16)}


def check_config(config: tuple) -> None:
    """A tile this kernel takes: warps along M at 16 rows each, at least two ring slots,
    columns in one or two powers of two (column_parts)."""
    block_m, block_n, _, warps, stages = config[:5]
    if block_m != 16 * warps or stages < 2 or block_n % 16 or _parts(block_n) is None:
        raise ValueError(f"Gluon int8 GEMM: tile {config} wants BLOCK_M = 16 x warps, "
                         "BLOCK_N a multiple of 16 made of one or two powers of two "
                         "(128, 192 = 128 + 64) and at least 2 stages")


def _parts(block_n: int) -> tuple[int, int] | None:
    first = 1 << (block_n.bit_length() - 1)
    rest = block_n - first
    return (first, rest) if rest & (rest - 1) == 0 else None


def column_parts(block_n: int) -> tuple[int, int]:
    """A tile's columns as the MMAs that compute them: one power of two (rest 0), or a
    power of two and a smaller one (192 = 128 + 64). Gluon's tensors are powers of two
    along each axis; a 192-column tile is two accumulators side by side. Why 192: BERT's
    N = 768 GEMMs over 4096 rows make 128 tiles of 128 x 192 (one round of 132 SMs)
    against 96 of 128 x 256 or 192 of 128 x 128 (1.45 rounds)."""
    check_config((16, block_n, 32, 1, 2))
    return _parts(block_n)


def mma_layout(block_n: int, warps: int) -> gl.NVMMADistributedLayout:
    """Warps along M (16 rows each), the widest int8 wgmma N (<= 224) dividing the tile."""
    n = 224
    while block_n % n:
        n -= 16
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[warps, 1],
                                     instr_shape=[16, n, 32])


@gluon.jit
def _gelu_tanh(y, FAST_TANH: gl.constexpr, scale):
    """scale * GELU(y), tanh form: the scale in the half that multiplies both terms."""
    u = y * (0.7978845608028654 + 0.035677408136300125 * y * y)
    if FAST_TANH:
        t = gl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [u],
                                      dtype=gl.float32, is_pure=True, pack=1)
    else:
        t = 2.0 / (1.0 + gl.exp(-2.0 * u)) - 1.0
    h = (0.5 * scale) * y
    return h + h * t


@gluon.jit
def _wait_for_inputs(PDL: gl.constexpr):
    """kiln.kernels.triton._pdl.wait_for_inputs in Gluon: the kernel before has finished
    (griddepcontrol.wait), then the next may be scheduled."""
    if PDL:
        gl.inline_asm_elementwise("griddepcontrol.wait; // dummy $0", "=r", [],
                                  dtype=gl.int32, is_pure=False, pack=1)
        gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // dummy $0", "=r", [],
                                  dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _qgemm_gluon_kernel(a_desc, w_desc, w1_desc, out_desc, out1_desc, scales_ptr, bias_ptr,
                        out_inv_scale, N: gl.constexpr, K: gl.constexpr,
                        BLOCK_N: gl.constexpr, HAS_BIAS: gl.constexpr, ACT: gl.constexpr,
                        OUT_MODE: gl.constexpr, FAST_TANH: gl.constexpr,
                        LOW_CLAMP: gl.constexpr, STAGES: gl.constexpr, LAYOUT: gl.constexpr,
                        LAYOUT1: gl.constexpr, VEC: gl.constexpr, PDL: gl.constexpr):
    """BLOCK_N: the tile's columns; w1_desc, out1_desc: its second column part after the
    first w_desc.block_type.shape[0] (column_parts), or None."""
    _wait_for_inputs(PDL)
    BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
    STEPS: gl.constexpr = (K + BLOCK_K - 1) // BLOCK_K
    TILES_N: gl.constexpr = (N + BLOCK_N - 1) // BLOCK_N
    pid = gl.program_id(0)  # the tile; a program of one tile, its steps 0 .. STEPS - 1

    a_ring, w_ring, w1_ring, ready = _rings(a_desc, w_desc, w1_desc, STAGES)
    _start_ring(STEPS, pid, 1, a_desc, w_desc, w1_desc, a_ring, w_ring, w1_ring, ready,
                TILES_N, BLOCK_N, STEPS, STAGES)
    factors = _tile_factors(scales_ptr, bias_ptr, pid, TILES_N, BLOCK_N, w_desc, w1_desc, N,
                            HAS_BIAS, VEC)
    acc, acc1, _ = _tile_product(0, STEPS, pid, 1, a_desc, w_desc, w1_desc, a_ring, w_ring,
                                 w1_ring, ready, LAYOUT, LAYOUT1, TILES_N, BLOCK_N, STEPS,
                                 STAGES)
    for j in gl.static_range(STAGES):
        mbarrier.invalidate(ready.index(j))
    out_smem, out1_smem = _out_buffers(out_desc, out1_desc)
    fac_smem = _factor_buffer(w_desc)
    _stage_factors(factors, fac_smem, w1_desc, out_inv_scale, OUT_MODE, ACT)
    _store_parts(acc, acc1, pid, TILES_N, BLOCK_N, out_desc, out1_desc, out_smem, out1_smem,
                 fac_smem, out_inv_scale, HAS_BIAS, ACT, OUT_MODE, FAST_TANH, LOW_CLAMP,
                 LAYOUT, LAYOUT1)
    tma.store_wait(pendings=0)


@gluon.jit
def _rings(a_desc, w_desc, w1_desc, STAGES: gl.constexpr):
    """The STAGES-slot rings of A and W tiles (W in its one or two column parts; w1_ring is
    w_ring where there is no second) and their copy barriers."""
    BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
    BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
    BLOCK_N0: gl.constexpr = w_desc.block_type.shape[0]
    a_ring = gl.allocate_shared_memory(gl.int8, [STAGES, BLOCK_M, BLOCK_K], a_desc.layout)
    w_ring = gl.allocate_shared_memory(gl.int8, [STAGES, BLOCK_N0, BLOCK_K], w_desc.layout)
    if w1_desc is None:
        w1_ring = w_ring
    else:
        BLOCK_N1: gl.constexpr = w1_desc.block_type.shape[0]
        w1_ring = gl.allocate_shared_memory(gl.int8, [STAGES, BLOCK_N1, BLOCK_K],
                                            w1_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    return a_ring, w_ring, w1_ring, ready


@gluon.jit
def _factor_buffer(w_desc):
    """Four rows of the first column part's width, end to end: a tile's factors
    (_stage_factors)."""
    BLOCK_N0: gl.constexpr = w_desc.block_type.shape[0]
    return gl.allocate_shared_memory(gl.float32, [4 * BLOCK_N0],
                                     gl.SwizzledSharedLayout(1, 1, 1, order=[0]))


@gluon.jit
def _out_buffers(out_desc, out1_desc):
    out_smem = gl.allocate_shared_memory(out_desc.dtype, out_desc.block_type.shape,
                                         out_desc.layout)
    if out1_desc is None:
        out1_smem = out_smem
    else:
        out1_smem = gl.allocate_shared_memory(out1_desc.dtype, out1_desc.block_type.shape,
                                              out1_desc.layout)
    return out_smem, out1_smem


@gluon.jit
def _tile_factors(scales_ptr, bias_ptr, tile, TILES_N: gl.constexpr, BLOCK_N: gl.constexpr,
                  w_desc, w1_desc, N: gl.constexpr, HAS_BIAS: gl.constexpr, VEC: gl.constexpr):
    """The per-column factors and bias of tile `tile`'s one or two column parts, (scales,
    bias, scales1, bias1), loaded a few values a thread (VEC) before its K loop: the
    epilogue had loaded them in the accumulator's layout after it, one 4-byte load a
    column per thread each with its 64-bit address, the loads' latency in full view."""
    BLOCK_N0: gl.constexpr = w_desc.block_type.shape[0]
    off_n = (tile % TILES_N) * BLOCK_N
    sc, bi = _column_vectors(scales_ptr, bias_ptr, off_n, BLOCK_N0, N, HAS_BIAS, VEC)
    if w1_desc is None:
        sc1, bi1 = sc, bi
    else:
        BLOCK_N1: gl.constexpr = w1_desc.block_type.shape[0]
        sc1, bi1 = _column_vectors(scales_ptr, bias_ptr, off_n + BLOCK_N0, BLOCK_N1, N,
                                   HAS_BIAS, VEC)
    return sc, bi, sc1, bi1


@gluon.jit
def _column_vectors(scales_ptr, bias_ptr, off_n, BLOCK: gl.constexpr, N: gl.constexpr,
                    HAS_BIAS: gl.constexpr, VEC: gl.constexpr):
    """BLOCK columns' factors and bias from off_n (zeros past N), in layout VEC."""
    rn = off_n + gl.arange(0, BLOCK, layout=VEC)
    sc = gl.load(scales_ptr + rn, mask=rn < N, other=0.0)
    bi = gl.load(bias_ptr + rn, mask=rn < N, other=0.0) if HAS_BIAS else sc
    return sc, bi


@gluon.jit
def _stage_factors(factors, fac_smem, w1_desc, out_inv_scale, OUT_MODE: gl.constexpr,
                   ACT: gl.constexpr):
    """The tile's factors (_tile_factors) into shared memory, rows scales, bias, scales1,
    bias1, for the epilogue to read in the accumulator's layout: converted there at once
    they held 30-50 more registers a thread than the per-column loads (compiled for
    sm_90a); read from shared memory each comes as it is used. Called after the K loop:
    the loads had that long to arrive; the first barrier keeps the previous tile's
    epilogue reads before these writes. An int8 output with no activation or ReLU gets the
    output step folded into the factors and bias: one product an element fewer."""
    BLOCK_N0: gl.constexpr = fac_smem.shape[0] // 4
    FOLD: gl.constexpr = OUT_MODE == 3 and ACT != 6
    gl.thread_barrier()
    for i in gl.static_range(2):
        fac_smem.slice(i * BLOCK_N0, BLOCK_N0).store(
            factors[i] * out_inv_scale if FOLD else factors[i])
    if w1_desc is not None:
        BLOCK_N1: gl.constexpr = w1_desc.block_type.shape[0]
        for i in gl.static_range(2, 4):
            fac_smem.slice(i * BLOCK_N0, BLOCK_N1).store(
                factors[i] * out_inv_scale if FOLD else factors[i])
    gl.thread_barrier()


@gluon.jit
def _store_parts(acc, acc1, tile, TILES_N: gl.constexpr, BLOCK_N: gl.constexpr, out_desc,
                 out1_desc, out_smem, out1_smem, fac_smem, out_inv_scale,
                 HAS_BIAS: gl.constexpr, ACT: gl.constexpr, OUT_MODE: gl.constexpr,
                 FAST_TANH: gl.constexpr, LOW_CLAMP: gl.constexpr, LAYOUT: gl.constexpr,
                 LAYOUT1: gl.constexpr):
    """The epilogue of tile `tile`, part by part (_store_tile), with its factors staged in
    fac_smem (_stage_factors)."""
    BLOCK_M: gl.constexpr = out_desc.block_type.shape[0]
    BLOCK_N0: gl.constexpr = out_desc.block_type.shape[1]
    off_m = (tile // TILES_N) * BLOCK_M
    off_n = (tile % TILES_N) * BLOCK_N
    _store_tile(acc, off_m, off_n, out_desc, out_smem, fac_smem.slice(0, BLOCK_N0),
                fac_smem.slice(BLOCK_N0, BLOCK_N0), out_inv_scale, HAS_BIAS, ACT, OUT_MODE,
                FAST_TANH, LOW_CLAMP, LAYOUT)
    if out1_desc is not None:
        BLOCK_N1: gl.constexpr = out1_desc.block_type.shape[1]
        _store_tile(acc1, off_m, off_n + BLOCK_N0, out1_desc, out1_smem,
                    fac_smem.slice(2 * BLOCK_N0, BLOCK_N1), fac_smem.slice(3 * BLOCK_N0, BLOCK_N1),
                    out_inv_scale, HAS_BIAS, ACT, OUT_MODE, FAST_TANH, LOW_CLAMP, LAYOUT1)


@gluon.jit
def _store_tile(acc, off_m, off_n, out_desc, out_smem, sc_smem, bi_smem, out_inv_scale,
                HAS_BIAS: gl.constexpr, ACT: gl.constexpr, OUT_MODE: gl.constexpr,
                FAST_TANH: gl.constexpr, LOW_CLAMP: gl.constexpr, LAYOUT: gl.constexpr):
    """The epilogue of one tile (or column part), written to out_smem and from there by TMA
    (not waited for: the caller waits before out_smem is written again). sc_smem, bi_smem:
    its columns' factors and bias in shared memory."""
    columns: gl.constexpr = gl.SliceLayout(0, LAYOUT)
    y = acc.to(gl.float32) * gl.expand_dims(sc_smem.load(columns), 0)
    if HAS_BIAS:
        y = y + gl.expand_dims(bi_smem.load(columns), 0)
    if ACT == 1:
        y = gl.maximum(y, 0.0)
    elif ACT == 6:
        y = _gelu_tanh(y, FAST_TANH, out_inv_scale if OUT_MODE == 3 else 1.0)
    if OUT_MODE == 3:  # y in output steps (_stage_factors, _gelu_tanh): saturated, then
        # rounded half to even by adding 1.5 * 2**23
        q = gl.minimum(gl.maximum(y, -128.0) if LOW_CLAMP else y, 127.0)
        out = ((q + 12582912.0).to(gl.int32, bitcast=True) - 0x4B400000).to(gl.int8)
    else:
        out = y.to(gl.float16)
    out_smem.store(out)
    fence_async_shared()
    tma.async_copy_shared_to_global(out_desc, [off_m, off_n], out_smem)


@gluon.jit
def _issue_step(step, pid, programs, a_desc, w_desc, w1_desc, a_ring, w_ring, w1_ring, ready,
                TILES_N: gl.constexpr, BLOCK_N: gl.constexpr, STEPS: gl.constexpr,
                STAGES: gl.constexpr):
    """The TMA copies of a program's flat K step `step` (its tile step // STEPS, among the
    program's tiles pid, pid + programs, ...), into ring slot step % STAGES."""
    BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
    BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
    BLOCK_N0: gl.constexpr = w_desc.block_type.shape[0]
    tile = pid + (step // STEPS) * programs
    k = (step % STEPS) * BLOCK_K
    slot = step % STAGES
    off_n = (tile % TILES_N) * BLOCK_N
    if w1_desc is None:
        mbarrier.expect(ready.index(slot), a_desc.block_type.nbytes + w_desc.block_type.nbytes)
    else:
        mbarrier.expect(ready.index(slot), a_desc.block_type.nbytes + w_desc.block_type.nbytes
                        + w1_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(w1_desc, [off_n + BLOCK_N0, k], ready.index(slot),
                                        w1_ring.index(slot))
    tma.async_copy_global_to_shared(a_desc, [(tile // TILES_N) * BLOCK_M, k],
                                    ready.index(slot), a_ring.index(slot))
    tma.async_copy_global_to_shared(w_desc, [off_n, k], ready.index(slot), w_ring.index(slot))


@gluon.jit
def _start_ring(total, pid, programs, a_desc, w_desc, w1_desc, a_ring, w_ring, w1_ring, ready,
                TILES_N: gl.constexpr, BLOCK_N: gl.constexpr, STEPS: gl.constexpr,
                STAGES: gl.constexpr):
    """The ring's barriers initialized, and the copies of the first STAGES - 1 of the
    program's `total` flat K steps issued."""
    for j in gl.static_range(STAGES):
        mbarrier.init(ready.index(j), count=1)
    fence_async_shared()  # the barriers initialized before the copy unit uses them
    for j in gl.static_range(STAGES - 1):
        if j < total:
            _issue_step(j, pid, programs, a_desc, w_desc, w1_desc, a_ring, w_ring, w1_ring,
                        ready, TILES_N, BLOCK_N, STEPS, STAGES)


@gluon.jit
def _tile_product(step, total, pid, programs, a_desc, w_desc, w1_desc, a_ring, w_ring,
                  w1_ring, ready, LAYOUT: gl.constexpr, LAYOUT1: gl.constexpr,
                  TILES_N: gl.constexpr, BLOCK_N: gl.constexpr, STEPS: gl.constexpr,
                  STAGES: gl.constexpr):
    """One tile's K loop from the program's flat step `step`: per step one asynchronous
    MMA per column part, left in flight by a wait that retires the previous step's,
    whose ring slot then takes the copy STAGES - 1 steps ahead (into the next tile where
    the steps run over). Returns the finished int32 accumulators (the second is the first
    where the tile has one part) and the next flat step."""
    BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
    BLOCK_N0: gl.constexpr = w_desc.block_type.shape[0]
    acc = gl.zeros((BLOCK_M, BLOCK_N0), dtype=gl.int32, layout=LAYOUT)
    if w1_desc is None:
        acc1 = acc
    else:
        BLOCK_N1: gl.constexpr = w1_desc.block_type.shape[0]
        acc1 = gl.zeros((BLOCK_M, BLOCK_N1), dtype=gl.int32, layout=LAYOUT1)
    step = gl.to_tensor(step)  # a run-time counter also where the caller passes a constant
    for _ in range(STEPS):
        slot = step % STAGES
        mbarrier.wait(ready.index(slot), phase=(step // STAGES) & 1)
        acc = warpgroup_mma(a_ring.index(slot), w_ring.index(slot).permute((1, 0)), acc,
                            is_async=True)
        if w1_desc is None:
            acc, _, _ = warpgroup_mma_wait(num_outstanding=1, deps=(
                acc, a_ring.index(slot), w_ring.index(slot)))
        else:
            # each MMA its own group: leaving two in flight retires the previous step's
            acc1 = warpgroup_mma(a_ring.index(slot), w1_ring.index(slot).permute((1, 0)),
                                 acc1, is_async=True)
            acc, acc1, _, _, _ = warpgroup_mma_wait(num_outstanding=2, deps=(
                acc, acc1, a_ring.index(slot), w_ring.index(slot), w1_ring.index(slot)))
        if step + STAGES - 1 < total:
            _issue_step(step + STAGES - 1, pid, programs, a_desc, w_desc, w1_desc, a_ring,
                        w_ring, w1_ring, ready, TILES_N, BLOCK_N, STEPS, STAGES)
        step += 1
    if w1_desc is None:
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
        acc1 = acc
    else:
        acc, acc1 = warpgroup_mma_wait(num_outstanding=0, deps=(acc, acc1))
    return acc, acc1, step


@gluon.jit
def _qgemm_gluon_persistent_kernel(a_desc, w_desc, w1_desc, out_desc, out1_desc, scales_ptr,
                                   bias_ptr, out_inv_scale, M, N: gl.constexpr,
                                   K: gl.constexpr, BLOCK_N: gl.constexpr, HAS_BIAS: gl.constexpr,
                                   ACT: gl.constexpr, OUT_MODE: gl.constexpr,
                                   FAST_TANH: gl.constexpr, LOW_CLAMP: gl.constexpr,
                                   STAGES: gl.constexpr,
                                   LAYOUT: gl.constexpr, LAYOUT1: gl.constexpr,
                                   VEC: gl.constexpr, PDL: gl.constexpr):
    """_qgemm_gluon_kernel as one program an SM (at most), each walking every programs-th
    tile (a run-time count, so that no tile count compiles a kernel of its own), its K
    steps numbered across its tiles: the copies run STAGES - 1 steps ahead over tile
    boundaries, so the next tile's first operands arrive while this one's epilogue runs,
    and its TMA store is waited for only before the next one."""
    _wait_for_inputs(PDL)
    BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
    BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
    STEPS: gl.constexpr = (K + BLOCK_K - 1) // BLOCK_K
    TILES_N: gl.constexpr = (N + BLOCK_N - 1) // BLOCK_N
    pid = gl.program_id(0)
    programs = gl.num_programs(0)
    my_tiles = (gl.cdiv(M, BLOCK_M) * TILES_N - pid + programs - 1) // programs
    total = my_tiles * STEPS

    a_ring, w_ring, w1_ring, ready = _rings(a_desc, w_desc, w1_desc, STAGES)
    out_smem, out1_smem = _out_buffers(out_desc, out1_desc)
    fac_smem = _factor_buffer(w_desc)
    _start_ring(total, pid, programs, a_desc, w_desc, w1_desc, a_ring, w_ring, w1_ring, ready,
                TILES_N, BLOCK_N, STEPS, STAGES)
    step = 0
    for t in range(my_tiles):
        factors = _tile_factors(scales_ptr, bias_ptr, pid + t * programs, TILES_N, BLOCK_N,
                                w_desc, w1_desc, N, HAS_BIAS, VEC)
        acc, acc1, step = _tile_product(step, total, pid, programs, a_desc, w_desc, w1_desc,
                                        a_ring, w_ring, w1_ring, ready, LAYOUT, LAYOUT1,
                                        TILES_N, BLOCK_N, STEPS, STAGES)
        _stage_factors(factors, fac_smem, w1_desc, out_inv_scale, OUT_MODE, ACT)
        tma.store_wait(pendings=0)  # the previous tile's stores have read out_smem
        _store_parts(acc, acc1, pid + t * programs, TILES_N, BLOCK_N, out_desc, out1_desc,
                     out_smem, out1_smem, fac_smem, out_inv_scale, HAS_BIAS, ACT, OUT_MODE,
                     FAST_TANH, LOW_CLAMP, LAYOUT, LAYOUT1)
    tma.store_wait(pendings=0)
    for j in gl.static_range(STAGES):
        mbarrier.invalidate(ready.index(j))


def supported(epi: dict, n: int, k: int) -> bool:
    """The layers this kernel takes: int8 (zero point 0) or fp16 outputs whose rows are
    whole 16-byte lines, no residual, none/ReLU/tanh-form GELU, K in whole 32-byte steps."""
    out_mode = OUT_MODES[epi["out_type"]] if epi.get("out_scale") else OUT_MODES.get(
        epi.get("out_dtype", "fp32"))
    size = 1 if out_mode == OUT_MODES["int8"] else 2
    return (out_mode in _OUT and not epi.get("out_zero_point") and k % 32 == 0
            and (n * size) % 16 == 0 and not epi.get("residual_scale")
            and epi.get("activation", "") in ("", "Relu", "GeluTanh"))


# The tanh-form GELU is -0.170 at its least (y = -0.75); 0.2 leaves room for the tanh
# instruction's error. Above it no int8 output needs the clamp at -128 (a ReLU's none).
GELU_LEAST = 0.2


def low_clamp(act: int, out_inv_scale: float) -> bool:
    """Whether an int8 output of this activation and inverse step can fall below -128."""
    return not (act == ACTIVATIONS["Relu"]
                or (act == ACTIVATIONS["GeluTanh"] and GELU_LEAST * out_inv_scale < 128))


def qgemm_gluon(a: torch.Tensor, w: torch.Tensor, scales: torch.Tensor,
                bias: torch.Tensor | None, epi: dict, config: tuple) -> torch.Tensor:
    """a [M, K] int8 (rows 16-byte aligned), w [N, K] int8; config (BLOCK_M, BLOCK_N,
    BLOCK_K, warps, stages); epi as QGemm's, within supported()."""
    check_config(config)
    block_m, block_n, block_k, warps, stages = config[:5]
    m, k = a.shape
    n = w.shape[0]
    if not supported(epi, n, k):
        raise ValueError(f"qgemm_gluon: epilogue {epi} with N {n}, K {k} is not one it takes")
    out_mode = OUT_MODES[epi["out_type"]] if epi.get("out_scale") else OUT_MODES[
        epi.get("out_dtype", "fp32")]
    out_torch, out_gl = _OUT[out_mode]
    out = torch.empty((m, n), dtype=out_torch, device=a.device)
    n0, n1 = column_parts(block_n)

    def descriptor(t, block, dtype):
        return TensorDescriptor(t, list(t.shape), list(t.stride()), block,
                                gl.NVMMASharedLayout.get_default_for(block, dtype))

    args = (descriptor(a, [block_m, block_k], gl.int8), descriptor(w, [n0, block_k], gl.int8),
            descriptor(w, [n1, block_k], gl.int8) if n1 else None,
            descriptor(out, [block_m, n0], out_gl),
            descriptor(out, [block_m, n1], out_gl) if n1 else None, scales,
            bias if bias is not None else scales, float(epi.get("out_inv_scale", 1.0)))
    act, inv = ACTIVATIONS[epi.get("activation", "")], float(epi.get("out_inv_scale", 1.0))
    meta = dict(N=n, K=k, BLOCK_N=block_n, HAS_BIAS=bias is not None, ACT=act,
                OUT_MODE=out_mode, FAST_TANH=bool(epi.get("fast_tanh")),
                LOW_CLAMP=low_clamp(act, inv), STAGES=stages, **_layouts(block_n, warps),
                num_warps=warps, **_pdl.launch(a.device))
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    if len(config) > 5 and config[5]:
        programs = min(tiles, torch.cuda.get_device_properties(a.device).multi_processor_count)
        _qgemm_gluon_persistent_kernel[(programs,)](*args, m, **meta)
    else:
        _qgemm_gluon_kernel[(tiles,)](*args, **meta)
    return out


def _layouts(block_n: int, warps: int) -> dict:
    """LAYOUT and LAYOUT1, the accumulators' layouts of the tile's column parts (LAYOUT1 is
    LAYOUT's where there is no second part), and VEC, the column factors' as loaded."""
    n0, n1 = column_parts(block_n)
    return {"LAYOUT": mma_layout(n0, warps), "LAYOUT1": mma_layout(n1 or n0, warps),
            "VEC": gl.BlockedLayout([1], [32], [warps], [0])}


def compile_for_hopper_offline(config: tuple, const: dict, fast_tanh: bool = False):
    """The kernel for config and the epilogue constants (N, K, HAS_BIAS, ACT, OUT_MODE)
    compiled for sm_90a without a GPU (kiln.kernels.triton._sm90)."""
    from kiln.kernels.triton._sm90 import compile_for_hopper

    check_config(config)
    block_m, block_n, block_k, warps, stages = config[:5]
    persistent = len(config) > 5 and config[5]
    kernel = _qgemm_gluon_persistent_kernel if persistent else _qgemm_gluon_kernel
    out_gl = _OUT[const["OUT_MODE"]][1]

    n0, n1 = column_parts(block_n)

    def desc(shape, dtype, name):
        layout = gl.NVMMASharedLayout.get_default_for(shape, dtype)
        return f"tensordesc<{name}[{shape[0]}, {shape[1]}],{layout!r}>"

    out_t = "i8" if out_gl == gl.int8 else "fp16"
    sig = {"a_desc": desc([block_m, block_k], gl.int8, "i8"),
           "w_desc": desc([n0, block_k], gl.int8, "i8"),
           "out_desc": desc([block_m, n0], out_gl, out_t),
           "scales_ptr": "*fp32", "bias_ptr": "*fp32", "out_inv_scale": "fp32"}
    constants = {**const, "BLOCK_N": block_n, "FAST_TANH": fast_tanh, "STAGES": stages,
                 "LOW_CLAMP": low_clamp(const["ACT"], 64.0),  # BERT's FC1 output step: 1/64
                 **_layouts(block_n, warps), "PDL": True}
    if n1:
        sig.update(w1_desc=desc([n1, block_k], gl.int8, "i8"),
                   out1_desc=desc([block_m, n1], out_gl, out_t))
    else:
        constants.update(w1_desc=None, out1_desc=None)
    if persistent:
        sig["M"] = "i32"
    sig.update({name: "constexpr" for name in constants})
    return compile_for_hopper(kernel, {p: sig[p] for p in kernel.arg_names}, constants,
                              warps, stages)
