"""kiln's AVX-512 GEMM (gemm.c) from Python: the weight packed once into the kernel's
panels, the rows of the left operand given as element offsets, so a strided view or a
convolution's windows are read in place."""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

import torch

from kiln.kernels.native import function

PANEL = 32  # columns a panel (NR in gemm.c)
# done in the kernel's epilogue (code, default parameters)
ACTIVATIONS = {"": (0, []), "Relu": (1, []), "SiLU": (2, []), "HardSwish": (3, []),
               "Clip": (4, None), "HardSigmoid": (5, None), "LeakyRelu": (6, [0.01])}
ONE_TAP = torch.zeros(1, dtype=torch.int64)  # a plain GEMM: each row read from its offset
_ONE_TAP_AT = ONE_TAP.data_ptr()


def kernel() -> Callable[..., None] | None:
    pointer, integer = ctypes.c_void_p, ctypes.c_int64
    return function("gemm", "kiln_gemm", pointer, pointer, integer, pointer, pointer, pointer,
                    integer, integer, integer, pointer, pointer, integer, pointer, integer,
                    integer, ctypes.c_float, ctypes.c_float, integer)


def pack(weight_kn: torch.Tensor) -> torch.Tensor:
    """[K, N] float32 as the kernel's panels [ceil(N / 32), K, 32], zero beyond N."""
    k, n = weight_kn.shape
    padded = torch.zeros(k, -(-n // PANEL) * PANEL, dtype=torch.float32)
    padded[:, :n] = weight_kn
    return padded.view(k, -1, PANEL).transpose(0, 1).contiguous()


@functools.lru_cache(maxsize=64)
def offsets(sizes: tuple[int, ...], steps: tuple[int, ...]) -> torch.Tensor:
    """Element offsets of every index of a grid with these sizes and strides, row-major:
    the rows of a GEMM over a strided view, or a convolution's window origins or taps."""
    total = torch.zeros((), dtype=torch.int64)
    for size, step in zip(sizes, steps):
        total = total.unsqueeze(-1) + torch.arange(size, dtype=torch.int64) * step
    return total.reshape(-1).contiguous()


class PackedGemm:
    """act(a_rows @ W + bias) for a fixed weight, the activation in the epilogue where the
    kernel has it (`fused`), else left to the caller. The addresses of what it owns are
    taken once: a call costs its ctypes conversion and little else (small layers run in a
    few microseconds, and a model may have hundreds)."""

    def __init__(self, weight_kn: torch.Tensor, bias: torch.Tensor | None, activation: str,
                 params: list[float] | None = None):
        self.run_kernel = kernel()
        self.k, self.n = weight_kn.shape
        self.panels = pack(weight_kn.float())
        self.bias = None if bias is None else bias.float().reshape(-1).contiguous()
        code, defaults = ACTIVATIONS.get(activation, (0, None))
        params = list(params or defaults or [])
        self.fused = activation in ACTIVATIONS and (defaults is not None or len(params) >= 2)
        self.act = code if self.fused else 0
        self.params = (params + [0.0, 0.0])[:2]
        self.zero = torch.zeros(self.k, dtype=torch.float32)  # what a padding tap reads
        self._owned = (self.zero.data_ptr(), self.panels.data_ptr(),
                       None if self.bias is None else self.bias.data_ptr())

    def __call__(self, a: torch.Tensor, rows: torch.Tensor, taps: torch.Tensor, depth: int,
                 out: torch.Tensor, act: bool = True, step: int = 1) -> torch.Tensor:
        """out[i] = act(bias + sum_t a.flat[rows[i] + taps[t] + step * (0 .. depth)] @ W[t]):
        `out` is [len(rows), N] row-major; `a` must stay alive and unchanged meanwhile."""
        return self._run(a, rows, len(rows), taps, None, len(taps), depth, step, out, act)

    def over_table(self, a: torch.Tensor, table: torch.Tensor, depth: int, out: torch.Tensor,
                   act: bool = True) -> torch.Tensor:
        """The same with the offsets given per row and tap, table[i, t] (-1: zeros)."""
        return self._run(a, None, table.shape[0], None, table, table.shape[1], depth, 1, out,
                         act)

    def _run(self, a, rows, m, taps, table, count, depth, step, out, act) -> torch.Tensor:
        if a.dtype != torch.float32 or not out.is_contiguous() or count * depth != self.k:
            raise ValueError("kiln's native GEMM takes float32 rows of its weight's depth "
                             "into a dense output")
        zero, panels, bias = self._owned
        self.run_kernel(a.data_ptr(), None if rows is None else rows.data_ptr(), m,
                        _ONE_TAP_AT if taps is ONE_TAP else
                        None if taps is None else taps.data_ptr(),
                        None if table is None else table.data_ptr(), zero, count, depth,
                        step, panels, bias, self.n, out.data_ptr(), self.n,
                        self.act if act else 0, *self.params, torch.get_num_threads())
        return out


def row_offsets(a: torch.Tensor) -> torch.Tensor:
    """Offsets of the rows (all dims but the last) of a tensor, any strides."""
    return offsets(tuple(a.shape[:-1]), tuple(a.stride()[:-1]))

