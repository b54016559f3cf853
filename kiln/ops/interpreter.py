"""The reference interpreter: runs an IR Graph with the registry's torch implementations.

Passes use it to fold constants, tests use it as the "before" of every rewrite.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import torch

from kiln.errors import UnsupportedModelError
from kiln.ir import Graph, Node
from kiln.ops import registry
from kiln.ops.program import Program, Step
from kiln.ops.tensors import to_numpy, to_torch


def compile_graph(graph: Graph, device: torch.device | str = "cpu") -> Program:
    """A Program that evaluates `graph` with reference ops on `device`."""
    constants = {name: to_torch(v.const, device) for name, v in graph.initializers.items()}
    steps = [node_step(node, graph.opsets, device) for node in graph.nodes]
    return Program(
        inputs=[v.name for v in graph.inputs],
        outputs=[v.name for v in graph.outputs],
        steps=steps,
        constants=constants,
    )


def node_step(node: Node, opsets: dict[str, int], device: torch.device | str) -> Step:
    impl = registry.lookup(node.domain, node.op_type, registry.opset_of(opsets, node.domain))
    if impl is None:
        raise UnsupportedModelError(
            f"no implementation of {node.domain or 'ai.onnx'}::{node.op_type} "
            f"(node {node.name!r}) for opset {registry.opset_of(opsets, node.domain)}"
        )
    static = {k: v for k, v in node.attrs.items() if not _is_graph_attr(v)}
    bodies = {
        k: [compile_graph(g, device) for g in v] if isinstance(v, list)
        else compile_graph(v, device)
        for k, v in node.attrs.items()
        if _is_graph_attr(v)
    }
    kwargs = impl.bind_attrs(static)
    if impl.wants_num_outputs:
        kwargs["num_outputs"] = len(node.outputs)
    if impl.wants_device:
        kwargs["device"] = torch.device(device)
    fn = partial(impl.fn, **kwargs)
    if torch.device(device).type != "cpu":
        fn = _one_device(fn, torch.device(device), set(impl.host_inputs))
    return Step(
        name=node.name,
        fn=fn,
        inputs=tuple(None if v is None else v.name for v in node.inputs),
        outputs=tuple(None if v is None else v.name for v in node.outputs),
        subgraphs={k: v for k, v in bodies.items() if k in impl.attr_names or impl.takes_any_attr},
    )


def _one_device(fn: Any, device: torch.device, host_inputs: set[int]) -> Any:
    """Shape arithmetic runs on the host (Shape hands back a CPU tensor), so an op can meet
    host and device tensors at once (a Concat of a computed shape and a constant): its
    data inputs then all go to the device. Inputs read as numbers stay where they are."""

    def run(*args: Any, **kwargs: Any) -> Any:
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if not any(t.device.type == device.type for t in tensors) or all(
                t.device.type == device.type for t in tensors):
            return fn(*args, **kwargs)
        moved = [a.to(device) if isinstance(a, torch.Tensor) and i not in host_inputs
                 and a.device.type == "cpu" else a for i, a in enumerate(args)]
        return fn(*moved, **kwargs)

    return run


def _is_graph_attr(value: Any) -> bool:
    return isinstance(value, Graph) or (
        isinstance(value, list) and bool(value) and isinstance(value[0], Graph)
    )


def run_graph(
    graph: Graph, inputs: Mapping[str, Any], device: torch.device | str = "cpu"
) -> dict[str, Any]:
    """Evaluates `graph` on numpy (or torch) inputs and returns numpy outputs by name."""
    program = compile_graph(graph, device)
    feeds = {name: to_torch(value, device) for name, value in inputs.items()}
    with torch.no_grad():
        results = program.run(feeds)
    return {name: to_numpy(value) for name, value in zip(program.outputs, results)}
