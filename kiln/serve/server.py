"""The server: the model repository behind HTTP, gRPC and metrics endpoints on one asyncio
loop, the engines running on the batchers' threads.

    server = Server("models/", ServeOptions(http_port=8000, grpc_port=8001))
    asyncio.run(server.serve())          # until SIGTERM or SIGINT

Shutdown (SIGTERM) stops accepting: the listening sockets close, gRPC refuses new calls,
HTTP answers new inference requests on open connections with 503 and readiness with 400.
The requests in flight finish (for up to exit_timeout_s), then the process exits.
`ServerThread` runs a server on a thread of its own, for tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from kiln.errors import KilnError
from kiln.serve import grpc_api, http_api, metrics
from kiln.serve.repository import ModelRepository
from kiln.serve.service import InferenceService

log = logging.getLogger("kiln.serve")


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"  # loopback unless told otherwise
    http_port: int | None = 8000  # None: no HTTP endpoint; 0: any free port
    grpc_port: int | None = 8001
    metrics_port: int | None = 8002
    max_input_bytes: int = 64 * 2**20  # Triton's --http-max-input-size
    max_queue_size: int = 1024  # per model version, where config.pbtxt sets none
    exit_timeout_s: float = 30.0  # Triton's --exit-timeout-secs
    strict_readiness: bool = True  # ready only when every model loaded


class Server:
    def __init__(self, repository: str | Path, options: ServeOptions | None = None) -> None:
        self.options = options or ServeOptions()
        self.repository = ModelRepository(repository, max_queue_size=self.options.max_queue_size)
        self.service = InferenceService(self.repository,
                                        strict_readiness=self.options.strict_readiness)
        self.ports: dict[str, int] = {}
        self.failed_models: list[str] = []
        self._http: list[tuple[web.AppRunner, asyncio.AbstractServer]] = []
        self._grpc = None

    async def start(self) -> None:
        """Binds the ports (so a port in use fails before any model loads), loads the
        models, then serves (ports in self.ports)."""
        o = self.options
        sockets = {}
        try:
            for name, port, flag in (("http", o.http_port, "--http-port"),
                                     ("metrics", o.metrics_port, "--metrics-port")):
                if port is not None:
                    sockets[name] = _listen(o.host, port, flag)
                    self.ports[name] = sockets[name].getsockname()[1]
            if o.grpc_port is not None:
                self.ports["grpc"] = self._bind_grpc(o.grpc_port)
            loop = asyncio.get_running_loop()
            self.failed_models = await loop.run_in_executor(None, self.repository.load_all)
            if "http" in sockets:
                await self._serve_http(http_api.make_app(self.service, o.max_input_bytes),
                                       sockets.pop("http"))
            if self._grpc is not None:
                await self._grpc.start()
            if "metrics" in sockets:
                await self._serve_http(metrics.make_app(self.service), sockets.pop("metrics"))
        except BaseException:
            for sock in sockets.values():
                sock.close()
            await self.stop()
            raise
        ready = len(self.repository.ready_models())
        log.info("serving %d model(s) (%d failed to load); %s", ready, len(self.failed_models),
                 ", ".join(f"{k} on {o.host}:{self.ports[k]}" for k in ("http", "grpc", "metrics")
                           if k in self.ports))

    async def _serve_http(self, app: web.Application, sock: socket.socket) -> None:
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                               shutdown_timeout=1.0)
        await runner.setup()
        server = await asyncio.get_running_loop().create_server(runner.server, sock=sock)
        self._http.append((runner, server))

    def _bind_grpc(self, port: int) -> int:
        self._grpc = grpc_api.make_server(self.service, self.options.max_input_bytes)
        host = self.options.host
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            bound = self._grpc.add_insecure_port(address)
        except RuntimeError:
            bound = 0
        if not bound:
            raise KilnError(f"cannot listen on {address} for gRPC (--grpc-port): the port is "
                            "in use or the address is not this machine's",
                            hint="choose another port, or 0 for any free one")
        return bound

    async def stop(self) -> None:
        """Stops accepting, drains the requests in flight, then closes everything."""
        timeout = self.options.exit_timeout_s
        self.service.stopping = True
        for _, server in self._http:
            server.close()
        grpc_stopped = asyncio.ensure_future(self._grpc.stop(timeout)) if self._grpc else None
        log.info("stopping: accepting nothing new, draining %d request(s) in flight",
                 self.service.in_flight)
        drained = await self.service.drain(timeout)
        if not drained:
            log.warning("exit timeout: %d request(s) still in flight", self.service.in_flight)
        if grpc_stopped is not None:
            await grpc_stopped
        for runner, _ in self._http:
            await runner.cleanup()
        self._http = []
        await asyncio.get_running_loop().run_in_executor(None, self.repository.close,
                                                           timeout)

    async def serve(self) -> None:
        """Starts, then runs until SIGTERM or SIGINT, then drains and stops."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        await self.stop()
        log.info("stopped")


def _listen(host: str, port: int, flag: str) -> socket.socket:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.create_server((host, port), family=family, backlog=1024)
    except OSError as exc:
        raise KilnError(f"cannot listen on {host}:{port} ({flag}): {exc.strerror or exc}",
                        hint="choose another port, or 0 for any free one") from None
    # small responses go out at once; accepted sockets inherit the option (and asyncio
    # sets it on them too)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


class ServerThread:
    """A Server on a thread with its own event loop.

        with ServerThread(Server(repo, options)) as server:
            url = f"127.0.0.1:{server.ports['http']}"
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="kiln-serve")

    @property
    def ports(self) -> dict[str, int]:
        return self.server.ports

    def start(self, timeout_s: float = 120.0) -> ServerThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(timeout_s)
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(timeout_s)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout_s)
        self._loop.close()

    def call(self, coroutine, timeout_s: float = 60.0):
        """Runs a coroutine on the server's loop (e.g. repository calls in tests)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
