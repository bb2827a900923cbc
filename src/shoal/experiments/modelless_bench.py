"""`shoal bench modelless`: three applications, load stepping up 4x and back, three policies.

Variants come from real profiles: the demo family's measured CPU profiles from the model
repository, and INFaaS's ResNet-50 variants (its query-test fixture, transcribed in
shared/anchors/infaas) on CPU, GPU and Inferentia instances, whose latency is INFaaS's own
linear fit slope x batch + intercept. Prices per device come from a table (defaults below:
AWS on-demand prices, $/hour; override with --prices FILE.yaml).

Applications (requirements chosen to exercise different parts of the problem):
    quality-check   demo family, 20 ms SLO, accuracy >= 0.90 (only the largest variant qualifies)
    tagging         demo family, 50 ms SLO, accuracy >= 0.80, at most 0.0002 $ per 1000 queries
    photo-search    ResNet-50, 100 ms SLO, accuracy >= 0.70 (hardware is the only choice)
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from shoal.core.errors import InvalidInputError
from shoal.core.models import Device
from shoal.planner.modelless import ModellessVariant, Requirements
from shoal.sim.modelless import POLICIES, Application, ModellessScenario, per_phase_oracle_cost_usd, simulate_modelless
from shoal.zoo.repository import ModelRepository

__all__ = ["DEFAULT_PRICES_USD_PER_HOUR", "build_scenario", "infaas_resnet50_variants", "repository_variants", "run_modelless_bench"]

DEFAULT_PRICES_USD_PER_HOUR: dict[str, float] = {
    "cpu": 0.048,  # one vCPU of an m5 instance (a shoal worker process runs on one core)
    "aws-m5.2xlarge": 0.384,  # INFaaS's CPU variants
    "aws-p3.2xlarge": 3.06,  # INFaaS's GPU variants (V100)
    "aws-inf1.2xlarge": 0.362,  # INFaaS's Inferentia variant
}
_INFAAS_HARDWARE_DEVICE = {"CPU": "aws-m5.2xlarge", "GPU": "aws-p3.2xlarge", "INFERENTIA": "aws-inf1.2xlarge"}


def _price(prices: Mapping[str, float], device: str) -> float:
    if device not in prices:
        raise InvalidInputError(f"the price table has no entry for device {device!r}; add '{device}: <usd per hour>' to --prices")
    return float(prices[device])


def repository_variants(repository: ModelRepository, family: str, prices: Mapping[str, float], *, device: str = "cpu", max_batch_size: int = 32) -> list[ModellessVariant]:
    """The family's variants with their measured profiles on `device` (shoal profile writes them)."""
    variants = []
    for variant in repository.variants(family):
        profile = repository.load_profile(family, variant.name, Device.parse(device))
        if profile is None or variant.accuracy is None:
            raise InvalidInputError(f"{family}/{variant.name} has no {device} profile or accuracy; run `shoal profile --family {family}`")
        top = min(max_batch_size, max(profile.batch_sizes))
        variants.append(
            ModellessVariant(
                name=variant.name, task=family, accuracy=float(variant.accuracy), device=device,
                price_usd_per_hour=_price(prices, device),
                latency_ms_by_batch=tuple(profile.batch_latency_ms(b, "p95") for b in range(1, top + 1)),
                load_time_ms=max(profile.load_time_ms, 1.0),
            )
        )
    return variants


def infaas_resnet50_variants(anchors_dir: Path, prices: Mapping[str, float]) -> list[ModellessVariant]:
    path = Path(anchors_dir) / "infaas" / "resnet50_variant_profiles_query_test_fixture.csv"
    if not path.is_file():
        raise InvalidInputError(f"{path} not found: pass --anchors pointing at shared/anchors")
    variants = []
    with path.open() as handle:
        for row in csv.DictReader(handle):
            if row["parent"] != "resnet50":
                continue  # the GNMT rows are placeholders (SOURCE.md)
            device = _INFAAS_HARDWARE_DEVICE[row["hardware"]]
            slope, intercept = float(row["latency_slope_ms_per_item"]), float(row["latency_intercept_ms"])
            max_batch = int(row["max_batch"])
            latencies = tuple(max(float(row["inf_latency_b1_ms"]) if b == 1 else 0.0, intercept + slope * b) for b in range(1, max_batch + 1))
            variants.append(
                ModellessVariant(
                    name=row["variant"], task="resnet50", accuracy=float(row["accuracy_top1_pct"]) / 100.0, device=device,
                    price_usd_per_hour=_price(prices, device), latency_ms_by_batch=latencies,
                    load_time_ms=float(row["load_latency_ms"]),
                )
            )
    return variants


def build_scenario(variants: list[ModellessVariant], family: str, *, quick: bool, seed: int = 0) -> ModellessScenario:
    applications = (
        Application("quality-check", family, Requirements(slo_ms=20.0, min_accuracy=0.90), base_rps=600.0),
        Application("tagging", family, Requirements(slo_ms=50.0, min_accuracy=0.80, max_cost_per_1000_usd=0.0002), base_rps=1500.0),
        Application("photo-search", "resnet50", Requirements(slo_ms=100.0, min_accuracy=0.70), base_rps=100.0),
    )
    return ModellessScenario(
        variants=tuple(variants), applications=applications, phase_s=6.0 if quick else 30.0, hold_s=5.0 if quick else 10.0, seed=seed
    )


def run_modelless_bench(
    repository: ModelRepository,
    anchors_dir: Path,
    *,
    family: str = "demo",
    quick: bool = False,
    prices: Mapping[str, float] | None = None,
    seed: int = 0,
    on_policy: Callable[[str], None] | None = None,
) -> dict:
    prices = dict(prices or DEFAULT_PRICES_USD_PER_HOUR)
    variants = repository_variants(repository, family, prices) + infaas_resnet50_variants(anchors_dir, prices)
    scenario = build_scenario(variants, family, quick=quick, seed=seed)
    results: dict = {}
    timelines = {}
    for policy in POLICIES:
        started = time.perf_counter()
        result = simulate_modelless(scenario, policy)
        results[policy] = {**result.to_json_dict(), "wall_s": round(time.perf_counter() - started, 2)}
        timelines[policy] = result.cost_rate_timeline
        if on_policy:
            on_policy(policy)
    shoal, infaas, static = results["shoal"], results["infaas"], results["static_peak"]
    oracle_cost_usd = per_phase_oracle_cost_usd(scenario)
    results["targets"] = {
        "fewer_violations_than_infaas": shoal["slo_violation_rate"] < infaas["slo_violation_rate"],
        "cost_not_above_infaas": shoal["cost_usd"] <= infaas["cost_usd"] * (1 + 1e-9),
        "static_over_shoal_cost": static["cost_usd"] / shoal["cost_usd"] if shoal["cost_usd"] else None,
        "violations_not_above_static": shoal["slo_violation_rate"] <= static["slo_violation_rate"],
        # What perfect reaction alone could save with this load shape: every phase provisioned
        # instantly for its own rate, with static's sizing rule.
        "static_over_oracle_cost": static["cost_usd"] / oracle_cost_usd if oracle_cost_usd else None,
    }
    results["per_phase_oracle"] = {"cost_usd": oracle_cost_usd, "cost_usd_with_shoal_sizing": per_phase_oracle_cost_usd(scenario, "shoal")}
    results["scenario"] = {
        "multipliers": list(scenario.multipliers), "phase_s": scenario.phase_s, "duration_s": scenario.duration_s,
        "slack": scenario.slack, "hold_s": scenario.hold_s, "prices_usd_per_hour": prices,
        "applications": [
            {"name": a.name, "task": a.task, "base_rps": a.base_rps, "slo_ms": a.requirements.slo_ms,
             "min_accuracy": a.requirements.min_accuracy, "max_cost_per_1000_usd": a.requirements.max_cost_per_1000_usd}
            for a in scenario.applications
        ],
    }
    results["_timelines"] = timelines
    return results
