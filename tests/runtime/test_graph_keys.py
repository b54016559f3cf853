"""Which feeds may go straight to a captured graph's replay (kiln.runtime.cuda_graphs._key):
only all-CUDA tensors, keyed by name, shape and type whatever the mapping's order; any
other feed (a CPU tensor, a numpy array, a list, None) takes the checked path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kiln.runtime.cuda_graphs import _key


@pytest.mark.parametrize("other", [torch.zeros(2, 3), np.zeros((2, 3), np.float32),
                                   [torch.zeros(2)], None])
def test_anything_but_cuda_tensors_has_no_key(other):
    assert _key({"x": other}) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_feeds_keyed_by_name_shape_and_type():
    a, b = torch.rand(2, 3, device="cuda"), torch.ones(4, dtype=torch.int64, device="cuda")
    assert _key({"a": a, "b": b}) == _key({"b": b, "a": a}) == (
        ("a", (2, 3), torch.float32), ("b", (4,), torch.int64))
    assert _key({"a": a, "b": b.cpu()}) is None
    assert _key({"a": a.half(), "b": b}) != _key({"a": a, "b": b})
