"""KServe v2 over gRPC (grpc.aio): Triton's GRPCInferenceService, from the vendored
grpc_service.proto.

The handlers are registered from the service's descriptor, one per method this module
implements; the shared-memory, trace and log methods are answered UNIMPLEMENTED. gRPC sets
TCP_NODELAY on its sockets itself, and refuses a message over the size limit with
RESOURCE_EXHAUSTED before it reaches a handler.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from kiln.serve import grpc_codec
from kiln.serve.errors import ServeError
from kiln.serve.proto import POOL, SERVICE, pb
from kiln.serve.repository import config_from_json
from kiln.serve.service import InferenceService


def make_server(service: InferenceService, max_message_bytes: int) -> grpc.aio.Server:
    api = _GrpcApi(service)
    handlers = {}
    for method in POOL.FindServiceByName(SERVICE).methods:
        function = getattr(api, method.name, None)
        if function is None:
            continue
        request = getattr(pb, method.input_type.name)
        response = getattr(pb, method.output_type.name)
        if method.client_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                function, request_deserializer=request.FromString,
                response_serializer=response.SerializeToString)
        else:  # parsed in _guarded, so a malformed message gets a clear INVALID_ARGUMENT
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _guarded(function, request), response_serializer=response.SerializeToString)
    options = [("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.max_send_message_length", -1),
               ("grpc.so_reuseport", 0)]
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    return server


def _guarded(function, request_type):
    """Parses the request, runs the handler, and answers a ServeError with its gRPC status."""
    name = request_type.DESCRIPTOR.full_name

    async def handle(data: bytes, context: grpc.aio.ServicerContext):
        try:
            try:
                request = request_type.FromString(data)
            except DecodeError as exc:
                raise ServeError(f"the request is not a valid {name} message: {exc}") from None
            return await function(request, context)
        except ServeError as exc:
            await context.abort(grpc.StatusCode[exc.grpc_code], str(exc))

    return handle


class _GrpcApi:
    def __init__(self, service: InferenceService) -> None:
        self.service = service

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self.service.live())

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.service.ready())

    async def ModelReady(self, request, context):
        ready = self.service.model_ready(request.name, request.version)
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(**self.service.metadata())

    async def ModelMetadata(self, request, context):
        metadata = self.service.model(request.name, request.version).metadata()
        return json_format.ParseDict(metadata, pb.ModelMetadataResponse())

    async def ModelConfig(self, request, context):
        model = self.service.model(request.name, request.version)
        return pb.ModelConfigResponse(config=model.config)

    async def ModelStatistics(self, request, context):
        stats = self.service.statistics(request.name, request.version)
        return json_format.ParseDict({"model_stats": stats}, pb.ModelStatisticsResponse())

    async def ModelInfer(self, request, context):
        return await self._infer(request)

    async def _infer(self, request):
        return await self.service.infer(
            request.model_name, request.model_version,
            lambda model: grpc_codec.decode_request(request), grpc_codec.encode_response)

    async def ModelStreamInfer(self, requests: AsyncIterator[Any], context) -> AsyncIterator[Any]:
        """Each request answered as soon as it is done; an error travels as a message in
        the stream, which stays open."""
        done: asyncio.Queue = asyncio.Queue()
        tasks: set[asyncio.Task] = set()

        async def one(request) -> None:
            try:
                response = pb.ModelStreamInferResponse(infer_response=await self._infer(request))
            except ServeError as exc:
                response = pb.ModelStreamInferResponse(error_message=str(exc))
            await done.put(response)

        async def read_all() -> None:
            async for request in requests:
                task = asyncio.create_task(one(request))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*list(tasks))
            await done.put(None)

        reader = asyncio.create_task(read_all())
        try:
            while (response := await done.get()) is not None:
                yield response
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    async def RepositoryIndex(self, request, context):
        rows = self.service.repository.index(request.ready)
        return json_format.ParseDict({"models": rows}, pb.RepositoryIndexResponse())

    async def RepositoryModelLoad(self, request, context):
        override = None
        if "config" in request.parameters:
            override = config_from_json(request.parameters["config"].string_param)
        await asyncio.get_running_loop().run_in_executor(
            None, self.service.repository.load, request.model_name, override)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        await asyncio.get_running_loop().run_in_executor(
            None, self.service.repository.unload, request.model_name)
        return pb.RepositoryModelUnloadResponse()
