"""Fills in output shapes ONNX inference left open, by running the layer on torch's meta
device (shapes, no data) wherever all of its inputs have static shapes.

ONNX shape inference stops at a Reshape whose target is computed at run time (torch's
MultiheadAttention export builds its targets from Shape ops), and every shape after it
stays partly unknown. Once `fold_shape_chains` has made such a target constant, the
Reshape's output shape is a fact; knowing it lets the shape arithmetic further down fold
as well (ViT's attention scale, 1/sqrt(sqrt(head_dim)) from a Shape, becomes a constant
instead of an fp32 island on the device with casts on both sides of it).

The shape comes from kiln's own implementation of the op, so it is by construction the
shape the engine will produce. An op that needs values to know its shape (NonZero, a
data-dependent Slice) fails on meta tensors and is left as it was.
"""

from __future__ import annotations

import warnings

import torch

from kiln.ir import Graph, Node, Value
from kiln.ops import registry
from kiln.ops.interpreter import node_step
from kiln.ops.tensors import to_torch, torch_dtype
from kiln.passes.pipeline import PassContext, register_pass

META = torch.device("meta")
# ops whose output shape depends on input values (or on randomness): never evaluated here
VALUE_DEPENDENT = frozenset({"NonZero", "Unique", "NonMaxSuppression", "Compress", "TopK",
                             "RandomNormal", "RandomUniform", "Multinomial", "Loop", "If",
                             "Scan", "ConstantOfShape", "Range", "StringNormalizer"})


@register_pass("simplify", priority=16)
def infer_static_shapes(graph: Graph, ctx: PassContext) -> bool:
    """Completes partly unknown output shapes of layers whose inputs are all static."""
    completed = 0
    for node in list(graph.nodes):
        if (_wants_shapes(node) and _complete(graph, node)) or _reshape_dims(node):
            completed += 1
    ctx.count("infer_static_shapes", completed)
    return completed > 0


def _wants_shapes(node: Node) -> bool:
    if node.domain or node.op_type in VALUE_DEPENDENT or any(True for _ in node.subgraphs()):
        return False
    if not any(v is not None and v.kind == "tensor" and v.static_shape is None
               for v in node.outputs):
        return False
    return all(v is None or _static_tensor(v) for v in node.inputs)


def _static_tensor(value: Value) -> bool:
    return (value.kind == "tensor" and value.static_shape is not None
            and value.dtype is not None and value.dtype.numpy is not None)


def _complete(graph: Graph, node: Node) -> bool:
    impl = registry.lookup(node.domain, node.op_type,
                           registry.opset_of(graph.root().opsets, node.domain))
    if impl is None:
        return False
    host = set(impl.host_inputs)
    # values a host input holds (a target shape, axes) must be real; others are meta
    if any(i in host and v is not None and not v.is_const for i, v in enumerate(node.inputs)):
        return False
    try:
        args = [None if v is None else _argument(v, i in host)
                for i, v in enumerate(node.inputs)]
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = node_step(node, graph.root().opsets, META).fn(*args)
    except Exception:  # needs values, or has no torch type: the shape stays unknown
        return False
    results = result if isinstance(result, tuple) else (result,)
    changed = False
    for value, out in zip(node.outputs, results):
        if value is None or not isinstance(out, torch.Tensor) or value.static_shape is not None:
            continue
        shape = tuple(int(d) for d in out.shape)
        if value.shape is not None and not _agrees(value.shape, shape):
            continue  # inference and the implementation disagree: trust neither
        value.shape = shape
        changed = True
    return changed


def _reshape_dims(node: Node) -> bool:
    """A Reshape to a constant target over a symbolic batch: the sizes the target names
    (and those its zeros copy) are facts even where the batch is not. A head split
    [0, 8, 2, 32] of an [n, 8, 64] tensor is [n, 8, 2, 32]; the INT8 attention, which
    takes head sizes 32, 64 and 128, needs to know the 32."""
    if node.domain or node.op_type != "Reshape" or node.attrs.get("allowzero"):
        return False
    out, target = node.outputs[0], node.inputs[1] if len(node.inputs) > 1 else None
    shape = node.inputs[0].shape
    if out is None or target is None or not target.is_const or shape is None:
        return False
    dims = [int(d) for d in target.const.reshape(-1)]
    if out.shape is not None and len(out.shape) != len(dims):
        return False
    known = list(out.shape) if out.shape is not None else [None] * len(dims)
    filled = [d if d > 0 else (shape[i] if d == 0 and i < len(shape) else None)
              for i, d in enumerate(dims)]
    if any(isinstance(k, int) and isinstance(f, int) and k != f
           for k, f in zip(known, filled)):
        return False  # inference and the target disagree: trust neither
    merged = tuple(f if k is None else k for k, f in zip(known, filled))
    if merged == tuple(known):
        return False
    out.shape = merged
    return True


def _argument(value: Value, host: bool) -> torch.Tensor:
    if value.is_const:
        tensor = to_torch(value.const)
        return tensor if host else tensor.to(META)
    return torch.empty(value.static_shape, dtype=torch_dtype(value.dtype), device=META)


def _agrees(known: tuple, found: tuple[int, ...]) -> bool:
    return len(known) == len(found) and all(
        not isinstance(k, int) or k == f for k, f in zip(known, found))
