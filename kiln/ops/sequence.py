"""Sequences: SequenceConstruct/Empty/Insert/Erase/At/Length, SplitToSequence,
ConcatFromSequence and SequenceMap.

A sequence value is a Python list of tensors (string tensors: numpy object arrays). Ops
never modify a list they were given: a sequence may be read by several consumers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from kiln.ops._common import axis as normalize_axis
from kiln.ops._common import ints
from kiln.ops.registry import register

Body = Callable[..., list[Any]]


def _position(index: Any, length: int, *, inserting: bool) -> int:
    """A possibly negative sequence position as an index into a list of `length` items."""
    position = ints(index)[0]
    last = length if inserting else length - 1  # inserting may append
    if not -length <= position <= last:
        raise IndexError(f"sequence position {position} is out of range for a sequence of "
                         f"{length} tensor(s): expected {-length} to {last}")
    return position + length if position < 0 else position


@register("SequenceConstruct", 11)
def sequence_construct(*tensors: Any) -> list[Any]:
    return list(tensors)


@register("SequenceEmpty", 11)
def sequence_empty(*, dtype: int | None = None) -> list[Any]:
    return []


@register("SequenceInsert", 11, host_inputs=(2,))
def sequence_insert(sequence: list[Any], tensor: Any, position: Any = None) -> list[Any]:
    result = list(sequence)
    if position is None:
        result.append(tensor)
    else:
        result.insert(_position(position, len(result), inserting=True), tensor)
    return result


@register("SequenceErase", 11, host_inputs=(1,))
def sequence_erase(sequence: list[Any], position: Any = None) -> list[Any]:
    result = list(sequence)
    index = -1 if position is None else _position(position, len(result), inserting=False)
    if not result:
        raise IndexError("SequenceErase on an empty sequence")
    del result[index]
    return result


@register("SequenceAt", 11, host_inputs=(1,))
def sequence_at(sequence: list[Any], position: Any) -> Any:
    return sequence[_position(position, len(sequence), inserting=False)]


@register("SequenceLength", 11)
def sequence_length(sequence: list[Any], *, device: torch.device | None = None) -> torch.Tensor:
    return torch.tensor(len(sequence), dtype=torch.int64, device=device)


@register("SplitToSequence", 11, host_inputs=(1,))
def split_to_sequence(x: torch.Tensor, split: torch.Tensor | None = None, *, axis: int = 0,
                      keepdims: int = 1) -> list[torch.Tensor]:
    dim = normalize_axis(axis, x.dim())
    if split is None:
        parts = list(torch.split(x, 1, dim))
        return parts if keepdims else [p.squeeze(dim) for p in parts]
    if split.dim() == 0:  # equal chunks of this length, the last one shorter
        return list(torch.split(x, int(split.item()), dim))
    sizes = ints(split)
    if sum(sizes) != x.shape[dim]:
        raise ValueError(f"SplitToSequence: split sizes {sizes} sum to {sum(sizes)}, "
                         f"but axis {axis} has length {x.shape[dim]}")
    return list(torch.split(x, sizes, dim))


@register("ConcatFromSequence", 11)
def concat_from_sequence(sequence: list[torch.Tensor], *, axis: int,
                         new_axis: int = 0) -> torch.Tensor:
    if not sequence:
        raise ValueError("ConcatFromSequence needs a non-empty sequence")
    rank = sequence[0].dim()
    if new_axis:
        return torch.stack(sequence, normalize_axis(axis, rank + 1))
    return torch.cat(sequence, normalize_axis(axis, rank))


@register("SequenceMap", 17)
def sequence_map(sequence: list[Any], *extra: Any, body: Body,
                 num_outputs: int = 1) -> tuple[list[Any], ...]:
    """Runs `body` once per item; extra sequences go item by item, extra tensors whole."""
    for other in extra:
        if isinstance(other, list) and len(other) != len(sequence):
            raise ValueError(f"SequenceMap: the sequences have different lengths "
                             f"({len(sequence)} and {len(other)})")
    results: list[list[Any]] = [[] for _ in range(num_outputs)]
    for i, item in enumerate(sequence):
        args = [other[i] if isinstance(other, list) else other for other in extra]
        for bucket, value in zip(results, body(item, *args)):
            bucket.append(value)
    return tuple(results)
