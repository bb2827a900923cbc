"""Benchmark of the capacity planner against Inferno's published data, plus solve times.

1. Queue model: queue-analysis `examples/` (G2, v0.3.0) recomputed; agreement in significant
   digits per published field.
2. `sample-data@849e1e8` small and large: greedy against the published allocation per server
   (same accelerator, replicas, max batch and cost; equal-cost ties listed apart) and total;
   milp (exact); the like-for-like comparison (least cost serving exactly the servers greedy
   served in full); the unlimited-pool cost.
3. Solve time of greedy and milp (candidates prebuilt) on the sample sets and on a synthetic,
   deterministic system of 100 servers x 10 accelerator types with a tight pool.

`run_capacity_bench` returns a JSON-able dict; `summary_text` renders one screen of it.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from shoal.core.errors import InvalidInputError
from shoal.formats.inferno import load_system
from shoal.planner.capacity import (
    AcceleratorSpec,
    CapacitySystem,
    DecodePrefillParams,
    ModelPerf,
    ModelTarget,
    OptimizerOptions,
    ServerLoad,
    ServerSpec,
    ServiceClass,
    build_candidates,
    min_cost_serving,
    plan_capacity,
    plan_from_assignments,
)
from shoal.planner.queueing import IterationModel, SloTargets, analyze, max_arrival_rate

__all__ = ["run_capacity_bench", "summary_text", "write_results", "synthetic_system", "default_anchors_dir"]

SAMPLE_SETS = ("small", "large")
SAMPLE_FOLDER = "inferno/sample-data@849e1e8"
QUEUE_FOLDER = "inferno/queue-analysis@cfadd1c/examples"


def default_anchors_dir() -> Path:
    """$SHOAL_ANCHORS, else ../shared/anchors beside the repository (or the working directory)."""
    if os.environ.get("SHOAL_ANCHORS"):
        return Path(os.environ["SHOAL_ANCHORS"])
    for base in (Path(__file__).resolve().parents[3], Path.cwd()):
        candidate = base.parent / "shared" / "anchors"
        if candidate.is_dir():
            return candidate
    return Path.cwd().parent / "shared" / "anchors"


def _timed_ms(action: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    samples, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = action()
        samples.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(samples), result


def _digits(ours: float, published: float) -> float:
    """Significant digits in agreement: -log10(relative error), capped at 9."""
    if published == ours:
        return 9.0
    error = abs(ours - published) / max(abs(published), 1e-300)
    return round(min(9.0, -math.log10(error)), 2)


# --------------------------------------------------------------------------------------------
# 1. queue examples
# --------------------------------------------------------------------------------------------


def queue_examples(anchors: Path) -> dict[str, Any]:
    folder = anchors / QUEUE_FOLDER
    problem = json.loads((folder / "problem-data.json").read_text())
    model = IterationModel(
        alpha_ms=problem["alpha"], beta_ms=problem["beta"], gamma_ms=problem["gamma"],
        avg_in_tokens=problem["AvgInputTokens"], avg_out_tokens=problem["AvgOutputTokens"],
        max_batch_size=problem["maxBatchSize"],
    )
    queue_size = problem["maxQueueSize"]

    def fields(metrics) -> dict[str, float]:
        return {
            "throughput": metrics.throughput_rps, "avgRespTime": metrics.queue.avg_response_time_ms,
            "avgWaitTime": metrics.queue.avg_wait_time_ms, "avgNumInServ": metrics.queue.avg_num_in_service,
            "avgTTFT": metrics.ttft_ms, "avgITL": metrics.itl_ms, "maxRPS": metrics.max_rate_rps,
        }

    solve = fields(analyze(model, problem["RPS"], max_queue_size=queue_size))
    sizing = max_arrival_rate(model, SloTargets(ttft_ms=problem["targetTTFT"], itl_ms=problem["targetITL"]),
                              max_queue_size=queue_size)
    target = fields(sizing.metrics)
    target.update(RPSTargetTTFT=sizing.rate_for_ttft_rps, RPSTargetITL=sizing.rate_for_itl_rps)
    rows = []
    for name, ours in (("solution-solve", solve), ("solution-target", target)):
        published = json.loads((folder / f"{name}.json").read_text())
        for key, value in published.items():
            if key not in ours or value == 0:
                continue
            rows.append({"example": name, "field": key, "published": value, "shoal": ours[key],
                         "digits": _digits(ours[key], value)})
    return {
        "generation": "G2 (queue-analysis v0.3.0 conventions)",
        "rows": rows,
        "min_digits": min(row["digits"] for row in rows),
        "all_4_significant_digits": all(row["digits"] >= 4 for row in rows),
        "not_modelled": {"solution-optimize.json": "G3 (chunked prefill, token budget) output; shoal models G1 and G2"},
    }


# --------------------------------------------------------------------------------------------
# 2. sample sets
# --------------------------------------------------------------------------------------------


def _compare_with_published(plan, published: dict[str, Any]) -> dict[str, Any]:
    matches, ties, mismatches = [], [], []
    for allocation in plan.allocations:
        theirs = published.get(allocation.server)
        ours = {"accelerator": allocation.accelerator, "numReplicas": allocation.num_replicas,
                "maxBatch": allocation.max_batch_size, "cost": round(allocation.cost_cents_per_hour, 4)}
        if theirs is None:
            mismatches.append({"server": allocation.server, "shoal": ours, "published": None})
            continue
        same_cost = abs(theirs["cost"] - allocation.cost_cents_per_hour) < 1e-6
        same = (theirs["accelerator"], theirs["numReplicas"], theirs["maxBatch"]) == (
            allocation.accelerator, allocation.num_replicas, allocation.max_batch_size)
        row = {"server": allocation.server, "shoal": ours,
               "published": {k: theirs[k] for k in ("accelerator", "numReplicas", "maxBatch", "cost")}}
        (matches if same and same_cost else ties if same_cost else mismatches).append(row)
    return {"matches": len(matches), "equal_cost_ties": ties, "mismatches": mismatches}


def sample_set(anchors: Path, name: str, repeats: int) -> dict[str, Any]:
    folder = anchors / SAMPLE_FOLDER / name
    system = load_system(folder)
    published = json.loads((folder / "solution-data.json").read_text())["allocations"]
    published_total = sum(entry["cost"] for entry in published.values())
    candidates_ms, candidates = _timed_ms(lambda: build_candidates(system), 1)
    greedy_ms, greedy = _timed_ms(lambda: plan_capacity(system, solver="greedy", candidates=candidates), repeats)
    milp_ms, milp = _timed_ms(lambda: plan_capacity(system, solver="milp", candidates=candidates),
                              max(1, repeats // 10))
    unlimited = plan_capacity(system, unlimited=True, candidates=candidates)
    served_by_greedy = greedy.served
    greedy_cost_served = sum(a.cost_cents_per_hour for a in greedy.allocations if a.status == "served")
    same = min_cost_serving(system, candidates, served_by_greedy)
    same_plan = plan_from_assignments(system, candidates, same.assignments, solver="milp", status=same.status)
    return {
        "servers": len(system.servers),
        "candidates": sum(len(c) for c in candidates.by_server.values()),
        "generations": greedy.generations,
        "saturation_policy": system.options.saturation_policy,
        "published_total": published_total,
        "greedy": {
            "total": greedy.total_cost_cents_per_hour,
            "served_in_full": len(greedy.served),
            "partial": [{"server": a.server, "replicas": a.num_replicas, "needed": a.required_replicas}
                        for a in greedy.allocations if a.status == "partial"],
            "unserved": list(greedy.unserved),
            **_compare_with_published(greedy, published),
        },
        "milp": {
            "status": milp.status,
            "total": milp.total_cost_cents_per_hour,
            "served_in_full": len(milp.served),
            "partial": list(milp.partial),
            "unserved": list(milp.unserved),
            "vs_published_total_pct": round(100 * (milp.total_cost_cents_per_hour / published_total - 1), 3),
        },
        "like_for_like": {
            "servers": len(served_by_greedy),
            "greedy_cost": greedy_cost_served,
            "milp_status": same.status,
            "milp_cost": same_plan.total_cost_cents_per_hour,
            "milp_saving_pct": round(100 * (1 - same_plan.total_cost_cents_per_hour / greedy_cost_served), 3)
            if greedy_cost_served else 0.0,
        },
        "unlimited_total": unlimited.total_cost_cents_per_hour,
        "timing_ms": {"candidates": round(candidates_ms, 3), "greedy_median": round(greedy_ms, 4),
                      "milp_median": round(milp_ms, 3)},
    }


# --------------------------------------------------------------------------------------------
# 3. synthetic system
# --------------------------------------------------------------------------------------------


def synthetic_system(
    num_servers: int = 100, num_accelerator_types: int = 10, *, num_models: int = 20, seed: int = 7,
    pool_fraction: float = 0.8, pool_split: str = "demand",
) -> CapacitySystem:
    """A deterministic G1 system: faster accelerator types cost more per unit of work.

    The pool is sized from what the unlimited plan uses: `pool_split="demand"` gives each type
    `pool_fraction` of its own unlimited use plus 2% of the total use (the pool is short where
    demand is, so servers must move to other types); `"even"` splits `pool_fraction` of the
    total evenly across types (the cheap types are then badly oversubscribed: a hard case).
    """
    if pool_split not in ("demand", "even"):
        raise ValueError(f"pool_split {pool_split!r} is unknown: use demand or even")
    rng = np.random.default_rng(seed)
    speeds = 1.0 + 0.35 * np.arange(num_accelerator_types)
    accelerators = tuple(
        AcceleratorSpec(name=f"acc{t:02d}", type=f"type{t:02d}", cost_cents_per_hour=round(4.0 * s ** 1.25, 2))
        for t, s in enumerate(speeds)
    )
    models = []
    bases = []
    for m in range(num_models):
        base = dict(alpha=rng.uniform(15, 60), beta=rng.uniform(0.1, 0.9), gamma=rng.uniform(60, 400),
                    delta=rng.uniform(0.005, 0.05), batch=int(rng.integers(8, 64)), count=int(rng.integers(1, 3)))
        bases.append(base)
        for t, speed in enumerate(speeds):
            noise = rng.uniform(0.85, 1.15)
            models.append(ModelPerf(
                model=f"model{m:02d}", accelerator=accelerators[t].name, max_batch_size=base["batch"],
                at_tokens=512, accelerators_per_replica=base["count"],
                params=DecodePrefillParams(
                    alpha_ms=base["alpha"] / speed * noise, beta_ms=base["beta"] / speed * noise,
                    gamma_ms=base["gamma"] / speed * noise, delta_ms=base["delta"] / speed * noise),
            ))
    classes = []
    for priority, (name, slack) in enumerate((("Premium", 1.2), ("Standard", 2.0), ("Free", 4.0)), start=1):
        classes.append(ServiceClass(name=name, priority=priority, targets=tuple(
            ModelTarget(model=f"model{m:02d}", itl_ms=round(bases[m]["alpha"] * slack, 2),
                        ttft_ms=round(bases[m]["gamma"] * 4 * slack, 2))
            for m in range(num_models))))
    servers = tuple(
        ServerSpec(
            name=f"{classes[i % 3].name}-model{i % num_models:02d}-{i:03d}", service_class=classes[i % 3].name,
            model=f"model{i % num_models:02d}",
            load=ServerLoad(arrival_rate_rps=float(rng.uniform(0.5, 10.0)), avg_in_tokens=float(rng.integers(64, 512)),
                            avg_out_tokens=float(rng.integers(256, 1536))),
        )
        for i in range(num_servers)
    )
    open_system = CapacitySystem(accelerators=accelerators, models=tuple(models), service_classes=tuple(classes),
                                 servers=servers, options=OptimizerOptions(unlimited=True))
    used = plan_capacity(open_system).units_used_by_type
    total = sum(used.values())
    if pool_split == "demand":
        pool = {a.type: int(pool_fraction * used.get(a.type, 0)) + int(0.02 * total) for a in accelerators}
    else:
        pool = {a.type: int(pool_fraction * total / num_accelerator_types) for a in accelerators}
    return CapacitySystem(
        accelerators=accelerators, models=tuple(models), service_classes=tuple(classes), servers=servers,
        capacity_by_type=pool, options=OptimizerOptions(saturation_policy="PriorityExhaustive"),
    )


# (pool split, fraction): the first is the headline figure, the rest a sweep of pool tightness.
SYNTHETIC_SCENARIOS = (("demand", 0.8), ("demand", 1.0), ("demand", 0.9), ("demand", 0.7), ("demand", 0.6),
                       ("even", 0.5))


def _synthetic_row(split: str, fraction: float, greedy_repeats: int, milp_repeats: int) -> dict[str, Any]:
    system = synthetic_system(pool_fraction=fraction, pool_split=split)
    candidates_ms, candidates = _timed_ms(lambda: build_candidates(system), 1)
    greedy_ms, greedy = _timed_ms(lambda: plan_capacity(system, solver="greedy", candidates=candidates),
                                  greedy_repeats)
    milp_ms, milp = _timed_ms(lambda: plan_capacity(system, solver="milp", candidates=candidates), milp_repeats)
    return {
        "pool": f"{split} x{fraction}",
        "servers": len(system.servers),
        "accelerator_types": len({a.type for a in system.accelerators}),
        "candidates": sum(len(c) for c in candidates.by_server.values()),
        "pool_units": sum(system.capacity_by_type.values()),
        "timing_ms": {"candidates": round(candidates_ms, 2), "greedy_median": round(greedy_ms, 3),
                      "milp_median": round(milp_ms, 2), "milp_runs": milp_repeats},
        "greedy": {"total": round(greedy.total_cost_cents_per_hour, 4), "served_in_full": len(greedy.served),
                   "partial": len(greedy.partial), "unserved": len(greedy.unserved)},
        "milp": {"status": milp.status, "total": round(milp.total_cost_cents_per_hour, 4),
                 "served_in_full": len(milp.served), "partial": len(milp.partial), "unserved": len(milp.unserved)},
        "meets_targets": greedy_ms <= 10.0 and milp_ms <= 2000.0,
    }


def synthetic_timing(repeats: int, *, sweep: bool) -> dict[str, Any]:
    scenarios = SYNTHETIC_SCENARIOS if sweep else SYNTHETIC_SCENARIOS[:1]
    rows = [
        _synthetic_row(split, fraction, repeats, 3 if index == 0 and sweep else 1)
        for index, (split, fraction) in enumerate(scenarios)
    ]
    return {"targets_ms": {"greedy": 10.0, "milp": 2000.0}, "headline": rows[0], "sweep": rows[1:]}


# --------------------------------------------------------------------------------------------


def run_capacity_bench(anchors_dir: Path | None = None, *, quick: bool = False) -> dict[str, Any]:
    anchors = Path(anchors_dir) if anchors_dir else default_anchors_dir()
    if not (anchors / SAMPLE_FOLDER).is_dir():
        raise InvalidInputError(f"--anchors {anchors}: no {SAMPLE_FOLDER} there; set --anchors or $SHOAL_ANCHORS")
    repeats = 10 if quick else 50
    return {
        "benchmark": "shoal bench planner capacity" + (" --quick" if quick else ""),
        "units": "cost in cents per hour (Inferno's); times in ms",
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_average_1min_at_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None},
        "queue_examples": queue_examples(anchors),
        "sample_sets": {name: sample_set(anchors, name, repeats) for name in SAMPLE_SETS},
        "synthetic": synthetic_timing(repeats, sweep=not quick),
    }


def write_results(results: dict[str, Any], path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


def summary_text(results: dict[str, Any]) -> str:
    queue = results["queue_examples"]
    lines = [
        f"queue model ({queue['generation']}): {len(queue['rows'])} published fields, "
        f"min agreement {queue['min_digits']} significant digits"
        + (" (all >= 4)" if queue["all_4_significant_digits"] else " (SOME < 4)"),
        "",
        f"{'set':6} {'published':>9} {'greedy':>9} {'match':>6} {'ties':>4} {'milp':>10} {'milp vs pub':>11}"
        f" {'full g/m':>8} {'like-for-like (servers: greedy -> milp, saving)':>48}",
    ]
    for name, row in results["sample_sets"].items():
        g, m, same = row["greedy"], row["milp"], row["like_for_like"]
        lines.append(
            f"{name:6} {row['published_total']:>9,.0f} {g['total']:>9,.2f} {g['matches']:>3}/{row['servers']:<2}"
            f" {len(g['equal_cost_ties']):>4} {m['total']:>10,.2f} {m['vs_published_total_pct']:>10.2f}%"
            f" {g['served_in_full']:>3}/{m['served_in_full']:<4}"
            f" {same['servers']:>3}: {same['greedy_cost']:>9,.2f} -> {same['milp_cost']:>9,.2f} ({same['milp_saving_pct']:.2f}%)"
        )
        for part in g["partial"]:
            lines.append(f"       greedy partial: {part['server']} {part['replicas']} of {part['needed']} replicas")
        for tie in g["equal_cost_ties"]:
            lines.append(f"       tie: {tie['server']} shoal {tie['shoal']['accelerator']} x{tie['shoal']['numReplicas']}"
                         f" vs published {tie['published']['accelerator']} x{tie['published']['numReplicas']}"
                         f" (cost {tie['published']['cost']})")
        for miss in g["mismatches"]:
            lines.append(f"       MISMATCH: {miss['server']} shoal {miss['shoal']} vs published {miss['published']}")
    lines.append("")
    lines.append(f"{'solve time (median ms)':28} {'candidates':>11} {'greedy':>8} {'milp':>9}")
    for name, row in results["sample_sets"].items():
        t = row["timing_ms"]
        lines.append(f"{name + ' (' + str(row['candidates']) + ' cand.)':28} {t['candidates']:>11.1f} {t['greedy_median']:>8.3f} {t['milp_median']:>9.1f}")
    synthetic = results["synthetic"]
    for row in [synthetic["headline"], *synthetic["sweep"]]:
        t = row["timing_ms"]
        label = f"synthetic {row['servers']}x{row['accelerator_types']} pool {row['pool']}"
        lines.append(
            f"{label:28} {t['candidates']:>11.1f} {t['greedy_median']:>8.3f} {t['milp_median']:>9.1f}"
            f"  full g/m {row['greedy']['served_in_full']}/{row['milp']['served_in_full']}"
            f"  cost g/m {row['greedy']['total']:,.0f}/{row['milp']['total']:,.0f}"
            f"  {'ok' if row['meets_targets'] else 'OVER TARGET'}"
        )
    lines.append("targets: greedy <= 10 ms, milp <= 2000 ms at 100 servers x 10 accelerator types (first synthetic row)")
    return "\n".join(lines)
