"""gRPC messages to and from numpy: the tensors of a ModelInferRequest (raw contents, typed
contents, or a shared-memory region) and of its response, parameters, and the client's address.
The HTTP side of the same rules is `shoal.runtime.codec`, whose checks these share.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping

import numpy as np

from shoal.runtime.codec import DATATYPE_TO_NUMPY, NUMPY_TO_DATATYPE, named_region, output_bytes, read_input_region, tensor_from_json, write_shared_memory_output
from shoal.runtime.errors import BadRequestError
from shoal.runtime.proto import grpc_service_pb2 as pb
from shoal.runtime.shared_memory import SharedMemoryRef, SystemSharedMemory, names_shared_memory

__all__ = ["decode_grpc_inputs", "encode_grpc_outputs", "parameter_value", "peer_host", "set_parameter"]

_CONTENT_FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def parameter_value(parameter: pb.InferParameter):
    """An InferParameter's value, whichever of its typed fields is set (None: none is)."""
    choice = parameter.WhichOneof("parameter_choice")
    return None if choice is None else getattr(parameter, choice)


def set_parameter(target: pb.InferParameter, value) -> None:
    """Set the typed field of `target` that fits `value` (bool before int: a bool is an int)."""
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


def peer_host(peer: str) -> str | None:
    """The client's address in a gRPC peer string: "ipv4:127.0.0.1:5000", "ipv6:%5B::1%5D:5000"
    (gRPC escapes the brackets), None for a Unix socket ("unix:/path", "unix-abstract:..."). A
    form not known comes back whole, so that a check of the address refuses it rather than
    taking it for a local one."""
    kind, _, address = peer.partition(":")
    if kind in ("unix", "unix-abstract"):
        return None
    if kind in ("ipv4", "ipv6"):
        return urllib.parse.unquote(address).rpartition(":")[0].strip("[]")
    return peer


def decode_grpc_inputs(request: pb.ModelInferRequest, shared_memory: SystemSharedMemory | None = None) -> dict[str, np.ndarray]:
    """The request's input tensors: from raw_input_contents, the typed contents, or a registered
    shared-memory region of `shared_memory` (None: such an input is refused)."""
    if not request.inputs:
        raise BadRequestError("request needs at least one input")
    raw = list(request.raw_input_contents)
    # An input in shared memory has no raw_input_contents entry (tritonclient leaves it out):
    # the entries belong, in order, to the inputs sent in the request.
    in_shared_memory = [names_shared_memory(tensor.parameters) for tensor in request.inputs]
    in_request = len(request.inputs) - sum(in_shared_memory)
    if raw and len(raw) != in_request:
        raise BadRequestError(f"raw_input_contents has {len(raw)} entries for {in_request} inputs sent in the request")
    inputs = {}
    raw_index = 0
    for tensor, shared in zip(request.inputs, in_shared_memory):
        spec = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if tensor.name in inputs:  # as over HTTP: the later one would silently win
            raise BadRequestError(f"input {tensor.name!r} is given twice; send each input once")
        if shared:
            parameters = {key: parameter_value(value) for key, value in tensor.parameters.items()}
            region = named_region(parameters, f"input {tensor.name!r}", shared_memory)  # not None: it names one, or raises
            if tensor.HasField("contents"):
                raise BadRequestError(f"input {tensor.name!r}: give its values in shared memory or in the request, not both")
            inputs[tensor.name] = tensor_from_json(spec, memoryview(read_input_region(spec, region, shared_memory)), "shared_memory_byte_size")
            continue
        if raw and tensor.HasField("contents"):  # Triton refuses the pair too
            raise BadRequestError(f"input {tensor.name!r}: give its values in 'contents' or in raw_input_contents, not both")
        if raw:
            inputs[tensor.name] = tensor_from_json(spec, memoryview(raw[raw_index]), f"raw_input_contents[{raw_index}]")
            raw_index += 1
        else:
            field = _CONTENT_FIELDS.get(tensor.datatype)
            if field is None:
                raise BadRequestError(f"input {tensor.name!r}: datatype {tensor.datatype!r} is not supported")
            # The repeated field as a buffer: its values through a Python list took ~0.7 s for
            # 48 MB of FP32, on the event loop.
            spec["data"] = np.asarray(getattr(tensor.contents, field))
            inputs[tensor.name] = tensor_from_json(spec)
    return inputs


def encode_grpc_outputs(response: pb.ModelInferResponse, outputs: Mapping[str, np.ndarray], regions: Mapping[str, SharedMemoryRef],
                        shared_memory: SystemSharedMemory) -> None:  # fmt: skip
    """Add the outputs to `response`: in raw_output_contents, or written to their shared-memory
    regions (`regions`, by output name), whose parameters the output entry then carries."""
    for name, array in outputs.items():
        datatype = "BYTES" if array.dtype == object else NUMPY_TO_DATATYPE[array.dtype]  # BYTES: a classification's strings
        entry = response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        if name in regions:
            for key, value in write_shared_memory_output(shared_memory, name, array, regions[name]).items():
                set_parameter(entry.parameters[key], value)
            # Triton keeps raw_output_contents aligned with outputs: an empty entry for each
            # output written to shared memory (tritonclient reads the entries by position).
            response.raw_output_contents.append(b"")
        else:
            response.raw_output_contents.append(output_bytes(array))


assert set(_CONTENT_FIELDS) <= set(DATATYPE_TO_NUMPY)
