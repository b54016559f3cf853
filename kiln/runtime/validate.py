"""Input checks: name, type, rank and shape (against the engine's profiles), before any work.

Each error names the input, what was given and what the engine accepts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from kiln.engine.engine import Engine, IOSpec
from kiln.errors import InputError
from kiln.ir import DType
from kiln.ops.tensors import CARRIERS, kiln_dtype, torch_dtype


def _dtype_of(value: Any) -> DType | None:
    if isinstance(value, torch.Tensor):
        return kiln_dtype(value.dtype)
    if isinstance(value, np.ndarray | np.generic):
        try:
            return DType.from_numpy(value.dtype)
        except ValueError:
            return None
    return None


def check_inputs(engine: Engine, inputs: Mapping[str, Any],
                 known: tuple[dict[str, IOSpec], list] | None = None) -> None:
    """Raises InputError naming the first problem. `known`: the engine's input specs by
    name and its profiles, worked out once by a caller that checks every run (they are
    parsed from the plan on each access)."""
    specs, profiles, accepted = known if known is not None else input_facts(engine)
    if not isinstance(inputs, Mapping):
        raise InputError(
            f"inputs must be a mapping of input name to array, got a {type(inputs).__name__}; "
            f"the engine's inputs are {', '.join(_describe(s) for s in specs.values())}",
            hint=f"pass {{{', '.join(repr(n) + ': ...' for n in specs)}}}")
    unknown = [name for name in inputs if name not in specs]
    if unknown:
        raise InputError(
            f"unknown input(s) {', '.join(map(repr, unknown))}; the engine's inputs are "
            f"{', '.join(_describe(s) for s in specs.values())}")
    missing = [name for name in specs if name not in inputs]
    if missing:
        raise InputError(
            f"missing input(s) {', '.join(map(repr, missing))}; the engine needs "
            f"{', '.join(_describe(specs[n]) for n in missing)}")
    shapes = {}
    for name, value in inputs.items():
        spec = specs[name]
        if spec.kind == "sequence":
            _check_sequence(spec, value)
        elif spec.kind == "optional":
            _check_optional(spec, value)
        elif spec.kind == "tensor":
            shapes[name] = _check_one(spec, value)
    _check_profiles(profiles, shapes, accepted)


def input_facts(engine: Engine) -> tuple[dict[str, IOSpec], list, set]:
    """The engine's input specs by name, its optimization profiles, and an empty memo of
    the input shape sets found inside them."""
    return {spec.name: spec for spec in engine.inputs}, engine.profiles, set()


def _describe(spec: IOSpec) -> str:
    dtype = spec.dtype.short if spec.dtype else "?"
    return f"{spec.name!r} ({dtype}, {spec.shape_text()})"


def _check_one(spec: IOSpec, value: Any) -> tuple[int, ...]:
    if not isinstance(value, np.ndarray | np.generic | torch.Tensor):
        raise InputError(f"input {spec.name!r} is a {type(value).__name__}; pass a numpy array "
                         f"or torch tensor of {_describe(spec)}")
    dtype = _dtype_of(value)
    # torch has no 4- or 2-bit tensors: those inputs come as their carrier (int4 as int8)
    carried = isinstance(value, torch.Tensor) and CARRIERS.get(spec.dtype) == value.dtype
    if spec.dtype is not None and dtype is not spec.dtype and not carried:
        given = dtype.short if dtype else str(value.dtype)
        raise InputError(
            f"input {spec.name!r} has dtype {given}; the engine takes {spec.dtype.short}",
            hint=_convert_hint(spec.dtype, value))
    shape = tuple(value.shape)  # ints: numpy's and torch's shapes hold plain ints
    if spec.shape is not None:
        if len(shape) != len(spec.shape):
            raise InputError(
                f"input {spec.name!r} has rank {len(shape)} (shape {_text(shape)}); the engine "
                f"takes rank {len(spec.shape)} ({spec.shape_text()})")
        for axis, (size, want) in enumerate(zip(shape, spec.shape)):
            if isinstance(want, int) and size != want:
                raise InputError(
                    f"input {spec.name!r} has shape {_text(shape)}; axis {axis} must be {want} "
                    f"(the engine takes {spec.shape_text()})")
    return shape


def _convert_hint(dtype: DType, value: Any) -> str | None:
    if isinstance(value, torch.Tensor):
        try:
            return f"convert it first, e.g. x.to({torch_dtype(dtype)})"
        except TypeError:  # no torch equivalent (strings, int4)
            return None
    if dtype.numpy is None or dtype is DType.STRING:
        return None
    return f"convert it first, e.g. x.astype(np.{np.dtype(dtype.numpy).name})"


def _check_sequence(spec: IOSpec, value: Any) -> None:
    if not isinstance(value, list):
        raise InputError(f"input {spec.name!r} is a sequence; pass a Python list of numpy "
                         f"arrays or torch tensors of {_describe(spec)}, not a "
                         f"{type(value).__name__}")
    for index, item in enumerate(value):
        _check_element(spec, item, f"{spec.name!r}[{index}]")


def _check_optional(spec: IOSpec, value: Any) -> None:
    """An optional input takes None (empty), a list (an optional sequence) or a tensor."""
    if value is None:
        return
    if isinstance(value, list):
        _check_sequence(spec, value)
    else:
        _check_element(spec, value, repr(spec.name))


def _check_element(spec: IOSpec, value: Any, label: str) -> None:
    """dtype and rank of a tensor inside a sequence or optional (their dims may vary)."""
    if not isinstance(value, np.ndarray | np.generic | torch.Tensor):
        raise InputError(f"input {label} is a {type(value).__name__}; pass a numpy array or "
                         f"torch tensor of {_describe(spec)}")
    dtype = _dtype_of(value)
    if spec.dtype is not None and dtype is not spec.dtype:
        given = dtype.short if dtype else str(value.dtype)
        raise InputError(f"input {label} has dtype {given}; the engine takes {spec.dtype.short}")
    if spec.shape is not None and len(value.shape) != len(spec.shape):
        raise InputError(f"input {label} has rank {len(value.shape)} (shape "
                         f"{_text(tuple(value.shape))}); the engine takes rank {len(spec.shape)} "
                         f"({spec.shape_text()})")


_ACCEPTED_LIMIT = 64  # shape sets remembered per execution context as inside a profile


def _check_profiles(profiles: list, shapes: dict[str, tuple[int, ...]],
                    accepted: set | None = None) -> None:
    """`accepted`: shape sets already found inside a profile (a run's shapes mostly repeat)."""
    if not profiles:
        return
    key = tuple(shapes.items())
    if accepted is not None and key in accepted:
        return
    reasons = [p.accepts(shapes) for p in profiles]
    if any(r is None for r in reasons):
        if accepted is not None and len(accepted) < _ACCEPTED_LIMIT:
            accepted.add(key)
        return
    given = ", ".join(f"{n} {_text(s)}" for n, s in shapes.items())
    ranges = "; ".join(
        f"profile {i} takes " + ", ".join(
            f"{n} {' x '.join(d.text() for d in dims) or 'scalar'}" for n, dims in p.dims.items())
        + f" ({reason})" for i, (p, reason) in enumerate(zip(profiles, reasons)))
    raise InputError(f"input shapes {given} are outside every optimization profile of the "
                     f"engine: {ranges}",
                     hint="pass shapes inside a profile, or rebuild with --minShapes/--optShapes/"
                     "--maxShapes that cover them")


def _text(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "scalar"
