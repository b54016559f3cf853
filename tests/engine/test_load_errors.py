"""Loading refuses every broken, foreign or edited engine file, saying how to rebuild it."""

from __future__ import annotations

import copy
import json
import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file

import kiln.engine.plan_file as plan_file
from kiln.build import BuilderConfig, build_engine
from kiln.demo import model_path as demo_model_path
from kiln.demo import samples as demo_samples
from kiln.engine.engine import Engine
from kiln.errors import EngineFileError
from kiln.runtime import ExecutionContext

REBUILD = "kiln build"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Engine, Path]:
    engine = build_engine(demo_model_path(), BuilderConfig(device="cpu"))
    path = tmp_path_factory.mktemp("engine") / "digits.kiln"
    engine.save(path)
    return engine, path


def _read(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as f:
        plan = json.loads(f.metadata()[plan_file.PLAN_KEY])
        return plan, {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def _rewrite(source: Path, target: Path, edit: Callable[[dict], object]) -> Path:
    """A copy of `source` whose plan JSON went through `edit` (tensors and sums kept)."""
    plan, tensors = _read(source)
    edit(plan)
    save_file(tensors, str(target), metadata={plan_file.PLAN_KEY: json.dumps(plan)})
    return target


def _refused(path: Path, *expected: str) -> EngineFileError:
    with pytest.raises(EngineFileError) as info:
        Engine.load(path)
    text = str(info.value)
    assert REBUILD in text, text  # every refusal says how to make a good engine
    for part in expected:
        assert part in text, text
    return info.value


# ----------------------------------------------------------------- files that are not engines
def test_cpu_engine_loads_and_runs_on_cpu(saved):
    engine, path = saved
    loaded = Engine.load(path)
    assert loaded.device["kind"] == "cpu"
    images = demo_samples()[0][:4]
    expected = ExecutionContext(engine).run({"image": images})
    got = ExecutionContext(loaded).run({"image": images})
    assert all(np.array_equal(expected[k], got[k]) for k in expected)


def test_missing_file(tmp_path):
    _refused(tmp_path / "nope.kiln", "not found")


def test_a_folder_is_refused(tmp_path):
    _refused(tmp_path, "not found")


@pytest.mark.parametrize("where", ["empty", "in length", "after length", "mid header",
                                   "end of header", "mid data", "last byte"])
def test_truncated_file(saved, tmp_path, where):
    data = saved[1].read_bytes()
    header = 8 + struct.unpack("<Q", data[:8])[0]
    cut = {"empty": 0, "in length": 5, "after length": 8, "mid header": header // 2,
           "end of header": header, "mid data": (header + len(data)) // 2,
           "last byte": len(data) - 1}[where]
    path = tmp_path / "cut.kiln"
    path.write_bytes(data[:cut])
    _refused(path, "truncated or corrupt")


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.61, 0.99])
def test_flipped_byte_in_tensor_data_fails_its_checksum(saved, tmp_path, fraction):
    data = bytearray(saved[1].read_bytes())
    header = 8 + struct.unpack("<Q", data[:8])[0]
    at = header + int(fraction * (len(data) - header - 1))
    data[at] ^= 0x10
    path = tmp_path / "flipped.kiln"
    path.write_bytes(bytes(data))
    _refused(path, "checksum mismatch", "copy the file again")


def test_plain_safetensors_file_is_not_an_engine(tmp_path):
    path = tmp_path / "weights.kiln"
    save_numpy({"w": np.arange(6, dtype=np.float32)}, str(path), metadata={"a": "b"})
    _refused(path, "not a kiln engine")


@pytest.mark.parametrize("size", [1, 7, 64, 5000])
def test_random_bytes(tmp_path, size):
    path = tmp_path / "garbage.kiln"
    path.write_bytes(np.random.default_rng(size).integers(0, 256, size, np.uint8).tobytes())
    _refused(path, "not a readable kiln engine")


@pytest.mark.parametrize("header", [b"{}", b"null", b"[1, 2]", b'{"__metadata__": 5}',
                                    b'{"__metadata__": {"kiln.plan": "not json"}}',
                                    b'{"__metadata__": {"kiln.plan": "[1]"}}'])
def test_malformed_header(tmp_path, header):
    path = tmp_path / "header.kiln"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    _refused(path)


def test_a_pickle_is_refused_and_nothing_is_unpickled(saved, tmp_path, monkeypatch):
    pickled = tmp_path / "model.kiln"
    torch.save({"weights": torch.ones(3)}, pickled)

    def forbidden(*args, **kwargs):
        raise AssertionError("engine loading must not unpickle anything")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    _refused(pickled, "not a readable kiln engine")
    loaded = Engine.load(saved[1])  # a good engine loads without them
    assert ExecutionContext(loaded).run({"image": demo_samples()[0][:2]})["logits"].shape == (2, 10)


# ----------------------------------------------------------------- plans that are wrong
def _set(path: str, value: object) -> Callable[[dict], None]:
    """Sets (or with value=DELETE removes) a dotted path such as graph.layers.0.tactic."""

    def edit(plan: dict) -> None:
        *parents, last = path.split(".")
        node: object = plan
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]  # type: ignore[index]
        key = int(last) if isinstance(node, list) else last
        if value is DELETE:
            del node[key]  # type: ignore[index,arg-type]
        else:
            node[key] = copy.deepcopy(value)  # type: ignore[index]

    return edit


DELETE = object()


def test_unknown_format_version(saved, tmp_path):
    path = _rewrite(saved[1], tmp_path / "v.kiln", _set("format_version", 99))
    _refused(path, "format version 99", "reads version 1", "kiln build digits_cnn.onnx")


def test_another_format(saved, tmp_path):
    _refused(_rewrite(saved[1], tmp_path / "f.kiln", _set("format", "onnx-mlir")), "format")


@pytest.mark.parametrize("field", [
    "device", "device.kind", "device.name", "build", "build.precision", "inputs", "outputs",
    "inputs.0.name", "profiles", "graph", "graph.layers", "graph.constants",
    "graph.layers.0.tactic", "graph.layers.0.op", "graph.layers.0.inputs",
    "graph.layers.0.opset", "graph.layers.0.attrs", "graph.layers.0.params",
    "graph.layers.3.name", "checksums", "kiln_version",
])
def test_missing_field(saved, tmp_path, field):
    path = _rewrite(saved[1], tmp_path / "missing.kiln", _set(field, DELETE))
    error = _refused(path, "invalid plan")
    assert field.split(".")[-1] in str(error)


@pytest.mark.parametrize(("field", "value"), [
    ("device.kind", "tpu"),
    ("device.name", 3),
    ("device.capability", "8.0"),  # a cpu engine with a compute capability
    ("build.precision", "fp64"),
    ("build.seconds", "fast"),
    ("inputs.0.dtype", "fp99"),
    ("inputs.0.dtype", 1),
    ("inputs.0.shape", "Nx1x8x8"),
    ("inputs.0.shape", [-1, 1, 8, 8]),
    ("inputs.0.kind", "tree"),
    ("profiles.0.image", [[1, 1, None]]),
    ("profiles.0.image", 5),
    ("profiles.0.image.0", [4, 2, 8]),
    ("profiles.0.nonexistent_input", [[1, 1, 1]]),
    ("graph.layers.0.opset", "17"),
    ("graph.layers.0.precision", "fp64"),
    ("graph.layers.0.placement", "gpu"),
    ("graph.layers.0.inputs", "image"),
    ("graph.layers.0.inputs.0", 5),
    ("graph.layers.0.params", []),
    ("graph.layers.0.fused", [1]),
    ("graph.layers.0.attrs.pads", {"$tensor": "no/such/tensor"}),
    ("graph.layers.0.attrs.pads", {"$python": "os.system('true')"}),
    ("graph.constants.injected", {"value": 1.0}),
    ("graph.constants.injected", {"value": {"$tensor": "<a tensor>"}, "placement": "gpu"}),
    ("checksums", "none"),
    ("byte_stored", ["x"]),
    ("byte_stored", {"const/x": "float128"}),
    ("memory", [1]),
    ("value_shapes", 7),
])
def test_mistyped_field(saved, tmp_path, field, value):
    if field == "graph.constants.injected":  # a constant entry of its own (names hold dots)

        def edit(plan: dict) -> None:
            entry = json.loads(json.dumps(value).replace("<a tensor>", next(iter(
                plan["checksums"]))))
            plan["graph"]["constants"]["injected"] = entry
    else:
        edit = _set(field, value)
    _refused(_rewrite(saved[1], tmp_path / "typed.kiln", edit), "invalid plan")


@pytest.mark.parametrize(("edit", "expected"), [
    (_set("graph.layers.3.inputs.0", "never_defined"), "never_defined"),
    (_set("graph.layers.0.outputs.0", "renamed"), "reads"),  # its reader now reads nothing
    (_set("graph.outputs", ["logits", "nowhere"]), "differ"),
    (_set("outputs.1.name", "nowhere"), "differ"),
    (_set("graph.layers", []), "defined by no layer"),
])
def test_broken_data_flow(saved, tmp_path, edit, expected):
    _refused(_rewrite(saved[1], tmp_path / "flow.kiln", edit), "invalid plan", expected)


def test_unknown_tactic(saved, tmp_path):
    path = _rewrite(saved[1], tmp_path / "t.kiln", _set("graph.layers.0.tactic", "warp_drive"))
    _refused(path, "'warp_drive'", "conv0", "does not have", "kiln build digits_cnn.onnx")


def test_unknown_operator(saved, tmp_path):
    def edit(plan: dict) -> None:
        plan["graph"]["layers"][0].update(op="HoloConv", tactic="reference")

    _refused(_rewrite(saved[1], tmp_path / "op.kiln", edit), "HoloConv", "does not implement")


def test_tactic_for_another_operator(saved, tmp_path):
    def edit(plan: dict) -> None:
        layer = next(x for x in plan["graph"]["layers"] if x["tactic"] == "reference")
        layer["tactic"] = "layernorm-torch"  # a tactic that lists the ops it runs

    _refused(_rewrite(saved[1], tmp_path / "other.kiln", edit), "'layernorm-torch'",
             "has for other ops")


def test_tensor_missing_from_the_file(saved, tmp_path):
    plan, tensors = _read(saved[1])
    key = sorted(tensors)[0]
    del tensors[key]
    path = tmp_path / "lost.kiln"
    save_file(tensors, str(path), metadata={plan_file.PLAN_KEY: json.dumps(plan)})
    _refused(path, repr(key))


def test_tensor_without_checksum(saved, tmp_path):
    plan, tensors = _read(saved[1])
    tensors["smuggled"] = torch.ones(4)
    path = tmp_path / "extra.kiln"
    save_file(tensors, str(path), metadata={plan_file.PLAN_KEY: json.dumps(plan)})
    _refused(path, "'smuggled'", "no checksum")


# ----------------------------------------------------------------- another device
CUDA_DEVICE = {"kind": "cuda", "name": "NVIDIA H100 80GB HBM3", "capability": "9.0"}


def test_cuda_engine_on_a_machine_without_cuda(saved, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = _rewrite(saved[1], tmp_path / "cuda.kiln", _set("device", CUDA_DEVICE))
    _refused(path, "built for CUDA", "9.0", "no CUDA device", "--device cpu")
    assert Engine.load(path, check_device=False).device == CUDA_DEVICE  # for inspect


def test_cuda_engine_for_another_compute_capability(saved, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(plan_file, "device_description",
                        lambda: {"kind": "cuda", "name": "NVIDIA A100", "capability": "8.0"})
    path = _rewrite(saved[1], tmp_path / "cc.kiln", _set("device", CUDA_DEVICE))
    _refused(path, "compute capability 9.0", "NVIDIA A100 (8.0)", "on this machine")


def test_cuda_engine_for_this_compute_capability_loads(saved, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(plan_file, "device_description",
                        lambda: {"kind": "cuda", "name": "NVIDIA H100", "capability": "9.0"})
    path = _rewrite(saved[1], tmp_path / "same.kiln", _set("device", CUDA_DEVICE))
    assert Engine.load(path).device["capability"] == "9.0"


def test_save_into_a_missing_folder(saved, tmp_path):
    with pytest.raises(EngineFileError, match="does not exist"):
        saved[0].save(tmp_path / "no" / "such" / "folder" / "m.kiln")
    assert not (tmp_path / "no").exists()
