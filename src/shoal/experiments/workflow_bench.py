"""Benchmark of the workflow planner on JellyBean's VQA example (shared/anchors/jellybean).

1. Baseline: shoal's `jellybean` policy against the published plan (README output) and the
   other runs recorded in SOURCE.md (greedy-backtrace, thresholds 58.0 and 58.3).
2. Exact optima of the instance (accuracy >= 56.0, 40 req/s per source) under JellyBean's rules
   and with each rule relaxed, against independently computed references, with solve times.
3. Sweep of accuracy thresholds x injection rates: shoal against the baseline in every cell;
   where the baseline fails or returns a plan below the target.

`run_workflow_bench` returns a JSON-able dict; `summary_text` renders one screen of it.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import scipy

from shoal.formats.jellybean import read_jellybean_inputs
from shoal.planner.workflow import PlanOptions, WorkflowPlan, WorkflowProblem, plan_workflow
from shoal.planner.workflow.accuracy import TARGET_TOLERANCE, end_to_end_accuracy
from shoal.planner.workflow.costing import evaluate_placement, proportional_routes, resolve
from shoal.planner.workflow.jellybean import JellyBeanSettings, beam_search

__all__ = ["REFERENCE_OPTIMA", "default_anchors_dir", "run_workflow_bench", "summary_text", "write_results"]

INPUTS_FOLDER = "jellybean/optimizer_inputs"
PUBLISHED_FILE = "jellybean/expected_output.json"
TOLERANCE_USD_PER_HOUR = 1e-4

# (name, options, reference total $/h, where the reference comes from)
REFERENCE_OPTIMA: tuple[tuple[str, PlanOptions, float, str], ...] = (
    # 6.242 + 1.2430184, not the 7.4852 SOURCE.md prints (a slip: the benchmark then marked the
    # exact optimum, 7.4850184, as missing it by 1.8e-4).
    ("jellybean_rules", PlanOptions(), 7.4850184,
     "exact optimum under JellyBean's rules (SOURCE.md: compute 6.242 + communication 1.2430184)"),
    ("shared_workers", PlanOptions(shared_workers=True), 7.0115, "--shared-workers"),
    ("no_tier_rule", PlanOptions(tier_rule=False), 5.5489, "--no-tier-rule (SOURCE.md: 5.5488981)"),
    ("no_tier_rule_shared_workers", PlanOptions(tier_rule=False, shared_workers=True), 5.3296433,
     "--no-tier-rule --shared-workers (routes chosen freely; proportional routing costs 5.3300415)"),
)
EXTRA_OPTIONS: tuple[tuple[str, PlanOptions], ...] = (
    ("fractional_billing", PlanOptions(billing="fractional")),
    ("all_rules_relaxed", PlanOptions(tier_rule=False, shared_workers=True, billing="fractional")),
)
# Other runs of the original optimizer recorded in SOURCE.md: (label, threshold, settings edit, total)
SOURCE_RUNS = (
    ("greedy-backtrace", 56.0, {"tier_allocation": "greedy-backtrace"}, 6.242 + 1.2430184),
    ("threshold 58.0", 58.0, {}, 16.633),
    ("threshold 58.3", 58.3, {}, 17.942),
)
FULL_THRESHOLDS = tuple(round(55.5 + 0.1 * i, 1) for i in range(30))  # 55.5 .. 58.4
FULL_RATES_RPS = (20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0)
QUICK_THRESHOLDS = (55.5, 55.8, 56.0, 56.5, 57.0, 57.5, 58.0, 58.2, 58.4)
QUICK_RATES_RPS = (20.0, 50.0, 80.0)


def default_anchors_dir() -> Path:
    """$SHOAL_ANCHORS, else ../shared/anchors beside the repository (or the working directory)."""
    if os.environ.get("SHOAL_ANCHORS"):
        return Path(os.environ["SHOAL_ANCHORS"])
    for base in (Path(__file__).resolve().parents[3], Path.cwd()):
        candidate = base.parent / "shared" / "anchors"
        if candidate.is_dir():
            return candidate
    return Path.cwd().parent / "shared" / "anchors"


def _timed(action: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    samples, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = action()
        samples.append(time.perf_counter() - start)
    return samples, result


def _plan_summary(plan: WorkflowPlan) -> dict[str, Any]:
    return {
        "status": plan.status,
        "total_cost": round(plan.total_cost_usd_per_hour, 7),
        "compute_cost": round(plan.compute_cost_usd_per_hour, 7),
        "communication_cost": round(plan.communication_cost_usd_per_hour, 7),
        "end_to_end_accuracy": plan.end_to_end_accuracy,
        "model_assignment": dict(plan.model_assignment),
        "worker_assignment": plan.worker_assignment,
    }


def _proportional_total(problem: WorkflowProblem, plan: WorkflowPlan) -> float:
    """The plan's cost if traffic were split in proportion to load shares (JellyBean's executor)."""
    resolved = resolve(problem, plan.model_assignment)
    routes = proportional_routes(resolved, plan.options, plan.load_shares_rps)
    return evaluate_placement(resolved, plan.options, plan.load_shares_rps, routes).total_cost_usd_per_hour


def baseline_section(problem: WorkflowProblem, settings: JellyBeanSettings,
                     published: dict[str, Any] | None, repeats: int) -> dict[str, Any]:
    times, plan = _timed(lambda: plan_workflow(problem, "jellybean", jellybean=settings), repeats)
    section: dict[str, Any] = {"shoal_jellybean_policy": _plan_summary(plan),
                               "solve_time_s_max": round(max(times), 4)}
    if published is not None:
        published_total = published["compute_cost"] + published["communication_cost"]
        section["published"] = {"total_cost": published_total, **published}
        section["delta_total_cost"] = plan.total_cost_usd_per_hour - published_total
        section["same_assignment"] = (
            dict(plan.model_assignment) == published["model_assignment"]
            and {t: sorted(w) for t, w in plan.worker_assignment.items()}
            == {t: sorted(w) for t, w in published["worker_assignment"].items()}
        )
    runs = []
    for label, threshold, edit, recorded in SOURCE_RUNS:
        other = plan_workflow(problem.with_accuracy_target(threshold), "jellybean",
                              jellybean=replace(settings, **edit))
        runs.append({"run": label, "source_md_total": recorded,
                     "shoal_jellybean_total": round(other.total_cost_usd_per_hour, 7),
                     "delta": round(other.total_cost_usd_per_hour - recorded, 7)})
    section["source_md_runs"] = runs
    return section


def optima_section(problem: WorkflowProblem, published_total: float | None, repeats: int) -> list[dict]:
    rows = []
    for name, options, reference, origin in REFERENCE_OPTIMA:
        times, plan = _timed(lambda: plan_workflow(problem, "shoal", options), repeats)
        total = plan.total_cost_usd_per_hour
        proportional = _proportional_total(problem, plan)
        row = {
            "name": name, "options": plan.to_json_dict()["options"], "reference_total": reference,
            "reference_origin": origin, **_plan_summary(plan),
            "delta_vs_reference": round(total - reference, 7),
            "within_1e-4": abs(total - reference) <= TOLERANCE_USD_PER_HOUR,
            "at_or_below_reference": total <= reference + TOLERANCE_USD_PER_HOUR,
            "proportional_balancing_total": round(proportional, 7),
            "proportional_within_1e-4": abs(proportional - reference) <= TOLERANCE_USD_PER_HOUR,
            "solve_time_s_median": round(statistics.median(times), 4),
            "solve_time_s_max": round(max(times), 4),
            "num_combinations_solved": plan.num_combinations_solved,
        }
        if published_total:
            row["below_published_pct"] = round(100 * (1 - total / published_total), 2)
        rows.append(row)
    for name, options in EXTRA_OPTIONS:
        times, plan = _timed(lambda: plan_workflow(problem, "shoal", options), repeats)
        rows.append({"name": name, "options": plan.to_json_dict()["options"], "reference_total": None,
                     **_plan_summary(plan), "solve_time_s_median": round(statistics.median(times), 4),
                     "solve_time_s_max": round(max(times), 4)})
    return rows


def sweep_section(problem: WorkflowProblem, settings: JellyBeanSettings,
                  thresholds: tuple[float, ...], rates_rps: tuple[float, ...]) -> dict[str, Any]:
    cells = []
    for threshold in thresholds:
        for rate in rates_rps:
            instance = problem.with_accuracy_target(threshold).with_source_rates(rate)
            times, ours = _timed(lambda: plan_workflow(instance, "shoal"), 1)
            theirs = plan_workflow(instance, "jellybean", jellybean=settings)
            cell = {
                "threshold": threshold, "rate_rps": rate,
                "shoal": {"status": ours.status, "total_cost": round(ours.total_cost_usd_per_hour, 6),
                          "accuracy": ours.end_to_end_accuracy, "solve_time_s": round(times[0], 4)},
                "jellybean": {"status": theirs.status, "total_cost": round(theirs.total_cost_usd_per_hour, 6),
                              "accuracy": theirs.end_to_end_accuracy},
            }
            if ours.success and theirs.success:
                cell["saving_pct"] = round(100 * (1 - ours.total_cost_usd_per_hour / theirs.total_cost_usd_per_hour), 3)
                cell["shoal_le_jellybean"] = ours.total_cost_usd_per_hour <= theirs.total_cost_usd_per_hour + 1e-9
            cells.append(cell)
    latent = []
    for threshold in thresholds:
        candidates = beam_search(problem.with_accuracy_target(threshold).accuracy, settings) or []
        for combo in candidates:
            full = {t: combo.get(t, problem.variants(t)[0]) for t in problem.tasks}
            accuracy = end_to_end_accuracy(problem.accuracy, full)
            if accuracy is not None and accuracy < threshold - TARGET_TOLERANCE:
                latent.append({"threshold": threshold, "combination": combo, "accuracy": accuracy})
    both = [c for c in cells if "saving_pct" in c]
    grid = lambda pred: [(c["threshold"], c["rate_rps"]) for c in cells if pred(c)]  # noqa: E731
    return {
        "thresholds": list(thresholds), "rates_rps": list(rates_rps), "num_cells": len(cells),
        "shoal_le_jellybean_everywhere": all(c["shoal_le_jellybean"] for c in both),
        "num_cells_both_plan": len(both),
        "num_cells_shoal_cheaper": sum(c["saving_pct"] > 1e-6 for c in both),
        "max_saving_pct": max((c["saving_pct"] for c in both), default=None),
        "mean_saving_pct": round(statistics.mean(c["saving_pct"] for c in both), 3) if both else None,
        "jellybean_below_target": grid(lambda c: c["jellybean"]["status"] == "below_target"),
        "jellybean_failed": grid(lambda c: c["jellybean"]["status"] == "failed"),
        "jellybean_failed_where_shoal_plans": grid(
            lambda c: c["jellybean"]["status"] == "failed" and c["shoal"]["status"] == "optimal"),
        "shoal_infeasible": grid(lambda c: c["shoal"]["status"] == "infeasible"),
        "beam_candidates_below_target": latent,
        "shoal_solve_time_s_max": max(c["shoal"]["solve_time_s"] for c in cells),
        "cells": cells,
    }


def run_workflow_bench(anchors_dir: Path | None = None, quick: bool = False,
                       thresholds: tuple[float, ...] | None = None,
                       rates_rps: tuple[float, ...] | None = None,
                       repeats: int | None = None) -> dict[str, Any]:
    """Run the three sections; `thresholds`, `rates_rps` and `repeats` override the grid/timing."""
    anchors = Path(anchors_dir) if anchors_dir else default_anchors_dir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = read_jellybean_inputs(anchors / INPUTS_FOLDER)
    problem, settings = loaded.problem, loaded.jellybean or JellyBeanSettings()
    published_path = anchors / PUBLISHED_FILE
    published = json.loads(published_path.read_text()) if published_path.is_file() else None
    published_total = published["compute_cost"] + published["communication_cost"] if published else None
    repeats = repeats or (3 if quick else 7)
    return {
        "benchmark": "workflow planner on JellyBean's VQA example (accuracy >= 56.0, 40 req/s per source)",
        "units": "costs in $/hour; times in seconds",
        "input_warnings": [str(item.message) for item in caught],
        "environment": {"python": platform.python_version(), "scipy": scipy.__version__,
                        "machine": platform.machine(), "cpu_count": os.cpu_count(), "quick": quick},
        "baseline": baseline_section(problem, settings, published, repeats),
        "optima": optima_section(problem, published_total, repeats),
        "sweep": sweep_section(problem, settings,
                               thresholds or (QUICK_THRESHOLDS if quick else FULL_THRESHOLDS),
                               rates_rps or (QUICK_RATES_RPS if quick else FULL_RATES_RPS)),
    }


def write_results(results: dict[str, Any], path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


def summary_text(results: dict[str, Any]) -> str:
    base = results["baseline"]
    ours = base["shoal_jellybean_policy"]
    lines = [f"input warning: {text}" for text in results.get("input_warnings", [])]
    lines.append(f"jellybean baseline: {ours['total_cost']:.7f} $/h in {base['solve_time_s_max']:.3f} s")
    if "published" in base:
        lines[-1] += (f" vs published {base['published']['total_cost']:.7f} (delta {base['delta_total_cost']:.1e}, "
                      f"same assignment: {base['same_assignment']})")
    for run in base["source_md_runs"]:
        lines.append(f"  {run['run']}: {run['shoal_jellybean_total']:.7f} vs SOURCE.md {run['source_md_total']:.7f}")
    lines += ["", f"{'rules':<30}{'shoal':>11}{'reference':>11}{'delta':>11}{'proportional':>14}{'time s':>8}"]
    for row in results["optima"]:
        reference = row["reference_total"]
        lines.append(
            f"{row['name']:<30}{row['total_cost']:>11.7f}"
            + (f"{reference:>11.4f}{row['delta_vs_reference']:>11.1e}{row['proportional_balancing_total']:>14.7f}"
               if reference is not None else f"{'-':>11}{'-':>11}{'-':>14}")
            + f"{row['solve_time_s_max']:>8.3f}"
        )
    sweep = results["sweep"]
    lines += [
        "",
        f"sweep: {sweep['num_cells']} cells ({len(sweep['thresholds'])} thresholds x {len(sweep['rates_rps'])} rates); "
        f"both plan in {sweep['num_cells_both_plan']}; shoal <= jellybean everywhere: {sweep['shoal_le_jellybean_everywhere']}",
        f"  shoal cheaper in {sweep['num_cells_shoal_cheaper']} cells, saving mean {sweep['mean_saving_pct']}%, "
        f"max {sweep['max_saving_pct']}%; max shoal solve {sweep['shoal_solve_time_s_max']:.3f} s",
        f"  jellybean below target: {sweep['jellybean_below_target'] or 'none'}",
        f"  jellybean failed: {len(sweep['jellybean_failed'])} cells, of which shoal plans "
        f"{sweep['jellybean_failed_where_shoal_plans'] or 'none'}",
        f"  shoal proves infeasible: {len(sweep['shoal_infeasible'])} cells",
        "  beam-search candidates below target (latent defect): "
        + (", ".join(f"{d['threshold']}: {d['accuracy']}" for d in sweep["beam_candidates_below_target"]) or "none"),
    ]
    return "\n".join(lines)
