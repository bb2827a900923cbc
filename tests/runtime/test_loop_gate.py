"""The frontend's own overload gate: requests refused on arrival, unread, while the event loop is
saturated (`loop_gate_refusal_probability`, `InferenceService.frontend_saturated`,
`InferFastPath`'s prebuilt 429)."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn
from starlette.responses import PlainTextResponse

from shoal.planner.batching import loop_gate_refusal_probability
from shoal.runtime.http_frontend import InferFastPath
from shoal.runtime.service import InferenceService
from shoal.runtime.worker_manager import ServeConfig
from .conftest import start_server, stop_server  # noqa: TID252


def test_refusal_share_is_none_up_to_a_third_then_rises_to_all():
    assert loop_gate_refusal_probability(0.0, 3.0) == 0.0
    assert loop_gate_refusal_probability(1.0, 3.0) == 0.0
    assert loop_gate_refusal_probability(2.0, 3.0) == pytest.approx(0.5)
    assert loop_gate_refusal_probability(3.0, 3.0) == 1.0
    assert loop_gate_refusal_probability(50.0, 3.0) == 1.0
    shares = [loop_gate_refusal_probability(lag / 10, 6.0) for lag in range(80)]
    assert shares == sorted(shares) and shares[0] == 0.0 and shares[-1] == 1.0


def test_service_refuses_by_the_share_of_the_loop_lag_against_the_model_s_recent_slo(fixture_repository_path):
    service = InferenceService(ServeConfig(repository=fixture_repository_path, default_slo_ms=50.0, max_loop_lag_share=0.06))
    service._gate_random = random.Random(7)
    service.scheduler.loop_lag_ms = 0.5  # of an SLO of 50 ms, refusals start at 1 ms and are total at 3
    assert not any(service.frontend_saturated("fixture.rf-16") for _ in range(200))
    service.scheduler.loop_lag_ms = 3.5
    assert all(service.frontend_saturated("fixture.rf-16") for _ in range(200))
    service.scheduler.loop_lag_ms = 2.0  # half of the requests
    refused = sum(service.frontend_saturated("fixture.rf-16") for _ in range(2000))
    assert 850 <= refused <= 1150
    # A model whose clients state 1 s: the same lag is far inside its budget.
    service._remember_slo("fixture.rf-32", 1000.0)
    assert not any(service.frontend_saturated("fixture.rf-32") for _ in range(200))


def test_the_remembered_slo_follows_a_shorter_one_at_once_and_a_longer_one_slowly(fixture_repository_path):
    service = InferenceService(ServeConfig(repository=fixture_repository_path))
    service._remember_slo("fixture", 1000.0)
    service._remember_slo("fixture", 50.0)
    assert service._recent_slo_ms["fixture"] == 50.0
    service._remember_slo("fixture", 1000.0)  # one loose client does not expose the tight ones
    assert 50.0 < service._recent_slo_ms["fixture"] < 100.0
    for _ in range(500):
        service._remember_slo("fixture", 1000.0)
    assert service._recent_slo_ms["fixture"] > 950.0


def test_a_saturated_server_refuses_inference_at_the_gate_and_stays_healthy(fixture_repository_path):
    """A real server whose gate refuses at any lag above 0.1 ms (0.001 of a 100 ms SLO; an idle
    loop's timers run about that late, a loaded one later): inference is refused by the gate,
    counted as shed under the repository's own names only, and everything else keeps answering."""
    server = start_server(fixture_repository_path, "--max-loop-lag-share", "0.001", "--default-slo-ms", "100", "--preload", "fixture.rf-16")
    try:
        images = [0.0] * (3 * 16 * 16)
        body = json.dumps({"inputs": [{"name": "images", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": images}]})

        def send(index: int) -> httpx.Response:
            model = "fixture.rf-16" if index % 4 else f"made-up-{index}"
            return httpx.post(f"{server.url}/v2/models/{model}/infer", content=body, timeout=10)

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(send, range(400)))
        assert {answer.status_code for answer in answers} <= {200, 404, 429}
        gated = [answer for answer in answers if answer.status_code == 429 and "frontend is saturated" in answer.json()["error"]]
        assert gated, "the loop never ran 0.1 ms late under 16 concurrent clients"
        assert all(answer.headers["retry-after"] == "1" for answer in gated)
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'outcome="shed",variant=""' in metrics
        assert "made-up" not in metrics  # a client's made-up names never become labels
    finally:
        stop_server(server)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_refused_request_is_answered_429_unread_and_its_connection_serves_the_next(tmp_path):
    """A real uvicorn server, one keep-alive connection: a refused request's 1 MB body is never
    read by the application, yet the next request on the same connection is parsed correctly."""
    refusing = threading.Event()
    refusing.set()
    bodies_read: list[int] = []

    async def infer(request):
        body = await request.body()
        bodies_read.append(len(body))
        return PlainTextResponse(f"read {len(body)} bytes")

    async def other(scope, receive, send):
        await PlainTextResponse("other", status_code=404)(scope, receive, send)

    def refuse(model: str) -> bool:
        assert model == "demo"
        return refusing.is_set()

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(InferFastPath(infer, other, refuse), host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            refused = client.post("/v2/models/demo/infer", content=b"x" * (1024 * 1024))
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "1"
            assert "saturated" in json.loads(refused.content)["error"]
            assert bodies_read == []  # the application never read the refused body
            refusing.clear()
            served = client.post("/v2/models/demo/infer", content=b"y" * 1000)
            assert served.status_code == 200 and served.text == "read 1000 bytes"
            assert bodies_read == [1000]
            assert client.get("/v2/health/live").status_code == 404  # other paths never meet the gate
    finally:
        server.should_exit = True
        thread.join(timeout=10)
