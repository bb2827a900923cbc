"""KServe v2 request decoding: values a datatype does not take are refused with a message that
names the input and the rule, instead of being converted quietly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shoal.runtime.codec import decode_http_request
from shoal.runtime.errors import BadRequestError


def _request(*inputs, **parameters) -> bytes:
    body = {"inputs": list(inputs)}
    if parameters:
        body["parameters"] = parameters
    return json.dumps(body).encode()


def _tensor(datatype, data, shape=None, name="x", **parameters):
    spec = {"name": name, "datatype": datatype, "shape": shape or [len(data)], "data": data}
    if parameters:
        spec["parameters"] = parameters
    return spec


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_request(_tensor("FP32", ["nan", 1.0])), "must hold numbers for FP32"),
        (_request(_tensor("FP32", ["-Infinity", 1.0])), "must hold numbers for FP32"),
        (_request(_tensor("INT32", [1.9, 2.0])), "must hold integers for INT32"),
        (_request(_tensor("UINT8", ["1.7"])), "must hold integers for UINT8"),
        (_request(_tensor("UINT8", [-1, 3])), "outside UINT8's range [0, 255]"),
        (_request(_tensor("UINT8", [300])), "outside UINT8's range"),
        (_request(_tensor("BOOL", [1, 0])), "must hold true or false for BOOL"),
        (_request(_tensor("FP32", [[1.0, 2.0], [3.0]], shape=[3])), "evenly nested list"),
        (_request(_tensor("FP32", [1.0]), _tensor("FP32", [2.0])), "is given twice"),
        (_request(_tensor("FP32", [1.0]), binary_data_output="yes"), "'binary_data_output' must be true or false"),
        # These were 500s: a list as a name or datatype, more dimensions than numpy takes.
        (_request({"name": ["a"], "datatype": "FP32", "shape": [1], "data": [1.0]}), "non-empty string 'name'"),
        (_request({"name": "x", "datatype": ["FP32"], "shape": [1], "data": [1.0]}), "datatype ['FP32'] is not supported"),
        (_request(_tensor("FP32", [1.0], shape=[1] * 65)), "has 65 dimensions, more than 32"),
        # Extensions not served are refused, not silently answered another way.
        (_request(_tensor("FP32", [1.0], shared_memory_region="r", shared_memory_byte_size=4)), "shared memory is not supported"),
        # Triton's classification extension takes a whole number of classes, at least one.
        *((json.dumps({"inputs": [_tensor("FP32", [1.0])], "outputs": [{"name": "y", "parameters": {"classification": count}}]}).encode(),
           "parameter 'classification' must be a whole number >= 1") for count in (0, True, "3", 2.5)),
    ],
)
def test_values_a_datatype_does_not_take_are_refused(body, message):
    with pytest.raises(BadRequestError, match=message.replace("[", r"\[").replace("]", r"\]")):
        decode_http_request(body, None)


def test_binary_sections_are_claimed_by_an_integer_size_and_only_once():
    data = np.arange(4, dtype=np.float32).tobytes()
    for parameters, message in (({"binary_data_size": True}, "binary_data_size must be a non-negative integer"),):
        header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [4], "parameters": parameters}]}).encode()
        with pytest.raises(BadRequestError, match=message):
            decode_http_request(header + data, len(header))
    both = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [4], "data": [0.0] * 4, "parameters": {"binary_data_size": 16}}]}).encode()
    with pytest.raises(BadRequestError, match="not both"):
        decode_http_request(both + data, len(both))
    output_flag = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [0.0]}], "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]}).encode()
    with pytest.raises(BadRequestError, match="'binary_data' must be true or false"):
        decode_http_request(output_flag, None)


def test_values_a_datatype_takes_still_decode():
    decoded = decode_http_request(_request(
        _tensor("FP32", [[1, 2], [3.5, True]], shape=[2, 2], name="a"),  # integers and booleans are numbers
        _tensor("UINT8", [0, 255], name="b"),
        _tensor("INT64", [-(2**63), 2**63 - 1], name="c"),
        _tensor("BOOL", [True, False], name="d"),
        _tensor("INT32", [], shape=[0], name="e"),
    ), None)  # fmt: skip
    assert decoded.inputs["a"].dtype == np.float32 and decoded.inputs["a"].tolist() == [[1.0, 2.0], [3.5, 1.0]]
    assert decoded.inputs["b"].tolist() == [0, 255] and decoded.inputs["c"].tolist() == [-(2**63), 2**63 - 1]
    assert decoded.inputs["d"].dtype == np.bool_ and decoded.inputs["e"].shape == (0,)


def _in_fresh_interpreter(code: str) -> str:
    """shoal's gRPC messages share their proto names with tritonclient.grpc's, which other tests
    of this process import: the gRPC decoding is tried in a process of its own (as the server is)."""
    import subprocess
    import sys
    import textwrap

    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_grpc_typed_contents_decode_like_raw_contents_and_raw_lengths_are_named_as_sent():
    out = _in_fresh_interpreter("""
        import numpy as np
        from shoal.runtime.errors import BadRequestError
        from shoal.runtime.grpc_tensors import decode_grpc_inputs
        from shoal.runtime.proto import grpc_service_pb2 as pb

        def tensor(name, datatype, shape):
            return pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)

        values = np.random.default_rng(3).random((2, 3), dtype=np.float32)
        typed = pb.ModelInferRequest(inputs=[tensor("x", "FP32", [2, 3])])
        typed.inputs[0].contents.fp32_contents.extend(values.ravel().tolist())
        raw = pb.ModelInferRequest(inputs=[tensor("x", "FP32", [2, 3])], raw_input_contents=[values.tobytes()])
        print(bool(np.array_equal(decode_grpc_inputs(typed)["x"], decode_grpc_inputs(raw)["x"])))
        small = pb.ModelInferRequest(inputs=[tensor("y", "INT8", [2])])
        small.inputs[0].contents.int_contents.extend([5, 300])  # int_contents carries INT8..INT32
        for request in (small, pb.ModelInferRequest(inputs=[tensor("x", "FP32", [2, 3])], raw_input_contents=[b"0" * 20])):
            try:
                decode_grpc_inputs(request)
            except BadRequestError as error:
                print(error.message)
    """).splitlines()
    assert out[0] == "True"
    assert "outside INT8's range" in out[1]
    assert "raw_input_contents[0] is 20 bytes but shape [2, 3] of FP32 needs 24" in out[2]


def test_grpc_inputs_given_twice_or_in_both_forms_are_refused():
    """The later of two same-named inputs silently won, and typed contents beside raw ones were ignored."""
    out = _in_fresh_interpreter("""
        import numpy as np
        from shoal.runtime.errors import BadRequestError
        from shoal.runtime.grpc_tensors import decode_grpc_inputs
        from shoal.runtime.proto import grpc_service_pb2 as pb

        data = np.ones(2, np.float32).tobytes()
        twice = pb.ModelInferRequest(inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[2])] * 2,
                                     raw_input_contents=[data, data])
        both = pb.ModelInferRequest(inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[2])], raw_input_contents=[data])
        both.inputs[0].contents.fp32_contents.extend([0.0, 0.0])
        for request in (twice, both):
            try:
                decode_grpc_inputs(request)
                print("decoded")
            except BadRequestError as error:
                print(error.message)
    """).splitlines()
    assert "is given twice" in out[0]
    assert "not both" in out[1]


def test_uint64_values_past_int64_decode_exactly():
    decoded = decode_http_request(_request(_tensor("UINT64", [1, 2**63, 2**64 - 1])), None)
    assert decoded.inputs["x"].dtype == np.uint64 and decoded.inputs["x"].tolist() == [1, 2**63, 2**64 - 1]
    with pytest.raises(BadRequestError, match="must hold integers for UINT64"):
        decode_http_request(_request(_tensor("UINT64", [1.5, 2**63])), None)


def test_gzip_bodies_of_several_members_are_read_whole_and_trailing_bytes_refused():
    import gzip

    from shoal.runtime.http_frontend import decompress_body

    body = b'{"inputs": []}' * 3
    assert decompress_body(gzip.compress(body[:10]) + gzip.compress(body[10:]), "gzip", 1 << 20) == body
    with pytest.raises(BadRequestError, match="not valid gzip data"):
        decompress_body(gzip.compress(body) + b"GARBAGE", "gzip", 1 << 20)
