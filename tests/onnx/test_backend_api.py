"""kiln.backend behaves as onnx.backend.base defines: prepare -> BackendRep.run, run_model,
supports_device, is_compatible."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx.backend.base import Backend, BackendRep

import kiln.backend as backend
from kiln.demo import model_path as demo_model_path
from kiln.demo import samples as demo_samples
from kiln.errors import InputError

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return onnx.load(str(demo_model_path()))


@pytest.fixture(scope="module")
def reference():
    session = ort.InferenceSession(str(demo_model_path()), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"image": x})


def test_backend_is_an_onnx_backend():
    assert issubclass(backend.KilnBackend, Backend)


def test_prepare_gives_a_rep_that_runs_like_onnxruntime(model, reference):
    rep = backend.prepare(model, "CPU")
    assert isinstance(rep, BackendRep)
    images = demo_samples()[0]
    for batch in (1, 7, 30):
        x = images[:batch]
        outputs = rep.run([x])
        assert isinstance(outputs, tuple) and len(outputs) == 2  # logits, probabilities
        for got, expected in zip(outputs, reference(x)):
            np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)
        by_name = rep.run({"image": x})
        assert all(np.array_equal(a, b) for a, b in zip(by_name, outputs))
        single = rep.run(x)  # one array for a one-input model
        assert all(np.array_equal(a, b) for a, b in zip(single, outputs))


def test_run_model_and_prepare_from_a_path(model, reference):
    x = demo_samples()[0][:5]
    for got, expected in zip(backend.run_model(model, [x]), reference(x)):
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)
    from_path = backend.prepare(str(demo_model_path())).run([x])
    for got, expected in zip(from_path, reference(x)):
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)


def test_too_many_or_bad_inputs_are_refused(model):
    rep = backend.prepare(model)
    x = demo_samples()[0][:2]
    with pytest.raises(InputError, match="2 inputs given; the model takes 1"):
        rep.run([x, x])
    with pytest.raises(InputError, match="'image'"):
        rep.run([x.astype(np.float64)])


def test_supports_device():
    assert backend.supports_device("CPU") and backend.supports_device("cpu")
    assert backend.supports_device("CUDA") == torch.cuda.is_available()
    assert backend.supports_device("CUDA:0") == torch.cuda.is_available()
    assert not backend.supports_device("FPGA")


def test_is_compatible_follows_the_device(model):
    assert backend.is_compatible(model, "CPU")
    assert not backend.is_compatible(model, "FPGA")


def test_device_names_map_to_torch_devices():
    assert backend._device("CPU") == "cpu"
    assert backend._device("CUDA") == "cuda"
    assert backend._device("CUDA:1") == "cuda:1"


def test_run_node_is_not_offered():
    node = onnx.helper.make_node("Relu", ["x"], ["y"])
    with pytest.raises(NotImplementedError):
        backend.run_node(node, [np.ones(3, np.float32)])
