"""Calibration batches from files or Python iterables, as dicts of numpy/torch arrays.

- a folder of .npz files: one batch per file (sorted by name), keyed by input name
  (kiln's sample files with `input.<name>` keys work too);
- one .npz: each input's array stacks the samples along the first axis; it is cut into
  batches of `batch_size` samples;
- an iterable (a list, a generator, a torch DataLoader): each item is a dict keyed by
  input name, a tuple/list in the model's input order (extra items such as labels are
  ignored), or one array for a single-input model.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kiln.errors import KilnError

DEFAULT_BATCH_SIZE = 32
Batch = dict[str, Any]


def calibration_batches(data: Any, input_names: list[str], *, limit: int | None = None,
                        batch_size: int | None = None) -> Iterator[Batch]:
    """Yields at most `limit` batches, each with every input in `input_names`."""
    if data is None:
        raise KilnError("INT8 calibration needs data, and none was given",
                        hint="pass --calib=DATA (a folder of .npz batches or one .npz), or "
                             "--calibCache=FILE with a calibration cache")
    batches = _source(data, input_names, batch_size)
    empty = True
    for label, batch in itertools.islice(batches, limit):
        empty = False
        yield _checked(batch, input_names, label)
    if empty:
        raise KilnError(f"the calibration data {_describe(data)} holds no batches",
                        hint="give at least one batch of real inputs")


def count_batches(data: Any, limit: int | None, batch_size: int | None) -> int | None:
    """How many batches `calibration_batches` will yield, when that is known up front."""
    total: int | None = None
    if isinstance(data, str | Path):
        path = Path(data)
        if path.is_dir():
            total = len(list(path.glob("*.npz")))
        elif path.suffix == ".npz" and path.is_file():
            return None if limit is None else limit
    elif hasattr(data, "__len__"):
        total = len(data)
    if total is None:
        return limit
    return total if limit is None else min(total, limit)


def _source(data: Any, names: list[str], batch_size: int | None) -> Iterator[tuple[str, Any]]:
    if isinstance(data, str | Path):
        path = Path(data)
        if path.is_dir():
            return _folder(path)
        if path.is_file() and path.suffix == ".npz":
            return _stacked(path, batch_size or DEFAULT_BATCH_SIZE)
        if not path.exists():
            raise KilnError(f"calibration data not found: {path}",
                            hint="pass a folder of .npz files or one .npz file")
        raise KilnError(f"calibration data {path} is neither a folder nor an .npz file",
                        hint="save batches with numpy.savez(file, **{input_name: array})")
    if isinstance(data, Mapping):
        raise KilnError("calibration data is a single dict, expected an iterable of batches",
                        hint="wrap it in a list: [batch]")
    try:
        items = iter(data)
    except TypeError:
        raise KilnError(f"calibration data of type {type(data).__name__} is not iterable",
                        hint="pass a path, a list of batches or a torch DataLoader") from None
    return ((f"batch {i}", _as_batch(item, names, i)) for i, item in enumerate(items))


def _folder(path: Path) -> Iterator[tuple[str, Batch]]:
    files = sorted(path.glob("*.npz"))
    if not files:
        raise KilnError(f"calibration folder {path} has no .npz files",
                        hint="save one batch per file with numpy.savez(f, **{name: array})")
    for file in files:
        yield file.name, _read_npz(file)


def _stacked(path: Path, batch_size: int) -> Iterator[tuple[str, Batch]]:
    arrays = _read_npz(path)
    sizes = {len(a) if a.ndim else 0 for a in arrays.values()}
    if len(sizes) != 1 or 0 in sizes:
        shapes = ", ".join(f"{k}: {list(v.shape)}" for k, v in arrays.items())
        raise KilnError(f"{path}: the arrays must stack the same number of samples along "
                        f"their first axis, got {shapes}",
                        hint="save one array per input, samples along axis 0")
    total = sizes.pop()
    for start in range(0, total, batch_size):
        yield (f"{path.name}[{start}:{start + batch_size}]",
               {k: v[start:start + batch_size] for k, v in arrays.items()})


def _read_npz(path: Path) -> Batch:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as exc:
        raise KilnError(f"cannot read calibration file {path}: {exc}",
                        hint="save batches with numpy.savez") from None
    if any(k.startswith("input.") for k in arrays):  # kiln's sample files
        arrays = {k[len("input."):]: v for k, v in arrays.items() if k.startswith("input.")}
    return arrays


def _as_batch(item: Any, names: list[str], index: int) -> Batch:
    if isinstance(item, Mapping):
        return dict(item)
    if isinstance(item, tuple | list):
        if len(item) < len(names):
            raise KilnError(f"calibration batch {index} has {len(item)} items, the model has "
                            f"{len(names)} inputs ({', '.join(names)})",
                            hint="yield dicts keyed by input name, or tuples in input order")
        return dict(zip(names, item))
    if len(names) == 1:
        return {names[0]: item}
    raise KilnError(f"calibration batch {index} is one {type(item).__name__}, but the model "
                    f"has {len(names)} inputs ({', '.join(names)})",
                    hint="yield dicts keyed by input name")


def _checked(batch: Batch, names: list[str], label: str) -> Batch:
    missing = [n for n in names if n not in batch]
    if missing:
        raise KilnError(f"calibration {label} lacks input(s) {', '.join(missing)} (it has "
                        f"{', '.join(map(str, batch)) or 'nothing'})",
                        hint=f"key each batch by the model's input names: {', '.join(names)}")
    result = {}
    for name in names:
        value = batch[name]
        if not isinstance(value, np.ndarray | torch.Tensor):
            value = np.asarray(value)
        result[name] = value
    return result


def _describe(data: Any) -> str:
    return str(data) if isinstance(data, str | Path) else f"({type(data).__name__})"
