"""Dynamic batching seen from outside: concurrent tritonclient requests share executions (the
statistics say so), only requests of equal shapes share one, and every client still gets
its own rows back."""

from __future__ import annotations

import queue

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.serve import models

pytestmark = pytest.mark.timeout(120)

def _stats(http, model: str) -> dict:
    return http.get_inference_statistics(model)["model_stats"][0]


def _grpc_concurrently(client, model: str, requests: list[dict[str, np.ndarray]]) -> list:
    answers: queue.Queue = queue.Queue()
    for i, arrays in enumerate(requests):
        inputs = []
        for name, array in arrays.items():
            tensor = grpcclient.InferInput(name, list(array.shape),
                                           grpcclient.np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        client.async_infer(model, inputs,
                           lambda result, error, i=i: answers.put((i, result, error)),
                           client_timeout=60)
    results: list = [None] * len(requests)
    for _ in requests:
        i, result, error = answers.get(timeout=60)
        assert error is None, error
        results[i] = result
    return results


def test_concurrent_grpc_requests_share_executions(grpc_client, http, digits_engine):
    before = _stats(http, "digits")
    requests = [{"image": models.digits_images(1, seed=300 + i)} for i in range(16)]
    results = _grpc_concurrently(grpc_client, "digits", requests)
    for arrays, result in zip(requests, results):
        expected = digits_engine.run(arrays)
        models.assert_cnn_close(result.as_numpy("probabilities"), expected["probabilities"])
    after = _stats(http, "digits")
    requests_served = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert requests_served == 16
    assert executions < 16, "16 concurrent requests never shared an execution"
    assert max(b["batch_size"] for b in after["batch_stats"]) > 1


def test_concurrent_http_requests_of_several_sizes(server, mixed_engine):
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.ports['http']}",
                                              concurrency=8, network_timeout=60)
    try:
        requests = [models.mixed_inputs(rows, seed=rows) for rows in (1, 2, 3, 1, 2, 3, 1, 1)]
        pending = []
        for arrays in requests:
            inputs = []
            for name, array in arrays.items():
                tensor = httpclient.InferInput(name, list(array.shape),
                                               httpclient.np_to_triton_dtype(array.dtype))
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            pending.append(client.async_infer("mixed", inputs))
        for arrays, handle in zip(requests, pending):
            result = handle.get_result()
            for name, want in mixed_engine.run(arrays).items():  # elementwise: exact
                np.testing.assert_array_equal(result.as_numpy(name), want, err_msg=name)
    finally:
        client.close()


def test_only_requests_of_equal_shape_share_a_batch(grpc_client, http, ragged_engine):
    # preferred batch 8 is never reached: after 0.3 s each shape goes as its own batch of 3
    # (or smaller ones, should a request arrive after its shape's delay has passed)
    before = {b["batch_size"]: b["compute_infer"]["count"]
              for b in _stats(http, "ragged")["batch_stats"]}
    requests = [{"x": np.random.default_rng(i).standard_normal((1, 3 if i % 2 else 5))
                 .astype(np.float32)} for i in range(6)]
    results = _grpc_concurrently(grpc_client, "ragged", requests)
    for arrays, result in zip(requests, results):
        np.testing.assert_array_equal(result.as_numpy("y"), ragged_engine.run(arrays)["y"])
    after = {b["batch_size"]: b["compute_infer"]["count"]
             for b in _stats(http, "ragged")["batch_stats"]}
    new = {size: count - before.get(size, 0) for size, count in after.items()
           if count != before.get(size, 0)}
    assert sum(size * count for size, count in new.items()) == 6
    assert max(new) <= 3, f"requests of different shapes shared a batch: {new}"
    assert max(new) > 1, f"no requests shared a batch: {new}"


def test_without_dynamic_batching_every_request_executes_alone(grpc_client, http,
                                                              digits_engine):
    before = _stats(http, "plain")
    requests = [{"image": models.digits_images(1, seed=400 + i)} for i in range(8)]
    results = _grpc_concurrently(grpc_client, "plain", requests)
    for arrays, result in zip(requests, results):
        models.assert_cnn_close(result.as_numpy("probabilities"),
                                      digits_engine.run(arrays)["probabilities"])
    after = _stats(http, "plain")
    assert after["execution_count"] - before["execution_count"] == 8
