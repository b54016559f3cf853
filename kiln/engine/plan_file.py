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

PLAN_KEY = "kiln.plan"
# dtypes safetensors cannot read back: stored as their bytes, re-viewed on load
_BYTE_STORED = {name: dtype for name in ("float8_e8m0fnu",)
                if (dtype := getattr(torch, name, None)) is not None}


def crc32(tensor: torch.Tensor) -> int:
    data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return zlib.crc32(memoryview(data)) & 0xFFFFFFFF


def save_engine(engine: Engine, path: str | os.PathLike) -> None:
    tensors = {k: t.detach().cpu().contiguous() for k, t in engine.tensors.items()}
    plan = dict(engine.plan)
    plan["checksums"] = {k: crc32(t) for k, t in tensors.items()}
    names = {v: k for k, v in _BYTE_STORED.items()}
    viewed = {k: names[t.dtype] for k, t in tensors.items() if t.dtype in names}
    if viewed:
        plan["byte_stored"] = viewed
        tensors.update({k: tensors[k].view(torch.uint8) for k in viewed})
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata={PLAN_KEY: json.dumps(plan)})
        os.replace(tmp, path)  # never leave a half-written engine under the real name
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise EngineFileError(f"cannot write {path}: {exc.strerror or exc}",
                              hint="check the folder exists and is writable") from None


def load_engine(path: str | os.PathLike, *, check_device: bool = True) -> Engine:
    path = Path(path)
    if not path.is_file():
        raise EngineFileError(f"engine file not found: {path}",
                              hint="build one with `kiln build model.onnx -o model.kiln`")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if PLAN_KEY not in metadata:
                raise EngineFileError(f"{path} is a safetensors file but not a kiln engine",
                                      hint="build one with `kiln build model.onnx`")
            plan = json.loads(metadata[PLAN_KEY])
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except EngineFileError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise EngineFileError(
            f"{path} is not a readable kiln engine (truncated or corrupt: {exc})",
            hint="rebuild it with `kiln build`") from None
    for key, name in (plan.get("byte_stored") or {}).items():
        if key in tensors and name in _BYTE_STORED:
            tensors[key] = tensors[key].view(_BYTE_STORED[name])
    validate_plan(plan, tensors, str(path))
    _verify_checksums(plan, tensors, str(path))
    if check_device:
        check_device_matches(plan, str(path))
    return Engine(plan, tensors)


def _verify_checksums(plan: dict, tensors: dict[str, torch.Tensor], label: str) -> None:
    sums = plan.get("checksums", {})
    for key, tensor in tensors.items():
        if key not in sums:
            raise EngineFileError(f"{label}: tensor {key!r} has no checksum", hint="rebuild it")
        if crc32(tensor) != sums[key]:
            raise EngineFileError(f"{label}: tensor {key!r} is corrupt (checksum mismatch)",
                                  hint="copy the file again, or rebuild it with `kiln build`")


def device_description() -> dict[str, Any]:
    """The device this process would run an engine on (CUDA when present)."""
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return {"kind": "cuda", "name": torch.cuda.get_device_name(),
                "capability": f"{major}.{minor}"}
    return {"kind": "cpu", "name": "cpu", "capability": None}


def check_device_matches(plan: dict, label: str) -> None:
    built = plan["device"]
    rebuild = f"rebuild it here with `kiln build {plan['build'].get('source') or 'model.onnx'}`"
    if built["kind"] == "cuda":
        if not torch.cuda.is_available():
            raise EngineFileError(
                f"{label} was built for CUDA ({built['name']}, compute capability "
                f"{built['capability']}), and this machine has no CUDA device",
                hint=rebuild + " --device cpu")
        here = device_description()
        if here["capability"] != built["capability"]:
            raise EngineFileError(
                f"{label} was built for compute capability {built['capability']} "
                f"({built['name']}); this GPU is {here['name']} ({here['capability']})",
                hint=rebuild)


# ----------------------------------------------------------------- validation
class _Checker:
    def __init__(self, label: str, tensors: dict[str, torch.Tensor]) -> None:
        self.label = label
        self.tensors = tensors

    def fail(self, where: str, problem: str) -> None:
        raise EngineFileError(
            f"{self.label}: invalid plan at {where}: {problem}",
            hint="the file is corrupt or was edited; rebuild it with `kiln build`")

    def expect(self, ok: bool, where: str, problem: str) -> None:
        if not ok:
            self.fail(where, problem)

    def typed(self, data: dict, key: str, kind: type | tuple, where: str) -> Any:
        self.expect(isinstance(data, dict), where, "expected an object")
        self.expect(key in data, f"{where}.{key}", "missing")
        self.expect(isinstance(data[key], kind), f"{where}.{key}",
                    f"expected {getattr(kind, '__name__', kind)}")
        return data[key]

    def names(self, items: Any, where: str, optional: bool = False) -> None:
        self.expect(isinstance(items, list), where, "expected a list of names")
        for i, item in enumerate(items):
            self.expect(isinstance(item, str) or (optional and item is None), f"{where}[{i}]",
                        "expected a name")

    def value(self, data: Any, where: str) -> None:
        if isinstance(data, dict):
            if "$tensor" in data:
                self.expect(data["$tensor"] in self.tensors, where,
                            f"refers to tensor {data['$tensor']!r}, which the file lacks")
            elif "$graph" in data:
                self.graph(data["$graph"], f"{where}.$graph")
            elif "$strings" in data:
                self.expect(isinstance(data["$strings"], list), where, "bad string array")
            elif "$bytes" not in data:
                self.fail(where, "unknown value form")
        elif isinstance(data, list):
            for i, item in enumerate(data):
                self.value(item, f"{where}[{i}]")
        else:
            self.expect(data is None or isinstance(data, bool | int | float | str), where,
                        "unexpected value type")

    def graph(self, graph: Any, where: str) -> None:
        self.names(self.typed(graph, "inputs", list, where), f"{where}.inputs")
        self.names(self.typed(graph, "outputs", list, where), f"{where}.outputs")
        for name, entry in self.typed(graph, "constants", dict, where).items():
            self.value(self.typed(entry, "value", (dict, list, int, float, str), where),
                       f"{where}.constants[{name}]")
        for i, layer in enumerate(self.typed(graph, "layers", list, where)):
            self.layer(layer, f"{where}.layers[{i}]")

    def layer(self, layer: Any, where: str) -> None:
        self.typed(layer, "name", str, where)
        self.typed(layer, "op", str, where)
        self.typed(layer, "domain", str, where)
        self.expect(layer.get("opset") is None or isinstance(layer.get("opset"), int),
                    f"{where}.opset", "expected an integer")
        self.names(self.typed(layer, "inputs", list, where), f"{where}.inputs", optional=True)
        self.names(self.typed(layer, "outputs", list, where), f"{where}.outputs", optional=True)
        self.expect(layer.get("precision") in ("fp32", "fp16", "bf16", "int8", "fp8",
                                               "reformat"), f"{where}.precision",
                    "unknown precision")
        self.expect(layer.get("placement") in ("host", "device"), f"{where}.placement",
                    "expected host or device")
        tactic = self.typed(layer, "tactic", str, where)
        if get_tactic(tactic) is None:
            raise EngineFileError(
                f"{self.label}: layer {layer['name']!r} uses tactic {tactic!r}, which this "
                "version of kiln does not have", hint="rebuild the engine with this kiln")
        self.typed(layer, "params", dict, where)
        for key, attr in self.typed(layer, "attrs", dict, where).items():
            self.value(attr, f"{where}.attrs.{key}")


def validate_plan(plan: Any, tensors: dict[str, torch.Tensor], label: str) -> None:
    check = _Checker(label, tensors)
    check.expect(isinstance(plan, dict), "top level", "expected an object")
    check.expect(plan.get("format") == FORMAT, "format", f"expected {FORMAT!r}")
    version = plan.get("format_version")
    if version != FORMAT_VERSION:
        raise EngineFileError(
            f"{label} has engine format version {version!r}; this kiln reads version "
            f"{FORMAT_VERSION}", hint="rebuild the engine with this version of kiln")
    device = check.typed(plan, "device", dict, "top level")
    check.expect(device.get("kind") in ("cpu", "cuda"), "device.kind", "expected cpu or cuda")
    check.typed(plan, "build", dict, "top level")
    for side in ("inputs", "outputs"):
        for i, io in enumerate(check.typed(plan, side, list, "top level")):
            check.typed(io, "name", str, f"{side}[{i}]")
            dtype = io.get("dtype")
            if dtype is not None:
                try:
                    DType.from_short(dtype)
                except ValueError:
                    check.fail(f"{side}[{i}].dtype", f"unknown dtype {dtype!r}")
    for i, profile in enumerate(check.typed(plan, "profiles", list, "top level")):
        check.expect(isinstance(profile, dict), f"profiles[{i}]", "expected an object")
        for name, dims in profile.items():
            for j, dim in enumerate(dims):
                ok = isinstance(dim, list) and len(dim) == 3 and all(
                    d is None or isinstance(d, int) for d in dim)
                check.expect(ok, f"profiles[{i}].{name}[{j}]", "expected [min, opt, max]")
    check.graph(check.typed(plan, "graph", dict, "top level"), "graph")
