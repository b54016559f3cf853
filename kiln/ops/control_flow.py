"""Control flow: If, Loop, Scan. Bodies arrive as callables bound to the enclosing scope."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from kiln.ops.registry import register

Body = Callable[..., list[Any]]


def _truth(cond: Any) -> bool:
    if isinstance(cond, torch.Tensor):
        return bool(cond.reshape(-1)[0].item())
    return bool(cond)


@register("If", 1, host_inputs=(0,))
def if_(cond: torch.Tensor, *, then_branch: Body, else_branch: Body) -> tuple[Any, ...]:
    outputs = then_branch() if _truth(cond) else else_branch()
    return tuple(outputs)


@register("Loop", 1, host_inputs=(0, 1))
def loop(max_trip: torch.Tensor | None, cond: torch.Tensor | None, *state: Any, body: Body,
         num_outputs: int = 1) -> tuple[Any, ...]:
    trips = int(max_trip.reshape(-1)[0].item()) if max_trip is not None else None
    keep_going = _truth(cond) if cond is not None else True
    values = list(state)
    n_scan = num_outputs - len(values)
    scans: list[list[Any]] = [[] for _ in range(n_scan)]
    i = 0
    while keep_going and (trips is None or i < trips):
        iteration = torch.tensor(i, dtype=torch.int64)
        cond_in = torch.tensor(keep_going)
        outputs = body(iteration, cond_in, *values)
        keep_going = _truth(outputs[0]) if cond is not None or outputs[0] is not None else True
        values = list(outputs[1:1 + len(values)])
        for collected, value in zip(scans, outputs[1 + len(values):]):
            collected.append(value)
        i += 1
    stacked = [_stack(c) for c in scans]
    return tuple(values + stacked)


def _stack(items: list[Any]) -> Any:
    if not items:
        return torch.zeros((0,), dtype=torch.float32)
    if isinstance(items[0], torch.Tensor):
        return torch.stack(items)
    return items


@register("Scan", 9)
def scan(*inputs: Any, body: Body, num_scan_inputs: int, scan_input_axes: list[int] | None = None,
         scan_input_directions: list[int] | None = None,
         scan_output_axes: list[int] | None = None,
         scan_output_directions: list[int] | None = None, num_outputs: int = 1) -> tuple[Any, ...]:
    n_state = len(inputs) - num_scan_inputs
    states = list(inputs[:n_state])
    sequences = list(inputs[n_state:])
    in_axes = scan_input_axes or [0] * num_scan_inputs
    in_dirs = scan_input_directions or [0] * num_scan_inputs
    sequences = [
        torch.movedim(s, a if a >= 0 else a + s.dim(), 0) for s, a in zip(sequences, in_axes)
    ]
    sequences = [torch.flip(s, [0]) if d else s for s, d in zip(sequences, in_dirs)]
    steps = sequences[0].shape[0] if sequences else 0
    n_scan_out = num_outputs - n_state
    collected: list[list[torch.Tensor]] = [[] for _ in range(n_scan_out)]
    for t in range(steps):
        outputs = body(*states, *[s[t] for s in sequences])
        states = list(outputs[:n_state])
        for bucket, value in zip(collected, outputs[n_state:]):
            bucket.append(value)
    out_axes = scan_output_axes or [0] * n_scan_out
    out_dirs = scan_output_directions or [0] * n_scan_out
    results = []
    for bucket, a, d in zip(collected, out_axes, out_dirs):
        stacked = torch.stack(bucket)
        if d:
            stacked = torch.flip(stacked, [0])
        rank = stacked.dim()
        results.append(torch.movedim(stacked, 0, a if a >= 0 else a + rank))
    return tuple(states + results)


@register("Scan", 8)
def scan_8(sequence_lens: torch.Tensor | None, *inputs: Any, body: Body, num_scan_inputs: int,
           directions: list[int] | None = None, num_outputs: int = 1) -> tuple[Any, ...]:
    """Opset 8 has a batch axis 0 and scans axis 1 of each batch entry."""
    n_state = len(inputs) - num_scan_inputs
    batch = inputs[0].shape[0] if inputs else 0
    per_batch = []
    for b in range(batch):
        args = [x[b] for x in inputs]
        per_batch.append(scan(*args, body=body, num_scan_inputs=num_scan_inputs,
                              scan_input_directions=directions, num_outputs=num_outputs))
    return tuple(torch.stack([r[i] for r in per_batch]) for i in range(num_outputs)) if (
        per_batch) else tuple(inputs[:n_state])
