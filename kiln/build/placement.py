"""Placement: which layers run on the host rather than the device.

Shape arithmetic (Shape -> Gather -> Concat -> Reshape) that the passes could not fold,
because a dim is dynamic, computes a few integers. Running it on the GPU would make
every Reshape wait for a device-to-host copy (and break CUDA graph capture), so, as
TensorRT does with shape tensors, such values live on the host: a layer runs there when
it is cheap integer work and every tensor input is already on the host.
"""

from __future__ import annotations

from kiln.ir import DType, Graph, Node, Value
from kiln.ops import registry

HOST_OPS = {
    "Shape", "Size", "Gather", "Concat", "Slice", "Squeeze", "Unsqueeze", "Reshape", "Cast",
    "Add", "Sub", "Mul", "Div", "Mod", "Neg", "Abs", "Max", "Min", "Floor", "Ceil", "Equal",
    "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Not", "And", "Or", "Where",
    "Identity", "ReduceProd", "ReduceSum", "ReduceMax", "ReduceMin", "Range", "Expand",
    "ConstantOfShape", "Sqrt", "Round", "Sign", "Clip",
}
MAX_HOST_ELEMENTS = 64  # constants larger than this are data, not shape arithmetic


def assign_placement(graph: Graph, device_type: str) -> int:
    """Marks nodes `meta["placement"] = "host" | "device"`; returns how many are on host."""
    on_host = 0
    host_values: set[int] = set()
    for g in graph.walk_graphs():
        for value in g.initializers.values():
            if _small_integer_const(value):
                host_values.add(id(value))
    for g in graph.walk_graphs():
        for node in g.nodes:
            host = device_type != "cpu" and _runs_on_host(node, host_values)
            node.meta["placement"] = "host" if host else "device"
            if host:
                on_host += 1
                host_values.update(id(v) for v in node.outputs if v is not None)
    return on_host


def _runs_on_host(node: Node, host_values: set[int]) -> bool:
    if node.domain or node.op_type not in HOST_OPS:
        return False
    if node.op_type in ("Shape", "Size"):
        return True  # reads only metadata
    impl = registry.lookup(node.domain, node.op_type, None)
    host_inputs = set(impl.host_inputs) if impl else set()
    tensors = [(i, v) for i, v in enumerate(node.inputs) if v is not None]
    return bool(tensors) and all(id(v) in host_values or (i in host_inputs and v.is_const)
                                 for i, v in tensors)


def _small_integer_const(value: Value) -> bool:
    const = value.const
    return const is not None and const.size <= MAX_HOST_ELEMENTS and value.dtype in (
        DType.INT64, DType.INT32, DType.BOOL)
