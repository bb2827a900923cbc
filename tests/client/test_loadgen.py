"""The load generator: statistics on synthetic records, the Poisson schedule, and real runs."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request

import numpy as np
import pytest

from shoal.client.loadgen import (
    STATUS_BACKLOG,
    STATUS_CLIENT_ERROR,
    STATUS_TIMEOUT,
    LoadGenerator,
    LoadRun,
    LoadSpec,
    build_infer_body,
    generate_load,
    poisson_schedule,
    summarise,
)
from shoal.experiments.server_process import free_port, start_server_process


def _spec(**overrides) -> LoadSpec:
    values = dict(url="http://127.0.0.1:9", model="fixture.rf-16", input_name="images", input_shape=(1, 3, 16, 16), slo_ms=10.0, duration_s=2.0, rate_rps=5.0)
    values.update(overrides)
    return LoadSpec(**values)


def _run(spec: LoadSpec, status, latency_ms, *, variant_index=None, batch_size=None, variants=(), cpu_s=0.0, wall_s=0.0) -> LoadRun:
    count = len(status)
    return LoadRun(
        spec=spec,
        send_s=np.linspace(0.0, spec.duration_s, count, endpoint=False),
        latency_ms=np.asarray(latency_ms, dtype=np.float64),
        status=np.asarray(status, dtype=np.int32),
        variant_index=np.asarray(variant_index if variant_index is not None else [-1] * count, dtype=np.int32),
        batch_size=np.asarray(batch_size if batch_size is not None else [0] * count, dtype=np.int32),
        variants=list(variants),
        cpu_s=cpu_s,
        wall_s=wall_s,
    )


# -- statistics on synthetic records ----------------------------------------------------------


def test_summarise_counts_rates_and_percentiles_exactly():
    nan = float("nan")
    # 10 requests in a 2 s window, SLO 10 ms: six 200s (four within the SLO), one 429, one
    # 504, one 500 and one client timeout.
    status = [200, 200, 200, 200, 200, 200, 429, 504, 500, STATUS_TIMEOUT]
    latency = [1.0, 2.0, 3.0, 4.0, 20.0, 30.0, 0.5, 9.0, 1.0, nan]
    run = _run(
        _spec(),
        status,
        latency,
        variant_index=[0, 0, 0, 1, 1, -1, -1, -1, -1, -1],
        batch_size=[1, 2, 3, 4, 0, 0, 0, 0, 0, 0],
        variants=["fixture.rf-16", "fixture.rf-32"],
        cpu_s=0.5,
        wall_s=2.5,
    )
    stats = summarise(run)
    assert stats.num_requests == 10
    assert (stats.num_ok, stats.num_within_slo, stats.num_shed, stats.num_dropped) == (6, 4, 1, 1)
    assert (stats.num_http_errors, stats.num_client_errors) == (1, 1)
    assert stats.offered_rps == 5.0
    assert stats.throughput_rps == 3.0
    assert stats.goodput_rps == 2.0
    assert stats.shed_rps == 0.5 and stats.drop_rps == 0.5
    assert stats.shed_fraction == 0.1 and stats.drop_fraction == 0.1
    assert stats.error_fraction == 0.2
    assert stats.late_fraction == 0.2
    # Percentiles of the six answered latencies [1, 2, 3, 4, 20, 30] (linear interpolation).
    assert stats.p50_ms == 3.5
    assert stats.p95_ms == 27.5
    assert stats.p99_ms == 29.5
    assert stats.mean_ms == 10.0
    assert stats.mean_batch_size == 2.5
    assert stats.variants == {"fixture.rf-16": 3, "fixture.rf-32": 2}
    assert stats.generator_cpu_s == 0.5 and stats.generator_cpu_fraction == 0.2


def test_summarise_of_a_run_without_answers_has_no_percentiles():
    stats = summarise(_run(_spec(), [STATUS_BACKLOG, STATUS_CLIENT_ERROR, 429], [float("nan"), 1.0, 1.0]))
    assert stats.p50_ms is None and stats.p99_ms is None and stats.mean_ms is None
    assert stats.goodput_rps == 0.0
    assert stats.num_client_errors == 2 and stats.num_shed == 1
    assert stats.error_fraction == round(2 / 3, 6)


def test_p99_from_send_takes_out_the_generators_own_lag_per_request():
    run = _run(_spec(), [200, 200, 200, 429], [10.0, 20.0, 60.0, 5.0])
    assert summarise(run).p99_from_send_ms is None  # no lag recorded: nothing to report
    run.start_lag_ms = np.array([0.0, 5.0, 30.0, 4.0])  # the slowest answer was sent 30 ms late
    stats = summarise(run)
    assert stats.p99_ms == pytest.approx(59.2)  # from the schedule: [10, 20, 60]
    assert stats.p99_from_send_ms == pytest.approx(29.7)  # from the send: [10, 15, 30]


def test_a_request_answered_exactly_at_the_slo_counts_as_goodput():
    stats = summarise(_run(_spec(slo_ms=10.0, duration_s=1.0), [200, 200], [10.0, 10.000001]))
    assert stats.num_within_slo == 1 and stats.goodput_rps == 1.0


# -- the schedule -----------------------------------------------------------------------------


def test_poisson_schedule_has_the_requested_mean_rate_and_is_reproducible():
    times = poisson_schedule(1000.0, 20.0, seed=7)
    assert np.all(np.diff(times) > 0) and times[0] >= 0 and times[-1] < 20.0
    # 20 000 expected arrivals: the count is within 1% (about 1.4 standard deviations).
    assert abs(len(times) / 20.0 - 1000.0) < 10.0
    assert abs(np.diff(times).mean() - 1e-3) < 1e-5
    # Exponential gaps: the standard deviation equals the mean.
    assert abs(np.diff(times).std() / np.diff(times).mean() - 1.0) < 0.02
    assert np.array_equal(times, poisson_schedule(1000.0, 20.0, seed=7))
    assert not np.array_equal(times[:100], poisson_schedule(1000.0, 20.0, seed=8)[:100])


def test_poisson_schedule_with_the_same_seed_is_the_same_process_scaled_in_time():
    slow, fast = poisson_schedule(100.0, 10.0, seed=3), poisson_schedule(200.0, 5.0, seed=3)
    assert np.allclose(slow[: len(fast)] / 2.0, fast)


def test_load_spec_validation_names_the_field():
    with pytest.raises(ValueError, match="rate_rps must be > 0 in open-loop mode"):
        _spec(rate_rps=0.0)
    with pytest.raises(ValueError, match="concurrency must be >= 1 in closed-loop mode"):
        _spec(mode="closed", concurrency=0)
    with pytest.raises(ValueError, match="mode must be 'open' or 'closed'"):
        _spec(mode="burst")


def test_infer_body_is_a_v2_binary_request_with_the_slo():
    body, headers = build_infer_body(_spec(slo_ms=42.0))
    header_length = int(headers["Inference-Header-Content-Length"])
    header = json.loads(body[:header_length])
    assert header["parameters"] == {"slo_ms": 42.0, "binary_data_output": True}
    assert header["inputs"][0]["shape"] == [1, 3, 16, 16]
    assert len(body) - header_length == header["inputs"][0]["parameters"]["binary_data_size"] == 3 * 16 * 16 * 4


# -- real runs --------------------------------------------------------------------------------


def test_every_request_to_a_closed_port_is_recorded_as_a_client_error():
    import asyncio
    import gc

    spec = _spec(url=f"http://127.0.0.1:{free_port()}", rate_rps=100.0, duration_s=0.3, drain_timeout_s=1.0)
    collector_during_run = []

    async def run_and_look():
        asyncio.get_running_loop().call_later(0.1, lambda: collector_during_run.append(gc.isenabled()))
        return await generate_load(spec)

    run = asyncio.run(run_and_look())
    # A full collection mid-run would stall the schedule: off during the run, back on after it.
    assert collector_during_run == [False] and gc.isenabled()
    stats = summarise(run)
    assert stats.num_requests == len(poisson_schedule(100.0, 0.3, seed=0))
    assert stats.num_client_errors == stats.num_requests
    assert sum(run.client_errors.values()) == stats.num_requests


def test_closed_loop_clients_pause_after_a_refused_connection_rather_than_spin():
    """4 closed-loop clients against a closed port for 0.5 s: each waits CLOSED_LOOP_ERROR_PAUSE_S
    after a failed request (a review measured ~7,000 failed requests a second, one core busy)."""
    from shoal.client import loadgen

    pause_s = getattr(loadgen, "CLOSED_LOOP_ERROR_PAUSE_S", 0.01)  # the same bound checked on code without the pause
    spec = _spec(url=f"http://127.0.0.1:{free_port()}", mode="closed", concurrency=4, rate_rps=None, duration_s=0.5, drain_timeout_s=1.0)
    stats = summarise(asyncio.run(generate_load(spec)))
    most = 4 * (0.5 / pause_s + 1)
    assert 0 < stats.num_requests <= most and stats.num_client_errors == stats.num_requests


@pytest.fixture(scope="module")
def shoal_server(fixture_repository_path):
    server = start_server_process(fixture_repository_path, "--workers", "1", "--threads", "1", "--preload", "fixture.rf-16", timeout_s=60.0)
    yield server.url
    server.stop()


def _outcomes(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5.0) as response:
        text = response.read().decode()
    counts: dict[str, float] = {}
    for match in re.finditer(r'^shoal_requests_total\{model="fixture.rf-16",outcome="(\w+)",variant="fixture.rf-16"\} (\S+)$', text, re.M):
        counts[match.group(1)] = float(match.group(2))
    return counts


def test_open_loop_run_against_shoal_loses_no_request(shoal_server):
    spec = _spec(url=shoal_server, slo_ms=2000.0, rate_rps=150.0, duration_s=2.0, drain_timeout_s=5.0, seed=11)
    before = _outcomes(shoal_server)
    with LoadGenerator() as generator:
        run = generator.run(spec)
    stats = summarise(run)
    after = _outcomes(shoal_server)
    assert stats.num_requests == len(poisson_schedule(150.0, 2.0, seed=11))
    assert stats.num_requests == stats.num_ok + stats.num_shed + stats.num_dropped + stats.num_http_errors + stats.num_client_errors
    assert stats.num_client_errors == 0 and stats.num_http_errors == 0
    assert stats.num_ok > 0 and stats.variants == {"fixture.rf-16": stats.num_ok}
    # The server counted exactly the answers the generator recorded.
    served = {outcome: after.get(outcome, 0.0) - before.get(outcome, 0.0) for outcome in ("success", "shed", "dropped")}
    assert served == {"success": stats.num_ok, "shed": stats.num_shed, "dropped": stats.num_dropped}
    assert run.cpu_s > 0 and run.wall_s >= 2.0
    sent = ~np.isnan(run.start_lag_ms)
    assert sent.sum() == stats.num_requests and np.all(run.start_lag_ms[sent] >= 0)


def test_closed_loop_run_keeps_the_concurrency_and_answers_everything(shoal_server):
    spec = _spec(url=shoal_server, slo_ms=2000.0, mode="closed", concurrency=4, duration_s=1.0, rate_rps=0.0)
    with LoadGenerator() as generator:
        stats = summarise(generator.run(spec))
    assert stats.num_requests > 4
    assert stats.num_ok == stats.num_requests
    assert stats.concurrency == 4 and stats.p50_ms is not None and stats.mean_batch_size >= 1.0


def test_an_open_loop_never_sends_before_a_request_s_scheduled_moment():
    """uvloop's timers count whole milliseconds: sleeps ended up to ~1.4 ms early and ~40% of
    the requests went out ahead of their Poisson arrival, some with negative latencies."""
    import uvloop

    answer = (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nInference-Header-Content-Length: 2\r\n\r\n{}")

    async def instant(reader, writer):  # answers each request at once, keeps the connection
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                await reader.readexactly(length)
                writer.write(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def scenario():
        server = await asyncio.start_server(instant, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        spec = LoadSpec(url=f"http://127.0.0.1:{port}", model="m", input_name="x", input_shape=(1, 3, 8, 8), slo_ms=50.0,
                        duration_s=1.0, rate_rps=800.0)  # fmt: skip
        async with server:
            return await generate_load(spec)

    loop = uvloop.new_event_loop()
    try:
        run = loop.run_until_complete(scenario())
    finally:
        loop.close()
    sent = run.status != STATUS_BACKLOG
    assert sent.sum() > 500
    assert run.start_lag_ms[sent].min() >= 0.0
    assert (run.latency_ms[run.status == 200] >= 0.0).all()
