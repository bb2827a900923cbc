"""Fuzzing a live server: no request the API description allows, and no well-formed tensor with
any parameters, gives a 5xx or kills a worker."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import start_server, stop_server

SETTINGS = settings(max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def fuzzed_server(fixture_repository_path):
    # Management calls need a token the fuzzer does not have: they are fuzzed up to the 401 and
    # cannot unload what the inference cases need.
    server = start_server(fixture_repository_path, "--admin-token", "fuzz-secret", "--max-body-mb", "1", "--workers", "1")
    yield server
    output = stop_server(server)
    assert "Traceback" not in output and "exited with code" not in output, output


def test_no_request_the_api_description_allows_gives_a_server_error(fuzzed_server):
    schema = schemathesis.openapi.from_url(f"{fuzzed_server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15  # every route of the API is described
    cases_sent = 0
    for operation in operations:

        @given(case=operation.as_strategy())
        @SETTINGS
        def check(case):
            nonlocal cases_sent
            cases_sent += 1
            response = case.call(timeout=30)
            assert response.status_code < 500, (case.method, case.formatted_path, response.status_code, response.text[:300])

        check()
    assert cases_sent >= len(operations) * 5


parameter_values = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**7), st.floats(allow_nan=True), st.text(max_size=5))


@given(
    model=st.sampled_from(["fixture", "fixture.rf-16", "fixture.rf-32", "fixture.rf-64"]),
    side=st.integers(1, 128),
    batch=st.integers(1, 3),
    dtype=st.sampled_from(["FP32", "UINT8"]),
    parameters=st.dictionaries(st.sampled_from(["slo_ms", "timeout", "priority", "min_accuracy", "max_cost_per_1000_usd"]), parameter_values, max_size=4),
)
@SETTINGS
def test_well_formed_tensors_with_any_parameters_never_give_a_server_error(fuzzed_server, model, side, batch, dtype, parameters):
    values = np.zeros((batch, 3, side, side), dtype=np.float32 if dtype == "FP32" else np.uint8)
    body = {"inputs": [{"name": "images", "datatype": dtype, "shape": list(values.shape), "data": values.ravel().tolist()}], "parameters": parameters}
    # json.dumps writes NaN/Infinity as bare tokens, as a careless client would: a 400, never a 5xx.
    response = httpx.post(f"{fuzzed_server.url}/v2/models/{model}/infer", content=json.dumps(body), timeout=30)
    assert response.status_code < 500, (model, side, parameters, response.text[:300])
    if response.status_code == 200:
        assert response.json()["outputs"][0]["shape"][0] == batch
