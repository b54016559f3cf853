"""The executor core: a straight list of steps over named slots, freeing each value after
its last use.

Both the reference interpreter (`kiln.ops.interpreter`, used by passes and tests) and the
engine runtime (`kiln.runtime`) compile what they run into a Program. A step whose
operator has subgraphs (If, Loop, Scan) gets each body as a callable bound to the current
scope, so bodies read outer values without copying them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class Scope(dict):
    """Values by name; falls back to the enclosing scope for subgraph bodies."""

    def __init__(self, outer: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.outer = outer

    def __missing__(self, name: str) -> Any:
        if self.outer is None:
            raise KeyError(name)
        return self.outer[name]


@dataclass
class Step:
    """One layer: `fn(*inputs, **subgraphs) -> outputs`."""

    name: str
    fn: Callable[..., Any]
    inputs: tuple[str | None, ...]
    outputs: tuple[str | None, ...]
    subgraphs: dict[str, Program | list[Program]] = field(default_factory=dict)
    free: tuple[str, ...] = ()


@dataclass
class Program:
    inputs: list[str]
    outputs: list[str]
    steps: list[Step]
    constants: dict[str, Any] = field(default_factory=dict)
    keep: frozenset[str] = frozenset()  # names never freed (read by an enclosing caller)

    def __post_init__(self) -> None:
        self.plan_frees()

    def plan_frees(self) -> None:
        """Marks each value for release after the last step that reads it."""
        last_use: dict[str, int] = {}
        for i, step in enumerate(self.steps):
            for name in step.inputs:
                if name is not None:
                    last_use[name] = i
            for name in _captured_names(step):
                last_use[name] = i
        frees: list[list[str]] = [[] for _ in self.steps]
        pinned = set(self.outputs) | set(self.constants) | self.keep
        for name, i in last_use.items():
            if name not in pinned:
                frees[i].append(name)
        for step, names in zip(self.steps, frees):
            step.free = tuple(names)

    def captures(self) -> list[str]:
        """Names a body reads that it does not define: values of the enclosing scopes."""
        defined = set(self.inputs) | set(self.constants)
        needed: list[str] = []
        for step in self.steps:
            for name in list(step.inputs) + list(_captured_names(step)):
                if name is not None and name not in defined and name not in needed:
                    needed.append(name)
            defined.update(n for n in step.outputs if n is not None)
        needed += [n for n in self.outputs if n not in defined and n not in needed]
        return needed

    def run(self, feeds: Mapping[str, Any], outer: Mapping[str, Any] | None = None,
            on_step: Callable[[int, Step, Scope], None] | None = None,
            on_nested_step: Callable[[int, Step, Scope], None] | None = None) -> list[Any]:
        """Runs every step; `on_step(index, step, scope)` sees each step's results, and
        `on_nested_step` those of the steps inside subgraph bodies (If, Loop, Scan), at
        any depth, with indices of their own body."""
        scope = Scope(outer)
        scope.update(self.constants)
        scope.update(feeds)
        for index, step in enumerate(self.steps):
            args = [None if n is None else scope[n] for n in step.inputs]
            try:
                if step.subgraphs:
                    result = step.fn(*args, **{k: bind_body(p, scope, on_nested_step)
                                               for k, p in step.subgraphs.items()})
                else:
                    result = step.fn(*args)
            except Exception as exc:
                raise StepError(step, exc) from exc
            if len(step.outputs) == 1 and step.outputs[0] is not None and not isinstance(
                    result, tuple):  # most layers: one output, stored directly
                scope[step.outputs[0]] = result
            else:
                _store(scope, step, result)
            if on_step is not None:
                on_step(index, step, scope)
            for name in step.free:
                scope.pop(name, None)
        return [scope[name] for name in self.outputs]

    def __call__(self, *inputs: Any, outer: Mapping[str, Any] | None = None) -> list[Any]:
        return self.run(dict(zip(self.inputs, inputs)), outer)


class StepError(RuntimeError):
    """An operator failed while running; names the layer so the user can find it."""

    def __init__(self, step: Step, cause: Exception) -> None:
        inner = cause.step_path if isinstance(cause, StepError) else ""
        self.step_path = f"{step.name}/{inner}" if inner else step.name
        self.cause = cause.cause if isinstance(cause, StepError) else cause
        super().__init__(f"layer {self.step_path} failed: {self.cause}")


def bind_body(program: Program | list[Program], scope: Scope,
              on_step: Callable[[int, Step, Scope], None] | None = None
              ) -> Callable | list[Callable]:
    """A subgraph as a callable that reads outer values from `scope`; `on_step` sees its
    steps (and those of the bodies inside it)."""
    if isinstance(program, list):
        return [bind_body(p, scope, on_step) for p in program]  # type: ignore[misc]

    def body(*inputs: Any) -> list[Any]:
        return program.run(dict(zip(program.inputs, inputs)), scope, on_step, on_step)

    return body


def _store(scope: Scope, step: Step, result: Any) -> None:
    outputs = result if isinstance(result, tuple) else (result,)
    if len(outputs) < sum(1 for n in step.outputs if n is not None):
        raise StepError(step, RuntimeError(
            f"produced {len(outputs)} outputs, the node declares {len(step.outputs)}"))
    for name, value in zip(step.outputs, outputs):
        if name is not None:
            scope[name] = value


def _captured_names(step: Step) -> Sequence[str]:
    names: list[str] = []
    for program in step.subgraphs.values():
        for p in program if isinstance(program, list) else [program]:
            names.extend(p.captures())
    return names
