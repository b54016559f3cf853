"""What the quantization passes share: quantization parameters, the mark a weight carries
when it was quantized, and replacing a node in place.

A weight that the model dequantizes from integers (DequantizeLinear of a constant) or that
kiln quantizes itself is a float constant with `meta["quant"]`: the integers and their
scales. Passes that do not know about quantization see a normal float weight; the INT8
lowering takes the integers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kiln.ir import DType, Graph, Node, Value

QUANT_META = "quant"


@dataclass
class QuantParams:
    scale: np.ndarray  # float32, one value (per tensor) or one per channel along `axis`
    zero_point: np.ndarray  # int64, same size as scale (or one value)
    axis: int = 1
    qtype: str = "int8"
    values: np.ndarray | None = None  # for a weight: its quantized values

    @property
    def per_tensor(self) -> bool:
        return self.scale.size == 1

    @property
    def scalar_scale(self) -> float:
        return float(self.scale.reshape(-1)[0])

    @property
    def scalar_zero_point(self) -> int:
        return int(self.zero_point.reshape(-1)[0])

    def attrs(self, **extra: Any) -> dict[str, Any]:
        """Attributes of kiln.Quantize / kiln.Dequantize."""
        if self.per_tensor and self.zero_point.size == 1:
            attrs: dict[str, Any] = {"scale": self.scalar_scale,
                                     "zero_point": self.scalar_zero_point}
        else:
            attrs = {"scale": [float(s) for s in self.scale.reshape(-1)],
                     "zero_point": [int(z) for z in self.zero_point.reshape(-1)],
                     "axis": self.axis}
        attrs.update(extra)
        return attrs


def set_weight_quant(value: Value, params: QuantParams) -> None:
    value.meta[QUANT_META] = params


def weight_quant(value: Value | None) -> QuantParams | None:
    return None if value is None else value.meta.get(QUANT_META)


def swap_node(graph: Graph, old: Node, op_type: str, inputs: list[Value | None],
              attrs: dict[str, Any], dtype: DType | None = None) -> Node:
    """Replaces `old` with a kiln-domain node of the same name that produces the same
    output values (so names, shapes and readers stay); `dtype` retypes the first output."""
    outputs = list(old.outputs)
    old.set_outputs([None] * len(outputs))
    new = Node(op_type, inputs, outputs, attrs, domain="kiln", name=old.name)
    new.meta.update({k: v for k, v in old.meta.items() if k in ("fused",)})
    graph.insert(new, before=old)
    graph.remove_node(old)
    if dtype is not None and outputs[0] is not None:
        outputs[0].dtype = dtype
    return new
