"""Activation memory: a trace of one run, and a plan that reuses buffers.

Each value lives from the step that makes it to the last step that reads it. The planner
places values in one arena, biggest first, each at the lowest offset that does not
overlap a value alive at the same time (greedy by size, as TFLite and TensorRT do); the
arena's size is the engine's peak activation memory. Tensors that alias their input
(Reshape, Identity) own no memory of their own.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from kiln.ops.program import Program, Scope, Step
from kiln.ops.tensors import memory_order


@dataclass
class Buffer:
    name: str
    size: int
    first: int
    last: int
    offset: int = 0


def trace(program: Program, feeds: Mapping[str, Any], layouts: dict[str, list[int]] | None = None
          ) -> tuple[list[Buffer], dict[str, list]]:
    """Runs `program` once; returns the buffers it allocates and every value's shape.

    `layouts`, when given, receives the memory order (dims, outermost first) of each value
    that is not row-major: a permuted view a Transpose hands on, a channels-last output of
    an NHWC convolution (the pooling after it is timed on what it will be given)."""
    # storage address -> (the buffer's name, the tensors seen on it). A value whose storage
    # a live tensor already uses is a view; once they are all freed, the allocator may hand
    # the address to a new value, which then owns a buffer of its own.
    owners: dict[int, tuple[str | None, list[weakref.ref]]] = {}
    for value in [*program.constants.values(), *feeds.values()]:
        if isinstance(value, torch.Tensor):
            owners.setdefault(_storage(value), (None, []))[1].append(weakref.ref(value))
    buffers: dict[str, Buffer] = {}
    alias: dict[str, str] = {}  # a view's name -> the buffer it lives in
    shapes: dict[str, list] = {n: list(v.shape) for n, v in feeds.items()
                               if isinstance(v, torch.Tensor)}

    def touch(name: str | None, index: int) -> None:
        owner = alias.get(name, name) if name is not None else None
        if owner in buffers:
            buffers[owner].last = index

    def outputs(step: Step, scope: Scope):
        """The step's tensor outputs, their shapes (and memory orders) noted on the way."""
        for name in step.outputs:
            value = scope.get(name) if name is not None else None
            if not isinstance(value, torch.Tensor):
                continue
            shapes[name] = list(value.shape)
            order = memory_order(value) if layouts is not None else None
            if order is not None:
                layouts[name] = order
            yield name, value

    def record(index: int, step: Step, scope: Scope) -> None:
        for name in [*step.inputs, *_captures(step)]:
            touch(name, index)
        for name, value in outputs(step, scope):
            key = _storage(value)
            owner, seen = owners.get(key, (None, []))
            seen = [ref for ref in seen if ref() is not None]
            if seen:  # a view of a live value
                if owner is not None:
                    alias[name] = owner
                    touch(name, index)
            else:
                buffers[name] = Buffer(name, value.untyped_storage().nbytes(), index, index)
                owner = name
            owners[key] = (owner, [*seen, weakref.ref(value)])

    def record_nested(index: int, step: Step, scope: Scope) -> None:
        # shapes (and memory orders) only: the tuner times layers inside If/Loop bodies on
        # them; a body's values live and die within its step, so they take no buffers here
        for _ in outputs(step, scope):
            pass

    program.run(feeds, on_step=record, on_nested_step=record_nested)
    for name in program.outputs:
        touch(name, len(program.steps))
    return list(buffers.values()), shapes


def _captures(step: Step) -> list[str]:
    """Outer values a step's subgraph bodies read: alive until the step is done."""
    names: list[str] = []
    for body in step.subgraphs.values():
        for program in body if isinstance(body, list) else [body]:
            names.extend(program.captures())
    return names


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
