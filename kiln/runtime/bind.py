"""Plan graph -> Program: each layer's tactic bound on the device, constants placed.

Host-placed layers (shape arithmetic) run on the CPU; a device layer reading a host value
as data gets it moved, and vice versa. On a CPU engine both are the same device.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

from kiln.engine.plan import decode_value, is_graph, is_graph_list
from kiln.kernels import LayerSpec, get_tactic
from kiln.ops import registry
from kiln.ops.program import Program, Step

HOST = torch.device("cpu")


def compile_plan(graph: dict[str, Any], tensors: dict[str, torch.Tensor],
                 device: torch.device) -> Program:
    constants = {}
    for name, entry in graph["constants"].items():
        value = decode_value(entry["value"], tensors)
        if isinstance(value, torch.Tensor):
            value = value.to(HOST if entry.get("placement") == "host" else device)
        constants[name] = value
    steps = [_step(layer, tensors, device) for layer in graph["layers"]]
    return Program(inputs=list(graph["inputs"]), outputs=list(graph["outputs"]), steps=steps,
                   constants=constants)


def layer_spec(layer: dict[str, Any], tensors: dict[str, torch.Tensor]) -> LayerSpec:
    attrs = {k: v for k, v in layer["attrs"].items() if not (is_graph(v) or is_graph_list(v))}
    return LayerSpec(
        name=layer["name"], op=layer["op"], domain=layer["domain"], opset=layer["opset"],
        inputs=layer["inputs"], outputs=layer["outputs"],
        attrs={k: decode_value(v, tensors) for k, v in attrs.items()},
        precision=layer["precision"], placement=layer["placement"], tactic=layer["tactic"],
        params=layer["params"], fused=layer.get("fused", []),
    )


def _step(layer: dict[str, Any], tensors: dict[str, torch.Tensor], device: torch.device) -> Step:
    spec = layer_spec(layer, tensors)
    where = HOST if spec.placement == "host" else device
    prefix = f"layer/{spec.name}/"
    own = {k[len(prefix):]: t.to(where) for k, t in tensors.items() if k.startswith(prefix)}
    tactic = get_tactic(spec.tactic)
    if tactic is None:
        raise KeyError(f"layer {spec.name}: unknown tactic {spec.tactic!r}")
    fn = tactic.bind(spec, own, where)
    if device.type != "cpu":
        fn = _with_transfers(fn, spec, where)
    subgraphs: dict[str, Program | list[Program]] = {}
    for key, attr in layer["attrs"].items():
        if is_graph(attr):
            subgraphs[key] = compile_plan(attr["$graph"], tensors, device)
        elif is_graph_list(attr):
            subgraphs[key] = [compile_plan(g["$graph"], tensors, device) for g in attr]
    return Step(name=spec.name, fn=fn, inputs=tuple(spec.inputs), outputs=tuple(spec.outputs),
                subgraphs=subgraphs)


# Ops that read only the metadata (shape) of their input: it is never moved.
METADATA_ONLY = {("", "Shape"), ("", "Size")}


def _with_transfers(fn: Callable[..., Any], spec: LayerSpec, where: torch.device
                    ) -> Callable[..., Any]:
    impl = registry.lookup(spec.domain, spec.op, spec.opset)
    if spec.key in METADATA_ONLY:
        return fn
    host_reads = set(impl.host_inputs) if impl else set()

    def run(*args: Any, **kwargs: Any) -> Any:
        moved = [
            _move(a, where) if isinstance(a, torch.Tensor) and a.device != where
            and i not in host_reads else a
            for i, a in enumerate(args)
        ]
        return fn(*moved, **kwargs)

    return run


def _move(tensor: torch.Tensor, where: torch.device) -> torch.Tensor:
    """Host values (shape arithmetic) go to the device; inside a CUDA graph capture the
    copy is recorded from pinned memory, which is kept alive with the graph (the value
    depends only on the input shapes, so replays of that graph see the same value)."""
    if where.type == "cuda" and tensor.device.type == "cpu" and \
            torch.cuda.is_current_stream_capturing():
        pinned = tensor.pin_memory()
        captured_host_buffers().append(pinned)
        return pinned.to(where, non_blocking=True)
    return tensor.to(where)


_capture = threading.local()


def captured_host_buffers() -> list[torch.Tensor]:
    """This thread's pinned sources of copies recorded in the CUDA graph being captured."""
    if not hasattr(_capture, "buffers"):
        _capture.buffers = []
    return _capture.buffers
