"""The model-less simulation: accounting, the static baseline's cost, and shoal against INFaaS."""

from __future__ import annotations

import pytest

from shoal.planner.modelless import ModellessVariant, Requirements
from shoal.sim.modelless import Application, ModellessScenario, simulate_modelless


def variant(name, batch1_ms, per_item_ms, price, device, load_ms=200.0):
    return ModellessVariant(name, "task", 0.9, device, price, tuple(batch1_ms + per_item_ms * (b - 1) for b in range(1, 17)), load_ms)


@pytest.fixture(scope="module")
def scenario():
    return ModellessScenario(
        variants=(variant("on-cpu", 8.0, 6.0, 0.4, "cpu"), variant("on-gpu", 3.0, 0.5, 3.0, "gpu")),
        applications=(Application("app", "task", Requirements(slo_ms=50.0, min_accuracy=0.8), base_rps=60.0),),
        multipliers=(1, 4, 1),
        phase_s=15.0,
        hold_s=3.0,
        seed=3,
    )


@pytest.fixture(scope="module")
def results(scenario):
    return {policy: simulate_modelless(scenario, policy) for policy in ("shoal", "infaas", "static_peak")}


def test_every_query_is_accounted_for_once(results):
    for result in results.values():
        assert result.queries > 2000
        # Arrivals stop at the end and queues drain: every violation is late, dropped or refused.
        assert result.late + result.dropped + result.refused == result.slo_violations
        assert result.slo_violation_rate == pytest.approx(result.slo_violations / result.queries)


def test_static_provisioning_pays_for_the_peak_all_the_time(results, scenario):
    static = results["static_peak"]
    assert static.decisions == 0
    replicas = static.replica_timeline[0][1]
    assert all(counts == replicas for _, counts in static.replica_timeline)  # nothing ever changes
    price = {v.name: v.price_usd_per_hour for v in scenario.variants}
    expected = sum(count * price[name] for name, count in replicas.items()) * scenario.duration_s / 3600.0
    assert static.cost_usd == pytest.approx(expected)


def test_shoal_scales_with_the_load_and_beats_infaas_on_violations(results):
    shoal, infaas, static = results["shoal"], results["infaas"], results["static_peak"]
    peak_replicas = max(sum(counts.values()) for _, counts in shoal.replica_timeline)
    last_replicas = sum(shoal.replica_timeline[-1][1].values())
    assert peak_replicas > last_replicas  # scaled up for the 4x phase and back down after it
    assert shoal.decisions > 0
    assert shoal.slo_violation_rate < infaas.slo_violation_rate
    assert shoal.cost_usd < static.cost_usd


def test_the_per_phase_oracle_is_static_provisioning_redone_for_each_phase(results, scenario):
    from dataclasses import replace

    from shoal.sim.modelless import per_phase_oracle_cost_usd

    oracle = per_phase_oracle_cost_usd(scenario)
    one_phase = [simulate_modelless(replace(scenario, multipliers=(m,)), "static_peak").cost_usd for m in scenario.multipliers]
    assert oracle == pytest.approx(sum(one_phase))
    # The 4x phase needs more than the 1x phases, so the oracle is below static provisioning,
    # by at most the peak-to-mean ratio of the load.
    assert one_phase[1] > one_phase[0]
    static = results["static_peak"].cost_usd
    assert static / 3 < oracle < static
    # One application: shoal's planner finds the same cheapest sizing for each phase.
    assert per_phase_oracle_cost_usd(scenario, "shoal") == pytest.approx(oracle)


def test_a_phase_without_load_has_no_arrivals_and_the_next_phase_resumes_them():
    """A multiplier of 0 divided by zero (ZeroDivisionError) when drawing the next arrival."""
    from shoal.planner.modelless import ModellessVariant, Requirements
    from shoal.sim.modelless import Application, ModellessScenario, simulate_modelless

    variant = ModellessVariant("v", "t", 0.9, "cpu", 0.4, tuple(5.0 + 2 * batch for batch in range(8)), 50.0)
    scenario = ModellessScenario(variants=(variant,), applications=(Application("a", "t", Requirements(50.0), 20.0),),
                                 multipliers=(1, 0, 1), phase_s=2.0, hold_s=1.0)  # fmt: skip
    result = simulate_modelless(scenario, "shoal")
    assert 40 <= result.queries <= 120  # two phases of 2 s at 20/s, none in the silent one


def test_idle_applications_and_silent_phases_cost_nothing_under_static_sizing():
    """Sizing static provisioning for zero load raised 'no variant can meet ... at any load'."""
    from shoal.sim.modelless import per_phase_oracle_cost_usd

    busy = variant("v", 5.0, 2.0, 0.4, "cpu", load_ms=50.0)
    app = Application("a", "task", Requirements(50.0), 20.0)
    silent_middle = ModellessScenario(variants=(busy,), applications=(app,), multipliers=(1, 0, 1), phase_s=2.0, hold_s=1.0)
    loud_only = ModellessScenario(variants=(busy,), applications=(app,), multipliers=(1, 1), phase_s=2.0, hold_s=1.0)
    loud_cost_usd = per_phase_oracle_cost_usd(loud_only, "static")
    assert loud_cost_usd > 0 and per_phase_oracle_cost_usd(silent_middle, "static") == pytest.approx(loud_cost_usd)
    idle_app = Application("idle", "task", Requirements(50.0), 0.0)
    with_idle = ModellessScenario(variants=(busy,), applications=(app, idle_app), multipliers=(1, 2), phase_s=2.0, hold_s=1.0)
    without = ModellessScenario(variants=(busy,), applications=(app,), multipliers=(1, 2), phase_s=2.0, hold_s=1.0)
    assert simulate_modelless(with_idle, "static_peak").cost_usd == pytest.approx(simulate_modelless(without, "static_peak").cost_usd)


@pytest.mark.parametrize("changes, message", [
    (dict(multipliers=()), "multipliers"), (dict(multipliers=(1, float("nan"))), "multipliers"), (dict(phase_s=0.0), "phase_s"),
])
def test_a_scenario_without_phases_is_refused(changes, message):
    # No multipliers: an IndexError (shoal, infaas) or 'max() arg is an empty sequence' (static_peak).
    with pytest.raises(ValueError, match=message):
        ModellessScenario(variants=(variant("v", 5.0, 2.0, 0.4, "cpu"),), applications=(), **changes)
