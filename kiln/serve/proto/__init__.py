"""Triton's KServe v2 gRPC and model-configuration messages, built from the vendored .proto files.

    from kiln.serve.proto import pb
    request = pb.ModelInferRequest.FromString(data)
    pb.DataType.Name(11)  # "TYPE_FP32"

`triton.binpb` is a FileDescriptorSet that protoc compiled from grpc_service.proto and
model_config.proto beside it (tools/make_serve_protos.py). It is loaded into a private
descriptor pool instead of shipping generated `_pb2` modules, because:

- generated modules check the protobuf runtime against the protoc that made them (6.x
  gencode refuses a 5.x runtime, and the GPU machine's protobuf version is not ours to
  choose), while a descriptor set loads on any protobuf from 4.22 on;
- nothing needs protoc (grpcio-tools) at run time;
- a private pool keeps clear of tritonclient's own copies of the same files, which it
  registers under the same names in protobuf's default pool.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

PACKAGE = "inference"
SERVICE = "inference.GRPCInferenceService"


def _load_pool() -> descriptor_pool.DescriptorPool:
    data = resources.files(__name__).joinpath("triton.binpb").read_bytes()
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(data).file:
        pool.Add(file)
    return pool


POOL = _load_pool()


class _Messages:
    """Message classes and enums of package `inference`, by their proto names."""

    def __getattr__(self, name: str) -> Any:
        full = f"{PACKAGE}.{name}"
        try:
            found: Any = message_factory.GetMessageClass(POOL.FindMessageTypeByName(full))
        except KeyError:
            try:
                found = EnumTypeWrapper(POOL.FindEnumTypeByName(full))
            except KeyError:
                raise AttributeError(f"no message or enum {full!r} in the vendored protos") \
                    from None
        setattr(self, name, found)  # later lookups skip __getattr__
        return found


pb = _Messages()
