"""From live state to an edge instance, and from a plan to client instructions."""

from __future__ import annotations

import pytest

from shoal.planner.edge import EdgeClient, EdgeWorker, plan_edge
from shoal.planner.edge.live import (
    LiveVariant,
    build_edge_instance,
    fallback_ladder,
    instructions_from_plan,
    needs_replan,
    raw_frame_kbits,
)

VARIANTS = [
    LiveVariant("f.small", 0.60, 32, 3, {1: 1.0, 2: 1.5, 4: 2.5}),
    LiveVariant("f.small-slow", 0.55, 32, 3, {1: 3.0, 2: 4.0, 4: 6.0}),
    LiveVariant("f.large", 0.90, 128, 3, {1: 4.0, 2: 6.0, 4: 10.0}),
]


def test_frame_size_is_raw_uint8_plus_header():
    assert raw_frame_kbits(128) == pytest.approx(128 * 128 * 3 * 8 / 1000 + 0.8)
    assert raw_frame_kbits(32, channels=1) == pytest.approx(32 * 32 * 8 / 1000 + 0.8)


def test_ladder_keeps_the_best_variant_per_size_smallest_first():
    ladder = fallback_ladder(VARIANTS, server_overhead_ms=2.0)
    assert [(step.input_size_px, step.variant) for step in ladder] == [(32, "f.small"), (128, "f.large")]
    assert ladder[1].server_ms == pytest.approx(2.0 + 2 * 4.0)


def _plan(bandwidths_mbps, slo_ms=60.0):
    clients = [EdgeClient(f"c{i}", slo_ms, 10.0, mbps, rtt_ms=2.0) for i, mbps in enumerate(bandwidths_mbps)]
    workers = [EdgeWorker("w0", "cpu", None, ("f.small", "f.large"))]
    instance = build_edge_instance(VARIANTS, workers, clients, server_overhead_ms=1.0, plan_interval_ms=500.0)
    return instance, plan_edge(instance, "exact")


def test_fast_clients_get_the_large_variant_and_slow_ones_fall_back():
    instance, plan = _plan([100.0])
    assert instance.clients[0].bandwidth_mbps == 100.0 and instance.variants[2].request_kbits == raw_frame_kbits(128)
    instructions = instructions_from_plan(plan, VARIANTS, 1.0)
    assert instructions["c0"].variant == "f.large" and instructions["c0"].input_size_px == 128 and instructions["c0"].served
    # At 5 Mbit/s a 128 px frame (394 kbit) takes 79 ms > 60 ms SLO; 32 px takes 5 ms.
    _, plan = _plan([5.0])
    instructions = instructions_from_plan(plan, VARIANTS, 1.0)
    assert instructions["c0"].input_size_px == 32 and instructions["c0"].served


def test_unserved_clients_get_a_best_effort_instruction_with_the_reason():
    _, plan = _plan([0.05])  # even 32 px (25 kbit) takes 500 ms
    instruction = instructions_from_plan(plan, VARIANTS, 1.0)["c0"]
    assert not instruction.served and instruction.reason
    assert instruction.variant == "f.small" and instruction.input_size_px == 32


def test_replan_triggers():
    assert needs_replan({}, {"a": 5.0}, 0.3)  # a client arrived
    assert needs_replan({"a": 5.0}, {}, 0.3)  # a client left
    assert not needs_replan({"a": 5.0}, {"a": 6.0}, 0.3)
    assert needs_replan({"a": 5.0}, {"a": 1.0}, 0.3)  # a 5x drop
    assert needs_replan({"a": 5.0}, {"a": 7.0}, 0.3)
