"""KServe v2 inference requests and responses over HTTP: JSON tensors, and Triton's binary
tensor-data extension.

A binary request's body is its JSON header (`Inference-Header-Content-Length` bytes) followed
by the raw little-endian data of each input whose `parameters.binary_data_size` is set, in the
order the inputs are listed. A response carries an output in binary form when the request's
output asks for `binary_data`, or when it lists no outputs and sets `binary_data_output`.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from kiln.serve import datatypes
from kiln.serve.errors import ServeError, Unsupported
from kiln.serve.model import InferRequest, ModelVersion

HEADER_LENGTH = "Inference-Header-Content-Length"


def decode_request(body: bytes, header_length: str | None) -> tuple[InferRequest, dict]:
    """The request, and per output name whether to send it in binary (key None: the default
    for outputs the request does not list)."""
    json_end = _header_end(body, header_length)
    try:
        header = json.loads(body[:json_end])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ServeError(f"the request body is not valid JSON: {exc}",
                         hint="send a KServe v2 inference request, e.g. {\"inputs\": [{\"name\": "
                         "\"x\", \"shape\": [1, 3], \"datatype\": \"FP32\", \"data\": [1, 2, 3]}]}"
                         ) from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise ServeError("the inference request has no \"inputs\" list",
                         hint="send {\"inputs\": [{\"name\", \"shape\", \"datatype\", \"data\"}]}")
    params = _dict(header.get("parameters"), "request parameters")
    inputs = _decode_inputs(header["inputs"], memoryview(body)[json_end:])
    outputs, binary = _requested_outputs(header.get("outputs"), params)
    timeout = params.get("timeout", 0)
    if not isinstance(timeout, int) or timeout < 0:
        raise ServeError(f"parameter timeout must be a whole number of microseconds, got "
                         f"{timeout!r}")
    request = InferRequest(inputs, outputs, str(header.get("id", "")), timeout)
    return request, binary


def _header_end(body: bytes, header_length: str | None) -> int:
    if header_length is None:
        return len(body)
    try:
        end = int(header_length)
    except ValueError:
        end = -1
    if not 0 <= end <= len(body):
        raise ServeError(f"{HEADER_LENGTH} is {header_length!r}, but the body has {len(body)} "
                         "bytes", hint=f"set {HEADER_LENGTH} to the byte length of the JSON "
                         "header that starts the body")
    return end


def _dict(value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ServeError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _decode_inputs(tensors: list, binary: memoryview) -> dict[str, np.ndarray]:
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, tensor in enumerate(tensors):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise ServeError(f"input #{i} is not an object with a \"name\"")
        name = tensor["name"]
        if name in inputs:
            raise ServeError(f"input {name!r} is given twice")
        what = f"input {name!r}"
        datatype = datatypes.from_name(str(tensor.get("datatype")), what)
        shape = _shape(tensor.get("shape"), what)
        params = _dict(tensor.get("parameters"), f"{what} parameters")
        if "shared_memory_region" in params:
            raise Unsupported(f"{what} is in shared memory, which kiln serve does not support",
                              hint="send the data in the request")
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise ServeError(f"{what} has binary_data_size {size!r}, but the body has "
                                 f"{len(binary) - offset} bytes left after the JSON header")
            inputs[name] = datatypes.from_bytes(binary[offset:offset + size], datatype, shape, what)
            offset += size
        elif "data" in tensor:
            inputs[name] = _from_json(tensor["data"], datatype, shape, what)
        else:
            raise ServeError(f"{what} has neither \"data\" nor parameters.binary_data_size")
    if offset != len(binary):
        raise ServeError(f"the body has {len(binary) - offset} bytes after the JSON header that "
                         "no input's binary_data_size accounts for",
                         hint="set each binary input's binary_data_size to its byte length")
    return inputs


def _shape(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and d >= 0 for d in value):
        raise ServeError(f"{what} has shape {value!r}; a shape is a list of whole numbers >= 0")
    return tuple(value)


_KINDS = {"b": "b", "u": "biu", "i": "biu", "f": "biuf"}  # numpy kinds each datatype accepts


def _from_json(data: Any, datatype: datatypes.Datatype, shape: tuple[int, ...],
               what: str) -> np.ndarray:
    """JSON `data`, flat or nested in row-major order, as an array of the datatype."""
    count = math.prod(shape)
    try:
        array = np.asarray(data)
    except ValueError:  # ragged nesting
        array = None
    accepted = _KINDS[datatype.numpy.kind]
    if array is not None and array.size == 0 == count:
        return np.zeros(shape, datatype.numpy)
    if array is None or array.dtype.kind not in accepted or array.size != count:
        expected = {"b": "true/false", "u": "whole numbers", "i": "whole numbers",
                    "f": "numbers"}[datatype.numpy.kind]
        got = "ragged lists" if array is None else (
            f"{array.size} values" if array.dtype.kind in accepted else f"{array.dtype} values")
        raise ServeError(f"{what}: \"data\" holds {got}; shape {list(shape)} of "
                         f"{datatype.name} needs {count} {expected}")
    datatypes.check_range(array, datatype, f"{what}: \"data\"")
    return array.astype(datatype.numpy).reshape(shape)


def _requested_outputs(value: Any, params: dict) -> tuple[list[str] | None, dict]:
    default_binary = bool(params.get("binary_data_output", False))
    if value is None:
        return None, {None: default_binary}
    if not isinstance(value, list):
        raise ServeError("\"outputs\" must be a list of {\"name\": ...} objects")
    names, binary = [], {None: default_binary}
    for i, output in enumerate(value):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise ServeError(f"output #{i} is not an object with a \"name\"")
        oparams = _dict(output.get("parameters"), f"output {output['name']!r} parameters")
        if oparams.get("classification"):
            raise Unsupported("the classification extension is not supported",
                              hint="ask for the output tensor and take its top-k yourself")
        if "shared_memory_region" in oparams:
            raise Unsupported("outputs in shared memory are not supported")
        names.append(output["name"])
        binary[output["name"]] = bool(oparams.get("binary_data", default_binary))
    return names, binary


def encode_response(model: ModelVersion, request: InferRequest, outputs: dict[str, np.ndarray],
                    binary: dict) -> tuple[bytes, int | None]:
    """The response body, and its JSON header's length when binary data follows it."""
    tensors, chunks = [], []
    for name, value in outputs.items():
        array = np.asarray(value)
        entry: dict[str, Any] = {"name": name,
                                 "datatype": model.outputs[name].datatype.name,
                                 "shape": list(array.shape)}
        if binary.get(name, binary[None]):
            data = np.ascontiguousarray(array).tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = array.ravel().tolist()
        tensors.append(entry)
    header: dict[str, Any] = {"model_name": model.name, "model_version": str(model.version)}
    if request.id:
        header["id"] = request.id
    header["outputs"] = tensors
    text = json.dumps(header, separators=(",", ":")).encode()
    if not chunks:
        return text, None
    return b"".join([text, *chunks]), len(text)
