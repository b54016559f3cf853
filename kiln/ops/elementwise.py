"""Element-wise math with numpy broadcasting: arithmetic, comparisons, logic, unary math."""

from __future__ import annotations

import numpy as np
import torch

from kiln.ops._common import narrow, widen
from kiln.ops.registry import register


def _binary(op_type: str, fn, since: int = 7) -> None:
    def impl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        dtype, (x, y) = widen(a, b)
        return narrow(fn(x, y), dtype)

    impl.__name__ = op_type.lower()
    register(op_type, since)(impl)


def _int_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.is_floating_point() or a.is_complex():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


_binary("Add", torch.add)
_binary("Sub", torch.sub)
_binary("Mul", torch.mul)
_binary("Div", _int_div)


@register("Pow", 7)
def pow_(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # ONNX: the result has the base's type, whatever the exponent's
    if not x.is_floating_point() and y.is_floating_point():
        return torch.pow(x.to(torch.float64), y.to(torch.float64)).to(x.dtype)
    if not x.is_floating_point():
        return torch.pow(x, y.to(x.dtype))
    return torch.pow(x, y.to(x.dtype))


@register("Mod", 10)
def mod(a: torch.Tensor, b: torch.Tensor, *, fmod: int = 0) -> torch.Tensor:
    dtype, (x, y) = widen(a, b)
    if fmod:
        return narrow(torch.fmod(x, y), dtype)
    result = torch.remainder(x, y)
    if result.is_floating_point():  # numpy's mod: a zero result takes the divisor's sign
        result = torch.where(result == 0, torch.copysign(torch.zeros_like(result), y), result)
    return narrow(result, dtype)


def _variadic(op_type: str, fn, since: int = 8) -> None:
    def impl(*inputs: torch.Tensor) -> torch.Tensor:
        dtype, values = widen(*inputs)
        result = values[0]
        for value in values[1:]:
            result = fn(result, value)
        return narrow(result, dtype)

    impl.__name__ = op_type.lower()
    register(op_type, since)(impl)


_variadic("Sum", torch.add)
_variadic("Max", torch.maximum)
_variadic("Min", torch.minimum)


@register("Mean", 8)
def mean(*inputs: torch.Tensor) -> torch.Tensor:
    total = inputs[0]
    for value in inputs[1:]:
        total = total + value
    return total / len(inputs)


def _compare(op_type: str, fn, since: int = 7) -> None:
    def impl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):  # string tensors
            return _compare_strings(op_type, a, b)
        _, (x, y) = widen(a, b)
        return fn(x, y)

    impl.__name__ = op_type.lower()
    register(op_type, since)(impl)


def _compare_strings(op_type: str, a: np.ndarray, b: np.ndarray) -> torch.Tensor:
    if op_type != "Equal":
        raise TypeError(f"{op_type} does not take string tensors (only Equal does)")
    return torch.from_numpy(np.equal(np.asarray(a, dtype=object), np.asarray(b, dtype=object))
                            .astype(bool))


_compare("Equal", torch.eq)
_compare("Greater", torch.gt)
_compare("Less", torch.lt)
_compare("GreaterOrEqual", torch.ge, 12)
_compare("LessOrEqual", torch.le, 12)
_binary("And", torch.logical_and)
_binary("Or", torch.logical_or)
_binary("Xor", torch.logical_xor)
_binary("BitwiseAnd", torch.bitwise_and, 18)
_binary("BitwiseOr", torch.bitwise_or, 18)
_binary("BitwiseXor", torch.bitwise_xor, 18)


@register("Not", 1)
def not_(x: torch.Tensor) -> torch.Tensor:
    return torch.logical_not(x)


@register("BitwiseNot", 18)
def bitwise_not(x: torch.Tensor) -> torch.Tensor:
    signed = _SIGNED_TWIN.get(x.dtype)
    if signed is not None:  # torch lacks the kernel for uint16/32/64; the bits are the same
        return torch.bitwise_not(x.view(signed)).view(x.dtype)
    return torch.bitwise_not(x)


_SIGNED_TWIN = {torch.uint16: torch.int16, torch.uint32: torch.int32, torch.uint64: torch.int64}


@register("BitShift", 11)
def bit_shift(x: torch.Tensor, y: torch.Tensor, *, direction: str = "LEFT") -> torch.Tensor:
    dtype, (a, b) = widen(x, y)
    if a.dtype == torch.uint8:
        a, b = a.to(torch.int64), b.to(torch.int64)
    result = a << b if direction == "LEFT" else a >> b
    bits = torch.iinfo(dtype).bits if dtype.is_floating_point is False else 64
    if bits < 64:
        result = result & ((1 << bits) - 1)
    return result.to(dtype)


@register("Where", 9)
def where(condition: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    dtype, (a, b) = widen(x, y)
    return narrow(torch.where(condition.to(torch.bool), a, b), dtype)


def _unary(op_type: str, fn, since: int = 6) -> None:
    def impl(x: torch.Tensor) -> torch.Tensor:
        dtype, (value,) = widen(x)
        return narrow(fn(value), dtype)

    impl.__name__ = op_type.lower()
    register(op_type, since)(impl)


_unary("Neg", torch.neg)
_unary("Abs", torch.abs)
_unary("Sqrt", torch.sqrt)
_unary("Reciprocal", torch.reciprocal)
_unary("Exp", torch.exp)
_unary("Log", torch.log)
_unary("Floor", torch.floor)
_unary("Ceil", torch.ceil)
_unary("Round", torch.round, 11)  # torch rounds half to even, as ONNX asks
_unary("Sign", torch.sign, 9)
_unary("Sin", torch.sin, 7)
_unary("Cos", torch.cos, 7)
_unary("Tan", torch.tan, 7)
_unary("Asin", torch.asin, 7)
_unary("Acos", torch.acos, 7)
_unary("Atan", torch.atan, 7)
_unary("Sinh", torch.sinh, 9)
_unary("Cosh", torch.cosh, 9)
_unary("Asinh", torch.asinh, 9)
_unary("Acosh", torch.acosh, 9)
_unary("Atanh", torch.atanh, 9)
_unary("Erf", torch.erf, 9)


@register("IsNaN", 9)
def is_nan(x: torch.Tensor) -> torch.Tensor:
    return torch.isnan(x)


@register("IsInf", 10)
def is_inf(x: torch.Tensor, *, detect_negative: int = 1, detect_positive: int = 1) -> torch.Tensor:
    if detect_negative and detect_positive:
        return torch.isinf(x)
    if detect_negative:
        return torch.isneginf(x)
    if detect_positive:
        return torch.isposinf(x)
    return torch.zeros_like(x, dtype=torch.bool)


@register("Clip", 6)
def clip_6(x: torch.Tensor, *, min: float = -3.4028234663852886e38,
           max: float = 3.4028234663852886e38) -> torch.Tensor:
    return torch.clamp(x, min, max)


@register("Clip", 11)
def clip(x: torch.Tensor, lo: torch.Tensor | None = None,
         hi: torch.Tensor | None = None) -> torch.Tensor:
    dtype, (value,) = widen(x)
    if lo is not None:
        value = torch.maximum(value, lo.to(value.dtype))
    if hi is not None:
        value = torch.minimum(value, hi.to(value.dtype))
    return narrow(value, dtype)
