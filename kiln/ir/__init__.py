"""kiln's graph IR: pure data, no torch and no onnx."""

from kiln.ir.dtype import DType
from kiln.ir.graph import Dim, Graph, Node, Shape, Value, captured_values

__all__ = ["DType", "Dim", "Graph", "Node", "Shape", "Value", "captured_values"]
