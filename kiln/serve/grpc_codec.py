"""KServe v2 inference requests and responses over gRPC (ModelInferRequest/Response).

Inputs come either all in `raw_input_contents` (one little-endian buffer per input, what
Triton's clients send) or each in its typed `contents` field; outputs always go back in
`raw_output_contents`, as Triton sends them.
"""

from __future__ import annotations

import math

import numpy as np

from kiln.serve import datatypes
from kiln.serve.errors import ServeError, Unsupported
from kiln.serve.model import InferRequest, ModelVersion
from kiln.serve.proto import pb


def decode_request(message) -> InferRequest:
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise ServeError(f"the request has {len(message.inputs)} inputs but "
                         f"{len(raw)} raw_input_contents",
                         hint="send one raw_input_contents entry per input, in input order, or "
                         "none and use each input's contents")
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(message.inputs):
        what = f"input {tensor.name!r}"
        if tensor.name in inputs:
            raise ServeError(f"{what} is given twice")
        if "shared_memory_region" in tensor.parameters:
            raise Unsupported(f"{what} is in shared memory, which kiln serve does not support",
                              hint="send the data in the request")
        datatype = datatypes.from_name(tensor.datatype, what)
        shape = tuple(tensor.shape)
        if any(d < 0 for d in shape):
            raise ServeError(f"{what} has shape {list(shape)}; dimensions must be >= 0")
        if raw:
            inputs[tensor.name] = datatypes.from_bytes(raw[i], datatype, shape, what)
        else:
            inputs[tensor.name] = _from_contents(tensor, datatype, shape, what)
    outputs = None
    if message.outputs:
        outputs = []
        for output in message.outputs:
            if "classification" in output.parameters:
                raise Unsupported("the classification extension is not supported",
                                  hint="ask for the output tensor and take its top-k yourself")
            if "shared_memory_region" in output.parameters:
                raise Unsupported("outputs in shared memory are not supported")
            outputs.append(output.name)
    timeout = 0
    if "timeout" in message.parameters:
        timeout = message.parameters["timeout"].int64_param
        if timeout < 0:
            raise ServeError(f"parameter timeout must be >= 0 microseconds, got {timeout}")
    return InferRequest(inputs, outputs, message.id, timeout)


def _from_contents(tensor, datatype: datatypes.Datatype, shape: tuple[int, ...],
                   what: str) -> np.ndarray:
    if datatype.contents is None:
        raise ServeError(f"{what} is {datatype.name}, which has no typed contents field",
                         hint="send it in raw_input_contents")
    values = getattr(tensor.contents, datatype.contents)
    count = math.prod(shape)
    if len(values) != count:
        raise ServeError(f"{what} has {len(values)} values in contents.{datatype.contents}; "
                         f"shape {list(shape)} needs {count}")
    array = np.asarray(values)
    datatypes.check_range(array, datatype, f"{what}: contents.{datatype.contents}")
    return array.astype(datatype.numpy).reshape(shape)


def encode_response(model: ModelVersion, request: InferRequest, outputs: dict[str, np.ndarray]):
    response = pb.ModelInferResponse(model_name=model.name, model_version=str(model.version),
                                     id=request.id)
    for name, value in outputs.items():
        array = np.asarray(value)
        response.outputs.add(name=name, datatype=model.outputs[name].datatype.name,
                             shape=array.shape)
        response.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
    return response
