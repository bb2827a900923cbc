"""The model-less query SDK against a mock transport: what SLO it states."""

import json
import time

import httpx
import numpy as np
import pytest

from shoal.client.query import QueryClient


def test_one_slow_answer_does_not_leave_the_client_stating_a_hopeless_slo():
    """The client keeps its measured overhead out of the SLO it states, but at most half of it: a
    first answer 80 ms slow (a cold connection) once made it state 1 ms for every later query of a
    50 ms SLO, which the server refused, so the estimate never recovered."""
    stated = []

    def handler(request: httpx.Request) -> httpx.Response:
        header = json.loads(request.content[: int(request.headers["inference-header-content-length"])])
        stated.append(header["parameters"]["slo_ms"])
        if len(stated) == 1:
            time.sleep(0.08)
        if stated[-1] < 5:
            return httpx.Response(504, json={"error": "dropped: deadline cannot be met"})
        body = json.dumps({"outputs": [{"name": "y", "datatype": "FP32", "shape": [1], "data": [0.5]}],
                           "parameters": {"shoal_server_ms": 2.0}}).encode()  # fmt: skip
        return httpx.Response(200, content=body, headers={"inference-header-content-length": str(len(body))})

    client = QueryClient("http://shoal.invalid")
    client._http = httpx.Client(transport=httpx.MockTransport(handler))
    answered = 0
    for _ in range(12):
        try:
            client.infer("demo", np.zeros((1, 3, 8, 8), np.float32), slo_ms=50)
            answered += 1
        except Exception:
            pass
    assert min(stated[1:]) >= 25.0  # never more than half the SLO kept back
    assert answered == 12 and client.overhead_ms < 40.0  # and the estimate recovers from the slow one


@pytest.mark.parametrize("slo_ms", [-5.0, 0.0, float("nan"), float("inf")])
def test_an_slo_that_is_not_a_positive_number_is_refused_before_sending(slo_ms):
    """Taking the measured overhead off it made it a 1 ms SLO, and the answer a 429."""
    client = QueryClient("http://127.0.0.1:9")  # nothing is sent
    with pytest.raises(ValueError, match="slo_ms must be a positive number"):
        client.infer("demo", np.zeros((1, 3, 16, 16), np.float32), slo_ms=slo_ms)
