"""What the HTTP and gRPC front ends share: the repository, readiness, the requests in
flight (so shutdown can drain them), and one path every inference takes, so the two
protocols count, refuse and fail requests the same way."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import kiln
from kiln.serve.errors import ServeError, Unavailable
from kiln.serve.model import InferRequest, ModelVersion
from kiln.serve.repository import ModelRepository

EXTENSIONS = ["binary_tensor_data", "model_configuration", "model_repository", "statistics"]
Response = TypeVar("Response")


class InferenceService:
    def __init__(self, repository: ModelRepository, *, strict_readiness: bool = True) -> None:
        self.repository = repository
        self.strict_readiness = strict_readiness
        self.stopping = False
        self.in_flight = 0

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        if self.stopping:
            return False
        return self.repository.all_ready() if self.strict_readiness else True

    def metadata(self) -> dict:
        return {"name": "kiln", "version": kiln.__version__, "extensions": EXTENSIONS}

    def model(self, name: str, version: str = "") -> ModelVersion:
        return self.repository.get(name, version)

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.repository.get(name, version)
        except ServeError:
            return False
        return not self.stopping

    def statistics(self, name: str = "", version: str = "") -> list[dict]:
        if name:
            models = [self.repository.get(name, version)]
        else:
            models = [v for e in self.repository.models.values() for v in e.versions.values()]
        return [m.stats.to_json(m.name, str(m.version)) for m in models]

    async def infer(self, name: str, version: str, decode: Callable[[ModelVersion], InferRequest],
                    encode: Callable[[ModelVersion, InferRequest, dict[str, Any]], Response]
                    ) -> Response:
        """Decodes, runs and encodes one request, counting it in the model's statistics."""
        started = time.monotonic_ns()
        if self.stopping:
            raise Unavailable("the server is shutting down and takes no new requests",
                              hint="send it to another replica, or retry after the restart")
        model = self.repository.get(name, version)
        self.in_flight += 1
        try:
            request = decode(model)
            pending = await model.infer(request)
            response = encode(model, request, pending.outputs)
        except ServeError as exc:
            model.stats.record_failure(time.monotonic_ns() - started, exc.reason)
            raise
        except asyncio.CancelledError:
            model.stats.record_failure(time.monotonic_ns() - started, "CANCELED")
            raise
        except Exception as exc:  # a bug here must fail one request, not the server
            model.stats.record_failure(time.monotonic_ns() - started, "OTHER")
            raise ServeError(f"internal error: {type(exc).__name__}: {exc}",
                             code="INTERNAL") from exc
        finally:
            self.in_flight -= 1
        model.stats.record_success(pending.rows, time.monotonic_ns() - started, pending.timings)
        return response

    async def drain(self, timeout_s: float) -> bool:
        """Stops taking requests and waits for those in flight; False if time ran out."""
        self.stopping = True
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.in_flight == 0
