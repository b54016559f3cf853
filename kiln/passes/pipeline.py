"""The pass pipeline: phases in a fixed order, each repeated until nothing changes.

A pass is one function `graph, ctx -> bool` (did it change the graph) in a file of its
own, registered with `@register_pass(phase, priority)`. `kiln inspect --passes` prints
the pipeline as it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kiln.ir import Graph

# The order of phases is the pipeline: clean and fold first, fuse on a clean graph, then
# clean again what fusing left behind.
PHASES = ("simplify", "fuse", "cleanup")
MAX_ROUNDS = 8


@dataclass
class PassContext:
    """What passes may consult: the build's precision and device, and a log of decisions.

    `applied` counts the rounds in which each pass changed the graph, `rewrites` the
    rewrites each pass reports (nodes folded, pairs fused ...).
    """

    precision: str = "fp32"
    device: str = "cpu"
    options: dict[str, Any] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    applied: dict[str, int] = field(default_factory=dict)
    rewrites: dict[str, int] = field(default_factory=dict)

    def note(self, text: str) -> None:
        """Logs a decision once (passes repeat until nothing changes, and so would notes)."""
        if text not in self.log:
            self.log.append(text)

    def count(self, name: str, rewrites: int = 1) -> None:
        if rewrites:
            self.rewrites[name] = self.rewrites.get(name, 0) + rewrites


PassFn = Callable[[Graph, PassContext], bool]


@dataclass(frozen=True)
class RegisteredPass:
    name: str
    phase: str
    priority: int
    fn: PassFn
    doc: str


_PASSES: list[RegisteredPass] = []


def register_pass(phase: str, priority: int = 50) -> Callable[[PassFn], PassFn]:
    """Adds the decorated pass to `phase`; lower priorities run first within a phase."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; phases are {PHASES}")

    def decorate(fn: PassFn) -> PassFn:
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        _PASSES[:] = [p for p in _PASSES if p.name != fn.__name__]
        _PASSES.append(RegisteredPass(fn.__name__, phase, priority, fn, doc))
        return fn

    return decorate


def passes(phase: str | None = None) -> list[RegisteredPass]:
    chosen = [p for p in _PASSES if phase is None or p.phase == phase]
    return sorted(chosen, key=lambda p: (PHASES.index(p.phase), p.priority, p.name))


def run_pipeline(graph: Graph, ctx: PassContext | None = None,
                 disabled: set[str] | frozenset[str] = frozenset()) -> PassContext:
    """Runs every phase to a fixed point; returns the context with counts and notes."""
    ctx = ctx or PassContext()
    for phase in PHASES:
        for _ in range(MAX_ROUNDS):
            changed = False
            for registered in passes(phase):
                if registered.name in disabled:
                    continue
                if registered.fn(graph, ctx):
                    ctx.applied[registered.name] = ctx.applied.get(registered.name, 0) + 1
                    changed = True
            if not changed:
                break
    graph.toposort()
    return ctx
