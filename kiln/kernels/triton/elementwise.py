"""The `triton-elementwise` tactic: one generated Triton kernel per kiln.Elementwise program.

The kernel walks the output once; each input is addressed through its own strides (zero
along broadcast dims, so numpy broadcasting costs nothing) in up to four dims, computes
the program in float32 registers and stores in the output's type. Sources are generated
from `kiln.ops.elementwise_program.OPS`, written to a cache folder (Triton compiles from
source files) and imported once per program.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kiln.kernels.registry import LayerSpec, Tactic, Target, register_tactic
from kiln.kernels.triton import usable_on
from kiln.ops.elementwise_program import OPS, run_program

MAX_RANK = 4
BLOCK = 1024
_KERNELS: dict[str, Any] = {}


def kernel_source(program: list, n_inputs: int) -> str:
    ins = [f"in{k}" for k in range(n_inputs)]
    in_strides = [f"{name}_s{d}" for name in ins for d in range(MAX_RANK)]
    sizes = [f"size{d}" for d in range(MAX_RANK)]
    out_strides = [f"out_s{d}" for d in range(MAX_RANK)]
    params = ", ".join(["out", *ins, "n", *sizes, *out_strides, *in_strides])
    lines = [
        "import triton",
        "import triton.language as tl",
        "",
        "",
        "@triton.jit",
        f"def kernel({params}, BLOCK: tl.constexpr):",
        "    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)",
        "    mask = offs < n",
        "    rest = offs",
    ]
    for d in reversed(range(1, MAX_RANK)):  # logical index of each output element
        lines += [f"    d{d} = rest % size{d}", f"    rest = rest // size{d}"]
    lines.append("    d0 = rest")
    for k, name in enumerate(ins):
        offset = " + ".join(f"d{d} * {name}_s{d}" for d in range(MAX_RANK))
        lines.append(f"    x{k} = tl.load({name} + {offset}, mask=mask, other=0.0)"
                     ".to(tl.float32)")
    for j, (op, args, op_params) in enumerate(program):
        names = [_operand(a) for a in args]
        expr = OPS[op].triton.format(*names, **{f"p{i}": repr(float(p))
                                                for i, p in enumerate(op_params)})
        lines.append(f"    t{j} = {expr}")
    out_offset = " + ".join(f"d{d} * out_s{d}" for d in range(MAX_RANK))
    lines.append(f"    tl.store(out + {out_offset}, t{len(program) - 1}"
                 ".to(out.dtype.element_ty), mask=mask)")
    return "\n".join(lines) + "\n"


def _operand(arg: Any) -> str:
    if isinstance(arg, str):
        return ("x" if arg[0] == "i" else "t") + arg[1:]
    return f"({float(arg)!r})"


def compiled(program: list, n_inputs: int):
    source = kernel_source(program, n_inputs)
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    if digest not in _KERNELS:
        folder = Path(tempfile.gettempdir()) / "kiln-triton"
        folder.mkdir(exist_ok=True)
        path = folder / f"elementwise_{digest}.py"
        if not path.exists():  # a private temporary name: other processes may race here
            with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp",
                                             delete=False) as tmp:
                tmp.write(source)
            Path(tmp.name).replace(path)
        spec = importlib.util.spec_from_file_location(f"kiln_elementwise_{digest}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _KERNELS[digest] = module.kernel
    return _KERNELS[digest]


def launch(program: list, inputs: list[torch.Tensor]) -> torch.Tensor:
    shape = torch.broadcast_shapes(*(t.shape for t in inputs))
    if len(shape) > MAX_RANK:
        return run_program(program, inputs)
    dtype = next((t.dtype for t in inputs if t.is_floating_point()), torch.float32)
    full = next((t for t in inputs if t.shape == shape and t.dtype == dtype), None)
    out = torch.empty_like(full) if full is not None else torch.empty(
        shape, dtype=dtype, device=inputs[0].device)
    pad = MAX_RANK - len(shape)
    sizes = [1] * pad + list(shape)
    out_strides = [0] * pad + list(out.stride())
    strides: list[int] = []
    for t in inputs:
        strides += [0] * pad + list(t.expand(shape).stride())
    n = out.numel()
    if n == 0:
        return out
    kernel = compiled(program, len(inputs))
    grid = ((n + BLOCK - 1) // BLOCK,)
    kernel[grid](out, *inputs, n, *sizes, *out_strides, *strides, BLOCK=BLOCK)
    return out


@register_tactic
class TritonElementwise(Tactic):
    name = "triton-elementwise"
    ops = (("kiln", "Elementwise"),)
    priority = 10

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        return usable_on(target.device.type)

    def bind(self, layer: LayerSpec, tensors: dict[str, torch.Tensor],
             device: torch.device) -> Callable[..., Any]:
        program = layer.attrs["program"]
        json.dumps(program)  # programs are plain data; fail early on anything else

        def run(*inputs: torch.Tensor) -> torch.Tensor:
            return launch(program, list(inputs))

        return run


@register_tactic
class TorchElementwise(Tactic):
    """The same program with torch ops (one kernel per instruction): the CPU's choice."""

    name = "torch-elementwise"
    ops = (("kiln", "Elementwise"),)
    priority = 20

    def bind(self, layer: LayerSpec, tensors: dict[str, torch.Tensor],
             device: torch.device) -> Callable[..., Any]:
        program = layer.attrs["program"]
        return lambda *inputs: run_program(program, list(inputs))
