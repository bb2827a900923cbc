"""`shoal plan edge` and `shoal bench planner edge`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from shoal.cli._app import bench_planner_app, plan_app
from shoal.cli._common import JsonOption, RepoOption, error_console, open_repository, print_json
from shoal.core.errors import InvalidInputError


class EdgePolicy(str, Enum):
    shoal = "shoal"
    jellyfish = "jellyfish"
    exact = "exact"


@plan_app.command("edge")
def plan_edge_command(
    instance: Annotated[Path, typer.Option("--instance", help="Instance JSON: variants, workers, clients.")],
    policy: Annotated[EdgePolicy, typer.Option("--policy", help="Planner to run.")] = EdgePolicy.shoal,
    seed: Annotated[int, typer.Option("--seed", help="Seed of jellyfish's simulated annealing.")] = 0,
    time_limit_s: Annotated[float, typer.Option("--time-limit-s", help="Time limit of the exact MILP.")] = 60.0,
) -> None:
    """Variant and batch size per worker, worker and input size per client; prints the plan as JSON."""
    from shoal.formats.edge_instance import load_edge_instance
    from shoal.planner.edge import ExactOptions, plan_edge

    if not time_limit_s > 0:
        raise InvalidInputError(f"--time-limit-s must be > 0 seconds, got {time_limit_s}")
    problem = load_edge_instance(instance)
    plan = plan_edge(problem, policy.value, seed=seed, exact_options=ExactOptions(time_limit_s=time_limit_s))
    print_json(plan.to_dict())


@bench_planner_app.command("edge")
def bench_edge_command(
    quick: Annotated[bool, typer.Option("--quick", help="A small grid that runs in under a minute.")] = False,
    json_output: JsonOption = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for edge.json and edge_quality.png (default benchmarks/results; "
                     "--quick writes only when given)."),
    ] = None,
    instances: Annotated[
        int | None, typer.Option("--instances", help="Random instances per quality cell (default 100, quick 6).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the instance generator.")] = 0,
    jobs: Annotated[int, typer.Option("--jobs", help="Processes for the quality grid (exact dominates).")] = 1,
    family: Annotated[
        str | None, typer.Option("--family", help="Use this family's measured CPU profiles (raw uint8 frames) instead of the synthetic ones.")
    ] = None,
    repo: RepoOption = None,
) -> None:
    """Quality against `exact` on the original's grid, and planner runtime, for every edge policy."""
    from shoal.experiments import edge_bench

    variants = label = None
    if family is not None:
        from shoal.core.models import Device
        from shoal.experiments.edge_live import family_profiles
        from shoal.planner.edge.live import LiveVariant, edge_variant

        repository = open_repository(repo)
        profiles = family_profiles(repository, family, Device.parse("cpu"))
        if not profiles:
            raise InvalidInputError(f"family {family!r} has no CPU profiles in {repository.root}; run `shoal profile --family {family}`")
        variants = [
            edge_variant(LiveVariant(f"{family}.{v.name}", v.accuracy or 0.0, v.input_size_px, 3, p.monotone_latency_ms("p95"), p.load_time_ms or 0.0))
            for v, p in profiles
        ]
        label = f"{family} family, measured CPU profiles (p95, monotone), raw uint8 frames"
    if instances is not None and instances < 1:
        raise InvalidInputError(f"--instances must be >= 1, got {instances}")
    if jobs < 1:
        raise InvalidInputError(f"--jobs must be >= 1, got {jobs}")
    config = edge_bench.BenchConfig.quick() if quick else edge_bench.BenchConfig.full()
    if instances is not None:
        config = config.with_instances(instances)
    report = edge_bench.run_benchmark(config, seed=seed, jobs=jobs, progress=None if json_output else _progress, variants=variants, variants_label=label)
    target = out if out is not None else (None if quick else Path("benchmarks/results"))
    if target is not None:
        paths = edge_bench.write_results(report, target)
        if not json_output:
            for path in paths:
                error_console.print(f"wrote {path}")
    if json_output:
        print_json(edge_bench.summary(report))
    else:
        print(edge_bench.markdown_tables(report))  # plain: markdown tables must not be re-wrapped


def _progress(message: str) -> None:
    error_console.print(message)
