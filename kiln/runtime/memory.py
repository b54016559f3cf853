"""Activation memory: a trace of one run, and a plan that reuses buffers.

Each value lives from the step that makes it to the last step that reads it. The planner
places values in one arena, biggest first, each at the lowest offset that does not
overlap a value alive at the same time (greedy by size, as TFLite and TensorRT do); the
arena's size is the engine's peak activation memory. Tensors that alias their input
(Reshape, Identity) own no memory of their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from kiln.ops.program import Program, Scope, Step


@dataclass
class Buffer:
    name: str
    size: int
    first: int
    last: int
    offset: int = 0


def trace(program: Program, feeds: Mapping[str, Any]) -> tuple[list[Buffer], dict[str, list]]:
    """Runs `program` once; returns the buffers it allocates and every value's shape."""
    owners: set[int] = {_storage(t) for t in program.constants.values()
                        if isinstance(t, torch.Tensor)}
    owners |= {_storage(t) for t in feeds.values() if isinstance(t, torch.Tensor)}
    buffers: dict[str, Buffer] = {}
    shapes: dict[str, list] = {n: list(v.shape) for n, v in feeds.items()
                               if isinstance(v, torch.Tensor)}

    def record(index: int, step: Step, scope: Scope) -> None:
        for name in step.inputs:
            if name in buffers:
                buffers[name].last = index
        for name in step.outputs:
            value = scope.get(name) if name is not None else None
            if not isinstance(value, torch.Tensor):
                continue
            shapes[name] = list(value.shape)
            key = _storage(value)
            if key not in owners:  # a view of another value owns nothing new
                owners.add(key)
                buffers[name] = Buffer(name, value.untyped_storage().nbytes(), index, index)

    program.run(feeds, on_step=record)
    for name in program.outputs:
        if name in buffers:
            buffers[name].last = len(program.steps)
    return list(buffers.values()), shapes


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr() if t.numel() else id(t)


def plan_arena(buffers: list[Buffer], alignment: int = 256) -> int:
    """Assigns offsets (greedy by size); returns the arena size in bytes."""
    placed: list[Buffer] = []
    arena = 0
    for buf in sorted(buffers, key=lambda b: (-b.size, b.first)):
        size = -(-buf.size // alignment) * alignment
        live = sorted((b for b in placed if b.first <= buf.last and buf.first <= b.last),
                      key=lambda b: b.offset)
        offset = 0
        for other in live:
            other_size = -(-other.size // alignment) * alignment
            if offset + size <= other.offset:
                break
            offset = max(offset, other.offset + other_size)
        buf.offset = offset
        placed.append(buf)
        arena = max(arena, offset + size)
    return arena


def peak_live(buffers: list[Buffer]) -> int:
    """The most bytes alive at once: a lower bound for any arena."""
    if not buffers:
        return 0
    last = max(b.last for b in buffers)
    return max(sum(b.size for b in buffers if b.first <= i <= b.last) for i in range(last + 1))
