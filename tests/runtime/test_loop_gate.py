"""The frontend's own overload gate: requests refused on arrival, unread, while the event loop is
saturated (`loop_gate_refusal_probability`, `InferenceService.refuse_at_gate`,
`InferFastPath`'s prebuilt 429)."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time

import httpx
import numpy as np
import pytest
import uvicorn
from starlette.responses import PlainTextResponse

from shoal.client.loadgen import LoadSpec, generate_load
from shoal.planner.batching import LOOP_GATE_MIN_START_MS, SATURATED_LOOP_BUSY_SHARE, loop_gate_refusal_probability
from shoal.runtime.http_frontend import InferFastPath
from shoal.runtime.loop_monitor import LoopMonitor
from shoal.runtime.metrics import ServingMetrics
from shoal.runtime.scheduler import monotonic_ms
from shoal.runtime.service import InferenceService
from shoal.runtime.worker_manager import ServeConfig

from .conftest import free_port, start_server, stop_server  # noqa: TID252


def test_refusal_share_is_none_up_to_a_third_then_rises_to_all():
    assert loop_gate_refusal_probability(0.0, 3.0, 1.0) == 0.0
    assert loop_gate_refusal_probability(1.0, 3.0, 1.0) == 0.0
    assert loop_gate_refusal_probability(2.0, 3.0, 1.0) == pytest.approx(0.5)
    assert loop_gate_refusal_probability(3.0, 3.0, 1.0) == 1.0
    assert loop_gate_refusal_probability(50.0, 3.0, 1.0) == 1.0
    shares = [loop_gate_refusal_probability(lag / 10, 6.0, 0.9) for lag in range(80)]
    assert shares == sorted(shares) and shares[0] == 0.0 and shares[-1] == 1.0
    # A tiny SLO does not put the ramp inside an idle loop's own lateness.
    assert loop_gate_refusal_probability(LOOP_GATE_MIN_START_MS, 0.01, 1.0) == 0.0
    assert loop_gate_refusal_probability(3 * LOOP_GATE_MIN_START_MS, 0.01, 1.0) == 1.0


def test_a_loop_late_only_in_bursts_refuses_nothing():
    assert loop_gate_refusal_probability(50.0, 3.0, SATURATED_LOOP_BUSY_SHARE - 0.01) == 0.0
    assert loop_gate_refusal_probability(50.0, 3.0, SATURATED_LOOP_BUSY_SHARE) == 1.0


def test_loop_load_sees_a_long_pass_while_it_is_under_way():
    monitor = LoopMonitor()
    monitor.lag_ms, monitor.busy_share = 0.4, 0.05
    now_ms = monotonic_ms()
    monitor._timer_due_ms = now_ms + 5.0  # the timer is not due yet: the smoothed values
    assert monitor.load() == (0.4, 0.05)
    # Due 20 ms ago, read 30 ms ago, the loop's thread on a CPU for 29 of them: a pass under way.
    monitor._timer_due_ms, monitor._reading_since_ms = now_ms - 20.0, now_ms - 30.0
    monitor._reading_demand_s = time.thread_time() - 0.029
    lag_ms, busy_share = monitor.load()
    assert lag_ms >= 20.0 and busy_share >= SATURATED_LOOP_BUSY_SHARE
    # As late, but the thread ran only 3 of the 30 ms (a burst of large requests): not busy.
    monitor._reading_demand_s = time.thread_time() - 0.003
    lag_ms, busy_share = monitor.load()
    assert lag_ms >= 20.0 and busy_share < 0.2


def test_the_monitor_reads_an_idle_loop_as_idle_and_a_stalled_one_as_saturated_while_it_stalls():
    """The real monitor on a real loop: idle, the gate's inputs stay low; a callback that keeps
    the loop 40 ms sees, before it returns, the timer overdue and the thread busy."""

    async def scenario() -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
        monitor = LoopMonitor(ServingMetrics())
        running = asyncio.create_task(monitor.run())
        await asyncio.sleep(0.15)
        idle = (monitor.lag_ms, monitor.busy_share)
        deadline = time.perf_counter() + 0.04
        while time.perf_counter() < deadline:  # a long pass: the loop runs nothing else meanwhile
            pass
        during = monitor.load()
        await asyncio.sleep(0.001)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        time.sleep(0.03)  # a timer left armed would now be overdue by more than an interval
        after = monitor.load()
        return idle, during, after

    # Up to three tries, each checked in full: on a shared VM the hypervisor can take the CPU in
    # the middle of the pass, and the kernel leaves stolen time out of the thread's run time
    # (seen once: a busy share of 0.50 for a 40 ms pass, on a machine with bursts of steal).
    tries = []
    for _ in range(3):
        (idle_lag_ms, idle_busy), (lag_ms, busy_share), after = asyncio.run(scenario())
        tries.append({"idle": (idle_lag_ms, idle_busy), "during": (lag_ms, busy_share), "after": after})
        if (idle_lag_ms < 5.0 and idle_busy < SATURATED_LOOP_BUSY_SHARE
                and lag_ms >= 20.0 and busy_share >= SATURATED_LOOP_BUSY_SHARE
                and after[0] < 20.0):  # a stopped monitor leaves no live reading behind
            break
    else:
        pytest.fail(f"no try read the idle loop as idle and the stalled one as saturated: {tries}")


def test_service_refuses_by_the_share_of_the_loop_lag_against_the_model_s_recent_slo(fixture_repository_path):
    service = InferenceService(ServeConfig(repository=fixture_repository_path, default_slo_ms=50.0, max_loop_lag_share=0.06))
    service.variants = dict.fromkeys(["fixture.rf-16", "fixture.rf-32"])  # as start() finds them (no workers needed here)
    service._gate_random = random.Random(7)
    service.scheduler.loop_monitor.busy_share = 1.0
    service.scheduler.loop_monitor.lag_ms = 0.5  # of an SLO of 50 ms, refusals start at 1 ms and are total at 3
    assert not any(service.refuse_at_gate("fixture.rf-16") for _ in range(200))
    service.scheduler.loop_monitor.lag_ms = 3.5
    assert all(service.refuse_at_gate("fixture.rf-16") for _ in range(200))
    service.scheduler.loop_monitor.lag_ms = 2.0  # half of the requests
    refused = sum(service.refuse_at_gate("fixture.rf-16") for _ in range(2000))
    assert 850 <= refused <= 1150
    # A model whose clients state 1 s: the same lag is far inside its budget.
    service._remember_slo("fixture.rf-32", 1000.0)
    assert not any(service.refuse_at_gate("fixture.rf-32") for _ in range(200))
    # However late, a loop that is mostly idle is not the bottleneck.
    service.scheduler.loop_monitor.lag_ms, service.scheduler.loop_monitor.busy_share = 10.0, 0.3
    assert not any(service.refuse_at_gate("fixture.rf-16") for _ in range(200))
    # A served workflow is judged by its deployment's SLO and counted under its own name.
    service.scheduler.loop_monitor.lag_ms, service.scheduler.loop_monitor.busy_share = 10.0, 1.0
    assert not service.refuse_at_gate("pipeline", workflow_slo_ms=2000.0)
    assert service.refuse_at_gate("pipeline", workflow_slo_ms=50.0)
    assert 'shoal_requests_total{model="pipeline",outcome="shed",variant=""} 1.0' in service.metrics.render().decode()
    # A name that is no model is not refused, however late the loop: its 404 says more.
    assert not service.refuse_at_gate("nope")


def test_a_share_of_zero_turns_the_gate_off(fixture_repository_path):
    service = InferenceService(ServeConfig(repository=fixture_repository_path, max_loop_lag_share=0.0))
    service.variants = dict.fromkeys(["fixture.rf-16"])
    service.scheduler.loop_monitor.lag_ms, service.scheduler.loop_monitor.busy_share = 500.0, 1.0
    assert not any(service.refuse_at_gate("fixture.rf-16") for _ in range(100))


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
    """A real server driven by shoal's own load generator (64 requests kept in flight: its loop
    is busy all the time) with a gate that refuses at any lag above 0.1 ms (0.001 of a 100 ms
    SLO): inference is refused by the gate, counted as shed under the repository's own names
    only, every request gets an answer, and everything else keeps answering."""
    server = start_server(fixture_repository_path, "--max-loop-lag-share", "0.001", "--default-slo-ms", "100", "--preload", "fixture.rf-16")
    try:
        spec = LoadSpec(url=server.url, model="fixture.rf-16", input_name="images", input_shape=(1, 3, 16, 16), slo_ms=100.0,
                        duration_s=2.0, mode="closed", concurrency=64)  # fmt: skip
        made_up: list[int] = []

        def send_made_up_names() -> None:
            with httpx.Client(timeout=10) as client:
                for index in range(40):
                    made_up.append(client.post(f"{server.url}/v2/models/made-up-{index}/infer", content=b"{}").status_code)

        sender = threading.Thread(target=send_made_up_names)
        sender.start()
        run = asyncio.run(generate_load(spec))
        sender.join()
        assert run.status.size > 0 and set(np.unique(run.status).tolist()) <= {200, 429, 504}
        assert set(made_up) <= {404, 429}
        metrics = httpx.get(f"{server.url}/metrics").text
        gated = [line for line in metrics.splitlines() if line.startswith('shoal_requests_total{model="fixture.rf-16",outcome="shed",variant=""}')]
        assert gated and float(gated[0].split()[-1]) > 0, "the gate refused nothing while the loop was saturated"
        assert "made-up" not in metrics  # a client's made-up names never become labels
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    finally:
        stop_server(server)


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

    port = free_port()
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
            connection = refused.extensions["network_stream"].get_extra_info("client_addr")
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "1"
            assert "saturated" in json.loads(refused.content)["error"]
            assert bodies_read == []  # the application never read the refused body
            refusing.clear()
            served = client.post("/v2/models/demo/infer", content=b"y" * 1000)
            assert served.status_code == 200 and served.text == "read 1000 bytes"
            # On the same connection: the server kept it open past the body it never read.
            assert served.extensions["network_stream"].get_extra_info("client_addr") == connection
            assert bodies_read == [1000]
            assert client.get("/v2/health/live").status_code == 404  # other paths never meet the gate
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_the_gate_leaves_a_request_for_a_version_that_does_not_exist_to_its_404():
    from shoal.runtime.http_frontend import InferFastPath

    reached = []

    async def endpoint(request):
        reached.append(request.path_params)
        from starlette.responses import Response

        return Response(b"", status_code=404)

    async def fallback(scope, receive, send):
        raise AssertionError("not the infer path")

    async def call(path: str) -> int:
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        await InferFastPath(endpoint, fallback, refuse=lambda model: True)({"type": "http", "method": "POST", "path": path, "headers": [], "query_string": b""}, receive, send)
        return sent[0]["status"]

    assert asyncio.run(call("/v2/models/m/infer")) == 429 and reached == []  # the saturated gate refuses
    assert asyncio.run(call("/v2/models/m/versions/1/infer")) == 429 and reached == []
    assert asyncio.run(call("/v2/models/m/versions/7/infer")) == 404 and reached == [{"model": "m", "version": "7"}]


def test_a_workflow_refused_at_the_gate_counts_a_failure_in_its_statistics(fixture_repository_path):
    from types import SimpleNamespace

    from shoal.runtime.endpoints import ServedModels
    from shoal.runtime.statistics import VariantStatistics

    service = InferenceService(ServeConfig(repository=fixture_repository_path, default_slo_ms=50.0, max_loop_lag_share=0.06))
    relaxed = SimpleNamespace(deployment=SimpleNamespace(slo_ms=2000.0), statistics=VariantStatistics())
    tight = SimpleNamespace(deployment=SimpleNamespace(slo_ms=50.0), statistics=VariantStatistics())
    models = ServedModels(service, {"relaxed": relaxed, "tight": tight})
    service.scheduler.loop_monitor.lag_ms, service.scheduler.loop_monitor.busy_share = 10.0, 1.0
    assert not models.refuse_at_gate("relaxed") and models.refuse_at_gate("tight")
    assert relaxed.statistics.fail.count == 0 and tight.statistics.fail.count == 1
    (entry,) = models.statistics("tight")
    assert entry["name"] == "tight" and entry["inference_stats"]["fail"]["count"] == 1


def test_a_loop_has_one_monitor():
    async def scenario() -> None:
        monitor = LoopMonitor()
        running = asyncio.create_task(monitor.run())
        await asyncio.sleep(0.02)
        assert monitor.running
        with pytest.raises(RuntimeError, match="one monitor per event loop"):
            await monitor.run()
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        assert not monitor.running

    asyncio.run(scenario())
