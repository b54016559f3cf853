"""Lowering: the optimized Graph -> the engine's plan graph (layers with tactics) + tensors."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kiln.engine.plan import encode_value
from kiln.errors import UnsupportedModelError
from kiln.ir import Graph, Node, Value
from kiln.kernels import LayerSpec, Target, candidates
from kiln.ops import registry
from kiln.ops.tensors import to_torch


class Lowering:
    """Turns graphs into plan dicts, collecting every tensor they need.

    `choices` maps layer names to tactics picked by the tuner; other layers get the
    best-guess tactic available at `level`.
    """

    def __init__(self, target: Target, level: int = 3,
                 choices: dict[str, str] | None = None) -> None:
        self.target = target
        self.level = level
        self.choices = choices or {}
        self.tensors: dict[str, torch.Tensor] = {}
        self.layers: list[LayerSpec] = []

    def graph(self, graph: Graph) -> dict[str, Any]:
        layers = [self._layer(graph, node) for node in graph.nodes]
        constants: dict[str, Any] = {}
        for name, value in graph.initializers.items():
            if self._still_read(value, graph):
                constants[name] = self._constant(value)
        return {
            "inputs": [v.name for v in graph.inputs],
            "outputs": [v.name for v in graph.outputs],
            "constants": constants,
            "layers": layers,
        }

    def _still_read(self, value: Value, graph: Graph) -> bool:
        """False when every reader's tactic took the constant over (or nobody reads it)."""
        # a nested body may return this graph's constant as its own output
        if any(value is v for g in graph.walk_graphs() for v in g.outputs):
            return True
        taken = {(id(n), i) for n in value.consumers
                 for i in n.meta.get("replaced_inputs", ())}
        return any((id(n), i) not in taken for n in value.consumers
                   for i, v in enumerate(n.inputs) if v is value)

    def _constant(self, value: Value) -> dict[str, Any]:
        entry = encode_value(value.const, f"const/{value.name}", self.tensors)
        return {"value": entry, "placement": value.meta.get("placement", "device")}

    def _layer(self, graph: Graph, node: Node) -> dict[str, Any]:
        opset = registry.opset_of(graph.opsets, node.domain)
        attrs: dict[str, Any] = {}
        for key, attr in node.attrs.items():
            if isinstance(attr, Graph):
                attrs[key] = {"$graph": self.graph(attr)}
            elif isinstance(attr, list) and attr and isinstance(attr[0], Graph):
                attrs[key] = [{"$graph": self.graph(g)} for g in attr]
            else:
                attrs[key] = encode_value(attr, f"attr/{node.name}/{key}", self.tensors)
        spec = layer_spec(node, opset)
        tactic = self._choose(spec)
        spec.tactic = tactic.name
        for key, tensor in tactic.prepare(spec, self.target).items():
            self.tensors[f"layer/{node.name}/{key}"] = tensor
        replaced = [i for i in tactic.replaces_inputs if i in spec.constant_inputs]
        node.meta["replaced_inputs"] = replaced
        for i in replaced:
            spec.inputs[i] = None
        self.layers.append(spec)
        return {
            "name": spec.name, "op": spec.op, "domain": spec.domain, "opset": opset,
            "inputs": spec.inputs, "outputs": spec.outputs, "attrs": attrs,
            "precision": spec.precision, "placement": spec.placement,
            "tactic": spec.tactic, "params": spec.params, "fused": spec.fused,
            "shapes": node.meta.get("shapes", {}),
        }

    def _choose(self, spec: LayerSpec):
        found = candidates(spec, self.target, self.level)
        if not found:
            raise UnsupportedModelError(
                f"no tactic can run layer {spec.name!r} ({spec.domain or 'ai.onnx'}::{spec.op}) "
                f"on {self.target.device.type}")
        chosen = self.choices.get(spec.name)
        return next((t for t in found if t.name == chosen), found[0])


def layer_spec(node: Node, opset: int | None) -> LayerSpec:
    """The build-time view of a node that tactics decide on."""
    return LayerSpec(
        name=node.name, op=node.op_type, domain=node.domain, opset=opset,
        inputs=[None if v is None else v.name for v in node.inputs],
        outputs=[None if v is None else v.name for v in node.outputs],
        attrs=node.attrs, precision=node.meta.get("precision", "fp32"),
        placement=node.meta.get("placement", "device"),
        fused=list(node.meta.get("fused", [node.name])),
        constant_inputs={i: v.const for i, v in enumerate(node.inputs)
                         if v is not None and v.is_const},
        input_shapes=[None if v is None or v.shape is None else tuple(v.shape)
                      for v in node.inputs],
        input_dtypes=[None if v is None or v.dtype is None else v.dtype.short
                      for v in node.inputs],
    )


def place_constants(graph: Graph) -> None:
    """A constant lives on the host when only host layers or host-read inputs use it."""
    from kiln.ops.registry import lookup

    for g in graph.walk_graphs():
        for value in g.initializers.values():
            host = bool(value.consumers)
            for node in value.consumers:
                if node.meta.get("placement") == "host":
                    continue
                impl = lookup(node.domain, node.op_type, registry.opset_of(g.opsets, node.domain))
                positions = [i for i, v in enumerate(node.inputs) if v is value]
                if not impl or not all(i in impl.host_inputs for i in positions):
                    host = False
            is_array = isinstance(value.const, np.ndarray) and value.const.dtype != object
            value.meta["placement"] = "host" if host and is_array else "device"


__all__ = ["Lowering", "place_constants", "to_torch"]
