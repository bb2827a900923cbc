"""Running an experiment grid on the simulator or on the real runtime, and writing its results
(JSON with the configuration and code version, CSV, a figure and an HTML page)."""

from __future__ import annotations

import asyncio
import csv
import html
import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from shoal.core.models import Device
from shoal.experiments.edge_live import family_profiles, static_candidates
from shoal.experiments.grid import GridSpec, best_static_row, cells, resolve_statics, row_for
from shoal.zoo.repository import ModelRepository

__all__ = ["run_grid", "write_grid_results"]

Progress = Callable[[str, int, int], None]


def _settings_per_policy(spec: GridSpec, candidates, scenario, *, all_for_best: bool) -> dict[str, list[str]]:
    return {policy: resolve_statics(policy, candidates, scenario, all_for_best=all_for_best) for policy in spec.policies}


def run_grid(spec: GridSpec, repository: ModelRepository, *, simulate: bool, progress: Progress | None = None, sim_workers: int | None = None) -> list[dict]:
    """Every cell x policy, one row each (static-best: the best of the statics it ran)."""
    profiles = family_profiles(repository, spec.family, Device.parse("cpu"))
    if not profiles:
        raise ValueError(f"family {spec.family!r} has no CPU profiles in {repository.root}; run `shoal profile` first")
    candidates = static_candidates(spec.family, profiles)
    grid = list(cells(spec))
    if simulate:
        return _run_simulated(spec, grid, profiles, candidates, progress, sim_workers or spec.workers)
    return _run_real(spec, grid, repository, candidates, progress)


def _run_simulated(spec, grid, profiles, candidates, progress, workers) -> list[dict]:
    from shoal.sim import SimSettings, sim_variants_from_profiles, simulate_edge

    variants = sim_variants_from_profiles(spec.family, profiles)
    rows = []
    for index, cell in enumerate(grid):
        scenario = cell.scenario(spec)
        cache: dict[str, dict] = {}
        for policy, settings in _settings_per_policy(spec, candidates, scenario, all_for_best=True).items():
            policy_rows = []
            for setting in settings:
                if setting not in cache:
                    run, _ = simulate_edge(scenario, variants, setting, SimSettings(workers=workers, seed=cell.repetition))
                    cache[setting] = row_for(cell, policy, run, {"setting": setting, "mode": "simulated"})
                policy_rows.append({**cache[setting], "policy": policy})
            rows.append(best_static_row(policy_rows) if policy == "static-best" else policy_rows[0])
        if progress:
            progress(f"{cell.trace} {cell.clients}c {cell.slo_ms:g}ms {cell.fps:g}fps r{cell.repetition}", index + 1, len(grid))
    return rows


def _run_real(spec, grid, repository, candidates, progress) -> list[dict]:
    from shoal.experiments.edge_serving import run_edge_setting
    from shoal.experiments.server_process import start_server_process

    frames, labels = repository.load_validation(spec.family)
    servers = {}
    try:
        needed = {"jellyfish" if policy == "jellyfish" else "shoal" for policy in spec.policies}
        for edge_policy in sorted(needed):
            servers[edge_policy] = start_server_process(
                repository.root, "--grpc-port", "0", "--idle-unload-s", "100000", "--edge-policy", edge_policy, "--workers", str(spec.workers)
            )
        rows = []
        total = len(grid) * len(spec.policies)
        done = 0
        for cell in grid:
            scenario = cell.scenario(spec)
            for policy, settings in _settings_per_policy(spec, candidates, scenario, all_for_best=False).items():
                server = servers["jellyfish" if policy == "jellyfish" else "shoal"]
                policy_rows = []
                for setting in settings:
                    run = asyncio.run(run_edge_setting(server.url, "jellyfish" if policy == "jellyfish" else setting, scenario, frames, labels))
                    policy_rows.append(row_for(cell, policy, run, {"setting": setting, "mode": "real"}))
                rows.append(best_static_row(policy_rows) if policy == "static-best" else policy_rows[0])
                done += 1
                if progress:
                    progress(f"{policy} on {cell.trace} {cell.clients}c {cell.slo_ms:g}ms {cell.fps:g}fps r{cell.repetition}", done, total)
        return rows
    finally:
        for server in servers.values():
            server.stop()


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.mean(values)), 4) if values else None


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean accuracy, miss rate and p99 per (trace, policy) over cells and repetitions."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["trace"], row["policy"])].append(row)
    return [
        {
            "trace": trace,
            "policy": policy,
            "runs": len(group),
            "accuracy": _mean(r["accuracy"] for r in group),
            "miss_rate": _mean(r["miss_rate"] for r in group),
            "p99_ms": _mean(r["p99_ms"] for r in group),
            "runs_with_misses_le_1pct": sum(1 for r in group if r["miss_rate"] is not None and r["miss_rate"] <= 0.01),
        }
        for (trace, policy), group in sorted(groups.items())
    ]


def write_grid_results(out: Path, spec: GridSpec, rows: list[dict], *, mode: str, version: str) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    summary = aggregate(rows)
    (out / "results.json").write_text(json.dumps({"configuration": spec.model_dump(), "mode": mode, "version": version, "summary": summary, "rows": rows}, indent=1) + "\n")
    flat = [{k: v for k, v in row.items() if not isinstance(v, (list, dict))} | {"outcomes": json.dumps(row["outcomes"])} for row in rows]
    if flat:
        with (out / "results.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(flat[0]))
            writer.writeheader()
            writer.writerows(flat)
    traces = sorted({row["trace"] for row in rows})
    policies = list(dict.fromkeys(row["policy"] for row in rows))
    figure, axes = plt.subplots(1, len(traces), figsize=(5 * len(traces), 4), squeeze=False)
    colours = dict(zip(policies, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3))
    for axis, trace in zip(axes[0], traces):
        for policy in policies:
            points = [(r["miss_rate"] * 100, r["accuracy"] * 100) for r in rows if r["trace"] == trace and r["policy"] == policy and r["accuracy"] is not None]
            if points:
                xs, ys = zip(*points)
                axis.scatter(xs, ys, s=12, alpha=0.35, color=colours[policy])
                axis.scatter([np.mean(xs)], [np.mean(ys)], s=90, marker="D", color=colours[policy], edgecolor="black", label=policy)
        axis.axvline(1.0, color="red", ls=":", lw=1)
        axis.set(title=f"{trace} ({mode})", xlabel="deadline-miss rate (%)", ylabel="accuracy of answered frames (%)")
        axis.set_xscale("symlog", linthresh=1.0)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / "grid.png", dpi=110)
    figure.savefig(out / "grid.pdf")
    plt.close(figure)
    columns = ("trace", "policy", "runs", "accuracy", "miss_rate", "p99_ms", "runs_with_misses_le_1pct")
    table = "".join("<tr>" + "".join(f"<td>{html.escape(str(s[c]))}</td>" for c in columns) + "</tr>" for s in summary)
    (out / "index.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>shoal experiment</title></head><body>"
        f"<h1>shoal experiment ({mode})</h1><p><code>{html.escape(json.dumps(spec.model_dump()))}</code></p>"
        f"<table border=1 cellpadding=4><tr>{''.join(f'<th>{c}</th>' for c in columns)}</tr>{table}</table>"
        f"<p>Large markers: means over cells; small: single runs.</p><img src='grid.png' style='max-width:100%'>"
        f"<p><a href='results.json'>results.json</a> (every run, latency CDF, assignment timelines), <a href='results.csv'>results.csv</a></p></body></html>"
    )
    return {"summary": summary, "report": str(out / "index.html")}
