"""The timing cache: how long each tactic took on each layer signature, on each device.

A JSON file (`--timingCacheFile`), validated on load (nothing executed): with a warm cache a
rebuild times nothing. Keys spell out everything that matters: the device (name,
capability, torch version), the layer's op, precision, attributes and input shapes and
types, and the tactic.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

import kiln
from kiln.errors import KilnError
from kiln.kernels import LayerSpec

FORMAT = "kiln-timing-cache"
VERSION = 1


def device_signature(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        name = torch.cuda.get_device_name(index)
        return f"cuda:{name}:sm{major}{minor}:torch{torch.__version__}"
    return f"cpu:{os.cpu_count()}cpu:{torch.get_num_threads()}threads:torch{torch.__version__}"


def layer_signature(spec: LayerSpec, shapes: list[Any], dtypes: list[Any],
                    orders: list[Any] | None = None) -> str:
    attrs = {k: _plain(v) for k, v in sorted(spec.attrs.items())}
    consts = {i: list(np.shape(c)) for i, c in sorted(spec.constant_inputs.items())}
    key = [spec.domain, spec.op, spec.precision, attrs, shapes, dtypes, consts]
    if orders and any(o is not None for o in orders):  # permuted inputs time differently
        key.append({"memory_order": orders})
    return json.dumps(key, sort_keys=True, default=str)


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return f"tensor{list(value.shape)}"
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if hasattr(value, "nodes"):  # a subgraph
        return "graph"
    return value


class TimingCache:
    """Milliseconds per (device, layer signature, tactic)."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path else None
        self.entries: dict[str, float] = {}
        self.hits = 0
        self.misses = 0
        if self.path is not None and self.path.exists():
            self.entries = _load(self.path)

    def key(self, device: str, signature: str, tactic: str) -> str:
        return f"{device}|{tactic}|{signature}"

    def get(self, key: str) -> float | None:
        value = self.entries.get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def put(self, key: str, ms: float) -> None:
        self.entries[key] = float(ms)

    def save(self) -> None:
        if self.path is None:
            return
        data = {"format": FORMAT, "version": VERSION, "kiln_version": kiln.__version__,
                "entries": self.entries}
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(data, indent=0, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError as exc:
            raise KilnError(f"cannot write the timing cache {self.path}: {exc}") from None


def _load(path: Path) -> dict[str, float]:
    problem = None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        data, problem = None, str(exc)
    if problem is None and not (isinstance(data, dict) and data.get("format") == FORMAT):
        problem = "not a kiln timing cache"
    elif problem is None and data.get("version") != VERSION:
        problem = f"version {data.get('version')!r}, expected {VERSION}"
    entries = data.get("entries") if problem is None else None
    if problem is None and not (isinstance(entries, dict) and all(
            isinstance(k, str) and isinstance(v, int | float) and v >= 0
            for k, v in entries.items())):
        problem = "entries must map strings to non-negative numbers"
    if problem is not None:
        raise KilnError(f"cannot use timing cache {path}: {problem}",
                        hint="delete the file (it is rebuilt) or pass another --timingCacheFile")
    return {k: float(v) for k, v in entries.items()}
