"""Inputs for benchmarks and comparisons: random ones that respect the model, or files.

Random inputs follow Polygraphy's data loader (seed 1; floats uniform in [0, 1); integers
in [0, 1]; booleans random) and then what the graph says about each input:

- an integer input that indexes something (Gather/GatherElements/ScatterElements indices,
  OneHot indices; through Cast/Reshape/Unsqueeze and the like) is drawn from
  [0, size - 1] of the axis it indexes, so embedding lookups stay in range; one compared
  with `Equal` to a constant (a one-hot written as `x == iota`) stays within the
  constant's values;
- an input whose name says it is a mask (`attention_mask`, `mask`, ...) gets a prefix of
  ones and then zeros along its last axis, never all zeros, as real padding masks do;
  other booleans are random.

Dynamic dims come from --shapes; an input not named there takes the sizes of the named
dims it shares with one that is (`input_ids: [N, T]` sizes `attention_mask: [N, T]`), and
kiln's profile defaults for the rest.

Files: an .npz keyed by input name (or kiln's sample format, `input.<name>`), or trtexec's
`name:file` pairs where a file is .npy or raw binary in the input's type and shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln.build.profiles import DEFAULT_OPT_DIM, DEFAULT_OPT_OTHER, resolve_profile
from kiln.engine.engine import Engine
from kiln.errors import KilnError
from kiln.ir import DType, Graph

POLYGRAPHY_SEED = 1
FLOAT_RANGE = (0.0, 1.0)
INT_RANGE = (0, 1)
# ops that hand an integer tensor on unchanged in value (only its shape or type changes)
_PASS_THROUGH = {"Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity", "Expand",
                 "Transpose", "Slice", "Tile", "Concat", "Split", "CastLike"}
_MAX_DEPTH = 6


@dataclass
class InputSpec:
    """One input to generate: its type, concrete shape, and value range (inclusive for
    integers, [low, high) for floats)."""

    name: str
    dtype: DType
    shape: list[int]
    kind: str = "float"  # float, int, index, bool, mask
    low: float = 0.0
    high: float = 1.0
    reason: str = "default range"

    def values_text(self) -> str:
        """How values are drawn, and why: `[0, 30521] (Gather indices into emb)`."""
        if self.kind == "mask":
            rng = "a prefix mask of ones"
        elif self.kind == "bool":
            rng = "random booleans"
        elif self.kind in ("int", "index"):
            rng = f"[{int(self.low)}, {int(self.high)}]"
        else:
            rng = f"[{self.low:g}, {self.high:g})"
        return f"{rng} ({self.reason})"

    def describe(self) -> str:
        dims = "x".join(map(str, self.shape)) or "scalar"
        return f"{self.name} [dtype={self.dtype.short}, shape={dims}] {self.values_text()}"


def specs_from_graph(graph: Graph, shapes: dict[str, list[int]] | None = None,
                     batch: int | None = None) -> list[InputSpec]:
    """Specs for a model's inputs; dynamic dims from `shapes`, else kiln's profile defaults."""
    tensors = [v for v in graph.inputs if v.kind == "tensor"]
    given = _share_symbols({v.name: v.shape for v in tensors}, _known(shapes, tensors))
    profile = resolve_profile(tensors, None, given or None, None)
    view = _GraphView(graph)
    specs = []
    for value in tensors:
        if value.dtype is None:
            raise KilnError(f"input {value.name!r} has no known element type",
                            hint="give real inputs with --inputs/--loadInputs")
        shape = _with_batch(profile.opt_shape(value.name), batch)
        specs.append(_classify(value.name, value.dtype, shape, view))
    return specs


def specs_from_engine(engine: Engine, shapes: dict[str, list[int]] | None = None,
                      batch: int | None = None, profile_index: int = 0) -> list[InputSpec]:
    """Specs for an engine's inputs (when no ONNX model is at hand)."""
    profile = engine.profiles[profile_index]
    view = _PlanView(engine)
    specs = []
    shared = _share_symbols({io.name: io.shape for io in engine.inputs}, shapes)
    for io in engine.inputs:
        if io.kind != "tensor" or io.dtype is None:
            raise KilnError(f"input {io.name!r} is a {io.kind}: random data cannot be made "
                            "for it", hint="give real inputs with --inputs/--loadInputs")
        given = shared.get(io.name)
        shape = list(given) if given is not None else profile.opt_shape(io.name)
        specs.append(_classify(io.name, io.dtype, _with_batch(shape, batch), view))
    return specs


def _known(shapes: dict[str, list[int]] | None, values: list) -> dict[str, list[int]] | None:
    if not shapes:
        return None
    names = {v.name for v in values}
    unknown = sorted(set(shapes) - names)
    if unknown:
        raise KilnError(f"--shapes names {', '.join(unknown)}, which the model has no input "
                        f"called; its inputs are {', '.join(sorted(names))}")
    return shapes


def _share_symbols(declared: dict[str, Any], shapes: dict[str, list[int]] | None
                   ) -> dict[str, list[int]]:
    """Shapes for inputs not given, from named dims they share with inputs given:
    `--shapes=input_ids:2x7` also sizes `attention_mask: [N, T]` at 2x7."""
    shapes = dict(shapes or {})
    sizes: dict[str, int] = {}
    for name, dims in shapes.items():
        for dim, size in zip(declared.get(name) or [], dims):
            if isinstance(dim, str):
                sizes.setdefault(dim, size)
    for name, dims in declared.items():
        if name in shapes or dims is None or not sizes:
            continue
        if any(isinstance(d, str) and d in sizes for d in dims):
            shapes[name] = [d if isinstance(d, int) else sizes.get(d, _default(axis))
                            for axis, d in enumerate(dims)]
    return shapes


def _default(axis: int) -> int:
    return DEFAULT_OPT_DIM if axis == 0 else DEFAULT_OPT_OTHER


def _with_batch(shape: list[int], batch: int | None) -> list[int]:
    if batch is None or not shape:
        return list(shape)
    return [batch, *shape[1:]]


def _classify(name: str, dtype: DType, shape: list[int], view: Any) -> InputSpec:
    spec = InputSpec(name, dtype, list(shape))
    if "mask" in name.lower() and dtype is not DType.STRING:
        spec.kind, spec.low, spec.high, spec.reason = "mask", 0, 1, "named a mask"
    elif dtype is DType.BOOL:
        spec.kind, spec.low, spec.high = "bool", 0, 1
    elif dtype.is_float:
        spec.low, spec.high = FLOAT_RANGE
    elif dtype.numpy is not None and np.dtype(dtype.numpy).kind in "iu":
        spec.kind, (spec.low, spec.high) = "int", INT_RANGE
        bound = _index_bound(view, name, 0)
        if bound is not None:
            spec.kind, spec.low, spec.high, spec.reason = "index", *bound
    else:
        raise KilnError(f"input {name!r} has type {dtype.short}: random data cannot be made "
                        "for it", hint="give real inputs with --inputs/--loadInputs")
    return spec


def _index_bound(view: Any, name: str, depth: int) -> tuple[int, int, str] | None:
    """The narrowest [low, high] any use of `name` allows, with the reason."""
    if depth > _MAX_DEPTH:
        return None
    found: list[tuple[int, int, str]] = []
    for op, index, attrs, inputs, outputs in view.uses(name):
        bound = _use_bound(view, op, index, attrs, inputs)
        if bound is not None:
            found.append(bound)
        elif op in _PASS_THROUGH and (index == 0 or op == "Concat"):
            for out in outputs:
                inner = _index_bound(view, out, depth + 1) if out else None
                if inner is not None:
                    found.append(inner)
    return min(found, key=lambda b: b[1] - b[0]) if found else None


def _use_bound(view: Any, op: str, index: int, attrs: dict, inputs: list
               ) -> tuple[int, int, str] | None:
    if op in ("Gather", "GatherElements", "ScatterElements", "ScatterND", "GatherND") and \
            index == 1 and inputs[0]:
        size = _axis_size(view.shape(inputs[0]), op, attrs)
        return (0, size - 1, f"{op} indices into {inputs[0]}") if size else None
    if op == "OneHot" and index == 0 and len(inputs) > 1 and inputs[1]:
        depth = view.const(inputs[1])
        if depth is None:
            return None
        return 0, int(np.asarray(depth).reshape(-1)[0]) - 1, "OneHot indices"
    if op == "Equal":  # one-hot written as Equal(x, iota): the values it is compared with
        other = _constant_through(view, inputs[1 - index])
        if other is not None and other.size and other.dtype.kind in "iu":
            return int(other.min()), int(other.max()), "compared with Equal to a constant"
    return None


def _axis_size(shape: list | None, op: str, attrs: dict) -> int | None:
    if not shape:
        return None
    if op in ("GatherND", "ScatterND"):
        sizes = [d for d in shape if isinstance(d, int)]
        return min(sizes) if sizes else None
    axis = int(attrs.get("axis", 0))
    dim = shape[axis] if -len(shape) <= axis < len(shape) else None
    return dim if isinstance(dim, int) and dim > 0 else None


def _constant_through(view: Any, name: str | None, depth: int = 0) -> np.ndarray | None:
    """The constant behind `name`, looking through value-preserving ops (Expand, ...)."""
    if name is None or depth > _MAX_DEPTH:
        return None
    const = view.const(name)
    if const is not None:
        return np.asarray(const)
    producer = view.producer(name)
    if producer is None or producer[0] not in _PASS_THROUGH or not producer[1]:
        return None
    return _constant_through(view, producer[1][0], depth + 1)


class _GraphView:
    """Uses, shapes and constants of values in a kiln IR graph."""

    def __init__(self, graph: Graph) -> None:
        self.values = {v.name: v for v in graph.inputs}
        self.values.update(graph.initializers)
        for node in graph.nodes:
            self.values.update({v.name: v for v in node.outputs if v is not None})

    def uses(self, name: str):
        value = self.values.get(name)
        for node in (value.consumers if value is not None else []):
            inputs = [v.name if v is not None else None for v in node.inputs]
            for i, v in enumerate(node.inputs):
                if v is value:
                    yield (node.op_type, i, node.attrs, inputs,
                           [o.name if o is not None else None for o in node.outputs])

    def producer(self, name: str) -> tuple[str, list] | None:
        value = self.values.get(name)
        node = value.producer if value is not None else None
        if node is None:
            return None
        return node.op_type, [v.name if v is not None else None for v in node.inputs]

    def shape(self, name: str) -> list | None:
        value = self.values.get(name)
        return list(value.shape) if value is not None and value.shape is not None else None

    def const(self, name: str) -> Any:
        value = self.values.get(name)
        return value.const if value is not None else None


class _PlanView:
    """The same questions answered from an engine's plan (top-level layers only)."""

    def __init__(self, engine: Engine) -> None:
        self.graph = engine.plan["graph"]
        self.tensors = engine.tensors
        self.shapes = engine.plan.get("value_shapes", {})

    def uses(self, name: str):
        for layer in self.graph["layers"]:
            for i, n in enumerate(layer["inputs"]):
                if n == name:
                    yield layer["op"], i, layer["attrs"], layer["inputs"], layer["outputs"]

    def producer(self, name: str) -> tuple[str, list] | None:
        for layer in self.graph["layers"]:
            if name in layer["outputs"]:
                return layer["op"], layer["inputs"]
        return None

    def shape(self, name: str) -> list | None:
        const = self.const(name)
        if const is not None:
            return list(const.shape)
        return self.shapes.get(name)

    def const(self, name: str) -> Any:
        entry = self.graph["constants"].get(name)
        if entry is None or not isinstance(entry["value"], dict) or \
                "$tensor" not in entry["value"]:
            return None
        return self.tensors[entry["value"]["$tensor"]].numpy()


def random_inputs(specs: list[InputSpec], seed: int = POLYGRAPHY_SEED) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {spec.name: _generate(spec, rng) for spec in specs}


def _generate(spec: InputSpec, rng: np.random.Generator) -> np.ndarray:
    dtype = np.dtype(spec.dtype.numpy)
    shape = tuple(spec.shape)
    if spec.kind == "mask":
        return _prefix_mask(shape, rng).astype(dtype)
    if spec.kind == "bool":
        return rng.random(shape) < 0.5
    if spec.kind in ("int", "index"):
        return rng.integers(int(spec.low), int(spec.high) + 1, size=shape).astype(dtype)
    return rng.uniform(spec.low, spec.high, size=shape).astype(dtype)


def _prefix_mask(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if not shape or shape[-1] == 0:
        return np.ones(shape, dtype=bool)
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    lengths = rng.integers(1, shape[-1] + 1, size=rows)
    mask = np.arange(shape[-1])[None, :] < lengths[:, None]
    return mask.reshape(shape)


def load_input_files(text: str, specs: list[InputSpec]) -> dict[str, np.ndarray]:
    """--loadInputs / --inputs: an .npz, or `name:file` pairs (.npy or raw binary)."""
    by_name = {s.name: s for s in specs}
    path = Path(text)
    if path.suffix == ".npz":
        arrays = read_npz(path, "input.")
    else:
        arrays = {}
        for item in text.split(","):
            name, sep, file = item.rpartition(":")
            name = name.strip().strip("'\"")
            if not sep or not name:
                raise KilnError(f"--loadInputs: {item!r} is not name:file",
                                hint="write --loadInputs=x:x.npy,mask:mask.bin or in.npz")
            arrays[name] = _read_file(Path(file), by_name.get(name))
    unknown = sorted(set(arrays) - set(by_name))
    if unknown:
        raise KilnError(f"the inputs given name {', '.join(unknown)}, which the model has no "
                        f"input called; its inputs are {', '.join(sorted(by_name))}")
    return arrays


def _read_file(path: Path, spec: InputSpec | None) -> np.ndarray:
    if not path.is_file():
        raise KilnError(f"input file not found: {path}")
    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise KilnError(f"cannot read {path} as a .npy array: {exc}") from None
    if spec is None:
        raise KilnError(f"cannot read raw file {path}: its input is not one of the model's")
    dtype = np.dtype(spec.dtype.numpy)
    data = np.fromfile(path, dtype=dtype)
    count = int(np.prod(spec.shape, dtype=np.int64))
    if data.size != count:
        raise KilnError(
            f"raw input file {path} holds {data.size} {dtype} values; input {spec.name!r} of "
            f"shape {'x'.join(map(str, spec.shape))} needs {count}",
            hint="give the shape with --shapes, or save the array as .npy")
    return data.reshape(spec.shape)


def read_npz(path: Path, prefix: str) -> dict[str, np.ndarray]:
    """Arrays of an .npz; in kiln's sample format (`input.x`, `output.y`) those under
    `prefix` with the prefix removed."""
    if not path.is_file():
        raise KilnError(f"file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise KilnError(f"cannot read {path}: {exc}", hint="save arrays with numpy.savez") from None
    if any(k.startswith(("input.", "output.")) for k in arrays):
        return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    return arrays
