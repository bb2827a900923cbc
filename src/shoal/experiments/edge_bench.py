"""Benchmark of the edge planners: quality against `exact`, and runtime.

Quality, on the grid of the original's `run_compare.sh`: 2 and 4 workers x 4, 6 and 8 clients
per worker, 100 random instances each (clients as in its simulator, 16 synthetic variants,
`edge_instances`). Per policy: the ratio of its objective to `exact`'s (mean, min), the served
fraction of requests, and how often `shoal` falls below `jellyfish`. `run_quality_grid` takes
any variant table, so the same grid can be run on measured profiles.

Speed, on the grid of `run_timings.sh`: 2/4/8/16 workers x 4/6/8/10 clients per worker; the
median wall time of `plan_edge` (tables, policy and scoring) per policy.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from shoal.experiments.edge_instances import jellyfish_synthetic_variants, random_instance
from shoal.planner.edge import ExactOptions, plan_edge
from shoal.planner.edge.model import EdgeVariant

__all__ = [
    "BenchConfig",
    "run_benchmark",
    "run_quality_grid",
    "run_speed_grid",
    "summary",
    "markdown_tables",
    "write_results",
]

QUALITY_POLICIES = ("jellyfish", "shoal")
Cell = tuple[int, int, int]  # workers, clients per worker, instances


@dataclass(frozen=True)
class BenchConfig:
    quality_cells: tuple[Cell, ...] = tuple((w, c, 100) for w in (2, 4) for c in (4, 6, 8))
    speed_cells: tuple[Cell, ...] = tuple((w, c, 10) for w in (2, 4, 8, 16) for c in (4, 6, 8, 10))
    speed_policies: tuple[str, ...] = ("shoal", "jellyfish", "exact")
    exact_speed_max_clients: int = 16
    """`exact` is timed only on speed cells with at most this many clients."""
    exact_time_limit_s: float = 300.0
    name: str = "full"

    @classmethod
    def full(cls) -> "BenchConfig":
        return cls()

    @classmethod
    def quick(cls) -> "BenchConfig":
        return cls(
            quality_cells=((2, 4, 6), (2, 6, 6), (2, 8, 6), (4, 4, 2)),
            speed_cells=tuple((w, c, 2) for w in (2, 4, 8, 16) for c in (4, 10)),
            exact_speed_max_clients=8,
            exact_time_limit_s=30.0,
            name="quick",
        )

    def with_instances(self, instances: int) -> "BenchConfig":
        return replace(self, quality_cells=tuple((w, c, instances) for w, c, _ in self.quality_cells))


@dataclass
class QualityRow:
    workers: int
    clients: int
    exact_objective: float
    exact_optimality: str
    runtime_ms: dict[str, float] = field(default_factory=dict)
    objective: dict[str, float] = field(default_factory=dict)
    served_fraction: dict[str, float] = field(default_factory=dict)


def _instance(variants: Sequence[EdgeVariant], workers: int, clients: int, seed: int, index: int):
    rng = np.random.default_rng([seed, workers, clients, index])
    return random_instance(rng, variants, workers, clients)


def _quality_task(args: tuple) -> QualityRow:
    variants, workers, clients, seed, index, time_limit_s = args
    instance = _instance(variants, workers, clients, seed, index)
    row = None
    for policy in ("exact", *QUALITY_POLICIES):
        started = time.perf_counter()
        plan = plan_edge(instance, policy, seed=index, exact_options=ExactOptions(time_limit_s=time_limit_s))
        elapsed_ms = (time.perf_counter() - started) * 1000
        if row is None:
            row = QualityRow(workers, clients, plan.objective, plan.optimality)
        row.runtime_ms[policy] = elapsed_ms
        row.objective[policy] = plan.objective
        row.served_fraction[policy] = float(plan.stats["served_fraction"])
    assert row is not None
    return row


def run_quality_grid(
    variants: Sequence[EdgeVariant],
    cells: Sequence[Cell],
    *,
    seed: int = 0,
    jobs: int = 1,
    exact_time_limit_s: float = 300.0,
    progress: Callable[[str], None] | None = None,
) -> list[QualityRow]:
    """Every policy and `exact` on `instances` random instances per (workers, clients per worker)."""
    rows: list[QualityRow] = []
    for workers, per_worker, instances in cells:
        tasks = [(tuple(variants), workers, workers * per_worker, seed, i, exact_time_limit_s) for i in range(instances)]
        if jobs > 1:
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                cell_rows = list(pool.map(_quality_task, tasks))
        else:
            cell_rows = [_quality_task(task) for task in tasks]
        rows.extend(cell_rows)
        if progress:
            progress(f"quality {workers} workers x {workers * per_worker} clients: {instances} instances done")
    return rows


def run_speed_grid(
    variants: Sequence[EdgeVariant],
    cells: Sequence[Cell],
    policies: Sequence[str],
    *,
    seed: int = 0,
    exact_max_clients: int = 16,
    exact_time_limit_s: float = 300.0,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    results = []
    for workers, per_worker, instances in cells:
        clients = workers * per_worker
        times: dict[str, list[float]] = {}
        objectives: dict[str, list[float]] = {}
        for index in range(instances):
            instance = _instance(variants, workers, clients, seed + 1, index)
            for policy in policies:
                if policy == "exact" and clients > exact_max_clients:
                    continue
                started = time.perf_counter()
                plan = plan_edge(instance, policy, seed=index, exact_options=ExactOptions(time_limit_s=exact_time_limit_s))
                times.setdefault(policy, []).append((time.perf_counter() - started) * 1000)
                objectives.setdefault(policy, []).append(plan.objective)
        results.append(
            {
                "workers": workers,
                "clients": clients,
                "instances": instances,
                "runtime_ms_median": {p: statistics.median(t) for p, t in times.items()},
                "runtime_ms_max": {p: max(t) for p, t in times.items()},
                "objective_mean": {p: float(np.mean(o)) for p, o in objectives.items()},
            }
        )
        if progress:
            progress(f"speed {workers} workers x {clients} clients: done")
    return results


def _policy_quality(rows: Sequence[QualityRow], policy: str) -> dict[str, Any]:
    scored = [row for row in rows if row.exact_objective > 0]
    ratios = [row.objective[policy] / row.exact_objective for row in scored]
    served = [row.served_fraction[policy] for row in rows]
    return {
        "mean_ratio_to_exact": float(np.mean(ratios)) if ratios else None,
        "min_ratio_to_exact": float(np.min(ratios)) if ratios else None,
        "served_fraction": float(np.mean(served)) if served else None,
        "instances": len(rows),
        "instances_without_exact_value": len(rows) - len(scored),
    }


def _quality_report(rows: Sequence[QualityRow]) -> dict[str, Any]:
    cells = []
    for key in dict.fromkeys((row.workers, row.clients) for row in rows):
        cell_rows = [row for row in rows if (row.workers, row.clients) == key]
        entry: dict[str, Any] = {
            "workers": key[0],
            "clients": key[1],
            "instances": len(cell_rows),
            "exact_proven_optimal": sum(row.exact_optimality == "proven_optimal" for row in cell_rows),
            "exact_runtime_ms_median": statistics.median(row.runtime_ms["exact"] for row in cell_rows),
            "shoal_below_jellyfish": sum(
                row.objective["shoal"] < row.objective["jellyfish"] - 1e-9 for row in cell_rows
            ),
        }
        for policy in ("exact", *QUALITY_POLICIES):
            entry[policy] = _policy_quality(cell_rows, policy)
        cells.append(entry)
    overall = {policy: _policy_quality(rows, policy) for policy in ("exact", *QUALITY_POLICIES)}
    overall["shoal_below_jellyfish"] = sum(row.objective["shoal"] < row.objective["jellyfish"] - 1e-9 for row in rows)
    ratios = {
        policy: [row.objective[policy] / row.exact_objective for row in rows if row.exact_objective > 0]
        for policy in QUALITY_POLICIES
    }
    return {"cells": cells, "overall": overall, "ratios": ratios}


def run_benchmark(
    config: BenchConfig,
    *,
    seed: int = 0,
    jobs: int = 1,
    progress: Callable[[str], None] | None = None,
    variants: Sequence[EdgeVariant] | None = None,
    variants_label: str | None = None,
) -> dict[str, Any]:
    """Quality and speed grids on `variants` (default: the original's 16 synthetic profiles)."""
    if variants is None:
        variants = jellyfish_synthetic_variants()
        variants_label = "jellyfish synthetic profiles, 16 YOLOv4 sizes 128..608 (shoal.experiments.edge_instances)"
    rows = run_quality_grid(
        variants, config.quality_cells, seed=seed, jobs=jobs, exact_time_limit_s=config.exact_time_limit_s, progress=progress
    )
    speed = run_speed_grid(
        variants,
        config.speed_cells,
        config.speed_policies,
        seed=seed,
        exact_max_clients=config.exact_speed_max_clients,
        exact_time_limit_s=config.exact_time_limit_s,
        progress=progress,
    )
    return {
        "config": asdict(config),
        "seed": seed,
        "variants": variants_label or f"{len(variants)} variants",
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count()},
        "quality": _quality_report(rows),
        "speed": speed,
    }


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """{policy: {mean_ratio_to_exact, min_ratio_to_exact, served_fraction}, runtime_ms: {policy: {WxC: median}}}."""
    result: dict[str, Any] = {}
    for policy in ("jellyfish", "shoal", "exact"):
        quality = report["quality"]["overall"][policy]
        result[policy] = {key: quality[key] for key in ("mean_ratio_to_exact", "min_ratio_to_exact", "served_fraction")}
    runtime: dict[str, dict[str, float]] = {}
    for cell in report["speed"]:
        for policy, median in cell["runtime_ms_median"].items():
            runtime.setdefault(policy, {})[f"{cell['workers']}x{cell['clients']}"] = round(median, 3)
    result["runtime_ms"] = runtime
    return result


def markdown_tables(report: dict[str, Any]) -> str:
    lines = [
        "| workers x clients | instances | jellyfish mean / min ratio | shoal mean / min ratio | served jellyfish / shoal / exact | shoal < jellyfish | exact median ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for cell in report["quality"]["cells"]:
        jf, sh, ex = cell["jellyfish"], cell["shoal"], cell["exact"]
        lines.append(
            f"| {cell['workers']} x {cell['clients']} | {cell['instances']} "
            f"| {_fmt(jf['mean_ratio_to_exact'])} / {_fmt(jf['min_ratio_to_exact'])} "
            f"| {_fmt(sh['mean_ratio_to_exact'])} / {_fmt(sh['min_ratio_to_exact'])} "
            f"| {_fmt(jf['served_fraction'])} / {_fmt(sh['served_fraction'])} / {_fmt(ex['served_fraction'])} "
            f"| {cell['shoal_below_jellyfish']} | {cell['exact_runtime_ms_median']:.0f} |"
        )
    overall = report["quality"]["overall"]
    jf, sh, ex = overall["jellyfish"], overall["shoal"], overall["exact"]
    lines.append(
        f"| **all** | {sh['instances']} | {_fmt(jf['mean_ratio_to_exact'])} / {_fmt(jf['min_ratio_to_exact'])} "
        f"| {_fmt(sh['mean_ratio_to_exact'])} / {_fmt(sh['min_ratio_to_exact'])} "
        f"| {_fmt(jf['served_fraction'])} / {_fmt(sh['served_fraction'])} / {_fmt(ex['served_fraction'])} "
        f"| {overall['shoal_below_jellyfish']} | |"
    )
    policies = list(dict.fromkeys(p for cell in report["speed"] for p in cell["runtime_ms_median"]))
    lines += ["", "| workers x clients | " + " | ".join(f"{p} median ms" for p in policies) + " | shoal / jellyfish objective |"]
    lines.append("|---|" + "---|" * len(policies) + "---|")
    for cell in report["speed"]:
        medians = cell["runtime_ms_median"]
        objective = cell["objective_mean"]
        ratio = objective["shoal"] / objective["jellyfish"] if objective.get("jellyfish") else float("nan")
        lines.append(
            f"| {cell['workers']} x {cell['clients']} | "
            + " | ".join(f"{medians[p]:.1f}" if p in medians else "-" for p in policies)
            + f" | {ratio:.4f} |"
        )
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def write_results(report: dict[str, Any], out_dir: Path | str) -> list[Path]:
    """edge.json (the whole report) and edge_quality.png (ratio to exact per cell)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "edge.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    png_path = out / "edge_quality.png"
    _plot_quality(report, png_path)
    return [json_path, png_path]


def _plot_quality(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = report["quality"]["cells"]
    labels = [f"{c['workers']}x{c['clients']}" for c in cells]
    x = np.arange(len(cells))
    fig, ax = plt.subplots(figsize=(8, 4))
    for offset, policy, color in ((-0.15, "jellyfish", "tab:orange"), (0.15, "shoal", "tab:blue")):
        means = [c[policy]["mean_ratio_to_exact"] or 0 for c in cells]
        mins = [c[policy]["min_ratio_to_exact"] or 0 for c in cells]
        ax.bar(x + offset, means, width=0.3, color=color, label=f"{policy} mean")
        ax.scatter(x + offset, mins, color="black", marker="_", s=200, zorder=3)
    ax.scatter([], [], color="black", marker="_", s=200, label="min")
    ax.set_xticks(x, labels)
    ax.set_xlabel("workers x clients")
    ax.set_ylabel("accuracy per request / exact")
    lowest = min([c[p]["min_ratio_to_exact"] or 1 for c in cells for p in QUALITY_POLICIES] + [0.9])
    ax.set_ylim(max(0.0, lowest - 0.05), 1.01)
    ax.axhline(0.995, color="gray", linestyle="--", linewidth=0.8)
    ax.legend(loc="lower left")
    ax.set_title("Edge planners against the exact MILP (Jellyfish's synthetic grid)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
