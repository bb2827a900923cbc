"""Autoscaling decisions on synthetic metric streams (pure)."""

from __future__ import annotations

import math

import pytest

from shoal.planner.autoscale import AutoscaleState, Demand, plan_autoscale
from shoal.planner.modelless import ModellessVariant, Requirements, capacity_at_slo_rps


def variant(name, batch1_ms, per_item_ms, price, *, accuracy=0.9, max_batch=16, device="cpu"):
    return ModellessVariant(name, "task", accuracy, device, price, tuple(batch1_ms + per_item_ms * (b - 1) for b in range(1, max_batch + 1)), 50.0)


CPU = variant("on-cpu", 20.0, 18.0, price=0.4, device="cpu")  # ~55 req/s per replica at a 100 ms SLO
GPU = variant("on-gpu", 4.0, 1.0, price=3.0, device="gpu")  # ~700 req/s per replica
SLO = Requirements(slo_ms=100.0, min_accuracy=0.8)


def run_stream(rates, variants, *, policy="shoal", hold_s=10.0, start=None):
    """Feed one rate per second; returns the replica counts after each tick and every decision."""
    replicas, state, history, decisions = dict(start or {}), AutoscaleState(), [], []
    for second, rate in enumerate(rates):
        by_variant = {name: rate if count else 0.0 for name, count in replicas.items()}
        plan = plan_autoscale([Demand("app", SLO, rate)], variants, replicas, state, float(second),
                              policy=policy, hold_s=hold_s, arrival_by_variant=by_variant)
        replicas, state = dict(plan.replicas), plan.state
        history.append(dict(replicas))
        decisions.extend(plan.decisions)
    return history, decisions


def test_horizontal_scaling_follows_the_rate_with_slack_at_once():
    history, decisions = run_stream([40.0, 120.0, 200.0], [CPU])
    capacity = capacity_at_slo_rps(CPU, SLO.slo_ms)
    assert [h["on-cpu"] for h in history] == [math.ceil(r * 1.05 / capacity) for r in (40.0, 120.0, 200.0)]
    assert all(d.kind in ("vertical-in", "scale-up") for d in decisions)


def test_vertical_scaling_moves_to_another_device_when_that_is_cheaper():
    history, decisions = run_stream([40.0, 600.0], [CPU, GPU])
    assert history[0] == {"on-cpu": 1, "on-gpu": 0}  # one CPU replica (0.4 $/h) beats a GPU (3 $/h)
    assert history[1]["on-gpu"] == 1  # 12 CPU replicas would cost 4.8 $/h
    assert any(d.variant == "on-gpu" and d.kind == "vertical-in" for d in decisions)


def test_scale_down_waits_for_the_hold_time_and_says_why():
    history, decisions = run_stream([200.0] * 3 + [40.0] * 15, [CPU], hold_s=10.0)
    high = history[2]["on-cpu"]
    assert high > 1
    assert all(h["on-cpu"] == high for h in history[3:12])  # demand fell at t=3; held until t=13
    assert history[13]["on-cpu"] == 1
    (down,) = [d for d in decisions if d.kind == "scale-down"]
    assert "hold 10 s" in down.reason and down.from_replicas == high and down.to_replicas == 1


def test_a_class_stays_on_its_variant_unless_moving_is_clearly_cheaper():
    similar = variant("similar", 20.0, 18.0, price=0.38)  # 5% cheaper than CPU: not worth a reload
    history, _ = run_stream([40.0, 40.0], [CPU, similar], start={"on-cpu": 1})
    assert history[-1]["on-cpu"] == 1 and history[-1]["similar"] == 0
    much_cheaper = variant("cheaper", 20.0, 18.0, price=0.2)
    history, _ = run_stream([40.0], [CPU, much_cheaper], start={"on-cpu": 1})
    assert history[-1]["cheaper"] == 1


def test_classes_that_can_share_a_variant_are_pooled():
    capacity = capacity_at_slo_rps(CPU, 100.0)
    rate = 0.4 * capacity  # each class alone needs one replica; both together still fit in one
    demands = [Demand("a", SLO, rate), Demand("b", Requirements(slo_ms=100.0, min_accuracy=0.5), rate)]
    plan = plan_autoscale(demands, [CPU], {}, AutoscaleState(), 0.0)
    assert plan.replicas == {"on-cpu": 1} and plan.assignment == {"a": "on-cpu", "b": "on-cpu"}
    # The tightest SLO on a shared variant sizes it: a 40 ms class lowers every replica's capacity.
    tight = [Demand("a", SLO, rate), Demand("b", Requirements(slo_ms=40.0), rate)]
    tighter = plan_autoscale(tight, [CPU], {}, AutoscaleState(), 0.0)
    assert tighter.replicas["on-cpu"] == math.ceil(2 * rate * 1.05 / capacity_at_slo_rps(CPU, 40.0))


def test_infaas_adds_one_replica_only_when_arrivals_pass_the_profiled_peak():
    peak = CPU.peak_throughput_rps
    history, _ = run_stream([0.9 * peak, 1.5 * peak, 2.5 * peak], [CPU], policy="infaas", start={"on-cpu": 1})
    assert [h["on-cpu"] for h in history] == [1, 2, 3]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="slack"):
        plan_autoscale([], [CPU], {}, AutoscaleState(), 0.0, slack=0.9)
    with pytest.raises(ValueError, match="unknown autoscaling policy"):
        plan_autoscale([], [CPU], {}, AutoscaleState(), 0.0, policy="magic")


def test_a_variant_every_class_left_goes_once_its_replacement_serves():
    state = AutoscaleState(assignment={"app": "on-cpu"})
    moving = plan_autoscale([Demand("app", SLO, 600.0)], [CPU, GPU], {"on-cpu": 12}, state, 0.0, hold_s=30.0,
                            ready_replicas={"on-cpu": 12, "on-gpu": 0})
    assert moving.replicas == {"on-cpu": 12, "on-gpu": 1}  # the GPU is loading: keep the CPUs
    served = plan_autoscale([Demand("app", SLO, 600.0)], [CPU, GPU], {"on-cpu": 12, "on-gpu": 1}, moving.state, 1.0,
                            hold_s=30.0, ready_replicas={"on-cpu": 12, "on-gpu": 1})
    assert served.replicas == {"on-cpu": 0, "on-gpu": 1}
    (out,) = served.decisions
    assert out.kind == "vertical-out" and "moved to on-gpu" in out.reason


def test_a_class_moves_at_most_once_per_hold_when_its_rate_wobbles_across_a_replica_step():
    """600 <-> 650 req/s moves a ceil() step (A: 3 replicas vs B: 1), so each side was more than
    the switch margin cheaper in turn: the class swapped every tick, loading and unloading 3
    replicas each time (the move back skipped the hold as a vertical move)."""
    cheap_slow = ModellessVariant("A", "t", 0.8, "cpu", 0.5, (4.0,), 100.0)
    dear_fast = ModellessVariant("B", "t", 0.8, "gpu", 1.0, (1.5,), 100.0)
    current: dict[str, int] = {}
    state = AutoscaleState()
    assignments = []
    for tick in range(12):
        rate_rps = 600.0 if tick % 2 == 0 else 650.0
        plan = plan_autoscale([Demand("c", Requirements(45.0), rate_rps)], [cheap_slow, dear_fast], current, state, float(tick),
                              hold_s=30.0, ready_replicas=current)  # fmt: skip
        assignments.append(plan.assignment["c"])
        current, state = dict(plan.replicas), plan.state
    moves = sum(1 for before, after in zip(assignments, assignments[1:]) if before != after)
    assert moves <= 1, assignments
    assert current[assignments[-1]] >= 1


def test_a_class_whose_slo_only_batch_1_meets_keeps_its_variant():
    """SLO 15 ms, batch-1 latency 10 ms: under load a request may wait a batch out (2 x 10 > 15),
    so no variant was allowed, and the one serving the class was scaled to 0 after the hold."""
    variant = ModellessVariant("v", "t", 0.9, "cpu", 1.0, (10.0, 12.0, 14.0, 16.0), 100.0)
    demand = [Demand("c", Requirements(slo_ms=15.0), 20.0)]
    plan = plan_autoscale(demand, [variant], {"v": 1}, AutoscaleState(), 0.0, hold_s=10.0)
    plan = plan_autoscale(demand, [variant], {"v": 1}, plan.state, 11.0, hold_s=10.0)
    assert plan.replicas["v"] == 1 and plan.assignment == {"c": "v"}
    from_zero = plan_autoscale(demand, [variant], {"v": 0}, AutoscaleState(), 0.0)
    assert from_zero.replicas["v"] == 1
    # Sized by batch-1 throughput (100 req/s a replica) rather than not at all.
    busy = plan_autoscale([Demand("c", Requirements(slo_ms=15.0), 250.0)], [variant], {}, AutoscaleState(), 0.0)
    assert busy.replicas["v"] == 3
    # A variant that meets the SLO under load is still preferred over one that meets it only alone.
    fast = ModellessVariant("fast", "t", 0.9, "cpu", 5.0, (2.0, 3.0), 100.0)
    both = plan_autoscale(demand, [variant, fast], {}, AutoscaleState(), 0.0)
    assert both.assignment == {"c": "fast"}
