"""kiln: an open inference optimizer. ONNX model in, engine tuned for the machine out."""

__version__ = "0.1.0"
