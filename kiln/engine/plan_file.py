"""Reading and writing `.kiln` files: a safetensors file whose metadata holds the plan.

Nothing is unpickled or executed on load: the header is JSON, the tensors are raw bytes
with a CRC32 each, and every field of the plan is checked before an engine is returned.
A file built for another device kind or compute capability is refused with the command
that rebuilds it.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from kiln.engine.engine import Engine
from kiln.engine.plan import FORMAT, FORMAT_VERSION
from kiln.errors import EngineFileError
from kiln.ir import DType
from kiln.kernels import get_tactic
from kiln.ops import registry

PLAN_KEY = "kiln.plan"
REBUILD = "rebuild it from the ONNX model with `kiln build model.onnx -o model.kiln`"
# dtypes safetensors cannot read back: stored as their bytes, re-viewed on load
_BYTE_STORED = {name: dtype for name in ("float8_e8m0fnu",)
                if (dtype := getattr(torch, name, None)) is not None}


def crc32(tensor: torch.Tensor) -> int:
    data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return zlib.crc32(memoryview(data)) & 0xFFFFFFFF


def save_engine(engine: Engine, path: str | os.PathLike) -> None:
    tensors = _unshared({k: t.detach().cpu().contiguous() for k, t in engine.tensors.items()})
    plan = dict(engine.plan)
    plan["checksums"] = {k: crc32(t) for k, t in tensors.items()}
    names = {v: k for k, v in _BYTE_STORED.items()}
    viewed = {k: names[t.dtype] for k, t in tensors.items() if t.dtype in names}
    if viewed:
        plan["byte_stored"] = viewed
        tensors.update({k: tensors[k].view(torch.uint8) for k in viewed})
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if not path.parent.is_dir():
        raise EngineFileError(f"cannot write {path}: the folder {path.parent} does not exist",
                              hint="create it first, or pass -o with an existing folder")
    try:
        save_file(tensors, str(tmp), metadata={PLAN_KEY: json.dumps(plan)})
        os.replace(tmp, path)  # never leave a half-written engine under the real name
    except (OSError, SafetensorError) as exc:
        tmp.unlink(missing_ok=True)
        raise EngineFileError(f"cannot write {path}: {getattr(exc, 'strerror', None) or exc}",
                              hint="check the folder exists and is writable") from None


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses two keys on one memory (a constant stored twice): copy the second."""
    seen: set[tuple[int, int]] = set()
    result = {}
    for key, tensor in tensors.items():
        where = (tensor.data_ptr(), tensor.nbytes)
        if tensor.numel() and where in seen:
            tensor = tensor.clone()
        seen.add(where)
        result[key] = tensor
    return result


def load_engine(path: str | os.PathLike, *, check_device: bool = True) -> Engine:
    path = Path(path)
    if not path.is_file():
        raise EngineFileError(f"engine file not found: {path}",
                              hint="build one with `kiln build model.onnx -o model.kiln`")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if PLAN_KEY not in metadata:
                raise EngineFileError(f"{path} is a safetensors file but not a kiln engine "
                                      f"(its metadata has no {PLAN_KEY!r})",
                                      hint="build one with `kiln build model.onnx -o "
                                      "model.kiln`")
            plan = json.loads(metadata[PLAN_KEY])
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except EngineFileError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError, KeyError) as exc:
        raise EngineFileError(
            f"{path} is not a readable kiln engine (truncated or corrupt: {exc})",
            hint=REBUILD) from None
    byte_stored = plan.get("byte_stored") if isinstance(plan, dict) else None
    if byte_stored is not None:
        if not isinstance(byte_stored, dict) or not all(
                isinstance(k, str) and v in _BYTE_STORED for k, v in byte_stored.items()):
            raise EngineFileError(f"{path}: invalid plan at byte_stored: expected tensor names "
                                  f"and one of {', '.join(_BYTE_STORED)}",
                                  hint=f"the file is corrupt or was edited; {rebuild_hint(plan)}")
        for key, name in byte_stored.items():
            if key in tensors:
                tensors[key] = tensors[key].view(_BYTE_STORED[name])
    validate_plan(plan, tensors, str(path))
    _verify_checksums(plan, tensors, str(path))
    if check_device:
        check_device_matches(plan, str(path))
    return Engine(plan, tensors)


def rebuild_hint(plan: dict) -> str:
    """How to make this engine again, with the model's name when the plan records it."""
    build = plan.get("build") if isinstance(plan, dict) else None
    source = build.get("source") if isinstance(build, dict) else None
    if not isinstance(source, str) or not source:
        return REBUILD
    return f"rebuild it from the ONNX model with `kiln build {source}`"


def _verify_checksums(plan: dict, tensors: dict[str, torch.Tensor], label: str) -> None:
    sums = plan["checksums"]
    for key, tensor in tensors.items():
        if key not in sums:
            raise EngineFileError(f"{label}: tensor {key!r} has no checksum",
                                  hint=rebuild_hint(plan))
        if crc32(tensor) != sums[key]:
            raise EngineFileError(f"{label}: tensor {key!r} is corrupt (checksum mismatch)",
                                  hint="copy the file again, or " + rebuild_hint(plan))
    lost = sorted(set(sums) - set(tensors))
    if lost:
        raise EngineFileError(f"{label}: the plan lists tensor(s) {', '.join(map(repr, lost))}, "
                              "which the file lacks", hint=rebuild_hint(plan))


def device_description() -> dict[str, Any]:
    """The device this process would run an engine on (CUDA when present)."""
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return {"kind": "cuda", "name": torch.cuda.get_device_name(),
                "capability": f"{major}.{minor}"}
    return {"kind": "cpu", "name": "cpu", "capability": None}


def check_device_matches(plan: dict, label: str) -> None:
    built = plan["device"]
    if built["kind"] != "cuda":
        return  # a CPU engine runs on any machine's CPU
    if not torch.cuda.is_available():
        raise EngineFileError(
            f"{label} was built for CUDA ({built['name']}, compute capability "
            f"{built['capability']}), and this machine has no CUDA device",
            hint=rebuild_hint(plan) + " --device cpu")
    here = device_description()
    if here["capability"] != built["capability"]:
        raise EngineFileError(
            f"{label} was built for compute capability {built['capability']} "
            f"({built['name']}); this GPU is {here['name']} ({here['capability']})",
            hint=rebuild_hint(plan) + " on this machine")


# ----------------------------------------------------------------- validation
IO_KINDS = ("tensor", "sequence", "optional", "map")
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")  # as kiln.build.config has them
LAYER_PRECISIONS = (*PRECISIONS, "reformat")


class _Checker:
    """Walks a plan; the first problem raises EngineFileError naming where it is."""

    def __init__(self, label: str, tensors: dict[str, torch.Tensor], hint: str) -> None:
        self.label = label
        self.tensors = tensors
        self.hint = hint

    def fail(self, where: str, problem: str) -> None:
        raise EngineFileError(f"{self.label}: invalid plan at {where}: {problem}",
                              hint=f"the file is corrupt or was edited; {self.hint}")

    def expect(self, ok: bool, where: str, problem: str) -> None:
        if not ok:
            self.fail(where, problem)

    def typed(self, data: Any, key: str, kind: type | tuple, where: str) -> Any:
        self.expect(isinstance(data, dict), where, "expected an object")
        at = key if where == "top level" else f"{where}.{key}"
        self.expect(key in data, at, "missing")
        value = data[key]
        # bool is an int to Python, never to a plan
        ok = isinstance(value, kind) and not (isinstance(value, bool) and bool not in _kinds(kind))
        self.expect(ok, at, f"expected {_kind_text(kind)}, found {value!r:.60}")
        return value

    def names(self, items: Any, where: str, optional: bool = False) -> None:
        self.expect(isinstance(items, list), where, "expected a list of names")
        for i, item in enumerate(items):
            self.expect(isinstance(item, str) or (optional and item is None), f"{where}[{i}]",
                        "expected a name")

    def value(self, data: Any, where: str) -> None:
        if isinstance(data, dict):
            if "$tensor" in data:
                key = data["$tensor"]
                self.expect(isinstance(key, str) and key in self.tensors, where,
                            f"refers to tensor {key!r}, which the file lacks")
            elif "$graph" in data:
                self.fail(where, "a subgraph where a value belongs")
            elif "$strings" in data:
                strings, shape = data["$strings"], data.get("shape")
                self.expect(isinstance(strings, list) and all(isinstance(v, str) for v in strings)
                            and _is_shape(shape) and _product(shape) == len(strings), where,
                            "bad string array")
            elif "$bytes" in data:
                self.expect(isinstance(data["$bytes"], str), where, "bad bytes value")
            else:
                self.fail(where, "unknown value form")
        elif isinstance(data, list):
            for i, item in enumerate(data):
                self.value(item, f"{where}[{i}]")
        else:
            self.expect(data is None or isinstance(data, bool | int | float | str), where,
                        "unexpected value type")

    def graph(self, graph: Any, where: str, outer: frozenset[str] = frozenset()) -> None:
        """Types, and that every layer reads only values defined before it."""
        inputs = self.typed(graph, "inputs", list, where)
        self.names(inputs, f"{where}.inputs")
        outputs = self.typed(graph, "outputs", list, where)
        self.names(outputs, f"{where}.outputs")
        defined = set(outer) | set(inputs)
        for name, entry in self.typed(graph, "constants", dict, where).items():
            at = f"{where}.constants[{name}]"
            self.value(self.typed(entry, "value", (dict, list), at), at)
            self.expect(entry.get("placement", "device") in ("host", "device"),
                        f"{at}.placement", "expected host or device")
            defined.add(name)
        for i, layer in enumerate(self.typed(graph, "layers", list, where)):
            at = f"{where}.layers[{i}]"
            self.layer(layer, at, frozenset(defined))
            for name in layer["inputs"]:
                self.expect(name is None or name in defined, f"{at}.inputs",
                            f"layer {layer['name']!r} reads {name!r}, which nothing before it "
                            "defines")
            defined.update(n for n in layer["outputs"] if n is not None)
        for name in outputs:
            self.expect(name in defined, f"{where}.outputs", f"{name!r} is defined by no layer")

    def layer(self, layer: Any, where: str, scope: frozenset[str]) -> None:
        name = self.typed(layer, "name", str, where)
        op = self.typed(layer, "op", str, where)
        domain = self.typed(layer, "domain", str, where)
        opset = self.typed(layer, "opset", (int, type(None)), where)
        self.names(self.typed(layer, "inputs", list, where), f"{where}.inputs", optional=True)
        self.names(self.typed(layer, "outputs", list, where), f"{where}.outputs", optional=True)
        self.expect(layer.get("precision") in LAYER_PRECISIONS, f"{where}.precision",
                    "unknown precision")
        self.expect(layer.get("placement") in ("host", "device"), f"{where}.placement",
                    "expected host or device")
        if "fused" in layer:
            self.names(layer["fused"], f"{where}.fused")
        tactic_name = self.typed(layer, "tactic", str, where)
        tactic = get_tactic(tactic_name)
        key = (registry.canonical_domain(domain), op)
        if tactic is None or (tactic.ops and key not in tactic.ops):
            raise EngineFileError(
                f"{self.label}: layer {name!r} ({op}) uses tactic {tactic_name!r}, which this "
                f"version of kiln {'does not have' if tactic is None else 'has for other ops'}",
                hint=f"{self.hint}, using this version of kiln")
        if not tactic.ops and registry.lookup(domain, op, opset) is None:
            raise EngineFileError(
                f"{self.label}: layer {name!r} is a {domain or 'ai.onnx'}::{op} (opset {opset}), "
                "which this version of kiln does not implement",
                hint=f"{self.hint}, using this version of kiln")
        self.typed(layer, "params", dict, where)
        for key, attr in self.typed(layer, "attrs", dict, where).items():
            at = f"{where}.attrs.{key}"
            if isinstance(attr, dict) and "$graph" in attr:
                self.graph(attr["$graph"], f"{at}.$graph", scope)
            elif isinstance(attr, list) and attr and all(
                    isinstance(a, dict) and "$graph" in a for a in attr):
                for i, item in enumerate(attr):
                    self.graph(item["$graph"], f"{at}[{i}].$graph", scope)
            else:
                self.value(attr, at)

    def io(self, io: Any, where: str) -> None:
        self.typed(io, "name", str, where)
        for key in ("dtype", "shape"):
            self.expect(key in io, f"{where}.{key}", "missing")
        dtype = io.get("dtype")
        if dtype is not None:
            self.expect(isinstance(dtype, str), f"{where}.dtype", "expected a dtype name")
            try:
                DType.from_short(dtype)
            except ValueError:
                self.fail(f"{where}.dtype", f"unknown dtype {dtype!r}")
        shape = io.get("shape")
        self.expect(shape is None or (isinstance(shape, list) and all(
            d is None or isinstance(d, str) or (_is_int(d) and d >= 0) for d in shape)),
            f"{where}.shape", "expected a list of sizes, names or nulls")
        self.expect(io.get("kind", "tensor") in IO_KINDS, f"{where}.kind",
                    f"expected one of {', '.join(IO_KINDS)}")

    def profile(self, profile: Any, where: str, inputs: dict[str, dict]) -> None:
        self.expect(isinstance(profile, dict), where, "expected an object")
        for name, dims in profile.items():
            at = f"{where}.{name}"
            self.expect(name in inputs, at, "names no input of the engine")
            shape = inputs[name].get("shape")
            self.expect(isinstance(dims, list) and (shape is None or len(dims) == len(shape)),
                        at, "expected one [min, opt, max] per axis of the input")
            for j, dim in enumerate(dims):
                ok = (isinstance(dim, list) and len(dim) == 3 and _is_int(dim[0])
                      and _is_int(dim[1]) and (dim[2] is None or _is_int(dim[2]))
                      and 0 <= dim[0] <= dim[1] and (dim[2] is None or dim[1] <= dim[2]))
                self.expect(ok, f"{at}[{j}]", "expected [min, opt, max] with min <= opt <= max")


def validate_plan(plan: Any, tensors: dict[str, torch.Tensor], label: str) -> None:
    """Checks every field the runtime, `kiln inspect` and `kiln run` read."""
    check = _Checker(label, tensors, rebuild_hint(plan))
    check.expect(isinstance(plan, dict), "top level", "expected an object")
    check.expect(plan.get("format") == FORMAT, "format", f"expected {FORMAT!r}")
    version = plan.get("format_version")
    if version != FORMAT_VERSION:
        raise EngineFileError(
            f"{label} has engine format version {version!r}; this kiln reads version "
            f"{FORMAT_VERSION}", hint=f"{check.hint}, using this version of kiln")
    check.typed(plan, "kiln_version", str, "top level")
    device = check.typed(plan, "device", dict, "top level")
    check.expect(device.get("kind") in ("cpu", "cuda"), "device.kind", "expected cpu or cuda")
    check.typed(device, "name", str, "device")
    capability = device.get("capability")
    check.expect((capability is None and device["kind"] == "cpu")
                 or (isinstance(capability, str) and device["kind"] == "cuda"),
                 "device.capability", "expected major.minor for cuda, null for cpu")
    build = check.typed(plan, "build", dict, "top level")
    check.expect(build.get("precision") in PRECISIONS, "build.precision",
                 f"expected one of {', '.join(PRECISIONS)}")
    check.expect(build.get("source") is None or isinstance(build["source"], str),
                 "build.source", "expected a file name")
    check.expect(_is_number(build.get("seconds", 0)), "build.seconds", "expected a number")
    sides = {}
    for side in ("inputs", "outputs"):
        ios = check.typed(plan, side, list, "top level")
        for i, io in enumerate(ios):
            check.io(io, f"{side}[{i}]")
        sides[side] = [io["name"] for io in ios]
    graph = check.typed(plan, "graph", dict, "top level")
    for side in ("inputs", "outputs"):
        check.expect(graph.get(side) == sides[side], side,
                     f"the engine's {side} differ from its graph's")
    inputs = {io["name"]: io for io in plan["inputs"]}
    for i, profile in enumerate(check.typed(plan, "profiles", list, "top level")):
        check.profile(profile, f"profiles[{i}]", inputs)
    for key in ("memory", "value_shapes"):
        check.expect(isinstance(plan.get(key, {}), dict), key, "expected an object")
    for key, value in plan.get("memory", {}).items():
        ok = isinstance(value, str) if key == "note" else isinstance(value, dict) if (
            key == "probe_shapes") else _is_number(value) and value >= 0
        check.expect(ok, f"memory.{key}", "unexpected value")
    for name, shape in plan.get("value_shapes", {}).items():
        check.expect(_is_shape(shape), f"value_shapes[{name}]", "expected a list of sizes")
    sums = check.typed(plan, "checksums", dict, "top level")
    check.expect(all(_is_int(v) for v in sums.values()), "checksums", "expected integers")
    check.graph(graph, "graph")


def _kinds(kind: type | tuple) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_text(kind: type | tuple) -> str:
    return " or ".join("null" if k is type(None) else k.__name__ for k in _kinds(kind))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_shape(shape: Any) -> bool:
    return isinstance(shape, list) and all(_is_int(d) and d >= 0 for d in shape)


def _product(shape: list[int]) -> int:
    result = 1
    for d in shape:
        result *= d
    return result
