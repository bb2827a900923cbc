"""The pure half of the capacity control loop: metrics -> load, plan -> replicas, hysteresis tick by tick."""

from __future__ import annotations

import pytest

from shoal.planner.capacity import (
    AcceleratorSpec,
    BatchLatencyTable,
    CapacitySystem,
    ModelPerf,
    ModelTarget,
    ServerLoad,
    ServerSpec,
    ServiceClass,
    plan_capacity,
)
from shoal.planner.capacity_control import (
    HysteresisSettings,
    HysteresisState,
    MetricsSample,
    ReplicaContext,
    ServerBinding,
    VariantCounters,
    decide_replicas,
    desired_replicas,
    observed_load,
    system_with_load,
)

# --------------------------------------------------------------------------------------------
# metrics -> load
# --------------------------------------------------------------------------------------------


def counters(success=0.0, shed=0.0, batches=0.0, items=0.0, answered=0.0, seconds=0.0, pending=0.0, inputs=0.0, dropped=0.0):
    return VariantCounters({"success": success, "shed": shed, "dropped": dropped}, batches, items, answered, seconds, pending, inputs)


def test_rates_come_from_counter_increases_over_the_window():
    before = MetricsSample(100.0, {"f.a": counters(success=10, shed=2, batches=5, items=10, answered=10, seconds=0.5, inputs=20)})
    after = MetricsSample(110.0, {"f.a": counters(success=60, shed=12, batches=30, items=110, answered=60, seconds=3.0, pending=4, inputs=120)})
    load = observed_load(before, after)["f.a"]
    assert load.window_s == 10.0
    assert load.arrival_rate_rps == pytest.approx(6.0)  # (60 + 12 - 12) / 10: shed requests are offered load too
    assert load.success_rate_rps == pytest.approx(5.0)
    assert load.rejected_rate_rps == pytest.approx(1.0)
    assert load.mean_batch_size == pytest.approx(100 / 25)
    assert load.mean_latency_ms == pytest.approx(1000 * 2.5 / 50)
    assert load.inputs_per_request == pytest.approx(100 / 50)  # each request carried two images
    assert load.input_rate_rps == pytest.approx(12.0)
    assert load.pending_requests == 4 and not load.counters_reset


def test_a_new_variant_counts_from_zero_and_idle_variants_have_no_means():
    before = MetricsSample(0.0, {"f.a": counters(success=5)})
    after = MetricsSample(2.0, {"f.a": counters(success=5), "f.b": counters(success=4, batches=4, items=4)})
    loads = observed_load(before, after)
    assert loads["f.a"].arrival_rate_rps == 0.0 and loads["f.a"].mean_batch_size is None
    assert loads["f.a"].mean_latency_ms is None and loads["f.a"].inputs_per_request == 1.0
    assert loads["f.b"].arrival_rate_rps == pytest.approx(2.0)


def test_inputs_per_request_count_late_requests_with_their_inputs():
    """Requests that ran and missed their deadline (dropped) carried inputs too: 100 one-input
    requests, 50 late, are one input per request, not two (executed items over successes)."""
    before = MetricsSample(0.0, {"f.a": counters()})
    after = MetricsSample(10.0, {"f.a": counters(success=50, dropped=50, batches=25, items=100, answered=50, seconds=5, inputs=100)})
    load = observed_load(before, after)["f.a"]
    assert load.inputs_per_request == pytest.approx(1.0)
    assert load.input_rate_rps == pytest.approx(10.0)


def test_counter_reset_after_a_runtime_restart_takes_the_current_values():
    before = MetricsSample(0.0, {"f.a": counters(success=1000, batches=500, items=1000)})
    after = MetricsSample(5.0, {"f.a": counters(success=20, batches=10, items=20)})
    load = observed_load(before, after)["f.a"]
    assert load.counters_reset
    assert load.arrival_rate_rps == pytest.approx(4.0) and load.mean_batch_size == pytest.approx(2.0)


def test_window_must_be_positive():
    sample = MetricsSample(3.0, {})
    with pytest.raises(ValueError, match="after the first"):
        observed_load(sample, sample)


# --------------------------------------------------------------------------------------------
# load -> system -> desired replicas
# --------------------------------------------------------------------------------------------


def small_system() -> CapacitySystem:
    """One CPU worker type; a replica of model m serves a batch of 1 in 100 ms (10 rps at best)."""
    return CapacitySystem(
        accelerators=(AcceleratorSpec("cpu-worker", "cpu", cost_cents_per_hour=2.0),),
        models=(ModelPerf("m", "cpu-worker", max_batch_size=1, params=BatchLatencyTable(((1, 100.0),))),),
        service_classes=(ServiceClass("gold", 1, (ModelTarget("m", latency_ms=1000.0),)),),
        servers=(
            ServerSpec("s1", "gold", "m", ServerLoad(0.0)),
            ServerSpec("s2", "gold", "m", ServerLoad(0.0)),
            ServerSpec("unbound", "gold", "m", ServerLoad(3.0)),
        ),
        capacity_by_type={"cpu": 100},
    )


BINDINGS = (ServerBinding("f.a", "s1"), ServerBinding("f.b", "s2", min_replicas=0))


def test_observed_rates_become_the_bound_servers_loads():
    loads = observed_load(MetricsSample(0.0, {"f.a": counters()}), MetricsSample(10.0, {"f.a": counters(success=250)}))
    system = system_with_load(small_system(), BINDINGS, loads, current_replicas={"s1": 2, "s2": 0},
                              current_accelerators={"s1": "cpu-worker"})
    by_name = {server.name: server for server in system.servers}
    assert by_name["s1"].load.arrival_rate_rps == pytest.approx(25.0)
    assert by_name["s2"].load.arrival_rate_rps == 0.0  # not observed: no load
    assert by_name["unbound"].load.arrival_rate_rps == 3.0  # not bound: base load kept
    assert by_name["s1"].current is not None and by_name["s1"].current.num_replicas == 2
    assert by_name["s1"].current.cost_cents_per_hour == pytest.approx(4.0)
    assert by_name["s2"].current is None  # accelerator not known yet
    desired = desired_replicas(plan_capacity(system), BINDINGS)
    assert desired == {"s1": 3, "s2": 0}  # 25 rps at <= ~9.x rps per replica; idle s2 needs none


def test_an_unserved_server_has_no_desired_count():
    system = system_with_load(small_system(), (ServerBinding("f.a", "s1"),), {})
    impossible = CapacitySystem(
        accelerators=system.accelerators, models=system.models,
        service_classes=(ServiceClass("gold", 1, (ModelTarget("m", latency_ms=50.0),)),),
        servers=(ServerSpec("s1", "gold", "m", ServerLoad(5.0)),), capacity_by_type={"cpu": 100},
    )
    assert desired_replicas(plan_capacity(impossible), (ServerBinding("f.a", "s1"),)) == {"s1": None}


def test_binding_bounds_are_checked():
    with pytest.raises(ValueError, match="max_replicas must be >= max"):
        ServerBinding("f.a", "s1", min_replicas=3, max_replicas=2)
    assert ServerBinding("f.a", "s1", min_replicas=1, max_replicas=4).bound(0) == 1
    assert ServerBinding("f.a", "s1", min_replicas=1, max_replicas=4).bound(9) == 4


# --------------------------------------------------------------------------------------------
# hysteresis, tick by tick
# --------------------------------------------------------------------------------------------


def tick(state, now_s, desired, current, *, bindings=None, **settings):
    context = ReplicaContext(
        now_s=now_s, desired={"s": desired}, current={"s": current},
        settings=HysteresisSettings(**settings), bindings={"s": bindings} if bindings else {},
    )
    (decision,), state = decide_replicas(context, state)
    return decision, state


def test_scale_up_is_immediate_by_default():
    decision, state = tick(HysteresisState(), 0.0, 5, 2, scale_down_delay_s=30)
    assert (decision.target, decision.changes) == (5, True)
    assert decision.reason == "scale-up from 2 to 5"
    assert state.pending == {}


def test_scale_down_waits_the_delay_then_goes_to_the_largest_wish_seen():
    state = HysteresisState()
    targets = []
    for now_s, desired in [(0, 2), (10, 3), (20, 1), (30, 2)]:
        decision, state = tick(state, now_s, desired, 4, scale_down_delay_s=30)
        targets.append(decision.target)
    assert targets == [4, 4, 4, 3]  # held for 30 s, then the largest wish of the window (3)
    assert "most conservative wish" in decision.reason
    assert state.pending == {}


def test_a_wish_that_flips_direction_restarts_the_delay():
    state = HysteresisState()
    decision, state = tick(state, 0, 2, 4, scale_down_delay_s=30)
    assert "waits 30 s more" in decision.reason
    decision, state = tick(state, 10, 6, 4, scale_down_delay_s=30)  # load came back: scale up at once
    assert decision.target == 6
    decision, state = tick(state, 20, 2, 6, scale_down_delay_s=30)
    decision, state = tick(state, 40, 2, 6, scale_down_delay_s=30)
    assert decision.target == 6 and "waits 10 s more" in decision.reason  # counted from t=20, not t=0
    decision, state = tick(state, 50, 2, 6, scale_down_delay_s=30)
    assert decision.target == 2


def test_back_at_the_current_count_forgets_a_pending_scale_down():
    state = HysteresisState()
    _, state = tick(state, 0, 1, 3, scale_down_delay_s=30)
    decision, state = tick(state, 20, 3, 3, scale_down_delay_s=30)
    assert decision.reason == "at the planned count" and state.pending == {}
    decision, state = tick(state, 40, 1, 3, scale_down_delay_s=30)
    assert decision.target == 3  # a new 30 s wait starts at t=40


def test_scale_up_delay_takes_the_smallest_wish_seen():
    state = HysteresisState()
    targets = []
    for now_s, desired in [(0, 8), (5, 5), (10, 9)]:
        decision, state = tick(state, now_s, desired, 2, scale_up_delay_s=10)
        targets.append(decision.target)
    assert targets == [2, 2, 5]


def test_dead_band_ignores_small_changes_of_large_counts():
    decision, _ = tick(HysteresisState(), 0, 21, 20, dead_band_fraction=0.1)
    assert decision.target == 20 and "within the dead band of 2" in decision.reason
    decision, _ = tick(HysteresisState(), 0, 23, 20, dead_band_fraction=0.1)
    assert decision.target == 23
    decision, _ = tick(HysteresisState(), 0, 2, 1, dead_band_fraction=0.1)
    assert decision.target == 2  # one replica always counts for small counts
    decision, _ = tick(HysteresisState(), 0, 2, 1, dead_band_replicas=1)
    assert decision.target == 1
    decision, _ = tick(HysteresisState(), 0, 1, 0, dead_band_replicas=1)
    assert decision.target == 1  # never left at zero by the dead band


def test_max_step_moves_a_few_replicas_per_tick_without_waiting_again():
    state, current, seen = HysteresisState(), 6, []
    for now_s in (0, 10, 20, 30):
        decision, state = tick(state, now_s, 1, current, scale_down_delay_s=10, max_step_replicas=2)
        current = decision.target
        seen.append(current)
    assert seen == [6, 4, 2, 1]  # waits 10 s once, then steps of at most 2
    assert state.pending == {}


def test_bounds_apply_first_and_at_once():
    bounds = ServerBinding("f.a", "s", min_replicas=1, max_replicas=3)
    decision, _ = tick(HysteresisState(), 0, 0, 2, bindings=bounds, scale_down_delay_s=0)
    assert decision.target == 1 and "bounded from 0" in decision.reason
    decision, _ = tick(HysteresisState(), 0, 5, 3, bindings=bounds)
    assert decision.target == 3 and not decision.changes
    decision, _ = tick(HysteresisState(), 0, 2, 5, bindings=bounds, scale_down_delay_s=300)
    assert decision.target == 3 and "outside the bounds" in decision.reason
    decision, _ = tick(HysteresisState(), 0, None, 0, bindings=bounds)  # even without a plan
    assert decision.target == 1 and decision.reason == "0 is outside the bounds: moved to 1 at once"


def test_unknown_current_takes_the_wish_and_no_plan_holds():
    decision, _ = tick(HysteresisState(), 0, 4, None)
    assert decision.target == 4 and decision.changes and "unknown" in decision.reason
    decision, _ = tick(HysteresisState(), 0, None, 3)
    assert decision.target == 3 and not decision.changes and "could not serve" in decision.reason


def test_servers_are_decided_independently_and_in_name_order():
    context = ReplicaContext(now_s=0, desired={"b": 1, "a": 4}, current={"a": 2, "b": 3},
                             settings=HysteresisSettings(scale_down_delay_s=60))
    decisions, state = decide_replicas(context, HysteresisState())
    assert [(d.server, d.target) for d in decisions] == [("a", 4), ("b", 3)]
    assert set(state.pending) == {"b"}


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"scale_down_delay_s": -1}, "hysteresis.scale_down_delay_s must be a finite number >= 0"),
        ({"dead_band_fraction": float("nan")}, "hysteresis.dead_band_fraction must be a finite number >= 0"),
        ({"dead_band_replicas": -2}, "hysteresis.dead_band_replicas must be an integer >= 0"),
        ({"max_step_replicas": 0}, "hysteresis.max_step_replicas must be an integer >= 1 or null"),
    ],
)
def test_settings_name_the_field_and_the_rule(settings, message):
    with pytest.raises(ValueError, match=message):
        HysteresisSettings(**settings)
