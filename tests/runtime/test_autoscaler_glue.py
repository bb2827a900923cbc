"""The autoscaler's glue to the service, on a fake service: which classes and variants reach the
planner, and which of its decisions are applied."""

from __future__ import annotations

import asyncio
import types

from prometheus_client import CollectorRegistry

import shoal.runtime.autoscaler as autoscaler_module
from shoal.planner.modelless import ModellessVariant
from shoal.runtime.autoscaler import Autoscaler
from shoal.runtime.inference_request import StatedRequirements

# Same device and price; "fam.fast" carries more than twice what "fam.big" does per replica.
BIG = ModellessVariant("fam.big", "fam", 0.90, "cpu", 0.048, tuple(10.0 * batch for batch in range(1, 9)), 100.0)
FAST = ModellessVariant("fam.fast", "fam", 0.85, "cpu", 0.048, tuple(4.0 * batch for batch in range(1, 9)), 100.0)


def fake_service(counts: dict[str, int], *, operator_unloaded=(), waiting=()):
    async def set_replicas(key, replicas, *, by_operator=True):
        assert not by_operator  # the autoscaler's counts are not an operator's
        counts[key] = replicas
        return replicas

    return types.SimpleNamespace(
        metrics=types.SimpleNamespace(registry=CollectorRegistry()),
        requests_by_class={}, requests_by_variant={}, requests_by_exact_variant={}, arrival_rps_by_variant={},
        families={"fam": types.SimpleNamespace(name="fam")},
        config=types.SimpleNamespace(admission_headroom=0.8, autoscale_slack=1.05, autoscale_hold_s=30.0),
        replica_counts=lambda: dict(counts), manager=types.SimpleNamespace(live_workers=4),
        operator_unloaded=set(operator_unloaded), set_replicas=set_replicas,
        scheduler=types.SimpleNamespace(waiting=lambda key: 1 if key in waiting else 0),
    )  # fmt: skip


def run_ticks(autoscaler: Autoscaler, seconds) -> None:
    async def ticks():
        for now_s in seconds:
            await autoscaler.tick(float(now_s))

    asyncio.run(ticks())


def test_an_operator_unloaded_variant_is_not_planned_on_and_the_serving_one_keeps_its_replicas(monkeypatch):
    """Planned on, the unloaded variant took the demand (its scale-up then skipped) and the
    variant serving it was scaled to 0."""
    monkeypatch.setattr(autoscaler_module, "modelless_variants", lambda service, family: {"fam.big": BIG, "fam.fast": FAST})
    counts = {"fam.big": 2, "fam.fast": 0}
    autoscaler = Autoscaler(fake_service(counts, operator_unloaded={"fam.fast"}), interval_s=1.0)
    autoscaler.rates_rps = {("fam", 100.0, 0.0, None): 120.0}
    run_ticks(autoscaler, range(0, 70, 10))
    assert counts["fam.fast"] == 0 and counts["fam.big"] >= 2


def test_a_variant_requests_name_directly_is_not_scaled_down_by_family_demand(monkeypatch):
    monkeypatch.setattr(autoscaler_module, "modelless_variants", lambda service, family: {"fam.big": BIG})
    counts = {"fam.big": 3}
    autoscaler = Autoscaler(fake_service(counts), interval_s=1.0)
    autoscaler.rates_rps = {("fam", 100.0, 0.0, None): 5.0}  # a trickle of family queries
    autoscaler.exact_rates_rps = {"fam.big": 250.0}  # and many that name the variant
    run_ticks(autoscaler, range(0, 100, 10))
    assert counts["fam.big"] == 3
    autoscaler.exact_rates_rps = {}
    run_ticks(autoscaler, range(100, 200, 10))
    assert counts["fam.big"] < 3  # the family's own demand decides once nobody names it


def test_a_class_the_planner_refuses_is_left_out_and_the_others_are_still_planned(monkeypatch):
    """A class of 0 ms (a tiny SLO rounded away) raised in the tick: no family was scaled."""
    monkeypatch.setattr(autoscaler_module, "modelless_variants", lambda service, family: {"fam.big": BIG, "fam.fast": FAST})
    counts = {"fam.big": 0, "fam.fast": 0}
    autoscaler = Autoscaler(fake_service(counts), interval_s=1.0)
    autoscaler.rates_rps = {("fam", 0.0, 0.0, None): 50.0, ("fam", 100.0, 0.0, None): 120.0}
    run_ticks(autoscaler, [0.0])
    assert sum(counts.values()) >= 1
    assert StatedRequirements(slo_ms=0.0004).query_class[0] > 0.0  # and no such class is made any more
