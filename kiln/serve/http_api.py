"""KServe v2 over HTTP (aiohttp), with Triton's extensions: binary tensor data, model
configuration, statistics and the model repository.

Bodies are read raw, whatever their Content-Type (Triton's clients send none); a body over
the size limit is refused with 413 before it is read, and every error is {"error": "..."}
with Triton's status for its kind. A client that disconnects cancels its request: if it is
still queued, it never runs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from google.protobuf import json_format

from kiln.serve import http_codec
from kiln.serve.errors import ServeError
from kiln.serve.repository import config_from_json
from kiln.serve.service import InferenceService

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MODEL = "/v2/models/{model}"
VERSIONED = "/v2/models/{model}/versions/{version}"


def make_app(service: InferenceService, max_body_bytes: int) -> web.Application:
    api = _HttpApi(service, max_body_bytes)
    app = web.Application(middlewares=[_errors_as_json], client_max_size=max_body_bytes)
    get, post = app.router.add_get, app.router.add_post
    get("/v2/health/live", api.live)
    get("/v2/health/ready", api.ready)
    get("/v2", api.server_metadata)
    get("/v2/models/stats", api.stats)
    for base in (MODEL, VERSIONED):
        get(base, api.model_metadata)
        get(base + "/ready", api.model_ready)
        get(base + "/config", api.model_config)
        get(base + "/stats", api.stats)
        post(base + "/infer", api.infer)
    post("/v2/repository/index", api.repository_index)
    post("/v2/repository/models/{model}/load", api.load)
    post("/v2/repository/models/{model}/unload", api.unload)
    return app


def error_response(message: str, status: int) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def _errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ServeError as exc:
        return error_response(str(exc), exc.http_status)
    except web.HTTPException as exc:  # unknown path, wrong method, body too large
        if exc.status < 400:
            raise
        text = {404: f"no endpoint {request.method} {request.path}",
                405: f"{request.method} is not allowed on {request.path}"}.get(exc.status)
        return error_response(text or exc.reason, exc.status)


class _HttpApi:
    def __init__(self, service: InferenceService, max_body_bytes: int) -> None:
        self.service = service
        self.max_body = max_body_bytes

    async def live(self, request: web.Request) -> web.Response:
        return _status(self.service.live(), "the server is not live")

    async def ready(self, request: web.Request) -> web.Response:
        return _status(self.service.ready(), "the server is not ready")

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(self.service.metadata())

    async def model_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(self.service.model(*_model(request)).metadata())

    async def model_ready(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        return _status(self.service.model_ready(name, version),
                       f"model {name!r}{' version ' + version if version else ''} is not ready")

    async def model_config(self, request: web.Request) -> web.Response:
        return web.json_response(config_json(self.service.model(*_model(request)).config))

    async def stats(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        return web.json_response({"model_stats": self.service.statistics(name, version)})

    async def infer(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        body = await self._body(request)
        header_length = request.headers.get(http_codec.HEADER_LENGTH)
        binary: dict = {}

        def decode(model):
            decoded, binary_flags = http_codec.decode_request(body, header_length)
            binary.update(binary_flags)
            return decoded

        def encode(model, decoded, outputs):
            return http_codec.encode_response(model, decoded, outputs, binary)

        data, json_length = await self.service.infer(name, version, decode, encode)
        if json_length is None:
            response = web.Response(body=data, content_type="application/json")
        else:
            response = web.Response(body=data, content_type="application/octet-stream",
                                    headers={http_codec.HEADER_LENGTH: str(json_length)})
        accepted = request.headers.get("Accept-Encoding", "")
        if "gzip" in accepted or "deflate" in accepted:
            response.enable_compression()
        return response

    async def repository_index(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        return web.json_response(self.service.repository.index(bool(body.get("ready"))))

    async def load(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        params = (await self._json_body(request)).get("parameters") or {}
        override = config_from_json(params["config"]) if "config" in params else None
        await asyncio.get_running_loop().run_in_executor(
            None, self.service.repository.load, name, override)
        return web.Response()

    async def unload(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        await self._json_body(request)
        await asyncio.get_running_loop().run_in_executor(
            None, self.service.repository.unload, name)
        return web.Response()

    async def _body(self, request: web.Request) -> bytes:
        length = request.content_length
        if length is not None and length > self.max_body:
            raise ServeError(f"the request body is {length} bytes, over the limit of "
                             f"{self.max_body} (--http-max-input-size)", code="TOO_LARGE",
                             hint="send smaller batches, or start the server with a larger "
                             "--http-max-input-size")
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise ServeError(f"the request body is over the limit of {self.max_body} bytes "
                             "(--http-max-input-size)", code="TOO_LARGE") from None

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        body = await self._body(request)
        if not body.strip():
            return {}
        try:
            value = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ServeError(f"the request body is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ServeError("the request body must be a JSON object")
        return value


def _model(request: web.Request) -> tuple[str, str]:
    info = request.match_info
    return info.get("model", ""), info.get("version", "")


def _status(ok: bool, why: str) -> web.Response:
    return web.Response() if ok else error_response(why, 400)


def config_json(config) -> dict:
    """A ModelConfig as Triton's HTTP API gives it: proto field names, default values
    included, and 64-bit integers as JSON numbers rather than protobuf's strings."""
    try:
        data = json_format.MessageToDict(config, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)
    except TypeError:  # protobuf < 5.26 names the option differently
        data = json_format.MessageToDict(config, preserving_proto_field_name=True,
                                         including_default_value_fields=True)
    return _ints(config.DESCRIPTOR, data)


_INT64 = {3, 4, 16, 18, 6}  # FieldDescriptor types: int64, uint64, sint64, sfixed64, fixed64


def _ints(descriptor, data: dict) -> dict:
    for name, value in data.items():
        field = descriptor.fields_by_name.get(name)
        if field is None:
            continue
        if field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                if value_field.message_type is not None:
                    for item in value.values():
                        _ints(value_field.message_type, item)
            elif isinstance(value, list):
                for item in value:
                    _ints(field.message_type, item)
            else:
                _ints(field.message_type, value)
        elif field.type in _INT64:
            data[name] = [int(v) for v in value] if isinstance(value, list) else int(value)
    return data

