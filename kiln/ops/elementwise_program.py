"""Element-wise programs: what a `kiln.Elementwise` node computes, written once for both its
torch reference and its generated Triton kernel.

A program is a list of instructions `[op, args, params]`; an argument is `"i<k>"` (the
node's k-th input), `"t<k>"` (the k-th instruction's result) or a number. The last
instruction is the result. Everything is computed in float32 and cast to the output type
at the end, in the reference and in the kernel alike.

Each op has a torch function and a Triton expression template over its argument names
(`{0}`, `{1}`) and parameters (`{p0}`, `{p1}`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ElementwiseOp:
    arity: int
    torch_fn: Callable[..., torch.Tensor]
    triton: str


OPS: dict[str, ElementwiseOp] = {
    "Add": ElementwiseOp(2, lambda a, b: a + b, "({0} + {1})"),
    "Sub": ElementwiseOp(2, lambda a, b: a - b, "({0} - {1})"),
    "Mul": ElementwiseOp(2, lambda a, b: a * b, "({0} * {1})"),
    "Div": ElementwiseOp(2, lambda a, b: a / b, "({0} / {1})"),
    "Max": ElementwiseOp(2, torch.maximum, "tl.maximum({0}, {1})"),
    "Min": ElementwiseOp(2, torch.minimum, "tl.minimum({0}, {1})"),
    "PRelu": ElementwiseOp(2, lambda x, s: torch.where(x < 0, x * s, x),
                           "tl.where({0} < 0, {0} * {1}, {0})"),
    "Neg": ElementwiseOp(1, torch.neg, "(-{0})"),
    "Abs": ElementwiseOp(1, torch.abs, "tl.abs({0})"),
    "Sqrt": ElementwiseOp(1, torch.sqrt, "tl.sqrt({0})"),
    "Reciprocal": ElementwiseOp(1, torch.reciprocal, "(1.0 / {0})"),
    "Exp": ElementwiseOp(1, torch.exp, "tl.exp({0})"),
    "Log": ElementwiseOp(1, torch.log, "tl.log({0})"),
    "Erf": ElementwiseOp(1, torch.erf, "tl.erf({0})"),
    "Floor": ElementwiseOp(1, torch.floor, "tl.floor({0})"),
    "Ceil": ElementwiseOp(1, torch.ceil, "tl.ceil({0})"),
    "Relu": ElementwiseOp(1, torch.relu, "tl.maximum({0}, 0.0)"),
    "Sigmoid": ElementwiseOp(1, torch.sigmoid, "tl.sigmoid({0})"),
    "Tanh": ElementwiseOp(1, torch.tanh, "(2.0 * tl.sigmoid(2.0 * {0}) - 1.0)"),
    "Softplus": ElementwiseOp(1, F.softplus,
                              "tl.where({0} > 20.0, {0}, tl.log(1.0 + tl.exp({0})))"),
    "HardSwish": ElementwiseOp(1, F.hardswish,
                               "({0} * tl.minimum(tl.maximum({0} / 6.0 + 0.5, 0.0), 1.0))"),
    "LeakyRelu": ElementwiseOp(1, lambda x, a: F.leaky_relu(x, a),
                               "tl.where({0} >= 0, {0}, {0} * {p0})"),
    "Elu": ElementwiseOp(1, lambda x, a: torch.where(x > 0, x, a * torch.expm1(x)),
                         "tl.where({0} > 0, {0}, {p0} * (tl.exp({0}) - 1.0))"),
    "HardSigmoid": ElementwiseOp(1, lambda x, a, b: torch.clamp(x * a + b, 0, 1),
                                 "tl.minimum(tl.maximum({0} * {p0} + {p1}, 0.0), 1.0)"),
    "Clip": ElementwiseOp(1, lambda x, lo, hi: torch.clamp(x, lo, hi),
                          "tl.minimum(tl.maximum({0}, {p0}), {p1})"),
    "Square": ElementwiseOp(1, lambda x: x * x, "({0} * {0})"),
    "Cube": ElementwiseOp(1, lambda x: x * x * x, "({0} * {0} * {0})"),
    "GeluErf": ElementwiseOp(1, F.gelu, "(0.5 * {0} * (1.0 + tl.erf({0} * 0.7071067811865476)))"),
    "GeluTanh": ElementwiseOp(
        1, lambda x: F.gelu(x, approximate="tanh"),
        "(0.5 * {0} * (1.0 + (2.0 * tl.sigmoid(2.0 * 0.7978845608028654 * "
        "({0} + 0.044715 * {0} * {0} * {0})) - 1.0)))"),
}


def run_program(program: list, inputs: list[torch.Tensor]) -> torch.Tensor:
    """The reference: each instruction with torch, in float32."""
    out_dtype = next((t.dtype for t in inputs if t.is_floating_point()), torch.float32)
    work = [t.float() if t.dtype != torch.float64 else t for t in inputs]
    device = inputs[0].device
    temps: list[torch.Tensor] = []
    for op, args, params in program:
        values = [_operand(a, work, temps, device, op in SCALAR_OPERANDS) for a in args]
        temps.append(OPS[op].torch_fn(*values, *params))
    return temps[-1].to(out_dtype)


# ops whose torch function takes a Python number for either operand
SCALAR_OPERANDS = frozenset({"Add", "Sub", "Mul", "Div", "PRelu"})


def _operand(arg, inputs: list[torch.Tensor], temps: list[torch.Tensor],
             device: torch.device, scalar_ok: bool) -> torch.Tensor | float:
    if isinstance(arg, str):
        index = int(arg[1:])
        return inputs[index] if arg[0] == "i" else temps[index]
    if scalar_ok:
        return float(arg)
    # a fill kernel, not a copy from the host: CUDA-graph capture allows it
    return torch.full((), float(arg), dtype=torch.float32, device=device)
