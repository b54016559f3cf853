"""kiln as an ONNX backend (`onnx.backend.base`), as `onnxruntime.backend` is one.

    import kiln.backend
    rep = kiln.backend.prepare(model_proto, "CPU")
    outputs = rep.run([x])

`prepare` builds an FP32 engine for the device and `run` executes it, so the ONNX backend
test suite exercises the same path as `kiln build` + `kiln run`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

from kiln.build import BuilderConfig, build_engine
from kiln.errors import InputError
from kiln.runtime import ExecutionContext


def _device(device: str) -> str:
    kind, _, index = device.partition(":")
    if kind.upper() == "CUDA":
        return f"cuda:{index}" if index else "cuda"
    return "cpu"


class KilnRep(BackendRep):
    """A prepared model: an engine plus its execution context."""

    def __init__(self, context: ExecutionContext) -> None:
        self.context = context
        self.input_names = context.engine.input_names

    def run(self, inputs: Any, **kwargs: Any) -> tuple[Any, ...]:
        if isinstance(inputs, Mapping):
            feeds = dict(inputs)
        else:
            if not isinstance(inputs, Sequence) or isinstance(inputs, np.ndarray):
                inputs = [inputs]
            if len(inputs) > len(self.input_names):
                raise InputError(
                    f"{len(inputs)} inputs given; the model takes {len(self.input_names)} "
                    f"({', '.join(self.input_names)})", hint="pass one array per model input")
            feeds = dict(zip(self.input_names, inputs))
        outputs = self.context.run(feeds)
        return tuple(outputs.values())


class KilnBackend(Backend):
    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        return cls.supports_device(device)

    @classmethod
    def prepare(cls, model: onnx.ModelProto | str | bytes, device: str = "CPU",
                **kwargs: Any) -> KilnRep:
        config = BuilderConfig(device=_device(device), precision="fp32")
        engine = build_engine(model, config)
        return KilnRep(ExecutionContext(engine))

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU",
                  **kwargs: Any) -> tuple[Any, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Any, device: str = "CPU",
                 outputs_info: Any = None, **kwargs: Any) -> tuple[Any, ...]:
        raise NotImplementedError("kiln runs whole models; wrap the node in a graph")

    @classmethod
    def supports_device(cls, device: str) -> bool:
        kind = device.split(":")[0].upper()
        if kind == "CPU":
            return True
        if kind == "CUDA":
            import torch

            return torch.cuda.is_available()
        return False


prepare = KilnBackend.prepare
run_model = KilnBackend.run_model
run_node = KilnBackend.run_node
supports_device = KilnBackend.supports_device
is_compatible = KilnBackend.is_compatible
