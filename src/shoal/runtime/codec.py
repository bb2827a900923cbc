"""KServe v2 / Open Inference Protocol tensors: JSON and Triton's binary-data extension.

Decoding is a trust boundary, so every length, shape and datatype is checked against the
declared values before numpy touches the bytes; the error names the tensor and the rule.
Nothing here is ever unpickled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from shoal.runtime.classification import classification_count, serialize_bytes_tensor
from shoal.runtime.errors import BadRequestError, PayloadTooLargeError
from shoal.runtime.shared_memory import SharedMemoryRef, SystemSharedMemory, shared_memory_ref

__all__ = [
    "DATATYPE_TO_NUMPY",
    "NUMPY_TO_DATATYPE",
    "DecodedRequest",
    "decode_http_request",
    "encode_http_response",
    "tensor_from_json",
]

DATATYPE_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
NUMPY_TO_DATATYPE = {dtype: name for name, dtype in DATATYPE_TO_NUMPY.items()}

MAX_TENSOR_ELEMENTS = 64 * 1024 * 1024
MAX_TENSOR_DIMENSIONS = 32


@dataclass
class DecodedRequest:
    """An inference request as the frontends hand it to the service."""

    inputs: dict[str, np.ndarray]
    request_id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    requested_outputs: list[str] = field(default_factory=list)
    binary_outputs: dict[str, bool] = field(default_factory=dict)
    binary_by_default: bool = False
    classifications: dict[str, int] = field(default_factory=dict)
    """Outputs to answer as their top classes (Triton's classification extension), with how many."""
    shared_memory_outputs: dict[str, SharedMemoryRef] = field(default_factory=dict)
    """Outputs to write into a registered shared-memory region instead of the response."""


def _shape(value: Any, tensor: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in value):
        raise BadRequestError(f"input {tensor!r}: 'shape' must be a list of non-negative integers")
    if len(value) > MAX_TENSOR_DIMENSIONS:  # numpy's own limit: past it, reshape raises
        raise BadRequestError(f"input {tensor!r}: 'shape' has {len(value)} dimensions, more than {MAX_TENSOR_DIMENSIONS}")
    # math.prod: exact (numpy's product of large dimensions wraps around int64). Every dimension
    # is bounded too: a zero elsewhere makes the product 0, but numpy cannot take such a shape.
    elements = math.prod(value)
    if elements > MAX_TENSOR_ELEMENTS or any(dim > MAX_TENSOR_ELEMENTS for dim in value):
        raise PayloadTooLargeError(
            f"input {tensor!r}: shape {value} exceeds the limit of {MAX_TENSOR_ELEMENTS} elements (in all and per dimension)"
        )
    return tuple(value)


def _datatype(value: Any, tensor: str) -> np.dtype:
    if not isinstance(value, str) or value not in DATATYPE_TO_NUMPY:
        raise BadRequestError(
            f"input {tensor!r}: datatype {value!r} is not supported (use one of {', '.join(DATATYPE_TO_NUMPY)})"
        )
    return DATATYPE_TO_NUMPY[value]


def _check_byte_size(name: str, shape: tuple[int, ...], dtype: np.dtype, datatype: str, byte_size: int, field_name: str) -> None:
    """An input's bytes (in the body, or claimed for a shared-memory region) must be exactly
    its shape's worth of its datatype."""
    needed = math.prod(shape) * dtype.itemsize
    if byte_size != needed:
        raise BadRequestError(f"input {name!r}: {field_name} is {byte_size} bytes but shape {list(shape)} of {datatype} needs {needed}")


def tensor_from_json(spec: dict[str, Any], binary: memoryview | None = None, binary_field: str = "binary_data_size") -> np.ndarray:
    """Build an array from one `inputs[]` entry, with its data inline or in the binary section
    (`binary_field`: what the client called the binary part, for the error message)."""
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequestError("every input needs a non-empty string 'name'")
    shape = _shape(spec.get("shape"), name)
    dtype = _datatype(spec.get("datatype"), name)
    count = math.prod(shape)
    if binary is not None:
        _check_byte_size(name, shape, dtype, spec["datatype"], len(binary), binary_field)
        return np.frombuffer(binary, dtype=dtype).reshape(shape)
    data = spec.get("data")
    if data is None:
        raise BadRequestError(f"input {name!r}: needs 'data' or parameters.binary_data_size")
    array = _values_as(data, dtype, name, spec["datatype"])
    if array.size != count:
        raise BadRequestError(f"input {name!r}: 'data' has {array.size} values but shape {list(shape)} needs {count}")
    return array.reshape(shape)


# What JSON values (as numpy reads them) each kind of datatype takes: numbers for numbers, no
# strings ("nan" would become NaN), no fractions where an integer is due (1.9 would become 1).
_ACCEPTED_KINDS = {"f": "biuf", "i": "biu", "u": "biu", "b": "b"}
_KIND_WORDS = {"f": "numbers", "i": "integers", "u": "integers", "b": "true or false"}


def _values_as(data: Any, dtype: np.dtype, name: str, datatype: str) -> np.ndarray:
    """`data` (a JSON list, nested or flat, or a gRPC repeated field) as an array of `dtype`, if
    every value is one of that datatype's: a client error names the input and the rule."""
    try:
        values = np.asarray(data)
    except (TypeError, ValueError):  # ragged nesting
        raise BadRequestError(f"input {name!r}: 'data' must be a flat or evenly nested list of {_KIND_WORDS[dtype.kind]}") from None
    if values.size and dtype.kind in "iu" and values.dtype.kind == "f":
        # Integers past int64 (UINT64 from 2**63) read as floats: take them as the target type
        # when that keeps every value (a fraction would not).
        try:
            exact = np.asarray(data, dtype=dtype)
        except (TypeError, ValueError, OverflowError):
            exact = None
        if exact is not None and exact.shape == values.shape and np.array_equal(exact.astype(np.float64), values):
            values = exact
    if values.size and values.dtype.kind not in _ACCEPTED_KINDS[dtype.kind]:
        raise BadRequestError(f"input {name!r}: 'data' must hold {_KIND_WORDS[dtype.kind]} for {datatype}, not {values.dtype.kind!r}-kind values such as {values.ravel()[0]!r}")
    if values.size and dtype.kind in "iu" and values.dtype.kind in "iu":
        limits = np.iinfo(dtype)
        if values.min() < limits.min or values.max() > limits.max:
            raise BadRequestError(f"input {name!r}: 'data' has values outside {datatype}'s range [{limits.min}, {limits.max}]")
    try:
        with np.errstate(over="raise", invalid="raise"):  # 1e300 as FP32 is a client error, not inf
            return values.astype(dtype, copy=False)
    except (TypeError, ValueError, OverflowError, FloatingPointError):
        raise BadRequestError(f"input {name!r}: 'data' does not hold {datatype} values (or one is out of its range)") from None


def decode_http_request(body: bytes, header_length: int | None, shared_memory: SystemSharedMemory | None = None) -> DecodedRequest:
    """Parse a POST .../infer body; `header_length` is Inference-Header-Content-Length, if sent.
    `shared_memory`: the server's registered regions, which inputs and outputs may name (None:
    a tensor that names one is refused)."""
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise BadRequestError(
                f"Inference-Header-Content-Length is {header_length} but the body has only {len(body)} bytes"
            )
        json_part, binary_part = memoryview(body)[:header_length], memoryview(body)[header_length:]
    else:
        json_part, binary_part = body, memoryview(b"")
    try:
        # orjson: json.loads and json.dumps were ~9% of the frontend's CPU on a light model at its
        # peak rate (py-spy, demo.tiny-16); orjson is 4-10x faster on these small headers. Unlike
        # json it refuses NaN/Infinity tokens (not JSON) and reads integers past 64 bits as floats,
        # which the shape and size checks then refuse as non-integers.
        header = orjson.loads(json_part)
    except orjson.JSONDecodeError as error:
        raise BadRequestError(f"request body is not valid JSON: {error}") from None
    if not isinstance(header, dict):
        raise BadRequestError("request body must be a JSON object")
    specs = header.get("inputs")
    if not isinstance(specs, list) or not specs:
        raise BadRequestError("request needs a non-empty 'inputs' list")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for spec in specs:
        if not isinstance(spec, dict):
            raise BadRequestError("each entry of 'inputs' must be an object")
        parameters = spec.get("parameters") or {}
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        chunk = None
        if not isinstance(spec.get("name"), str) or not spec["name"]:
            raise BadRequestError("every input needs a non-empty string 'name'")
        if spec.get("name") in inputs:
            raise BadRequestError(f"input {spec.get('name')!r} is given twice; send each input once")
        region = named_region(parameters, f"input {spec['name']!r}", shared_memory) if isinstance(parameters, dict) else None
        if region is not None:
            if size is not None or spec.get("data") is not None:
                raise BadRequestError(f"input {spec['name']!r}: give its values in shared memory or in the request, not both")
            inputs[spec["name"]] = tensor_from_json(spec, memoryview(read_input_region(spec, region, shared_memory)), "shared_memory_byte_size")
            continue
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise BadRequestError(f"input {spec.get('name')!r}: binary_data_size must be a non-negative integer")
            if spec.get("data") is not None:
                raise BadRequestError(f"input {spec.get('name')!r}: give its values in 'data' or in the binary section (binary_data_size), not both")
            if offset + size > len(binary_part):
                raise BadRequestError(
                    f"input {spec.get('name')!r}: binary_data_size {size} runs past the end of the body"
                )
            chunk = binary_part[offset : offset + size]
            offset += size
        tensor = tensor_from_json(spec, chunk)
        inputs[spec["name"]] = tensor
    if offset != len(binary_part):
        raise BadRequestError(f"body has {len(binary_part) - offset} bytes of binary data that no input claims")
    parameters = header.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequestError("'parameters' must be an object")
    outputs = header.get("outputs") or []
    if not isinstance(outputs, list):
        raise BadRequestError("'outputs' must be a list")
    requested, binary_outputs, classifications, shared_memory_outputs = [], {}, {}, {}
    for output in outputs:
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise BadRequestError("each entry of 'outputs' needs a string 'name'")
        requested.append(output["name"])
        output_parameters = output.get("parameters") or {}
        if isinstance(output_parameters, dict):
            count, region = check_output_parameters(output_parameters, f"output {output['name']!r}", shared_memory)
            if count is not None:
                classifications[output["name"]] = count
            if region is not None:
                shared_memory_outputs[output["name"]] = region
        if isinstance(output_parameters, dict) and "binary_data" in output_parameters:
            binary_outputs[output["name"]] = _flag(output_parameters["binary_data"], f"output {output['name']!r}: parameter 'binary_data'")
    request_id = header.get("id", "")
    return DecodedRequest(
        inputs=inputs,
        request_id=request_id if isinstance(request_id, str) else str(request_id),
        parameters=parameters,
        requested_outputs=requested,
        binary_outputs=binary_outputs,
        binary_by_default=_flag(parameters.get("binary_data_output", False), "parameter 'binary_data_output'"),
        classifications=classifications,
        shared_memory_outputs=shared_memory_outputs,
    )


def named_region(parameters: Mapping[str, Any], what: str, shared_memory: SystemSharedMemory | None) -> SharedMemoryRef | None:
    """The region a tensor's parameters name, if any. Without `shared_memory` (a server that does
    not serve the extension: the lean and Ray Serve baselines) such a tensor is refused rather
    than read from the body or answered in it, where its client does not look."""
    region = shared_memory_ref(parameters, what)
    if region is not None and shared_memory is None:
        raise BadRequestError(f"{what}: shared memory is not supported by this server; send the tensor in the request")
    return region


def read_input_region(spec: Mapping[str, Any], region: SharedMemoryRef, shared_memory: SystemSharedMemory) -> bytes:
    """The bytes of an input (`spec`: its name, shape and datatype) in its shared-memory region
    (a copy). The size it claims is checked against its shape before anything is read: a claim
    of 400 MB for a 3 KB tensor is refused, not copied first."""
    name = spec["name"]
    _check_byte_size(name, _shape(spec.get("shape"), name), _datatype(spec.get("datatype"), name), spec["datatype"], region.byte_size,
                     "shared_memory_byte_size")  # fmt: skip
    return shared_memory.read(region, f"input {name!r}")


def check_output_parameters(parameters: Mapping[str, Any], what: str, shared_memory: SystemSharedMemory | None = None) -> tuple[int | None, SharedMemoryRef | None]:
    """What an output may ask: `binary_data`, `classification` (Triton's classification
    extension: its top N classes instead of the tensor) and a shared-memory region to be
    written to. Returns the class count (None: the tensor) and the region (None: the response)."""
    region = named_region(parameters, what, shared_memory)
    if "classification" not in parameters:
        return None, region
    return classification_count(parameters["classification"], what), region


def output_bytes(array: np.ndarray) -> bytes:
    """An output's bytes as the binary extension and shared memory carry them."""
    return serialize_bytes_tensor(array) if array.dtype == object else np.ascontiguousarray(array).tobytes()


def write_shared_memory_output(shared_memory: SystemSharedMemory, name: str, array: np.ndarray, region: SharedMemoryRef) -> dict[str, Any]:
    """Write an output into its region; returns the parameters its response entry carries instead of data."""
    raw = output_bytes(array)
    shared_memory.write(region, raw, f"output {name!r}")
    parameters: dict[str, Any] = {"shared_memory_region": region.region, "shared_memory_byte_size": len(raw)}
    if region.offset:
        parameters["shared_memory_offset"] = region.offset
    return parameters


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequestError(f"{what} must be true or false, got {value!r}")
    return value


def encode_http_response(
    model_name: str,
    outputs: dict[str, np.ndarray],
    *,
    request_id: str,
    parameters: dict[str, Any],
    binary_outputs: dict[str, bool],
    binary_by_default: bool,
    model_version: str = "1",
    shared_memory_outputs: Mapping[str, SharedMemoryRef] | None = None,
    shared_memory: SystemSharedMemory | None = None,
) -> tuple[bytes, int | None]:
    """Encode a response; returns (body, json header length when any output is binary). Outputs
    in `shared_memory_outputs` are written to their regions of `shared_memory`."""
    entries, chunks = [], []
    for name, array in outputs.items():
        strings = array.dtype == object  # BYTES: a classification's strings
        datatype = "BYTES" if strings else NUMPY_TO_DATATYPE.get(array.dtype)
        if datatype is None:
            raise TypeError(f"output {name!r} has unsupported dtype {array.dtype}")
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        region = shared_memory_outputs.get(name) if shared_memory_outputs else None
        if region is not None and shared_memory is not None:
            entry["parameters"] = write_shared_memory_output(shared_memory, name, array, region)
        elif binary_outputs.get(name, binary_by_default):
            raw = output_bytes(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = [element.decode() for element in array.ravel()] if strings else array.ravel().tolist()
        entries.append(entry)
    header = {"model_name": model_name, "model_version": model_version, "outputs": entries, "parameters": parameters}
    if request_id:
        header["id"] = request_id
    # A NaN or infinite output in "data" is written null (JSON has no token for them; json.dumps
    # wrote bare NaN/Infinity, which strict parsers refuse); binary outputs keep every value.
    header_bytes = orjson.dumps(header)
    if not chunks:
        return header_bytes, None
    return header_bytes + b"".join(chunks), len(header_bytes)
