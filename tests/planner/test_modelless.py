"""Per-query variant selection: states, preferences, refusals with alternatives (pure)."""

from __future__ import annotations

import pytest

from shoal.planner.modelless import (
    LiveVariant,
    ModellessVariant,
    Requirements,
    VariantState,
    alternatives,
    capacity_at_slo_rps,
    classify_state,
    cost_per_1000_usd,
    predicted_latency_ms,
    select_variant,
)


def variant(name, accuracy, batch1_ms, *, per_item_ms=None, max_batch=8, price=1.0, load_ms=100.0, device="cpu"):
    step = batch1_ms if per_item_ms is None else per_item_ms
    return ModellessVariant(name, "task", accuracy, device, price, tuple(batch1_ms + step * (b - 1) for b in range(1, max_batch + 1)), load_ms)


SMALL = variant("small", 0.70, 2.0, price=1.0)
LARGE = variant("large", 0.90, 10.0, price=1.0)


def test_every_state_is_reached_from_live_numbers():
    assert classify_state(LiveVariant(SMALL)) is VariantState.INACTIVE
    assert classify_state(LiveVariant(SMALL, loading_replicas=1)) is VariantState.LOADING
    assert classify_state(LiveVariant(SMALL, replicas=1, arrival_rps=100.0)) is VariantState.ACTIVE
    peak = SMALL.peak_throughput_rps
    assert classify_state(LiveVariant(SMALL, replicas=2, arrival_rps=2.5 * peak)) is VariantState.OVERLOADED
    assert classify_state(LiveVariant(SMALL, replicas=2, arrival_rps=1.5 * peak)) is VariantState.ACTIVE
    assert classify_state(LiveVariant(SMALL, replicas=1, measured_latency_ms=3.1)) is VariantState.INTERFERED
    assert classify_state(LiveVariant(SMALL, replicas=1, measured_latency_ms=2.9)) is VariantState.ACTIVE
    assert classify_state(LiveVariant(SMALL, replicas=1, measured_latency_ms=2.9), interference_factor=1.2) is VariantState.INTERFERED


def test_capacity_at_slo_uses_the_largest_batch_that_fits_twice():
    linear = variant("linear", 0.8, 2.0, per_item_ms=1.0, max_batch=32)  # latency(b) = 1 + b ms
    # 2 x (1 + b) <= 20 -> b = 9, 9 requests per 10 ms.
    assert capacity_at_slo_rps(linear, 20.0) == pytest.approx(900.0)
    assert capacity_at_slo_rps(linear, 3.9) == 0.0  # batch 1 takes 2 ms; twice does not fit
    assert cost_per_1000_usd(linear) == pytest.approx(1.0 / 3600 / linear.peak_throughput_rps * 1000)


def test_shoal_serves_the_cheapest_active_variant_predicted_in_time():
    cheap_slow = variant("cheap", 0.9, 10.0, price=1.0)
    dear_fast = variant("dear", 0.9, 2.0, price=10.0)
    requirements = Requirements(slo_ms=30.0, min_accuracy=0.8)
    idle = [LiveVariant(cheap_slow, replicas=1), LiveVariant(dear_fast, replicas=1)]
    decision = select_variant(requirements, idle)
    assert (decision.action, decision.variant) == ("serve", "cheap")
    # The cheap variant's only replica has 20 queries queued: shoal moves on, INFaaS does not.
    busy = [LiveVariant(cheap_slow, replicas=1, queue_lengths=(20,), busy_ms=(5.0,)), LiveVariant(dear_fast, replicas=1)]
    assert select_variant(requirements, busy).variant == "dear"
    assert select_variant(requirements, busy, policy="infaas").variant == "cheap"


def test_a_variant_whose_admission_margin_would_refuse_the_query_is_passed_over():
    cheap_slow = variant("cheap", 0.9, 10.0, price=1.0)
    dear_fast = variant("dear", 0.9, 2.0, price=10.0)
    requirements = Requirements(slo_ms=30.0, min_accuracy=0.8)
    assert predicted_latency_ms(LiveVariant(cheap_slow, replicas=1, admission_margin_ms=15.0), 30.0) == pytest.approx(
        predicted_latency_ms(LiveVariant(cheap_slow, replicas=1), 30.0) + 15.0
    )
    # idle, the cheap variant answers in 10 ms; but its server now adds a 25 ms learnt error
    live = [LiveVariant(cheap_slow, replicas=1, admission_margin_ms=25.0), LiveVariant(dear_fast, replicas=1)]
    assert select_variant(requirements, live).variant == "dear"


def test_requirements_are_never_silently_downgraded():
    requirements = Requirements(slo_ms=50.0, min_accuracy=0.8, max_cost_per_1000_usd=cost_per_1000_usd(LARGE) * 0.5)
    decision = select_variant(requirements, [LiveVariant(SMALL, replicas=1), LiveVariant(LARGE, replicas=1)])
    assert decision.action == "reject" and decision.variant is None
    assert "costs at most" in decision.reason
    relaxed = {alternative.relax: alternative for alternative in decision.alternatives}
    assert relaxed["max_cost_per_1000_usd"].variant == "large"
    assert relaxed["max_cost_per_1000_usd"].value == pytest.approx(cost_per_1000_usd(LARGE))
    assert relaxed["min_accuracy"].variant == "small" and relaxed["min_accuracy"].value == pytest.approx(0.70)


def test_an_impossible_slo_suggests_the_fastest_latency_that_would_work():
    suggestions = alternatives(Requirements(slo_ms=5.0, min_accuracy=0.85), [SMALL, LARGE])
    (slo,) = [a for a in suggestions if a.relax == "slo_ms"]
    assert slo.variant == "large" and slo.value == pytest.approx(10.0)


def test_inactive_variants_are_loaded_only_when_their_load_time_fits():
    quick_load = variant("quick-load", 0.9, 5.0, price=2.0, load_ms=40.0)
    slow_load = variant("slow-load", 0.9, 5.0, price=1.0, load_ms=4000.0)
    requirements = Requirements(slo_ms=100.0, min_accuracy=0.8)
    decision = select_variant(requirements, [LiveVariant(quick_load), LiveVariant(slow_load)])
    assert (decision.action, decision.variant) == ("load", "quick-load")  # cheaper one would miss the SLO
    assert decision.states == {"quick-load": VariantState.INACTIVE, "slow-load": VariantState.INACTIVE}
    loading = select_variant(requirements, [LiveVariant(quick_load, loading_replicas=1)])
    assert loading.action == "load" and loading.reason.startswith("already loading")
    assert select_variant(Requirements(slo_ms=30.0, min_accuracy=0.8), [LiveVariant(quick_load)]).action == "reject"


def test_infaas_queues_on_an_overloaded_variant_when_nothing_else_can_help():
    overloaded = LiveVariant(SMALL, replicas=1, arrival_rps=10 * SMALL.peak_throughput_rps)
    decision = select_variant(Requirements(slo_ms=50.0), [overloaded], policy="infaas")
    assert decision.action == "serve" and "overloaded" in decision.reason
    assert select_variant(Requirements(slo_ms=50.0), [overloaded], policy="shoal").action == "reject"


def test_bad_requirements_are_refused_with_the_field_named():
    with pytest.raises(ValueError, match="slo_ms"):
        Requirements(slo_ms=0)
    with pytest.raises(ValueError, match="min_accuracy"):
        Requirements(slo_ms=10, min_accuracy=1.5)
    with pytest.raises(ValueError, match="max_cost_per_1000_usd"):
        Requirements(slo_ms=10, max_cost_per_1000_usd=0)
    with pytest.raises(ValueError, match="unknown model-less policy"):
        select_variant(Requirements(slo_ms=10), [], policy="random")


def test_the_servers_own_prediction_replaces_the_per_replica_estimate():
    cheap_slow = variant("cheap", 0.9, 10.0, price=1.0)
    dear_fast = variant("dear", 0.9, 2.0, price=10.0)
    requirements = Requirements(slo_ms=30.0, min_accuracy=0.8)
    # Idle by the per-replica estimate (10 ms), but the server predicts 28 ms (its event loop lags,
    # say) and adds a 5 ms margin: admission would refuse the cheap variant, so it is passed over.
    late = LiveVariant(cheap_slow, replicas=1, admission_margin_ms=5.0, predicted_finish_ms=28.0)
    assert predicted_latency_ms(late, 30.0) == pytest.approx(33.0)
    assert select_variant(requirements, [late, LiveVariant(dear_fast, replicas=1)]).variant == "dear"
    # Twenty queued by the per-replica estimate, but the server's prediction says in time.
    queued = LiveVariant(cheap_slow, replicas=1, queue_lengths=(20,), busy_ms=(5.0,), predicted_finish_ms=20.0)
    assert select_variant(requirements, [queued, LiveVariant(dear_fast, replicas=1)]).variant == "cheap"
    # No replica: nothing predicts it in time, whatever was passed.
    assert predicted_latency_ms(LiveVariant(cheap_slow, predicted_finish_ms=1.0), 30.0) == float("inf")
