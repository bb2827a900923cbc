"""`shoal experiment run|validate` and `shoal simulate`: grids, simulator validation, one-off
simulations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from shoal.cli._app import app
from shoal.cli._common import JsonOption, RepoOption, check_output_file, check_output_folder, console, error_console, open_repository, print_json, progress_bar, write_json
from shoal.core.errors import InvalidInputError
from shoal.zoo import DEMO_FAMILY

experiment_app = typer.Typer(help="Experiment grids (Jellyfish's) on the runtime or the simulator.", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")

VALIDATION_TOLERANCE = {"accuracy": 0.03, "miss_rate": 0.02}
"""Simulated vs real: absolute difference allowed per metric (3 accuracy points, 2 miss points)."""


def _run_with_progress(spec, repository, *, simulate: bool):
    from shoal.experiments.grid_runner import run_grid

    with progress_bar() as bar:
        task = bar.add_task("simulating" if simulate else "running", total=None)

        def progress(description: str, done: int, total: int) -> None:
            bar.update(task, description=description, completed=done, total=total)

        return run_grid(spec, repository, simulate=simulate, progress=progress)


def _summary_table(summary: list[dict], title: str) -> Table:
    table = Table(title=title)
    for column in ("trace", "policy", "runs", "accuracy", "miss rate", "p99 ms", "runs <= 1% misses"):
        table.add_column(column, justify="left" if column in ("trace", "policy") else "right")
    for s in summary:
        table.add_row(
            s["trace"], s["policy"], str(s["runs"]),
            "-" if s["accuracy"] is None else f"{s['accuracy']:.1%}",
            "-" if s["miss_rate"] is None else f"{s['miss_rate']:.2%}",
            "-" if s["p99_ms"] is None else f"{s['p99_ms']:.1f}",
            str(s["runs_with_misses_le_1pct"]),
        )
    return table


@experiment_app.command("run")
def experiment_run(
    grid: Annotated[Path, typer.Option("--grid", help="Grid YAML (see shoal.experiments.grid; benchmarks/grids/ has examples).")],
    simulate: Annotated[bool, typer.Option("--simulate", help="Run on the simulator (any size) instead of the real runtime.")] = False,
    repo: RepoOption = None,
    out: Annotated[Path | None, typer.Option("--out", help="Results folder (default: experiment-results/<grid name>-<mode>).")] = None,
    json_output: JsonOption = False,
) -> None:
    """Run every cell of a grid under every policy; write JSON, CSV, a figure and an HTML page."""
    from shoal.experiments import code_version
    from shoal.experiments.grid import load_grid
    from shoal.experiments.grid_runner import write_grid_results

    spec = load_grid(grid)
    check_output_folder(out, "--out")
    repository = open_repository(repo)
    if not repository.has_family(spec.family):
        raise InvalidInputError(f"family {spec.family!r} is not in {repository.root} (run `shoal zoo build-demo` and `shoal profile`)")
    mode = "simulated" if simulate else "real"
    rows = _run_with_progress(spec, repository, simulate=simulate)
    folder = out or Path("experiment-results") / f"{grid.stem}-{mode}"
    written = write_grid_results(folder, spec, rows, mode=mode, version=code_version())
    if json_output:
        print_json({"mode": mode, "summary": written["summary"], "report": written["report"], "runs": len(rows)})
        return
    console.print(_summary_table(written["summary"], f"{grid.name} ({mode}, {len(rows)} runs)"))
    console.print(f"report: {written['report']}")


@experiment_app.command("validate")
def experiment_validate(
    grid: Annotated[Path, typer.Option("--grid", help="A small grid: every cell runs on the real runtime and on the simulator.")],
    repo: RepoOption = None,
    out: Annotated[Path, typer.Option("--out", help="Results JSON.")] = Path("benchmarks/results/sim_validation.json"),
    json_output: JsonOption = False,
) -> None:
    """Run the same grid on the runtime and the simulator; report the differences and whether
    they are within the stated tolerance (3 accuracy points, 2 miss-rate points)."""
    from shoal.experiments import code_version
    from shoal.experiments.grid import load_grid

    spec = load_grid(grid)
    check_output_file(out, "--out")
    repository = open_repository(repo)
    if not repository.has_family(spec.family):
        raise InvalidInputError(f"family {spec.family!r} is not in {repository.root} (run `shoal zoo build-demo` and `shoal profile`)")
    real = _run_with_progress(spec, repository, simulate=False)
    simulated = _run_with_progress(spec, repository, simulate=True)
    comparisons = []
    for real_row, sim_row in zip(real, simulated):
        entry = {key: real_row[key] for key in ("trace", "clients", "slo_ms", "fps", "repetition", "policy")}
        for metric, tolerance in VALIDATION_TOLERANCE.items():
            a, b = real_row[metric], sim_row[metric]
            entry[f"real_{metric}"], entry[f"sim_{metric}"] = a, b
            entry[f"diff_{metric}"] = None if a is None or b is None else round(b - a, 4)
            entry[f"{metric}_within"] = a is not None and b is not None and abs(b - a) <= tolerance
        entry["real_setting"], entry["sim_setting"] = real_row["setting"], sim_row["setting"]
        entry["real_p99_ms"], entry["sim_p99_ms"] = real_row["p99_ms"], sim_row["p99_ms"]  # reported, not judged
        comparisons.append(entry)
    result = {"version": code_version(), "tolerance": VALIDATION_TOLERANCE, "configuration": spec.model_dump(), "comparisons": comparisons,
              "all_within": all(c["accuracy_within"] and c["miss_rate_within"] for c in comparisons)}
    write_json(out, result)
    if json_output:
        print_json(result)
        return
    table = Table(title=f"simulated vs real ({grid.name}); tolerance: accuracy ±3 points, miss rate ±2 points")
    for column in ("cell", "policy", "accuracy real / sim", "miss real / sim", "within"):
        table.add_column(column)
    for c in comparisons:
        fmt = lambda v, p: "-" if v is None else (f"{v:.1%}" if p else f"{v:.2%}")  # noqa: E731
        table.add_row(
            f"{c['trace']} {c['clients']}c {c['slo_ms']:g}ms {c['fps']:g}fps", c["policy"],
            f"{fmt(c['real_accuracy'], 1)} / {fmt(c['sim_accuracy'], 1)}", f"{fmt(c['real_miss_rate'], 0)} / {fmt(c['sim_miss_rate'], 0)}",
            "yes" if c["accuracy_within"] and c["miss_rate_within"] else "NO",
        )
    console.print(table)
    console.print(f"wrote {out}")


@app.command("simulate")
def simulate(
    repo: RepoOption = None,
    family: Annotated[str, typer.Option("--family")] = DEMO_FAMILY,
    trace: Annotated[str, typer.Option("--trace", help="lte, wifi, synthetic or a file of Mbit/s per second.")] = "lte",
    clients: Annotated[int, typer.Option("--clients", min=1, max=100_000)] = 4,
    workers: Annotated[int, typer.Option("--workers", min=1, max=4096, help="Simulated worker processes.")] = 1,
    fps: Annotated[float, typer.Option("--fps", min=0.1, max=1000.0)] = 15.0,
    slo_ms: Annotated[float, typer.Option("--slo-ms", min=1.0, max=3.6e6)] = 100.0,
    duration_s: Annotated[float, typer.Option("--duration-s", min=0.1, max=1e6)] = 60.0,
    policies: Annotated[str, typer.Option("--policies", help="Comma-separated: shoal, jellyfish, infaas, static:<family>.<variant>.")] = "shoal,jellyfish,infaas",
    seed: Annotated[int, typer.Option("--seed")] = 1,
    json_output: JsonOption = False,
) -> None:
    """Simulate one scenario under each policy (the planners are the runtime's own code)."""
    import time

    from shoal.client.network import load_trace, trace_offsets
    from shoal.core.models import Device
    from shoal.experiments.edge_live import family_profiles
    from shoal.experiments.edge_serving import EdgeScenario
    from shoal.sim import SimSettings, sim_variants_from_profiles, simulate_edge

    repository = open_repository(repo)
    profiles = family_profiles(repository, family, Device.parse("cpu"))
    if not profiles:
        raise InvalidInputError(f"family {family!r} has no CPU profiles in {repository.root}; run `shoal profile --family {family}`")
    bandwidth = load_trace(trace)
    scenario = EdgeScenario(family, bandwidth, tuple(trace_offsets(bandwidth, clients, seed)), fps=fps, slo_ms=slo_ms, duration_s=duration_s)
    variants = sim_variants_from_profiles(family, profiles)
    results = {}
    for setting in [p.strip() for p in policies.split(",") if p.strip()]:
        started = time.perf_counter()
        try:
            run, stats = simulate_edge(scenario, variants, setting, SimSettings(workers=workers, seed=seed))
        except ValueError as error:
            raise InvalidInputError(f"--policies: {error}") from None
        results[setting] = {**run.summary(), **stats, "wall_s": round(time.perf_counter() - started, 2)}
        if not json_output:
            error_console.print(f"{setting}: {results[setting]['wall_s']} s wall, {stats['events']} events, {stats['plans']} plans")
    if json_output:
        print_json(results)
        return
    table = Table(title=f"simulated: {clients} clients x {fps:g} fps, {workers} workers, SLO {slo_ms:g} ms, {trace}, {duration_s:g} s")
    for column in ("policy", "accuracy", "miss rate", "p99 ms", "worker utilisation", "wall s"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for setting, r in results.items():
        utilisation = r["worker_utilisation"]
        table.add_row(setting, "-" if r["accuracy"] is None else f"{r['accuracy']:.1%}", f"{r['miss_rate']:.2%}", f"{r['p99_ms']}",
                      f"{sum(utilisation) / len(utilisation):.0%} mean" if utilisation else "-", str(r["wall_s"]))
    console.print(table)

