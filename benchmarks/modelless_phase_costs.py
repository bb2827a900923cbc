"""Where shoal's cost goes in the model-less benchmark: its mean cost rate per load phase (one
full simulation, the same scenario as `shoal bench modelless`) beside the per-phase oracle's
(every phase provisioned instantly for its own rate), and the replicas it held over time.

    .venv/bin/python benchmarks/modelless_phase_costs.py --out benchmarks/results/modelless-phase-costs.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from shoal.experiments.modelless_bench import DEFAULT_PRICES_USD_PER_HOUR, build_scenario, infaas_resnet50_variants, repository_variants
from shoal.experiments.workflow_bench import default_anchors_dir
from shoal.sim.modelless import ModellessScenario, per_phase_oracle_cost_usd, simulate_modelless
from shoal.zoo.repository import ModelRepository


def phase_costs(scenario: ModellessScenario) -> dict:
    result = simulate_modelless(scenario, "shoal")
    phases = []
    for index, multiplier in enumerate(scenario.multipliers):
        start_s, end_s = index * scenario.phase_s, (index + 1) * scenario.phase_s
        rates = [rate for time_s, rate in result.cost_rate_timeline if start_s <= time_s < end_s]
        one_phase = ModellessScenario(**{**scenario.__dict__, "multipliers": (multiplier,)})
        phases.append({
            "phase": index, "multiplier": multiplier,
            "shoal_mean_usd_per_hour": round(sum(rates) / len(rates), 4),
            "oracle_usd_per_hour": round(per_phase_oracle_cost_usd(one_phase) * 3600.0 / scenario.phase_s, 4),
        })  # fmt: skip
    return {
        "shoal_cost_usd": result.cost_usd,
        "oracle_cost_usd": per_phase_oracle_cost_usd(scenario),
        "phases": phases,
        "replicas_every_5_s": [{"time_s": time_s, "replicas": {name: count for name, count in counts.items() if count}}
                               for time_s, counts in result.replica_timeline[::5]],  # fmt: skip
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path.home() / ".cache/shoal/repo")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    prices = dict(DEFAULT_PRICES_USD_PER_HOUR)
    variants = repository_variants(ModelRepository(args.repo), "demo", prices) + infaas_resnet50_variants(default_anchors_dir(), prices)
    report = phase_costs(build_scenario(variants, "demo", quick=args.quick))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    for phase in report["phases"]:
        print(phase)


if __name__ == "__main__":
    main()
