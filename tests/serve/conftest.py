"""One server for the module's tests: the repository of tests/serve/models.py on loopback,
on ports the OS picks, in a thread of this process; and the references its answers are
checked against (the same engines, run directly)."""

from __future__ import annotations

import pytest

pytest.importorskip("aiohttp", reason="kiln serve needs aiohttp (pip install 'kiln[serve]')")
pytest.importorskip("grpc", reason="kiln serve needs grpcio (pip install 'kiln[serve]')")
pytest.importorskip("tritonclient.http", reason="the serve tests drive it with tritonclient")
pytest.importorskip("tritonclient.grpc", reason="the serve tests drive it with tritonclient")

from kiln.build import BuilderConfig, build_engine
from kiln.demo import model_path
from kiln.runtime import ExecutionContext
from kiln.serve.server import ServeOptions, Server, ServerThread
from tests.serve import models


@pytest.fixture(scope="session")
def repository(tmp_path_factory):
    return models.write_repository(tmp_path_factory.mktemp("repository"))


@pytest.fixture(scope="module")
def server(repository):
    options = ServeOptions(http_port=0, grpc_port=0, metrics_port=0, exit_timeout_s=10)
    running = ServerThread(Server(repository, options)).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def http(server):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.ports['http']}",
                                              connection_timeout=30, network_timeout=30)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(server):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.ports['grpc']}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def digits_engine():
    """The demo CNN run directly: what the server's answers must equal."""
    return ExecutionContext(build_engine(model_path(), BuilderConfig(device="cpu")))


@pytest.fixture(scope="session")
def mixed_engine():
    return ExecutionContext(build_engine(models.mixed_model(), BuilderConfig(device="cpu")))


@pytest.fixture(scope="session")
def ragged_engine():
    return ExecutionContext(build_engine(models.ragged_model(), BuilderConfig(device="cpu")))
