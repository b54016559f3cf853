"""ExecutionContext: runs an engine on inputs, after checking every one of them.

Inputs may be numpy arrays or torch tensors (CPU or CUDA). Outputs come back as numpy
arrays when the inputs were numpy, else as torch tensors on the engine's device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from kiln.engine.engine import Engine
from kiln.ops.program import StepError
from kiln.ops.tensors import to_numpy, to_torch
from kiln.runtime.bind import compile_plan
from kiln.runtime.cuda_graphs import GraphRunner
from kiln.runtime.host_memory import keep_freed_host_memory
from kiln.runtime.validate import check_inputs, input_facts


class ExecutionContext:
    """One engine bound to one device; not thread-safe (make one per thread).

    On CUDA, runs replay a captured CUDA graph per input shape (`cuda_graph=False` turns
    that off) and cuDNN picks its algorithms by timing them (benchmark mode) on first use.
    """

    def __init__(self, engine: Engine, device: str | torch.device | None = None,
                 cuda_graph: bool | None = None) -> None:
        self.engine = engine
        built = engine.device["kind"]
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if built == "cuda" else "cpu")
        if self.device.type == "cpu":
            keep_freed_host_memory()  # no page faults for layer outputs on every run
        self.program = compile_plan(engine.plan["graph"], engine.tensors, self.device)
        self._outputs = engine.outputs
        self._input_facts = input_facts(engine)  # checked on every run
        use_graphs = self.device.type == "cuda" if cuda_graph is None else cuda_graph
        self.graphs = GraphRunner(self.program, self.device, flags=self._backend_flags) if (
            use_graphs and self.device.type == "cuda") else None
        # TF32 only where the engine's precision already allows rounding below fp32
        self._tf32 = engine.precision != "fp32"

    @property
    def input_names(self) -> list[str]:
        return self.engine.input_names

    def run(self, inputs: Mapping[str, Any], *, as_numpy: bool | None = None) -> dict[str, Any]:
        """Runs the engine. Every input is validated before any work starts."""
        # inputs shaped as those of a graph already captured were checked for its capture
        if self.graphs is not None and not as_numpy and isinstance(inputs, Mapping):
            with torch.inference_mode():
                results = self.graphs.replay_known(inputs)
            if results is not None:
                return self._named(results, numpy_out=False)
        check_inputs(self.engine, inputs, self._input_facts)
        numpy_in = as_numpy if as_numpy is not None else not any(
            isinstance(v, torch.Tensor) for v in inputs.values())
        feeds = {name: _to_device(value, self.device) for name, value in inputs.items()}
        # a replay needs no backend flags (its kernels are chosen): setting cuDNN's five
        # flags and back costs more host time than the replay's launch, and the GPU waits
        # for it
        with torch.inference_mode():
            try:
                results = self.graphs.run(feeds) if self.graphs is not None else None
                if results is None:
                    with self._backend_flags():
                        results = self.program.run(feeds)
            except StepError as exc:
                raise RuntimeError(
                    f"engine failed in layer {exc.step_path}: {exc.cause}") from exc.cause
        return self._named(results, numpy_out=numpy_in)

    def _named(self, results: list[Any], numpy_out: bool) -> dict[str, Any]:
        outputs = dict(zip(self.program.outputs, results))
        return {spec.name: (to_numpy(outputs[spec.name], spec.dtype) if numpy_out
                            else outputs[spec.name])
                for spec in self._outputs}

    def _backend_flags(self):
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False,
                                          allow_tf32=self._tf32)


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    if value is None:
        return None
    if isinstance(value, np.ndarray) and value.dtype == object:
        return value
    return to_torch(value, device)
