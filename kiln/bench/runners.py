"""Runners: one engine or framework behind the same phases (H2D, compute, D2H).

`set_inputs` stages host inputs once (pinned on CUDA, with device buffers), so each
timed query copies, computes and copies back exactly what trtexec's does. `outputs()`
gives the last query's outputs as numpy arrays, for accuracy checks.

- KilnRunner: a kiln Engine through its ExecutionContext.
- OrtRunner: ONNX Runtime; its session copies inside `run`, so transfers are not timed
  apart (`separate_transfers = False`).
- TorchRunner: a PyTorch module, eager, replayed from a CUDA graph, or torch.compile'd.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from kiln.engine.engine import Engine
from kiln.errors import KilnError
from kiln.ops.tensors import to_numpy, to_torch
from kiln.runtime import ExecutionContext
from kiln.runtime.validate import check_inputs


class PeerUnavailable(KilnError):
    """A peer that cannot run here (no CUDA for CUDA graphs, no ONNX Runtime, ...)."""


class KilnRunner:
    separate_transfers = True

    def __init__(self, engine: Engine, name: str = "kiln", *,
                 use_cuda_graph: bool | None = None,
                 device: str | torch.device | None = None) -> None:
        self.engine = engine
        self.name = name
        self.context, self.cuda_graph = make_context(engine, use_cuda_graph, device)
        self.device = self.context.device
        self._host: dict[str, Any] = {}
        self._feeds: dict[str, Any] = {}
        self._out: dict[str, Any] = {}
        self._host_out: dict[str, torch.Tensor] = {}
        self._copied_back = False

    def set_inputs(self, inputs: Mapping[str, Any]) -> None:
        check_inputs(self.engine, inputs)
        self._host, self._feeds = {}, {}
        for name, value in inputs.items():
            tensor = to_torch(value) if not _is_opaque(value) else value
            if self.device.type == "cuda" and isinstance(tensor, torch.Tensor):
                self._host[name] = tensor.pin_memory()
                self._feeds[name] = tensor.to(self.device)
            else:
                self._feeds[name] = tensor
        self._out, self._host_out = {}, {}

    def h2d(self) -> None:
        for name, host in self._host.items():
            self._feeds[name].copy_(host, non_blocking=True)

    def compute(self, on_step: Callable[..., None] | None = None) -> None:
        self._copied_back = False
        if on_step is None:
            self._out = self.context.run(self._feeds, as_numpy=False)
            return
        # profiled: the same checks as ExecutionContext.run, then the program with a hook,
        # eagerly (a CUDA graph replay has no layers to tell apart)
        check_inputs(self.engine, self._feeds)
        with torch.inference_mode(), self.context._backend_flags():
            results = self.context.program.run(self._feeds, on_step=on_step)
        self._out = dict(zip(self.context.program.outputs, results))

    def d2h(self) -> None:
        for name, value in self._out.items():
            if not isinstance(value, torch.Tensor) or value.device.type == "cpu":
                continue
            host = self._host_out.get(name)
            if host is None or host.shape != value.shape or host.dtype != value.dtype:
                host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
                self._host_out[name] = host
            host.copy_(value, non_blocking=True)
        self._copied_back = True

    def outputs(self) -> dict[str, Any]:
        if self._copied_back and self._host_out:
            torch.cuda.synchronize(self.device)
        return {name: to_numpy(self._host_out[name] if self._copied_back and
                               name in self._host_out else value)
                for name, value in self._out.items()}

    def close(self) -> None:
        self._feeds, self._host, self._out, self._host_out = {}, {}, {}, {}


def make_context(engine: Engine, use_cuda_graph: bool | None,
                 device: str | torch.device | None = None) -> tuple[ExecutionContext, str]:
    """An ExecutionContext with CUDA graphs on, off, or as the runtime decides (None: on
    with CUDA). Returns the context and what became of CUDA graphs: "on", "off", "n/a on
    the CPU" or "not available in this kiln"."""
    on_cpu = (torch.device(device).type if device is not None
              else engine.device["kind"]) == "cpu"
    if on_cpu:
        return ExecutionContext(engine, device=device), \
            "off" if not use_cuda_graph else "n/a on the CPU"
    if "cuda_graph" not in inspect.signature(ExecutionContext).parameters:
        state = "not available in this kiln" if use_cuda_graph else "off"
        return ExecutionContext(engine, device=device), state
    context = ExecutionContext(engine, device=device, cuda_graph=use_cuda_graph)
    return context, "on" if getattr(context, "graphs", None) is not None else "off"


def _is_opaque(value: Any) -> bool:
    return isinstance(value, list) or value is None or (
        isinstance(value, np.ndarray) and value.dtype == object)


class OrtRunner:
    separate_transfers = False

    def __init__(self, model: str, name: str = "ort", *, provider: str = "cpu") -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise PeerUnavailable("onnxruntime is not installed",
                                  hint="pip install onnxruntime (or kiln[bench])") from None
        wanted = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}[provider]
        if wanted not in ort.get_available_providers():
            raise PeerUnavailable(
                f"ONNX Runtime here has no {wanted} (it has "
                f"{', '.join(ort.get_available_providers())})",
                hint="install onnxruntime-gpu for the CUDA provider")
        self.name = name
        self.device = torch.device("cuda" if provider == "cuda" else "cpu")
        started = time.perf_counter()
        self.session = ort.InferenceSession(str(model), providers=[wanted])
        self.build_seconds = time.perf_counter() - started
        self._names = [o.name for o in self.session.get_outputs()]
        self._feeds: dict[str, Any] = {}
        self._out: list[Any] = []

    def set_inputs(self, inputs: Mapping[str, Any]) -> None:
        self._feeds = {k: np.asarray(v) for k, v in inputs.items()}

    def h2d(self) -> None:
        pass

    def compute(self, on_step: Callable[..., None] | None = None) -> None:
        self._out = self.session.run(None, self._feeds)

    def d2h(self) -> None:
        pass

    def outputs(self) -> dict[str, Any]:
        return dict(zip(self._names, self._out))

    def close(self) -> None:
        self._feeds, self._out = {}, []


TORCH_MODES = ("eager", "cuda-graph", "compile")


class TorchRunner:
    """A torch.nn.Module called with the inputs in `input_names` order."""

    separate_transfers = True

    def __init__(self, module: torch.nn.Module, input_names: Sequence[str],
                 output_names: Sequence[str], *, mode: str = "eager", name: str | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                 compile_options: dict[str, Any] | None = None) -> None:
        if mode not in TORCH_MODES:
            raise KilnError(f"unknown torch peer mode {mode!r}",
                            hint=f"use one of {', '.join(TORCH_MODES)}")
        self.device = torch.device(device)
        if mode == "cuda-graph" and self.device.type != "cuda":
            raise PeerUnavailable("CUDA graphs need a CUDA device; this run is on the CPU")
        self.name = name or f"torch-{mode}"
        self.mode = mode
        self.input_names, self.output_names = list(input_names), list(output_names)
        self.dtype = dtype
        self.module = module.eval().to(self.device)
        if dtype is not None:
            self.module = self.module.to(dtype)
        self.fn: Callable[..., Any] = self.module
        if mode == "compile":
            self.fn = torch.compile(self.module, **(compile_options or {}))
        self.build_seconds = 0.0  # compile time is taken at the first call (set_inputs)
        self._host: list[torch.Tensor] = []
        self._feeds: list[torch.Tensor] = []
        self._out: list[Any] = []
        self._host_out: list[torch.Tensor] = []
        self._graph: Any = None

    def set_inputs(self, inputs: Mapping[str, Any]) -> None:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise KilnError(f"{self.name}: no input named {', '.join(missing)}")
        host = [self._cast(to_torch(inputs[n])) for n in self.input_names]
        cuda = self.device.type == "cuda"
        self._host = [t.pin_memory() for t in host] if cuda else host
        self._feeds = [t.to(self.device) for t in host]
        started = time.perf_counter()
        with torch.inference_mode():
            self._out = _as_list(self.fn(*self._feeds))  # first call: compiles if asked
        if cuda:
            torch.cuda.synchronize(self.device)
        if self.mode == "compile":
            self.build_seconds += time.perf_counter() - started
        if self.mode == "cuda-graph":
            self._capture()

    def _cast(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.dtype is not None and tensor.is_floating_point():
            return tensor.to(self.dtype)
        return tensor

    def _capture(self) -> None:
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(3):  # warm up off the default stream before capture
                self.fn(*self._feeds)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph), torch.no_grad():
            self._out = _as_list(self.fn(*self._feeds))

    def h2d(self) -> None:
        for device, host in zip(self._feeds, self._host):
            device.copy_(host, non_blocking=True)

    def compute(self, on_step: Callable[..., None] | None = None) -> None:
        if self._graph is not None:
            self._graph.replay()
            return
        with torch.inference_mode():
            self._out = _as_list(self.fn(*self._feeds))

    def d2h(self) -> None:
        if self.device.type != "cuda":
            return
        if len(self._host_out) != len(self._out) or any(
                h.shape != o.shape for h, o in zip(self._host_out, self._out)):
            self._host_out = [torch.empty(o.shape, dtype=o.dtype, pin_memory=True)
                              for o in self._out]
        for host, value in zip(self._host_out, self._out):
            host.copy_(value, non_blocking=True)

    def outputs(self) -> dict[str, Any]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        names = self.output_names if len(self.output_names) == len(self._out) else [
            f"output_{i}" for i in range(len(self._out))]
        result = {}
        for name, value in zip(names, self._out):
            array = to_numpy(value.detach())
            if self.dtype is not None and array.dtype.kind == "f":
                array = array.astype(np.float32)  # compare in the model's type
            result[name] = array
        return result

    def close(self) -> None:
        self._feeds, self._host, self._out, self._host_out, self._graph = [], [], [], [], None


def _as_list(result: Any) -> list[Any]:
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, Mapping):
        return list(result.values())
    return list(result)
