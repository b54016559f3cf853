"""Gather's paths against numpy.take: one host index (a view, no index tensors), many
non-negative indices (index_select directly), negative ones (wrapped), on fresh random
data of several shapes and every axis; an index out of range is an IndexError."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kiln.ops.gather import gather

INDEX_SHAPES = [(), (1,), (1, 1), (5,), (2, 3)]


@pytest.mark.parametrize("data_shape", [(7,), (4, 6), (3, 5, 2)])
@pytest.mark.parametrize("index_shape", INDEX_SHAPES)
@pytest.mark.parametrize("negative", [False, True])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_gather_matches_numpy_take(data_shape, index_shape, negative, dtype):
    rng = np.random.default_rng(len(data_shape) * 10 + len(index_shape) + negative)
    data = rng.standard_normal(data_shape).astype(np.float32)
    for axis in range(-len(data_shape), len(data_shape)):
        size = data_shape[axis]
        low = -size if negative else 0
        indices = rng.integers(low, size, index_shape)
        got = gather(torch.from_numpy(data), torch.from_numpy(indices).to(dtype), axis=axis)
        want = np.take(data, indices, axis=axis)
        assert tuple(got.shape) == want.shape
        np.testing.assert_array_equal(got.numpy(), want)


@pytest.mark.parametrize("index", [torch.tensor(9), torch.tensor([-10]), torch.tensor([[2, 9]]),
                                   torch.tensor([-10, 1])])
def test_out_of_range_index_is_an_index_error(index):
    with pytest.raises(IndexError, match="out of range"):
        gather(torch.randn(9, 3), index, axis=0)
