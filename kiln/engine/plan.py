"""The plan: what an engine file holds besides its tensors, as plain JSON.

Attribute values that JSON cannot hold are stored by reference: arrays as tensors of the
file (`{"$tensor": key}`), string arrays inline (`{"$strings": [...], "shape": [...]}`),
raw bytes as base64, subgraphs as nested plan graphs (`{"$graph": {...}}`).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import torch

from kiln.ops.tensors import to_torch

FORMAT = "kiln-engine"
FORMAT_VERSION = 1


def encode_value(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-able form of an attribute value; arrays go into `tensors` under `key`."""
    if isinstance(value, np.ndarray | np.generic):
        array = np.asarray(value)
        if array.dtype.kind in ("U", "S", "O"):
            return {"$strings": [_text(v) for v in array.reshape(-1).tolist()],
                    "shape": list(array.shape)}
        tensors[key] = to_torch(array).contiguous()
        return {"$tensor": key}
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, list):
        return [encode_value(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    raise TypeError(f"cannot store attribute value of type {type(value).__name__}")


def decode_value(data: Any, tensors: dict[str, Any]) -> Any:
    """Inverse of encode_value (graphs are left as dicts for the runtime to compile)."""
    if isinstance(data, dict):
        if "$tensor" in data:
            return tensors[data["$tensor"]]
        if "$strings" in data:
            return np.array(data["$strings"], dtype=object).reshape(data["shape"])
        if "$bytes" in data:
            return base64.b64decode(data["$bytes"])
        return data
    if isinstance(data, list):
        return [decode_value(v, tensors) for v in data]
    return data


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def is_graph(data: Any) -> bool:
    return isinstance(data, dict) and "$graph" in data


def is_graph_list(data: Any) -> bool:
    return isinstance(data, list) and bool(data) and all(is_graph(d) for d in data)
