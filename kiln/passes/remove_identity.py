"""Removes no-ops: Identity, inference-mode Dropout, and Casts to the type already held.

    y = Identity(x); z = Relu(y)   ->   z = Relu(x)
"""

from __future__ import annotations

from kiln.ir import DType, Graph, Node
from kiln.passes.pipeline import PassContext, register_pass


def is_noop(node: Node) -> bool:
    if node.domain:
        return False
    source = node.inputs[0] if node.inputs else None
    if source is None or source.kind != "tensor":
        return False
    if node.op_type == "Identity":
        return True
    if node.op_type == "Dropout":
        if not _inference_dropout(node):
            return False
        return len([v for v in node.outputs if v is not None and v.consumers]) <= 1 and (
            len(node.outputs) == 1 or node.outputs[1] is None or not node.outputs[1].consumers)
    if node.op_type == "Cast":
        return source.dtype is not None and source.dtype == DType(node.attrs.get("to", 0))
    return False


@register_pass("simplify", priority=10)
def remove_identity(graph: Graph, ctx: PassContext) -> bool:
    """Reconnects the consumers of a no-op node to its input."""
    removed = 0
    for g in list(graph.walk_graphs()):
        for node in list(g.nodes):
            if not is_noop(node):
                continue
            source, result = node.inputs[0], node.outputs[0]
            if result is None:
                continue
            if result in g.outputs and not g.can_take_name(source):
                continue  # e.g. an input passed straight through: the Identity keeps the name
            g.replace_all_uses(result, source)
            for extra in node.outputs[1:]:
                if extra is not None and (extra.consumers or extra in g.outputs):
                    break
            else:
                if not result.consumers and result not in g.outputs:
                    g.remove_node(node)
                    removed += 1
    ctx.count("remove_identity", removed)
    return removed > 0


def _inference_dropout(node: Node) -> bool:
    """True unless training_mode may be set (then Dropout draws a random mask)."""
    training = node.inputs[2] if len(node.inputs) > 2 else None
    if training is None:
        return True
    return training.is_const and not bool(training.const.reshape(-1)[0])
