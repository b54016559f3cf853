"""Optimization profiles: the range of shapes an engine accepts, and the shape it is tuned at.

Shapes are written as trtexec writes them: `input:1x3x224x224,mask:1x128` (quote a name
that holds a colon or comma: `'in:0':1x3`). A profile gives, per input, min/opt/max dims;
a dynamic dim with no profile accepts any size from 1 up and is tuned at
`DEFAULT_OPT_DIM` (1 for the first axis, the batch, and `DEFAULT_OPT_OTHER` for others).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from kiln.errors import KilnError
from kiln.ir import Value

DEFAULT_OPT_DIM = 1
DEFAULT_OPT_OTHER = 64


@dataclass(frozen=True)
class DimRange:
    min: int
    opt: int
    max: int | None  # None: unbounded

    def contains(self, size: int) -> bool:
        return size >= self.min and (self.max is None or size <= self.max)

    def text(self) -> str:
        if self.min == self.max:
            return str(self.min)
        return f"{self.min}..{'inf' if self.max is None else self.max}"


@dataclass
class Profile:
    """Per input, one DimRange per axis."""

    dims: dict[str, list[DimRange]] = field(default_factory=dict)

    def opt_shape(self, name: str) -> list[int]:
        return [d.opt for d in self.dims[name]]

    def min_shape(self, name: str) -> list[int]:
        return [d.min for d in self.dims[name]]

    def max_shape(self, name: str) -> list[int | None]:
        return [d.max for d in self.dims[name]]

    def accepts(self, shapes: dict[str, tuple[int, ...]]) -> str | None:
        """None when every shape fits, else why not (first mismatch)."""
        for name, ranges in self.dims.items():
            shape = shapes.get(name)
            if shape is None:
                continue
            if len(shape) != len(ranges):
                return f"{name} has rank {len(shape)}, the profile has rank {len(ranges)}"
            for axis, (size, rng) in enumerate(zip(shape, ranges)):
                if not rng.contains(size):
                    return f"{name} axis {axis} is {size}, the profile allows {rng.text()}"
        return None

    def to_json(self) -> dict:
        return {n: [[d.min, d.opt, d.max] for d in r] for n, r in self.dims.items()}

    @classmethod
    def from_json(cls, data: dict) -> Profile:
        return cls({n: [DimRange(int(a), int(b), None if c is None else int(c)) for a, b, c in r]
                    for n, r in data.items()})


def parse_shapes(text: str | None, flag: str = "--shapes") -> dict[str, list[int]]:
    """Parses `name:1x3x224x224,other:1x128` into {name: dims}."""
    if not text:
        return {}
    shapes: dict[str, list[int]] = {}
    for item in _split_outside_quotes(text, ",", flag):
        name, sep, dims = item.rpartition(":")
        name = name.strip().strip("'\"")
        if not sep or not name:
            raise KilnError(f"{flag}: {item!r} is not name:dims",
                            hint=f"write {flag}=input:1x3x224x224,mask:1x128")
        if name in shapes:
            raise KilnError(f"{flag}: {name!r} is given twice in {text!r}",
                            hint="give each input once")
        try:
            shapes[name] = [int(d) for d in dims.lower().split("x")] if dims.strip() else []
        except ValueError:
            raise KilnError(f"{flag}: dims {dims!r} of {name!r} are not integers joined by 'x'",
                            hint=f"write {flag}={name}:1x3x224x224") from None
        if any(d < 0 for d in shapes[name]):
            raise KilnError(f"{flag}: {name!r} has a negative dimension in {dims!r}")
    return shapes


def _split_outside_quotes(text: str, sep: str, flag: str) -> list[str]:
    parts, current, quote = [], [], None
    for ch in text:
        if ch in "'\"" and quote in (None, ch):
            quote = None if quote else ch
        if ch == sep and quote is None:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if quote is not None:
        raise KilnError(f"{flag}: {text!r} has an unclosed {quote} quote",
                        hint=f"close it: {flag}='in:0':1x3x224x224")
    parts.append("".join(current))
    return [p for p in (p.strip() for p in parts) if p]


def resolve_profile(
    inputs: Iterable[Value],
    min_shapes: dict[str, list[int]] | None = None,
    opt_shapes: dict[str, list[int]] | None = None,
    max_shapes: dict[str, list[int]] | None = None,
) -> Profile:
    """One profile over the engine's inputs from (possibly partial) min/opt/max flags."""
    min_shapes, opt_shapes, max_shapes = min_shapes or {}, opt_shapes or {}, max_shapes or {}
    inputs = [v for v in inputs if v.kind == "tensor"]
    known = {v.name for v in inputs}
    for flag, given in (("--minShapes", min_shapes), ("--optShapes", opt_shapes),
                        ("--maxShapes", max_shapes)):
        unknown = sorted(set(given) - known)
        if unknown:
            raise KilnError(f"{flag} names {', '.join(unknown)}, which the model has no input "
                            f"called; its inputs are {', '.join(sorted(known))}")
    profile = Profile()
    for value in inputs:
        profile.dims[value.name] = _input_ranges(
            value, min_shapes.get(value.name), opt_shapes.get(value.name),
            max_shapes.get(value.name))
    return profile


def _input_ranges(value: Value, lo: list[int] | None, opt: list[int] | None,
                  hi: list[int] | None) -> list[DimRange]:
    """min/opt/max per axis. Only opt given: a static engine at that shape (trtexec's
    --shapes). min or max given: all three are needed. None given: the defaults."""
    if (lo is None) != (hi is None) or (lo is not None and opt is None):
        flags = (("--minShapes", lo), ("--optShapes", opt), ("--maxShapes", hi))
        given = " and ".join(f for f, shape in flags if shape is not None)
        missing = " and ".join(f for f, shape in flags if shape is None)
        raise KilnError(
            f"{value.name!r} is in {given} but not in {missing}",
            hint="give all three for an input (or only --optShapes for one fixed shape)")
    declared = list(value.shape) if value.shape is not None else None
    rank = len(declared) if declared is not None else (len(opt) if opt is not None else 0)
    declared = declared if declared is not None else [None] * rank
    for flag, shape in (("--optShapes", opt), ("--minShapes", lo), ("--maxShapes", hi)):
        if shape is not None and len(shape) != rank:
            raise KilnError(
                f"{flag} gives {value.name!r} {len(shape)} dims ({_dims_text(shape)}), the input "
                f"has {rank} ({_dims_text(declared)})", hint=f"give {rank} dims joined by 'x'")
    lo = lo if lo is not None else opt
    hi = hi if hi is not None else opt
    ranges = []
    for axis, dim in enumerate(declared):
        if opt is None:
            default = DEFAULT_OPT_DIM if axis == 0 else DEFAULT_OPT_OTHER
            ranges.append(DimRange(dim, dim, dim) if isinstance(dim, int)
                          else DimRange(1, default, None))
            continue
        mn, o, mx = lo[axis], opt[axis], hi[axis]  # type: ignore[index]
        if isinstance(dim, int) and (mn, o, mx) != (dim, dim, dim):
            raise KilnError(f"the shapes given for {value.name!r} set axis {axis} to "
                            f"{mn}/{o}/{mx}, but the model fixes it at {dim} "
                            f"({_dims_text(declared)})", hint=f"give {dim} for axis {axis}")
        if not 0 <= mn <= o <= mx:
            raise KilnError(f"{value.name!r} axis {axis}: need min <= opt <= max, got "
                            f"{mn} / {o} / {mx}")
        ranges.append(DimRange(mn, o, mx))
    return ranges


def _dims_text(dims: list) -> str:
    return "x".join("?" if not isinstance(d, int) else str(d) for d in dims) or "scalar"
