"""Tactics: concrete implementations of a layer for a device and precision.

A tactic says whether it can run a layer (`supports`), may prepare weights at build time
(`prepare`: transposed, fused or low-precision copies, saved in the engine), and turns a
layer of a loaded engine into a callable (`bind`). Every layer has at least the
`reference` tactic, the registry's torch implementation; faster tactics register
themselves for the ops they handle, and the builder picks among those that support a
layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from kiln.ops.registry import canonical_domain


@dataclass
class LayerSpec:
    """A layer as the engine stores it (the runtime's view: no IR, no onnx)."""

    name: str
    op: str
    domain: str
    opset: int | None
    inputs: list[str | None]
    outputs: list[str | None]
    attrs: dict[str, Any]
    precision: str = "fp32"
    placement: str = "device"
    tactic: str = "reference"
    params: dict[str, Any] = field(default_factory=dict)
    fused: list[str] = field(default_factory=list)
    # build time only: constant inputs (numpy) and the types of all inputs
    constant_inputs: dict[int, Any] = field(default_factory=dict)
    input_shapes: list[tuple | None] = field(default_factory=list)
    input_dtypes: list[str | None] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str]:
        return (canonical_domain(self.domain), self.op)


@dataclass(frozen=True)
class Target:
    """Where the engine will run: device and the precision the build allows."""

    device: torch.device
    precision: str = "fp32"


class Tactic:
    name: ClassVar[str] = ""
    ops: ClassVar[tuple[tuple[str, str], ...]] = ()  # (domain, op) pairs; () means any op
    priority: ClassVar[int] = 50  # without timing (optimization level 0), lowest wins
    min_level: ClassVar[int] = 0  # offered from this --builderOptimizationLevel on
    channels_last: ClassVar[bool] = False  # takes 4-D activations in NHWC memory order

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        return True

    # inputs whose constants `prepare` takes over (stored re-laid-out with the layer); the
    # runtime passes None for them and the original constants are dropped if unused
    replaces_inputs: ClassVar[tuple[int, ...]] = ()

    def prepare(self, layer: LayerSpec, target: Target) -> dict[str, torch.Tensor]:
        """Build-time work; returns tensors to store with the layer (may be empty)."""
        return {}

    def bind(self, layer: LayerSpec, tensors: dict[str, torch.Tensor],
             device: torch.device) -> Callable[..., Any]:
        raise NotImplementedError


_TACTICS: dict[str, Tactic] = {}


def register_tactic(cls: type[Tactic]) -> type[Tactic]:
    """Class decorator: makes a tactic available to the builder and the runtime."""
    if not cls.name:
        raise ValueError(f"tactic {cls.__name__} needs a name")
    _TACTICS[cls.name] = cls()
    return cls


def get_tactic(name: str) -> Tactic | None:
    return _TACTICS.get(name)


def candidates(layer: LayerSpec, target: Target, level: int = 5) -> list[Tactic]:
    """Tactics that can run `layer` on `target` at this optimization level, best guess
    first (specific tactics by priority, then the generic reference)."""
    specific = sorted((t for t in _TACTICS.values() if t.ops and layer.key in t.ops),
                      key=lambda t: (t.priority, t.name))
    usable = [t for t in specific if t.min_level <= level and t.supports(layer, target)]
    if usable:  # the generic reference is the fallback, not a competitor
        return usable
    return [t for t in _TACTICS.values() if not t.ops and t.supports(layer, target)]


def tactic_names() -> list[str]:
    return sorted(_TACTICS)
