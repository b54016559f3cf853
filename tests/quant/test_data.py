"""Calibration batches from a folder of .npz files, one stacked .npz, lists, generators
and torch DataLoaders; and the errors for data that cannot be used."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kiln.errors import KilnError
from kiln.quant.data import calibration_batches, count_batches

NAMES = ["x", "mask"]


def _batch(rng, n=4):
    return {"x": rng.standard_normal((n, 3)).astype(np.float32),
            "mask": rng.integers(0, 2, (n, 3))}


def test_folder_of_npz_files_in_name_order(tmp_path):
    rng = np.random.default_rng(0)
    written = [_batch(rng) for _ in range(3)]
    for i, batch in enumerate(written):
        np.savez(tmp_path / f"b{i:02d}.npz", **batch)
    (tmp_path / "notes.txt").write_text("not a batch")
    got = list(calibration_batches(str(tmp_path), NAMES))
    assert len(got) == 3 and count_batches(str(tmp_path), None, None) == 3
    for want, batch in zip(written, got):
        np.testing.assert_array_equal(batch["x"], want["x"])
        np.testing.assert_array_equal(batch["mask"], want["mask"])
    assert len(list(calibration_batches(str(tmp_path), NAMES, limit=2))) == 2


def test_kiln_sample_files_with_input_prefixes(tmp_path):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.savez(tmp_path / "s.npz", **{"input.x": x, "input.mask": x, "output.y": x})
    (batch,) = calibration_batches(str(tmp_path), NAMES)
    assert set(batch) == {"x", "mask"}


def test_one_stacked_npz_is_cut_into_batches(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((10, 3)).astype(np.float32)
    np.savez(tmp_path / "all.npz", x=x, mask=np.ones((10, 3)))
    got = list(calibration_batches(str(tmp_path / "all.npz"), NAMES, batch_size=4))
    assert [len(b["x"]) for b in got] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in got]), x)


def test_iterables_of_dicts_tuples_and_tensors():
    rng = np.random.default_rng(2)
    dicts = [_batch(rng) for _ in range(2)]
    assert len(list(calibration_batches(dicts, NAMES))) == 2
    tuples = [(b["x"], b["mask"], "label") for b in dicts]  # extra items are ignored
    got = list(calibration_batches(iter(tuples), NAMES))
    np.testing.assert_array_equal(got[1]["mask"], dicts[1]["mask"])
    single = list(calibration_batches((torch.ones(2, 3) for _ in range(3)), ["x"]))
    assert len(single) == 3 and isinstance(single[0]["x"], torch.Tensor)


def test_a_torch_dataloader():
    dataset = torch.utils.data.TensorDataset(torch.randn(20, 3), torch.arange(20))
    loader = torch.utils.data.DataLoader(dataset, batch_size=8)
    got = list(calibration_batches(loader, ["x"], limit=2))
    assert [tuple(b["x"].shape) for b in got] == [(8, 3), (8, 3)]
    assert count_batches(loader, None, None) == 3


@pytest.mark.parametrize("make,message", [
    (lambda p: None, "needs data"),
    (lambda p: str(p / "missing"), "not found"),
    (lambda p: str(p), "no .npz files"),
    (lambda p: [], "holds no batches"),
    (lambda p: {"x": np.ones(3)}, "single dict"),
    (lambda p: 42, "not iterable"),
    (lambda p: [{"x": np.ones(3)}], "lacks input"),
    (lambda p: [(np.ones(3),)], "has 1 items"),
])
def test_unusable_data_is_refused_with_the_reason(tmp_path, make, message):
    with pytest.raises(KilnError, match=message):
        list(calibration_batches(make(tmp_path), NAMES))


def test_unreadable_and_ragged_npz_files(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(KilnError, match="cannot read calibration file"):
        list(calibration_batches(str(bad), NAMES))
    np.savez(tmp_path / "ragged.npz", x=np.ones((4, 3)), mask=np.ones((5, 3)))
    with pytest.raises(KilnError, match="same number of samples"):
        list(calibration_batches(str(tmp_path / "ragged.npz"), NAMES))
