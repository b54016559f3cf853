"""CUDA graphs: capture the whole engine once per input shape, then replay it.

A replay launches every kernel of the engine with one call, so Python and launch overhead
vanish (that is most of the time at batch 1). A static-shape engine holds one graph; a
dynamic one captures one per shape seen, keeping the most recently used `capacity`.
An engine whose run cannot be captured (data-dependent shapes, host reads of device
values) is remembered as such for that shape and runs eagerly.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from kiln.ops.program import Program
from kiln.runtime.bind import captured_host_buffers

Key = tuple[tuple[str, tuple[int, ...], torch.dtype], ...]


@contextmanager
def rng_restored_on_failure(device: torch.device) -> Iterator[None]:
    """Around a capture that may fail: torch leaves its CUDA generator in capture mode
    when a capture ends in error (every later random op on the device then raises
    "Offset increment outside graph capture"), so a copy of its state taken before goes
    back in."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    generator = torch.cuda.default_generators[index]
    saved = generator.clone_state()
    try:
        yield
    except BaseException:
        generator.graphsafe_set_state(saved)
        raise


def replayed_ms(call: Callable[[], Any], reps: int, rounds: int = 3,
                per_graph: int = 20) -> float | None:
    """Milliseconds per call (best of `rounds`) as a CUDA graph replays it, the way engines
    run on CUDA: no host launch cost, which would otherwise rank a kernel launched from
    Python (Triton) behind a torch one of equal device time. None when the call cannot be
    captured (a host sync, an uncapturable op): the caller times it eagerly."""
    per_graph = max(1, min(reps, per_graph))
    # capture_begin/end on a side stream, not torch.cuda.graph(): that one runs the garbage
    # collector and empties the allocator's cache on every capture, once per call here
    stream = _capture_stream(torch.cuda.current_device())
    torch.cuda.synchronize()
    try:
        graph = torch.cuda.CUDAGraph()
        with rng_restored_on_failure(stream.device), torch.cuda.stream(stream):
            call()  # warm-up on the capture stream: cuBLAS sets up its workspace per stream
            torch.cuda.synchronize()
            graph.capture_begin()
            try:
                for _ in range(per_graph):
                    call()
            finally:
                graph.capture_end()
        graph.replay()
        torch.cuda.synchronize()
    except Exception:
        torch.cuda.synchronize()
        return None
    replays = max(1, reps // per_graph)
    best = float("inf")
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / (replays * per_graph))
    return best


@functools.cache
def _capture_stream(index: int) -> torch.cuda.Stream:
    # one for every timing capture: each stream a cuBLAS call runs on keeps its workspace
    return torch.cuda.Stream(index)


@dataclass
class Captured:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]
    outputs: list[torch.Tensor]
    pinned: list[torch.Tensor]  # host buffers the graph copies from

    def load(self, feeds: Mapping[str, torch.Tensor]) -> None:
        """Copies feeds into the graph's inputs by one multi-tensor kernel, one host call
        where a copy_ per input would be a cudaMemcpyAsync each: the GPU waits for every
        host call before the replay's."""
        torch._foreach_copy_([self.inputs[n] for n in feeds], list(feeds.values()),
                             non_blocking=True)


def _key(feeds: Mapping[str, Any]) -> Key | None:
    """Names, shapes and types of feeds that are all CUDA tensors; None for others."""
    if not all(isinstance(t, torch.Tensor) and t.device.type == "cuda" for t in feeds.values()):
        return None
    return tuple(sorted((n, tuple(t.shape), t.dtype) for n, t in feeds.items()))


class GraphRunner:
    def __init__(self, program: Program, device: torch.device, capacity: int = 8,
                 flags: Callable[[], Any] | None = None) -> None:
        self.program = program
        self.device = device
        self.capacity = capacity
        self.flags = flags
        self.graphs: OrderedDict[Key, Captured | None] = OrderedDict()
        self.failures: dict[Key, str] = {}
        # one side stream for every warm-up and capture of this context: each stream gets
        # its own cuBLAS workspace, so a new stream per capture would hold one more each
        self.stream: torch.cuda.Stream | None = None

    def run(self, feeds: dict[str, Any]) -> list[Any] | None:
        """The outputs (fresh tensors), or None when this shape cannot be captured."""
        key = _key(feeds)
        if key is None or key in self.failures:
            return None
        captured = self.graphs.get(key)
        if captured is None:
            with self.flags() if self.flags is not None else contextlib.nullcontext():
                captured = self._capture(key, feeds)
            if captured is None:
                return None
        return self._replay(key, captured, feeds)

    def replay_known(self, feeds: Mapping[str, Any]) -> list[Any] | None:
        """The outputs when `feeds` (CUDA tensors) have the names, shapes and types of a
        captured graph, else None. Such feeds passed every check when that graph was
        captured: the caller skips them, which the GPU would otherwise wait for."""
        key = _key(feeds)
        captured = self.graphs.get(key) if key is not None else None
        return None if captured is None else self._replay(key, captured, feeds)

    def _replay(self, key: Key, captured: Captured, feeds: Mapping[str, Any]) -> list[Any]:
        self.graphs.move_to_end(key)
        captured.load(feeds)
        captured.graph.replay()
        return [t.clone() for t in captured.outputs]

    def _capture(self, key: Key, feeds: dict[str, torch.Tensor]) -> Captured | None:
        static = {n: t.clone() for n, t in feeds.items()}
        try:
            stream = self.stream = self.stream or torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up: cuDNN autotuning, lazy allocations
                    self.program.run(static)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            buffers = captured_host_buffers()
            buffers.clear()
            with rng_restored_on_failure(self.device), \
                    torch.cuda.graph(graph, stream=stream), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. "graph is empty" for host-only engines
                outputs = self.program.run(static)
            pinned = list(buffers)
            buffers.clear()
            if not all(isinstance(o, torch.Tensor) for o in outputs):
                raise TypeError("the engine returns non-tensor outputs")
        except Exception as exc:
            torch.cuda.synchronize(self.device)
            self.failures[key] = f"{type(exc).__name__}: {exc}"
            return None
        captured = Captured(graph, static, outputs, pinned)
        self.graphs[key] = captured
        while len(self.graphs) > self.capacity:
            self.graphs.popitem(last=False)
        return captured
