"""The vendored protos are Triton's: the messages kiln serve builds from triton.binpb have the
fields, numbers and types of tritonclient's own copies, and triton.binpb is what protoc makes
of the .proto files beside it."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2

from kiln.serve.proto import POOL, pb


def _without_json_names(file: descriptor_pb2.FileDescriptorProto):
    def clear(message):
        for field in message.field:
            field.ClearField("json_name")
        for nested in message.nested_type:
            clear(nested)

    for message in file.message_type:
        clear(message)
    return file


def _ours(name: str) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    POOL.FindFileByName(name).CopyToProto(proto)
    return _without_json_names(proto)


@pytest.mark.parametrize("module", ["service_pb2", "model_config_pb2"])
def test_descriptors_equal_tritonclients(module):
    triton = pytest.importorskip(f"tritonclient.grpc.{module}")
    theirs = descriptor_pb2.FileDescriptorProto()
    triton.DESCRIPTOR.CopyToProto(theirs)
    assert _ours(theirs.name) == _without_json_names(theirs)


def test_descriptor_set_is_compiled_from_the_proto_files(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools compiles the .proto files")
    from tools.make_serve_protos import OUTPUT, compile_descriptor_set

    fresh = tmp_path / "fresh.binpb"
    compile_descriptor_set(fresh)
    assert fresh.read_bytes() == OUTPUT.read_bytes(), \
        "kiln/serve/proto/triton.binpb is stale: run tools/make_serve_protos.py"


def test_messages_round_trip_through_tritonclients_classes():
    triton = pytest.importorskip("tritonclient.grpc.service_pb2")
    ours = pb.ModelInferRequest(model_name="m", id="7")
    tensor = ours.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    tensor.contents.fp32_contents.extend([1.5, -2.0])
    ours.parameters["timeout"].int64_param = 5
    ours.raw_input_contents.append(b"\x00\x01")
    theirs = triton.ModelInferRequest.FromString(ours.SerializeToString())
    assert theirs.inputs[0].shape == [2, 3]
    assert list(theirs.inputs[0].contents.fp32_contents) == [1.5, -2.0]
    assert theirs.parameters["timeout"].int64_param == 5
    assert pb.ModelInferRequest.FromString(theirs.SerializeToString()) == ours


def test_unknown_names_are_refused():
    with pytest.raises(AttributeError, match="NoSuchMessage"):
        _ = pb.NoSuchMessage
    assert pb.DataType.Name(11) == "TYPE_FP32"
