"""Per-layer timing of an engine: each layer's share of a run (trtexec's --dumpProfile).

Every top-level layer is bracketed by CUDA events (host clock on the CPU) over several
runs, run eagerly (a CUDA graph replay has no layers to tell apart). Eager timing counts
the host's launch cost where it exceeds the kernel's, so with `replayed` each layer is
also captured alone in a CUDA graph and timed as replayed, the way an engine runs on CUDA
(what the INT8/FP8 precision choice compares: a Triton kernel's Python launch costs more
than a cuDNN call's); a layer that cannot be captured keeps its eager time.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from kiln.ops.tensors import to_torch
from kiln.runtime.context import ExecutionContext
from kiln.runtime.cuda_graphs import replayed_ms

REPLAYS = 30  # calls per replayed layer timing (graphs of 10)


@dataclass
class LayerTime:
    name: str
    op: str
    tactic: str
    precision: str
    ms: float  # mean per run
    elements: int = 0  # of the layer's first output (what a quantize step there would move)


def profile_layers(context: ExecutionContext, inputs: Mapping[str, Any], runs: int = 10,
                   warmup: int = 3, replayed: bool = False) -> list[LayerTime]:
    program = context.program
    layers = {layer["name"]: layer for layer in context.engine.plan["graph"]["layers"]}
    feeds = {name: to_torch(value, context.device) for name, value in inputs.items()}
    cuda = context.device.type == "cuda"
    totals = [0.0] * len(program.steps)
    originals = [step.fn for step in program.steps]
    marks: list[Any] = []
    replays: dict[int, float] = {}
    elements: dict[int, int] = {}
    replay_now = [False]

    def wrap(index: int, fn):
        def timed(*args, **kwargs):
            start = _mark(cuda)
            result = fn(*args, **kwargs)
            marks.append((index, start, _mark(cuda)))
            elements[index] = _elements(result)
            if replay_now[0]:
                ms = replayed_ms(lambda: fn(*args, **kwargs), reps=REPLAYS, per_graph=10)
                if ms is not None:
                    replays[index] = ms
            return result

        return timed

    try:
        for i, step in enumerate(program.steps):
            step.fn = wrap(i, originals[i])
        with torch.inference_mode(), context._backend_flags():
            for run in range(warmup + runs):
                marks.clear()
                replay_now[0] = replayed and cuda and run == warmup + runs - 1
                program.run(feeds)
                if cuda:
                    torch.cuda.synchronize(context.device)
                if run >= warmup:
                    for index, start, end in marks:
                        totals[index] += _elapsed(start, end, cuda)
    finally:
        for step, fn in zip(program.steps, originals):
            step.fn = fn
    result = []
    for index, (step, total) in enumerate(zip(program.steps, totals)):
        layer = layers.get(step.name, {})
        result.append(LayerTime(step.name, layer.get("op", "?"), layer.get("tactic", "?"),
                                layer.get("precision", "?"), replays.get(index, total / runs),
                                elements.get(index, 0)))
    return result


def _elements(result: Any) -> int:
    first = result[0] if isinstance(result, (tuple, list)) and result else result
    return first.numel() if isinstance(first, torch.Tensor) else 0


def _mark(cuda: bool) -> Any:
    if cuda:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event
    return time.perf_counter()


def _elapsed(start: Any, end: Any, cuda: bool) -> float:
    return start.elapsed_time(end) if cuda else (end - start) * 1000
