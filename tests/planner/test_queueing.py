"""The batching-server queue and the token-time models (shoal.planner.queueing)."""

from __future__ import annotations

import json
import math

import pytest

from shoal.core.models import LatencyStats, Profile
from shoal.planner.queueing import (
    BatchLatencyModel,
    DecodePrefillModel,
    IterationModel,
    SloTargets,
    analyze,
    max_arrival_rate,
    rate_range_rps,
    solve_queue,
)


def significant_digits(ours: float, published: float) -> float:
    return math.inf if ours == published else -math.log10(abs(ours - published) / abs(published))


@pytest.fixture(scope="module")
def example(anchors_dir):
    folder = anchors_dir / "inferno" / "queue-analysis@cfadd1c" / "examples"
    problem = json.loads((folder / "problem-data.json").read_text())
    model = IterationModel(
        alpha_ms=problem["alpha"], beta_ms=problem["beta"], gamma_ms=problem["gamma"],
        avg_in_tokens=problem["AvgInputTokens"], avg_out_tokens=problem["AvgOutputTokens"],
        max_batch_size=problem["maxBatchSize"],
    )
    published = {name: json.loads((folder / f"{name}.json").read_text()) for name in ("solution-solve", "solution-target")}
    return problem, model, published


def _fields(metrics):
    return {
        "throughput": metrics.throughput_rps, "avgRespTime": metrics.queue.avg_response_time_ms,
        "avgWaitTime": metrics.queue.avg_wait_time_ms, "avgNumInServ": metrics.queue.avg_num_in_service,
        "avgTTFT": metrics.ttft_ms, "avgITL": metrics.itl_ms, "maxRPS": metrics.max_rate_rps,
    }


def test_g2_solve_example_to_4_significant_digits(example):
    problem, model, published = example
    ours = _fields(analyze(model, problem["RPS"], max_queue_size=problem["maxQueueSize"]))
    for key, ours_value in ours.items():
        assert significant_digits(ours_value, published["solution-solve"][key]) >= 4, key
    assert model.generation == "G2"


def test_g2_target_example_to_4_significant_digits(example):
    problem, model, published = example
    sizing = max_arrival_rate(
        model, SloTargets(ttft_ms=problem["targetTTFT"], itl_ms=problem["targetITL"]),
        max_queue_size=problem["maxQueueSize"],
    )
    assert sizing.status == "ok" and sizing.binding == "itl_ms"
    ours = _fields(sizing.metrics)
    ours.update(RPSTargetTTFT=sizing.rate_for_ttft_rps, RPSTargetITL=sizing.rate_for_itl_rps)
    for key, value in published["solution-target"].items():
        assert significant_digits(ours[key], value) >= 4, key


def test_constant_rate_chain_is_mm1k():
    rho, capacity = 0.7, 5
    metrics = solve_queue(0.7, [1.0], max_queue_size=capacity - 1)
    p = [rho**n for n in range(capacity + 1)]
    total = sum(p)
    p = [x / total for x in p]
    assert metrics.blocking_probability == pytest.approx(p[-1])
    assert metrics.avg_num_in_system == pytest.approx(sum(n * x for n, x in enumerate(p)))
    assert metrics.throughput_rps == pytest.approx(0.7 * (1 - p[-1]))


@pytest.mark.parametrize("arrival_rate_rps", [1e12, 1e15, 1e17, 1e20])
def test_far_past_saturation_the_server_still_serves_its_own_rate(arrival_rate_rps):
    # lambda * (1 - blocking) cancelled: throughput 1.11 at 1e15 rps, a ZeroDivisionError at 1e17.
    metrics = solve_queue(arrival_rate_rps, [1.0], max_queue_size=0)
    assert metrics.throughput_rps == pytest.approx(1.0, rel=1e-9)
    assert metrics.avg_response_time_ms == pytest.approx(1000.0, rel=1e-9)


def test_littles_law_and_wait_plus_service():
    model = DecodePrefillModel(alpha_ms=20, beta_ms=0.4, gamma_ms=160, delta_ms=0.0128,
                               avg_in_tokens=128, avg_out_tokens=1024, max_batch_size=16)
    metrics = analyze(model, 0.5, max_queue_size=160)
    queue = metrics.queue
    assert queue.avg_num_in_system == pytest.approx(queue.throughput_rps / 1000 * queue.avg_response_time_ms)
    assert queue.avg_response_time_ms == pytest.approx(queue.avg_wait_time_ms + queue.avg_service_time_ms)
    assert 0 < queue.utilization <= 1
    assert metrics.generation == "G1"


def test_g1_effective_concurrency_inverts_service_time():
    model = DecodePrefillModel(alpha_ms=20, beta_ms=0.4, gamma_ms=160, delta_ms=0.0128,
                               avg_in_tokens=128, avg_out_tokens=1024, max_batch_size=16)
    assert model.effective_concurrency(model.service_time_ms(7.5)) == pytest.approx(7.5)
    assert model.effective_concurrency(0.0) == 0.0
    assert model.effective_concurrency(1e12) == 16


def test_rate_found_meets_target_and_a_bit_more_misses_it():
    model = DecodePrefillModel(alpha_ms=20, beta_ms=0.4, gamma_ms=160, delta_ms=0.0128,
                               avg_in_tokens=128, avg_out_tokens=1024, max_batch_size=32)
    sizing = max_arrival_rate(model, SloTargets(itl_ms=26.0), max_queue_size=320)
    assert sizing.status == "ok"
    assert sizing.metrics.itl_ms == pytest.approx(26.0, rel=1e-6)
    above = analyze(model, sizing.arrival_rate_rps * 1.01, max_queue_size=320)
    assert above.itl_ms > 26.0


def test_unreachable_target_is_a_status_not_an_exception():
    model = IterationModel(alpha_ms=12, beta_ms=0.05, gamma_ms=0.0005, avg_in_tokens=128,
                           avg_out_tokens=512, max_batch_size=48)
    sizing = max_arrival_rate(model, SloTargets(itl_ms=5.0), max_queue_size=128)
    assert sizing.status == "infeasible" and sizing.missed == "itl_ms"


def test_no_target_gives_top_of_range_and_tps_target_keeps_a_margin():
    model = IterationModel(alpha_ms=12, beta_ms=0.05, gamma_ms=0.0005, avg_in_tokens=128,
                           avg_out_tokens=512, max_batch_size=48)
    top = rate_range_rps(model)[1]
    assert max_arrival_rate(model, SloTargets(), max_queue_size=128).arrival_rate_rps == pytest.approx(top)
    sizing = max_arrival_rate(model, SloTargets(tokens_per_s=100.0), max_queue_size=128)
    assert sizing.arrival_rate_rps == pytest.approx(top * 0.9)


def _profile(latencies: dict[int, float]) -> Profile:
    return Profile(
        family="demo", variant="v1", device="cpu", load_time_ms=10.0,
        batches={b: LatencyStats(batch_size=b, p50_ms=ms, p95_ms=ms, p99_ms=ms, mean_ms=ms) for b, ms in latencies.items()},
    )


def test_dnn_model_from_shoal_profile():
    model = BatchLatencyModel.from_profile(_profile({1: 10.0, 2: 12.0, 4: 16.0, 8: 24.0}))
    assert model.generation == "profile" and model.max_batch_size == 8
    assert model.latency_ms_by_batch[2] == pytest.approx(14.0)  # batch 3 interpolated
    sizing = max_arrival_rate(model, SloTargets(latency_ms=40.0), max_queue_size=80)
    assert sizing.status == "ok"
    assert sizing.metrics.latency_ms == pytest.approx(40.0, rel=1e-6)
    assert sizing.metrics.itl_ms is None and sizing.metrics.ttft_ms is None
    assert max_arrival_rate(model, SloTargets(latency_ms=5.0), max_queue_size=80).status == "infeasible"


def test_dnn_table_is_made_monotone():
    model = BatchLatencyModel.from_table({1: 10.0, 2: 9.0, 4: 16.0})
    assert list(model.latency_ms_by_batch) == [10.0, 10.0, 13.0, 16.0]


def test_token_target_on_a_dnn_model_is_refused():
    model = BatchLatencyModel.from_table({1: 10.0})
    with pytest.raises(ValueError, match="itl_ms"):
        max_arrival_rate(model, SloTargets(itl_ms=10.0), max_queue_size=10)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(alpha_ms=-1.0), "alpha_ms"),
        (dict(avg_out_tokens=0.0), "avg_out_tokens"),
        (dict(max_batch_size=0), "max_batch_size"),
    ],
)
def test_invalid_parameters_name_the_field(kwargs, field):
    params = dict(alpha_ms=12, beta_ms=0.05, gamma_ms=0.0005, avg_in_tokens=128, avg_out_tokens=512, max_batch_size=48)
    params.update(kwargs)
    with pytest.raises(ValueError, match=field):
        IterationModel(**params)


def test_invalid_targets_and_rates_are_refused():
    with pytest.raises(ValueError, match="itl_ms"):
        SloTargets(itl_ms=-1.0)
    with pytest.raises(ValueError, match="arrival rate"):
        solve_queue(0.0, [1.0], max_queue_size=1)
