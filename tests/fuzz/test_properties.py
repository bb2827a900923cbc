"""Property-based tests: every boundary parser answers any input with a result or a clear error.

The server must never answer 5xx because of what a client or a file contains, so each parser is
fed generated input and may only succeed or raise the error type its boundary maps to a 4xx
(BadRequestError on the wire, InvalidInputError / ShoalError for files).
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shoal.core.errors import ShoalError
from shoal.core.models import Profile
from shoal.core.serialization import load_json
from shoal.runtime.codec import DATATYPE_TO_NUMPY, decode_http_request, encode_http_response
from shoal.runtime.errors import BadRequestError, PayloadTooLargeError
from shoal.runtime.inference_request import requirements

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
tensor_specs = st.fixed_dictionaries(
    {"name": st.one_of(st.just("images"), st.text(max_size=6), st.integers()),
     "datatype": st.one_of(st.sampled_from(sorted(DATATYPE_TO_NUMPY)), st.text(max_size=5)),
     "shape": st.one_of(st.lists(st.integers(-2, 6), max_size=4), json_values)},
    optional={"data": st.one_of(st.lists(st.one_of(st.integers(-300, 300), st.floats(allow_nan=False, width=32)), max_size=30), json_values),
              "parameters": st.one_of(st.fixed_dictionaries({"binary_data_size": st.integers(-4, 64)}), json_values)},
)


@FUZZ
@given(body=st.binary(max_size=300), header_length=st.one_of(st.none(), st.integers(-5, 400)))
def test_any_bytes_decode_or_give_a_bad_request(body, header_length):
    try:
        decode_http_request(body, header_length)
    except BadRequestError:
        pass


@FUZZ
# found by the reliability bench: zero elements in all, but dimensions numpy cannot reshape to
@example(specs=[{"name": "images", "datatype": "FP32", "shape": [102624480, 332152685413, 0, 56891476862231, 1437, 643150],
                 "parameters": {"binary_data_size": 0}}], parameters={}, tail=b"")
@example(specs=[{"name": "images", "datatype": "FP32", "shape": [2**40, 2**40], "data": []}], parameters={}, tail=b"")  # overflows int64
@given(specs=st.lists(tensor_specs, max_size=3), parameters=json_values, tail=st.binary(max_size=64))
def test_any_kserve_shaped_request_decodes_or_gives_a_bad_request(specs, parameters, tail):
    header = json.dumps({"inputs": specs, "parameters": parameters}).encode()
    for body, length in ((header, None), (header + tail, len(header))):
        try:
            decoded = decode_http_request(body, length)
        except (BadRequestError, PayloadTooLargeError):  # a 400 or a 413, both with a message
            continue
        for spec in specs:
            if spec.get("name") in decoded.inputs and isinstance(spec.get("shape"), list):
                assert list(decoded.inputs[spec["name"]].shape) == spec["shape"]


@FUZZ
@given(array=st.sampled_from(["FP32", "UINT8", "INT64", "FP16"]).flatmap(
    lambda datatype: st.tuples(st.just(datatype), st.lists(st.integers(1, 4), min_size=1, max_size=4))))
def test_binary_tensors_round_trip_exactly(array):
    datatype, shape = array
    values = np.arange(int(np.prod(shape)), dtype=DATATYPE_TO_NUMPY[datatype]).reshape(shape)
    body, length = encode_http_response("m", {"out": values}, request_id="r", parameters={}, binary_outputs={"out": True}, binary_by_default=False)
    header = json.loads(body[:length])
    spec = {"name": "x", "datatype": datatype, "shape": header["outputs"][0]["shape"],
            "parameters": {"binary_data_size": header["outputs"][0]["parameters"]["binary_data_size"]}}
    request = json.dumps({"inputs": [spec]}).encode()
    decoded = decode_http_request(request + body[length:], len(request))
    np.testing.assert_array_equal(decoded.inputs["x"], values)


@FUZZ
@example(parameters={"slo_ms": float("nan")})
@example(parameters={"max_cost_per_1000_usd": float("inf")})
@example(parameters={"timeout": float("-inf"), "min_accuracy": float("nan")})
@example(parameters={"timeout": 5e-324})  # positive, but zero once in milliseconds (found by the reliability bench)
@example(parameters={"slo_ms": 5e-324})
@given(parameters=st.dictionaries(st.sampled_from(["timeout", "slo_ms", "priority", "min_accuracy", "max_cost_per_1000_usd", "other"]), json_values, max_size=5))
def test_request_parameters_parse_or_give_a_bad_request(parameters):
    try:
        stated = requirements(parameters, 1000.0)
    except BadRequestError:
        return
    assert math.isfinite(stated.slo_ms) and stated.slo_ms > 0 and 0.0 <= stated.min_accuracy <= 1.0
    assert math.isfinite(stated.query_class[0])  # the autoscaler's class key exists for every admitted SLO
    assert stated.max_cost_per_1000_usd is None or stated.max_cost_per_1000_usd > 0


def _load_profile(path):
    return load_json(Profile, path)


def _load_edge_instance(path):
    from shoal.formats.edge_instance import load_edge_instance

    return load_edge_instance(path)


def _load_inferno_system(path):
    from shoal.formats.inferno import load_system

    return load_system(path)


@pytest.mark.parametrize("loader", [_load_profile, _load_edge_instance, _load_inferno_system], ids=["profile", "edge-instance", "inferno-system"])
@FUZZ
@given(document=json_values)
def test_json_files_load_or_name_the_problem(tmp_path, loader, document):
    path = tmp_path / "input.json"
    path.write_text(json.dumps(document))
    try:
        loader(path)
    except ShoalError:
        pass


@pytest.fixture(scope="module")
def jellybean_copy(anchors_dir, tmp_path_factory):
    import warnings

    from shoal.formats.jellybean import read_jellybean_inputs

    root = tmp_path_factory.mktemp("jellybean")
    shutil.copytree(anchors_dir / "jellybean" / "optimizer_inputs", root / "optimizer_inputs")
    shutil.copytree(anchors_dir / "jellybean" / "derived", root / "derived")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert read_jellybean_inputs(root / "optimizer_inputs").problem.tasks  # the intact copy loads
    return root / "optimizer_inputs"


@FUZZ
@given(file_name=st.sampled_from(["execution_profile.csv", "logical_graph.csv", "message_sizes.csv", "input_injection_rates.csv",
                                  "sources_workers_link.csv", "accuracy_requirement.json"]),
       content=st.one_of(st.text(max_size=200), st.lists(st.lists(st.text(alphabet="abc,0123456789.-e", max_size=8), max_size=5), max_size=6).map(
           lambda rows: "\n".join(",".join(row) for row in rows))))
def test_jellybean_folders_with_a_corrupted_file_load_or_name_the_problem(jellybean_copy, anchors_dir, file_name, content):
    import warnings

    from shoal.formats.jellybean import read_jellybean_inputs

    original = (anchors_dir / "jellybean" / "optimizer_inputs" / file_name).read_text()
    (jellybean_copy / file_name).write_text(content)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read_jellybean_inputs(jellybean_copy)
    except ShoalError:
        pass
    finally:
        (jellybean_copy / file_name).write_text(original)
