"""Batch-size sweeps (`--batch=1,8,32,64`): one engine with one optimization profile per
batch size, each tuned (min = opt = max) at its batch, the other dims as --shapes gives
them or as kiln's profile defaults have them.

The batch is the first axis of every tensor input; the model must leave it dynamic.
"""

from __future__ import annotations

from kiln.bench.inputs import InputSpec
from kiln.engine.engine import Engine
from kiln.errors import KilnError


def parse_batches(text: str) -> list[int]:
    """`1,8,32,64` -> [1, 8, 32, 64] (sorted, each once)."""
    batches = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            value = int(item)
        except ValueError:
            raise KilnError(f"--batch: {item!r} is not an integer",
                            hint="write --batch=1,8,32,64") from None
        if value < 1:
            raise KilnError(f"--batch sizes must be 1 or more, got {value}")
        batches.append(value)
    if not batches:
        raise KilnError("--batch needs at least one size", hint="write --batch=1,8,32,64")
    return sorted(set(batches))


def check_dynamic_batch(declared: dict[str, list], batches: list[int]) -> None:
    """Every input's first axis must be dynamic (or fixed at the only batch asked)."""
    for name, shape in declared.items():
        if not shape:
            raise KilnError(f"--batch needs a batch axis, but input {name!r} is a scalar")
        first = shape[0]
        if isinstance(first, int) and batches != [first]:
            raise KilnError(
                f"--batch={','.join(map(str, batches))} needs a dynamic first (batch) axis, "
                f"but input {name!r} is fixed at {first} "
                f"({'x'.join('?' if not isinstance(d, int) else str(d) for d in shape)})",
                hint="export the model with a dynamic batch axis (dynamic_axes / dynamo "
                     "dynamic_shapes), or drop --batch")


def batch_profiles(specs_by_batch: dict[int, list[InputSpec]]) -> list[dict]:
    """BuilderConfig profiles: one per batch, min = opt = max = the inputs at that batch."""
    profiles = []
    for specs in specs_by_batch.values():
        shapes = {s.name: list(s.shape) for s in specs}
        profiles.append({"min": shapes, "opt": shapes, "max": shapes})
    return profiles


def check_engine_batches(engine: Engine, specs_by_batch: dict[int, list[InputSpec]]) -> None:
    """A saved engine must accept every batch asked for."""
    for batch, specs in specs_by_batch.items():
        shapes = {s.name: tuple(s.shape) for s in specs}
        reasons = [p.accepts(shapes) for p in engine.profiles]
        if reasons and all(r is not None for r in reasons):
            raise KilnError(f"the engine has no optimization profile for batch {batch} "
                            f"({reasons[0]})",
                            hint="bench the .onnx model with --batch (kiln builds one "
                                 "profile per batch), or rebuild with --minShapes/--maxShapes "
                                 "that cover it")
