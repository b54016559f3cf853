"""One loaded model version: its engine behind a batcher, its configuration and statistics, and
the checks every request passes before it may join a queue."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from kiln.engine.engine import Engine
from kiln.runtime import ExecutionContext
from kiln.serve import datatypes
from kiln.serve.batcher import Batcher, Pending, make_runner
from kiln.serve.errors import ServeError
from kiln.serve.model_config import cuda_graphs, scheduling
from kiln.serve.proto import pb
from kiln.serve.stats import ModelStats

PLATFORM = "kiln"


@dataclass
class InferRequest:
    """A decoded request, whichever protocol it came by."""

    inputs: dict[str, np.ndarray]
    outputs: list[str] | None = None  # None: every output
    id: str = ""
    timeout_us: int = 0


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: datatypes.Datatype
    shape: tuple[int, ...]  # as clients see it: -1 for the batch axis and dynamic axes
    optional: bool = False

    def to_json(self) -> dict:
        return {"name": self.name, "datatype": self.datatype.name, "shape": list(self.shape)}


class ModelVersion:
    def __init__(self, config, version: int, engine: Engine, devices: list[str],
                 default_max_queue: int) -> None:
        self.name: str = config.name
        self.version = version
        self.config = config
        self.engine = engine
        self.scheduling = scheduling(config, default_max_queue)
        self.batching = config.max_batch_size > 0
        self.inputs = {t.name: self._spec(t, "input") for t in config.input}
        self.outputs = {t.name: self._spec(t, "output") for t in config.output}
        self._profiles = engine.profiles
        self.stats = ModelStats()
        graphs = cuda_graphs(config, devices)
        runners = [make_runner(ExecutionContext(engine, device=d, cuda_graph=graphs), d)
                   for d in devices]
        self.devices = devices
        self.batcher = Batcher(self.name, self.scheduling, runners, self.stats)

    def _spec(self, tensor, side: str) -> TensorSpec:
        datatype = datatypes.from_config(pb.DataType.Name(tensor.data_type),
                                         f"model {self.name!r} {side} {tensor.name!r}")
        shape = ((-1,) if self.batching else ()) + tuple(tensor.dims)
        return TensorSpec(tensor.name, datatype, shape, getattr(tensor, "optional", False))

    def metadata(self) -> dict:
        return {"name": self.name, "versions": [str(self.version)], "platform": PLATFORM,
                "inputs": [s.to_json() for s in self.inputs.values()],
                "outputs": [s.to_json() for s in self.outputs.values()]}

    # ---------------------------------------------------------------- requests
    async def infer(self, request: InferRequest) -> Pending:
        """Checks the request, queues it, and waits for its outputs."""
        rows, key = self.check(request)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Pending] = loop.create_future()
        pending = Pending(request.inputs, rows, key,
                          done=lambda p: loop.call_soon_threadsafe(_settle, future, p),
                          cancelled=future.cancelled, timeout_ns=self._timeout_ns(request))
        self.batcher.submit(pending)
        await future  # cancelled with the caller; the batcher then drops the request
        if pending.error is not None:
            raise pending.error
        outputs = pending.outputs or {}
        if request.outputs is not None:
            pending.outputs = {name: outputs[name] for name in request.outputs}
        else:
            pending.outputs = {name: outputs[name] for name in self.outputs}
        return pending

    def _timeout_ns(self, request: InferRequest) -> int:
        s = self.scheduling
        if request.timeout_us and s.allow_timeout_override:
            return request.timeout_us * 1000
        return s.default_timeout_ns

    def check(self, request: InferRequest) -> tuple[int, tuple]:
        """(rows, batch key) of a request whose inputs fit the model, else a ServeError that
        names the input, what was given and what the model takes."""
        inputs = request.inputs
        unknown = [n for n in inputs if n not in self.inputs]
        missing = [n for n, s in self.inputs.items() if n not in inputs and not s.optional]
        if unknown or missing:
            problem = (f"unknown input(s) {', '.join(map(repr, unknown))}" if unknown
                       else f"missing input(s) {', '.join(map(repr, missing))}")
            raise ServeError(f"model {self.name!r}: {problem}; it takes "
                             f"{self._describe(self.inputs.values())}")
        rows = set()
        for name, array in inputs.items():
            rows.add(self._check_input(self.inputs[name], array))
        if len(rows) > 1:
            raise ServeError(f"model {self.name!r}: the inputs' batch sizes differ "
                             f"({', '.join(f'{n} {a.shape[0]}' for n, a in inputs.items())})",
                             hint="give every input the same first dimension")
        self._check_profiles(inputs)
        if request.outputs is not None:
            unknown = [n for n in request.outputs if n not in self.outputs]
            if unknown:
                raise ServeError(f"model {self.name!r} has no output(s) "
                                 f"{', '.join(map(repr, unknown))}; its outputs are "
                                 f"{', '.join(map(repr, self.outputs))}")
        key = tuple((n, a.shape[1:]) for n, a in sorted(inputs.items())) if self.batching else ()
        return (rows.pop() if self.batching else 1), key

    def _check_input(self, spec: TensorSpec, array: np.ndarray) -> int:
        what = f"model {self.name!r} input {spec.name!r}"
        if array.dtype != spec.datatype.numpy:
            given = datatypes.name_of(array.dtype)
            raise ServeError(f"{what} was sent as {given}; the model takes "
                             f"{spec.datatype.name}", hint=f"send it as {spec.datatype.name}")
        shape = array.shape
        fits = len(shape) == len(spec.shape) and all(
            want in (-1, size) for size, want in zip(shape, spec.shape))
        if not fits:
            raise ServeError(f"{what} has shape {list(shape)}; the model takes "
                             f"{list(spec.shape)}{self._batch_note()}")
        if self.batching and not 1 <= shape[0] <= self.config.max_batch_size:
            raise ServeError(f"{what} has batch size {shape[0]}; the model takes 1 to "
                             f"{self.config.max_batch_size} (max_batch_size)",
                             hint="split the request into smaller batches")
        return shape[0] if self.batching else 1

    def _check_profiles(self, inputs: dict[str, np.ndarray]) -> None:
        if not self._profiles:
            return
        shapes = {n: a.shape for n, a in inputs.items()}
        reasons = [p.accepts(shapes) for p in self._profiles]
        if all(r is not None for r in reasons):
            raise ServeError(f"model {self.name!r}: the input shapes are outside the engine's "
                             f"optimization profiles ({reasons[0]})",
                             hint="send shapes the engine was built for, or rebuild it with "
                             "wider --minShapes/--maxShapes")

    def _batch_note(self) -> str:
        if not self.batching:
            return ""
        return f" (-1 first: a batch of 1 to {self.config.max_batch_size})"

    @staticmethod
    def _describe(specs) -> str:
        return ", ".join(f"{s.name!r} ({s.datatype.name} {list(s.shape)})" for s in specs)

    def close(self, timeout_s: float | None = None) -> None:
        """Stops taking requests; returns when those queued have run (or after timeout_s)."""
        self.batcher.close(timeout_s)


def _settle(future: asyncio.Future, pending: Pending) -> None:
    if not future.done():  # a cancelled caller has gone
        future.set_result(pending)
