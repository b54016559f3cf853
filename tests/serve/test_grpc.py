"""KServe v2 over gRPC, driven by tritonclient.grpc (and, for the typed `contents` form that
client never sends, by Triton's own generated stub): answers checked against the engine."""

from __future__ import annotations

import queue

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.serve import models

pytestmark = pytest.mark.timeout(120)


def _inputs(arrays: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape),
                                       grpcclient.np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def test_health_metadata_and_config(grpc_client):
    assert grpc_client.is_server_live()
    assert not grpc_client.is_server_ready()  # strict readiness: two models failed to load
    assert grpc_client.get_server_metadata().name == "kiln"
    metadata = grpc_client.get_model_metadata("digits", as_json=True)
    assert metadata["inputs"][0] == {"name": "image", "datatype": "FP32",
                                     "shape": ["-1", "1", "8", "8"]}  # protobuf JSON: int64 text
    config = grpc_client.get_model_config("digits").config
    assert config.max_batch_size == 16 and config.dynamic_batching.max_queue_delay_microseconds
    assert grpc_client.is_model_ready("digits", "1")
    assert not grpc_client.is_model_ready("nosuchmodel")


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.parametrize("rows", [1, 7])
def test_digits_match_the_engine(grpc_client, digits_engine, version, rows):
    images = models.digits_images(rows, seed=100 + rows)
    result = grpc_client.infer("digits", _inputs({"image": images}), model_version=version,
                               request_id="abc")
    expected = digits_engine.run({"image": images})
    for name in ("probabilities", "logits"):
        models.assert_cnn_close(result.as_numpy(name), expected[name])
    response = result.get_response()
    assert response.model_version == version and response.id == "abc"


def test_eight_dtypes_match_the_engine(grpc_client, mixed_engine):
    arrays = models.mixed_inputs(6, seed=42)
    result = grpc_client.infer("mixed", _inputs(arrays))
    for name, want in mixed_engine.run(arrays).items():
        got = result.as_numpy(name)
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_typed_contents_instead_of_raw(server, mixed_engine):
    arrays = models.mixed_inputs(2, seed=3)
    fields = {"a": "fp32_contents", "c": "int_contents", "d": "int64_contents",
              "e": "uint_contents", "f": "bool_contents", "g": "fp64_contents",
              "h": "int_contents"}
    request = service_pb2.ModelInferRequest(model_name="mixed")
    for name, array in arrays.items():
        if name == "b":  # FP16 has no typed field: Triton's rule too
            continue
        tensor = request.inputs.add(name=name, shape=array.shape,
                                    datatype=grpcclient.np_to_triton_dtype(array.dtype))
        getattr(tensor.contents, fields[name]).extend(array.ravel().tolist())
    with grpc.insecure_channel(f"127.0.0.1:{server.ports['grpc']}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as missing:
            stub.ModelInfer(request, timeout=30)
        assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "missing input(s) 'b'" in missing.value.details()
        b = request.inputs.add(name="b", shape=[2, 4], datatype="FP16")
        b.contents.fp32_contents.extend(arrays["b"].astype(np.float32).ravel().tolist())
        with pytest.raises(grpc.RpcError) as fp16:
            stub.ModelInfer(request, timeout=30)
        assert "raw_input_contents" in fp16.value.details()
        del request.inputs[-1]
        request.inputs.add(name="b", shape=[2, 4], datatype="FP16")
        # contents and raw may not be mixed: all inputs go raw then
        request.raw_input_contents.extend(
            np.ascontiguousarray(arrays[t.name]).tobytes() for t in request.inputs)
        response = stub.ModelInfer(request, timeout=30)
    expected = mixed_engine.run(arrays)
    for i, output in enumerate(response.outputs):
        want = expected[output.name]
        got = np.frombuffer(response.raw_output_contents[i], want.dtype).reshape(output.shape)
        np.testing.assert_array_equal(got, want, err_msg=output.name)


def test_typed_contents_out_of_range_or_miscounted(server):
    request = service_pb2.ModelInferRequest(model_name="mixed")
    tensor = request.inputs.add(name="e", shape=[2], datatype="UINT8")
    tensor.contents.uint_contents.extend([7, 300])
    with grpc.insecure_channel(f"127.0.0.1:{server.ports['grpc']}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as wide:
            stub.ModelInfer(request, timeout=30)
        tensor.contents.uint_contents.pop()
        with pytest.raises(grpc.RpcError) as short:
            stub.ModelInfer(request, timeout=30)
    assert wide.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "values outside UINT8's range 0..255" in wide.value.details()
    assert "has 1 values in contents.uint_contents; shape [2] needs 2" in short.value.details()


def test_stream_infer(grpc_client, digits_engine):
    results: queue.Queue = queue.Queue()
    grpc_client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        sent = {}
        for i in range(4):
            images = models.digits_images(i + 1, seed=200 + i)
            sent[str(i)] = images
            grpc_client.async_stream_infer("digits", _inputs({"image": images}),
                                           request_id=str(i))
        grpc_client.async_stream_infer("nosuchmodel", _inputs({"image": images}),
                                       request_id="bad")
        answers = [results.get(timeout=30) for _ in range(5)]
    finally:
        grpc_client.stop_stream()
    errors = [e for r, e in answers if e is not None]
    assert len(errors) == 1 and "unknown model 'nosuchmodel'" in str(errors[0])
    for result, error in answers:
        if error is None:
            images = sent[result.get_response().id]
            models.assert_cnn_close(result.as_numpy("logits"),
                                       digits_engine.run({"image": images})["logits"])


def test_statistics_and_repository(grpc_client):
    grpc_client.infer("ragged", _inputs({"x": np.ones((1, 3), np.float32)}))
    stats = grpc_client.get_inference_statistics("ragged", as_json=True)["model_stats"][0]
    assert int(stats["inference_stats"]["success"]["count"]) >= 1
    index = grpc_client.get_model_repository_index(as_json=True)["models"]
    states = {(m["name"], m.get("version", "")): m.get("state") for m in index}
    assert states[("ragged", "1")] == "READY" and states[("broken", "")] == "UNAVAILABLE"
    grpc_client.unload_model("ragged")
    assert not grpc_client.is_model_ready("ragged")
    grpc_client.load_model("ragged")
    assert grpc_client.is_model_ready("ragged")


def test_errors_carry_grpc_codes(grpc_client):
    with pytest.raises(InferenceServerException) as unknown:
        grpc_client.infer("nosuchmodel", _inputs({"x": np.ones((1, 3), np.float32)}))
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as shape:
        grpc_client.infer("digits", _inputs({"image": np.ones((1, 1, 8, 9), np.float32)}))
    assert shape.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "shape [1, 1, 8, 9]" in shape.value.message()
