"""ONNX ModelProto -> kiln Graph (and back, for checks and comparisons)."""

from kiln.onnx.reader import check_supported, load_model, read_onnx
from kiln.onnx.writer import write_onnx

__all__ = ["check_supported", "load_model", "read_onnx", "write_onnx"]
