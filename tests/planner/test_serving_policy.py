"""The family endpoint's policies: what they pick, and why they refuse when nothing fits."""

from __future__ import annotations

import pytest

from shoal.planner.serving_policy import FastestMeetingSlo, ModellessPolicy, MostAccurateMeetingSlo, Query, VariantOption

OPTIONS = [
    VariantOption("small", 0.70, 64, True, 4.0, cost_per_1000_usd=0.2),
    VariantOption("large", 0.90, 128, True, 12.0, cost_per_1000_usd=1.0),
]


def test_each_policy_picks_by_its_own_rank_within_the_slo():
    assert FastestMeetingSlo().select(Query(slo_ms=50.0), OPTIONS).variant == "small"
    assert MostAccurateMeetingSlo().select(Query(slo_ms=50.0), OPTIONS).variant == "large"
    assert MostAccurateMeetingSlo().select(Query(slo_ms=10.0), OPTIONS).variant == "small"  # large is predicted late


@pytest.mark.parametrize("policy", [FastestMeetingSlo(), MostAccurateMeetingSlo(), ModellessPolicy()])
def test_a_refusal_names_the_limit_that_excludes_every_variant(policy):
    # A cost cap that no variant meets was reported as an SLO miss ("fastest: 4.0 ms").
    priced_out = policy.select(Query(slo_ms=50.0, max_cost_per_1000_usd=0.1), OPTIONS)
    assert priced_out.variant is None and priced_out.reason == "no loaded variant is within max_cost_per_1000_usd 0.1 (cheapest: 0.2)"
    too_slow = policy.select(Query(slo_ms=2.0), OPTIONS)
    assert too_slow.variant is None and "no variant meets the 2 ms SLO" in too_slow.reason
    too_inaccurate = policy.select(Query(slo_ms=50.0, min_accuracy=0.95), OPTIONS)
    assert too_inaccurate.variant is None and "min_accuracy 0.950" in too_inaccurate.reason
