"""`kiln serve` as a process: it binds loopback on the ports asked for, SIGTERM drains the
requests in flight before it exits, and start-up mistakes end in one line, exit status 1."""

from __future__ import annotations

import http.client
import json
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.serve import models

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parents[2]


def _kiln(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kiln", "serve", *args], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True)


class Log:
    """The server's stderr, read on a thread so the pipe never fills."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(process,), daemon=True).start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stderr:
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout_s: float = 120) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            self.seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"no {pattern!r} in the server's log:\n{''.join(self.seen)}")


@pytest.fixture
def slow_repository(repository, tmp_path):
    """Only the slow model (a queue of 2 that holds requests 1.5 s): every model loads, so
    the server is ready."""
    target = tmp_path / "repo"
    (target / "slow" / "1").mkdir(parents=True)
    (target / "slow" / "config.pbtxt").write_text((repository / "slow" / "config.pbtxt")
                                                  .read_text())
    (target / "slow" / "1" / "model.onnx").write_bytes(
        (repository / "slow" / "1" / "model.onnx").read_bytes())
    return target


def _pending(metrics_port: int) -> float:
    connection = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=10)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    match = re.search(r'nv_inference_pending_request_count\{model="slow",version="1"\} (\S+)',
                      text)
    return float(match.group(1)) if match else -1


def test_sigterm_drains_requests_in_flight_then_exits(slow_repository, digits_engine):
    process = _kiln(str(slow_repository), "--http-port", "0", "--grpc-port", "0",
                    "--metrics-port", "0")
    log = Log(process)
    try:
        match = log.wait_for(r"http on 127\.0\.0\.1:(\d+), grpc on 127\.0\.0\.1:(\d+), "
                             r"metrics on 127\.0\.0\.1:(\d+)")
        http_port, grpc_port, metrics_port = map(int, match.groups())
        keep_alive = http.client.HTTPConnection("127.0.0.1", http_port, timeout=30)
        keep_alive.request("GET", "/v2/health/ready")  # stays open for after SIGTERM
        ready = keep_alive.getresponse()
        ready.read()
        assert ready.status == 200  # every model loaded
        images = {p: models.digits_images(1, seed=i) for i, p in enumerate(("http", "grpc"))}
        answers: dict[str, np.ndarray] = {}

        def infer(protocol: str, module, port: int) -> None:
            client = module.InferenceServerClient(f"127.0.0.1:{port}")
            tensor = module.InferInput("image", [1, 1, 8, 8], "FP32")
            tensor.set_data_from_numpy(images[protocol])
            answers[protocol] = client.infer("slow", [tensor]).as_numpy("probabilities")
            client.close()

        threads = [threading.Thread(target=infer, args=("http", httpclient, http_port)),
                   threading.Thread(target=infer, args=("grpc", grpcclient, grpc_port))]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while _pending(metrics_port) != 2:  # both wait in the slow model's queue
            assert time.monotonic() < deadline
            time.sleep(0.02)

        process.send_signal(signal.SIGTERM)
        log.wait_for("stopping: accepting nothing new, draining 2 request")
        with pytest.raises(ConnectionRefusedError):  # no longer accepting
            socket.create_connection(("127.0.0.1", http_port), timeout=5).close()
        # an open connection is answered: not ready, and no new inference
        keep_alive.request("GET", "/v2/health/ready")
        not_ready = keep_alive.getresponse()
        not_ready.read()
        assert not_ready.status == 400
        body = json.dumps({"inputs": [{"name": "image", "shape": [1, 1, 8, 8],
                                       "datatype": "FP32", "data": [0.0] * 64}]})
        keep_alive.request("POST", "/v2/models/slow/infer", body=body)
        refused = keep_alive.getresponse()
        assert refused.status == 503 and b"shutting down" in refused.read()

        for thread in threads:
            thread.join(30)
        assert process.wait(30) == 0
        log.wait_for("stopped")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    for protocol, sent in images.items():  # the drained requests got their real answers
        models.assert_cnn_close(answers[protocol],
                                   digits_engine.run({"image": sent})["probabilities"])


def _fails(args: list[str], expected: str) -> None:
    process = _kiln(*args)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1, err
    assert expected in err and "Traceback" not in err, err


def test_a_missing_repository(tmp_path):
    _fails([str(tmp_path / "nowhere")], "is not a directory")


def test_a_port_in_use(slow_repository):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        _fails([str(slow_repository), "--http-port", str(port), "--grpc-port", "0",
                "--metrics-port", "0"], f"cannot listen on 127.0.0.1:{port} (--http-port)")


def test_missing_serve_packages_give_a_clear_error(monkeypatch, capsys, tmp_path):
    from kiln.cli.main import main

    monkeypatch.setitem(sys.modules, "aiohttp", None)  # as if not installed
    for name in [m for m in sys.modules if m.startswith("kiln.serve.")]:
        monkeypatch.delitem(sys.modules, name)
    assert main(["serve", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "needs a package that is not installed (aiohttp)" in err
    assert "pip install 'kiln[serve]'" in err
