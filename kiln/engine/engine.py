"""Engine: a built plan plus its tensors. Saved as one safetensors file (`.kiln`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from kiln.build.profiles import Profile
from kiln.ir import DType

ALIGNMENT = 64  # bytes; torch's CPU allocator aligns every allocation this way

if TYPE_CHECKING:
    from kiln.runtime.context import ExecutionContext


@dataclass
class IOSpec:
    name: str
    dtype: DType | None
    shape: list[int | str | None] | None
    kind: str = "tensor"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype.short if self.dtype else None,
                "shape": self.shape, "kind": self.kind}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IOSpec:
        dtype = DType.from_short(data["dtype"]) if data.get("dtype") else None
        return cls(data["name"], dtype, data.get("shape"), data.get("kind", "tensor"))

    def shape_text(self) -> str:
        if self.shape is None:
            return "?"
        return "x".join("?" if not isinstance(d, int) else str(d) for d in self.shape) or "scalar"


class Engine:
    """What `kiln build` makes and `kiln run` executes.

    `plan` is JSON (see kiln.engine.plan); `tensors` are the constants and prepared
    weights it references, on the CPU until an ExecutionContext moves them.
    """

    def __init__(self, plan: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.plan = plan
        self.tensors = {key: aligned(t) for key, t in tensors.items()}

    # ------------------------------------------------------------- metadata
    @property
    def inputs(self) -> list[IOSpec]:
        return [IOSpec.from_json(d) for d in self.plan["inputs"]]

    @property
    def outputs(self) -> list[IOSpec]:
        return [IOSpec.from_json(d) for d in self.plan["outputs"]]

    @property
    def input_names(self) -> list[str]:
        return [d["name"] for d in self.plan["inputs"]]

    @property
    def output_names(self) -> list[str]:
        return [d["name"] for d in self.plan["outputs"]]

    @property
    def profiles(self) -> list[Profile]:
        return [Profile.from_json(p) for p in self.plan.get("profiles", [])]

    @property
    def device(self) -> dict[str, Any]:
        return self.plan["device"]

    @property
    def precision(self) -> str:
        return self.plan["build"]["precision"]

    @property
    def memory(self) -> dict[str, Any]:
        return self.plan.get("memory", {})

    def layers(self) -> list[dict[str, Any]]:
        """Every layer, subgraph layers included (depth-first)."""
        found: list[dict[str, Any]] = []
        _collect_layers(self.plan["graph"], found)
        return found

    def weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    # ------------------------------------------------------------- files
    def save(self, path: str | os.PathLike) -> None:
        from kiln.engine.plan_file import save_engine

        save_engine(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, check_device: bool = True) -> Engine:
        from kiln.engine.plan_file import load_engine

        return load_engine(path, check_device=check_device)

    def create_execution_context(self, device: str | torch.device | None = None
                                 ) -> ExecutionContext:
        from kiln.runtime.context import ExecutionContext

        return ExecutionContext(self, device=device)


def aligned(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`, dense (in its own storage, in any order of dims) and at a 64-byte boundary
    (a contiguous copy when it is not).

    CPU kernels (MKL, oneDNN) pick their vector paths by alignment, so the same weights at
    another address can round differently. safetensors hands out tensors at whatever offset
    the file's header length leaves them; copying into torch's allocator (64-byte aligned)
    makes a loaded engine compute bit for bit what the built one did.
    """
    if tensor.numel() and (not _dense(tensor) or tensor.data_ptr() % ALIGNMENT):
        return tensor.clone(memory_format=torch.contiguous_format)
    return tensor


def _dense(tensor: torch.Tensor) -> bool:
    """Whether tensor fills its own storage exactly, in any order of its dims: a layout a
    tactic prepared (channels-last weights, a column-major GEMM operand) is kept, so an
    engine runs what its tuner timed; views into larger buffers and broadcasts are not."""
    if tensor.is_contiguous():
        return True
    return (tensor.storage_offset() == 0 and 0 not in tensor.stride()
            and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size())


def _collect_layers(graph: dict[str, Any], found: list[dict[str, Any]]) -> None:
    for layer in graph["layers"]:
        found.append(layer)
        for attr in layer["attrs"].values():
            if isinstance(attr, dict) and "$graph" in attr:
                _collect_layers(attr["$graph"], found)
            elif isinstance(attr, list):
                for item in attr:
                    if isinstance(item, dict) and "$graph" in item:
                        _collect_layers(item["$graph"], found)
