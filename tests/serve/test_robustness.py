"""Bad requests and bad conditions: each gets a clear error with the right status, and the
server goes on serving everyone else (every test ends by checking that it does).

This module's server takes bodies up to 1 MiB, so the size limit is cheap to test."""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from kiln.serve.server import ServeOptions, Server, ServerThread
from tests.serve import models

pytestmark = pytest.mark.timeout(120)
LIMIT = 2**20


@pytest.fixture(scope="module")
def server(repository):
    options = ServeOptions(http_port=0, grpc_port=0, metrics_port=0, max_input_bytes=LIMIT,
                           exit_timeout_s=10)
    running = ServerThread(Server(repository, options)).start()
    yield running
    running.stop()


def _post(server, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", server.ports["http"], timeout=30)
    try:
        connection.request("POST", path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _binary_request(array: np.ndarray, size: int | None = None) -> tuple[bytes, dict]:
    data = array.tobytes()
    header = json.dumps({"inputs": [{
        "name": "image", "shape": list(array.shape), "datatype": "FP32",
        "parameters": {"binary_data_size": len(data) if size is None else size}}]}).encode()
    return header + data, {"Inference-Header-Content-Length": str(len(header))}


def _serves(server, digits_engine) -> None:
    """The server still answers a good request, correctly."""
    images = models.digits_images(2, seed=77)
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.ports['http']}",
                                              network_timeout=30)
    try:
        tensor = httpclient.InferInput("image", [2, 1, 8, 8], "FP32")
        tensor.set_data_from_numpy(images)
        result = client.infer("digits", [tensor])
    finally:
        client.close()
    models.assert_cnn_close(result.as_numpy("probabilities"),
                                  digits_engine.run({"image": images})["probabilities"])


def _metric(server, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    connection = http.client.HTTPConnection("127.0.0.1", server.ports["metrics"], timeout=30)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            # the parser names counter samples <name>_total, whatever the text says
            if sample.name in (name, f"{name}_total") and \
                    all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"no sample {name}{labels} in /metrics")


def _wait_for(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


# ------------------------------------------------------------------ malformed requests
@pytest.mark.parametrize("body, expected", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "no \"inputs\" list"),
    (b'{"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32"}]}',
     "neither \"data\" nor"),
    (b'{"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", '
     b'"data": [1, 2]}]}', "holds 2 values; shape [1, 1, 8, 8] of FP32 needs 64"),
    (b'{"inputs": [{"name": "image", "shape": "big", "datatype": "FP32", "data": []}]}',
     "a shape is a list"),
    (b'{"inputs": [{"name": "image", "shape": [1], "datatype": "FP128", "data": [1]}]}',
     "datatype 'FP128'"),
    (b'{"inputs": [], "parameters": {"timeout": "soon"}}', "timeout"),
])
def test_malformed_json(server, digits_engine, body, expected):
    status, answer = _post(server, "/v2/models/digits/infer", body)
    assert status == 400
    assert expected in answer["error"]
    _serves(server, digits_engine)


@pytest.mark.parametrize("body, expected", [
    (b'{"inputs": [{"name": "e", "shape": [2], "datatype": "UINT8", "data": [7, 300]}]}',
     "input 'e': \"data\" holds values outside UINT8's range 0..255"),
    (b'{"inputs": [{"name": "f", "shape": [1], "datatype": "BOOL", "data": [2]}]}',
     "holds int64 values; shape [1] of BOOL needs 1 true/false"),
    (b'{"inputs": [{"name": "c", "shape": [2], "datatype": "INT32", "data": [[1], [2, 3]]}]}',
     "holds ragged lists"),
])
def test_json_values_that_do_not_fit(server, digits_engine, body, expected):
    status, answer = _post(server, "/v2/models/mixed/infer", body)
    assert status == 400 and expected in answer["error"]
    _serves(server, digits_engine)


def test_malformed_binary_requests(server, digits_engine):
    images = models.digits_images(1, seed=1)
    body, headers = _binary_request(images, size=252)  # the size says 252, the shape 256
    status, answer = _post(server, "/v2/models/digits/infer", body[:-4], headers)
    assert status == 400
    assert "has 252 bytes of data; shape [1, 1, 8, 8] of FP32 needs 256" in answer["error"]
    body, headers = _binary_request(images)
    status, answer = _post(server, "/v2/models/digits/infer", body + b"\0" * 4, headers)
    assert status == 400
    assert "4 bytes after the JSON header that no input's binary_data_size" in answer["error"]
    status, answer = _post(server, "/v2/models/digits/infer", body,
                           {"Inference-Header-Content-Length": "999999"})
    assert status == 400 and "Inference-Header-Content-Length" in answer["error"]
    _serves(server, digits_engine)


def test_malformed_protobuf(server, digits_engine):
    with grpc.insecure_channel(f"127.0.0.1:{server.ports['grpc']}") as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as error:
            call(b"\x0a\xff\xff\xff\xff\x0f garbage", timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid inference.ModelInferRequest" in error.value.details()
    _serves(server, digits_engine)


# ------------------------------------------------------------------ wrong tensors
@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("array, expected", [
    (np.zeros((1, 1, 8, 8), np.float64), "was sent as FP64; the model takes FP32"),
    (np.zeros((1, 1, 8, 9), np.float32), "has shape [1, 1, 8, 9]; the model takes [-1, 1, 8, 8]"),
    (np.zeros((1, 8, 8), np.float32), "has shape [1, 8, 8]"),
    (np.zeros((17, 1, 8, 8), np.float32), "batch size 17; the model takes 1 to 16"),
])
def test_wrong_dtype_and_shape(server, digits_engine, protocol, array, expected):
    module = httpclient if protocol == "http" else grpcclient
    url = f"127.0.0.1:{server.ports[protocol]}"
    client = module.InferenceServerClient(url)
    tensor = module.InferInput("image", list(array.shape), module.np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array)
    try:
        with pytest.raises(InferenceServerException) as error:
            client.infer("digits", [tensor])
    finally:
        client.close()
    assert expected in error.value.message()
    assert error.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
    _serves(server, digits_engine)


def test_unknown_model_version_and_input(server, digits_engine):
    images = models.digits_images(1, seed=2)
    body, headers = _binary_request(images)
    status, answer = _post(server, "/v2/models/nosuchmodel/infer", body, headers)
    assert status == 404 and "unknown model 'nosuchmodel'" in answer["error"]
    assert "'digits'" in answer["error"]  # names what it does serve
    status, answer = _post(server, "/v2/models/digits/versions/9/infer", body, headers)
    assert status == 404 and "no version 9 loaded; loaded: 1, 2" in answer["error"]
    status, answer = _post(server, "/v2/models/digits/versions/x/infer", body, headers)
    assert status == 400 and "not a number" in answer["error"]
    wrong = {"inputs": [{"name": "img", "shape": [1, 1, 8, 8], "datatype": "FP32",
                         "data": images.ravel().tolist()}]}
    status, answer = _post(server, "/v2/models/digits/infer", json.dumps(wrong).encode())
    assert status == 400 and "unknown input(s) 'img'" in answer["error"]
    assert "it takes 'image' (FP32 [-1, 1, 8, 8])" in answer["error"]
    status, answer = _post(server, "/v2/nosuchendpoint", b"")
    assert status == 404 and "no endpoint" in answer["error"]
    _serves(server, digits_engine)


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
def test_bodies_are_read_raw_whatever_the_content_type(server, digits_engine, content_type):
    images = models.digits_images(1, seed=6)
    body, headers = _binary_request(images)
    if content_type:
        headers["Content-Type"] = content_type
    connection = http.client.HTTPConnection("127.0.0.1", server.ports["http"], timeout=30)
    connection.request("POST", "/v2/models/digits/infer", body=body, headers=headers)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    assert response.status == 200, data
    # no output asked for binary data: the response is all JSON
    assert response.getheader("Inference-Header-Content-Length") is None
    header = json.loads(data)
    assert header["outputs"][0]["name"] == "probabilities"
    got = np.array(header["outputs"][0]["data"], np.float32).reshape(1, 10)
    models.assert_cnn_close(got, digits_engine.run({"image": images})["probabilities"])


# ------------------------------------------------------------------ size limit
def test_body_over_the_limit(server, digits_engine):
    # announced by Content-Length: refused before a byte of the body is read
    with socket.create_connection(("127.0.0.1", server.ports["http"]), timeout=30) as sock:
        sock.sendall(b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: %d\r\n\r\n" % (LIMIT * 64))
        reply = sock.recv(65536).decode()
    assert reply.startswith("HTTP/1.1 413") and "over the limit" in reply
    # sent in chunks with no length: refused once the limit is passed
    connection = http.client.HTTPConnection("127.0.0.1", server.ports["http"], timeout=30)
    chunks = (b"x" * 65536 for _ in range(LIMIT // 65536 + 4))
    try:
        connection.request("POST", "/v2/models/digits/infer", body=chunks, encode_chunked=True)
        response = connection.getresponse()
        assert response.status == 413
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may close before the client is done sending: refused either way
    finally:
        connection.close()
    # gRPC: the message limit
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.ports['grpc']}")
    big = np.zeros((16, 1, 8, 8 * 256), np.float32)  # 2 MiB
    tensor = grpcclient.InferInput("image", list(big.shape), "FP32")
    tensor.set_data_from_numpy(big)
    with pytest.raises(InferenceServerException) as error:
        client.infer("digits", [tensor])
    client.close()
    assert error.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    _serves(server, digits_engine)


# ------------------------------------------------------------------ clients that leave
def test_client_disconnects_mid_body(server, digits_engine):
    images = models.digits_images(4, seed=3)
    body, headers = _binary_request(images)
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.ports["http"]), timeout=30) as sock:
            head = (f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n"
                    f"Inference-Header-Content-Length: "
                    f"{headers['Inference-Header-Content-Length']}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            sock.sendall(head + body[:len(body) // 2])
    _serves(server, digits_engine)


def test_client_disconnects_while_queued(server, digits_engine):
    """The slow model holds requests 1.5 s: a client that leaves meanwhile is counted as
    cancelled, and its request never runs."""
    executions = _metric(server, "nv_inference_exec_count", model="slow")
    cancelled = _metric(server, "nv_inference_request_failure", model="slow", reason="CANCELED")
    body, headers = _binary_request(models.digits_images(1, seed=4))
    with socket.create_connection(("127.0.0.1", server.ports["http"]), timeout=30) as sock:
        head = (f"POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\n"
                f"Inference-Header-Content-Length: {headers['Inference-Header-Content-Length']}"
                f"\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        sock.sendall(head + body)
        _wait_for(lambda: _metric(server, "nv_inference_pending_request_count",
                                  model="slow") == 1)
    _wait_for(lambda: _metric(server, "nv_inference_request_failure", model="slow",
                              reason="CANCELED") == cancelled + 1)
    _wait_for(lambda: _metric(server, "nv_inference_pending_request_count", model="slow") == 0)
    assert _metric(server, "nv_inference_exec_count", model="slow") == executions
    _serves(server, digits_engine)


# ------------------------------------------------------------------ overload
def test_overload_is_refused_at_once(server, digits_engine):
    """slow: a queue of 2 that holds requests 1.5 s. Two wait; the third is refused at once
    with 503 (HTTP) or UNAVAILABLE (gRPC); the two waiting still get their answers."""
    url = f"127.0.0.1:{server.ports['http']}"
    rejected = _metric(server, "nv_inference_request_failure", model="slow", reason="REJECTED")
    answers: dict[int, np.ndarray] = {}
    sent = {i: models.digits_images(1, seed=500 + i) for i in range(2)}

    def wait_in_queue(i: int) -> None:
        client = httpclient.InferenceServerClient(url, network_timeout=60)
        tensor = httpclient.InferInput("image", [1, 1, 8, 8], "FP32")
        tensor.set_data_from_numpy(sent[i])
        answers[i] = client.infer("slow", [tensor]).as_numpy("probabilities")
        client.close()

    threads = [threading.Thread(target=wait_in_queue, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    _wait_for(lambda: _metric(server, "nv_inference_pending_request_count", model="slow") == 2)
    for protocol, module in (("http", httpclient), ("grpc", grpcclient)):
        client = module.InferenceServerClient(f"127.0.0.1:{server.ports[protocol]}")
        tensor = module.InferInput("image", [1, 1, 8, 8], "FP32")
        tensor.set_data_from_numpy(models.digits_images(1, seed=9))
        started = time.monotonic()
        with pytest.raises(InferenceServerException) as error:
            client.infer("slow", [tensor])
        client.close()
        assert time.monotonic() - started < 1.0, "a full queue must refuse at once"
        assert error.value.status() in ("503", "StatusCode.UNAVAILABLE")
        assert "queue is full (2 requests waiting)" in error.value.message()
    for thread in threads:
        thread.join(30)
    for i, images in sent.items():
        models.assert_cnn_close(answers[i], digits_engine.run({"image": images})
                                   ["probabilities"])
    assert _metric(server, "nv_inference_request_failure", model="slow",
                   reason="REJECTED") == rejected + 2
    _serves(server, digits_engine)


# ------------------------------------------------------------------ models and sockets
def test_a_model_that_fails_to_load_leaves_the_others_serving(server, digits_engine):
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.ports['http']}")
    try:
        with pytest.raises(InferenceServerException) as error:
            client.load_model("broken")
        assert "NoSuchOp" in error.value.message()
        with pytest.raises(InferenceServerException) as error:
            client.load_model("nosuchmodel")
        assert "no model 'nosuchmodel' in the repository" in error.value.message()
        assert client.is_model_ready("digits") and not client.is_model_ready("broken")
    finally:
        client.close()
    _serves(server, digits_engine)


def test_accepted_http_sockets_have_tcp_nodelay(server):
    port = server.ports["http"]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.recv(1024).startswith(b"HTTP/1.1 200")
        peer = client.getsockname()
        found = []
        for fd in os.listdir("/proc/self/fd"):  # the server lives in this process
            try:
                sock = socket.socket(fileno=os.dup(int(fd)))
            except OSError:
                continue
            with sock:
                if sock.family not in (socket.AF_INET, socket.AF_INET6):
                    continue
                try:
                    if sock.getsockname()[1] == port and sock.getpeername() == peer:
                        found.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                except OSError:
                    continue
    assert found and all(found), "the server's end of the connection has Nagle on"
