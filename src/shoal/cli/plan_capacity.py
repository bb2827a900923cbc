"""`shoal plan capacity` and `shoal bench planner capacity`: Inferno-style capacity planning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from shoal.cli._app import bench_planner_app, plan_app
from shoal.core.errors import InvalidInputError


@plan_app.command("capacity")
def plan_capacity_command(
    system: Annotated[
        Path,
        typer.Option(
            "--system",
            help="Inferno system-data.json, a folder of Inferno's per-part JSON files, or a shoal .yaml.",
            show_default=False,
        ),
    ],
    solver: Annotated[
        str | None,
        typer.Option("--solver", metavar="greedy|milp",
                     help="greedy (Inferno's) or milp (HiGHS, exact); default: what the input asks."),
    ] = None,
    unlimited: Annotated[
        bool, typer.Option("--unlimited", help="Ignore the pool's capacity: every server gets its cheapest candidate.")
    ] = False,
) -> None:
    """Choose accelerator, replicas and max batch per server; print Inferno's solution JSON plus total_cost."""
    from shoal.formats.inferno import load_system, solution_json
    from shoal.planner.capacity import SOLVERS, plan_capacity

    # Checked here rather than by a click Choice so that a typo is one `error:` line, exit 2.
    if solver is not None and solver not in SOLVERS:
        raise InvalidInputError(f"--solver {solver!r} is unknown: use one of {', '.join(SOLVERS)}")
    loaded = load_system(system)
    plan = plan_capacity(loaded, solver=solver, unlimited=True if unlimited else None)
    print(json.dumps(solution_json(plan), indent=2))


@bench_planner_app.command("capacity")
def bench_capacity_command(
    quick: Annotated[bool, typer.Option("--quick", help="Fewer timing repeats (for CI).")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the results JSON instead of the summary.")] = False,
    anchors: Annotated[
        Path | None,
        typer.Option("--anchors", help="Reference data folder (default: $SHOAL_ANCHORS or ../shared/anchors).",
                     show_default=False),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", help="Where the results JSON is written.")
    ] = Path("benchmarks/results/capacity.json"),
) -> None:
    """Inferno sample sets (greedy vs published, milp, like-for-like), queue examples, solve times."""
    from shoal.experiments.capacity_bench import run_capacity_bench, summary_text, write_results

    results = run_capacity_bench(anchors_dir=anchors, quick=quick)
    write_results(results, out)
    if json_output:
        print(json.dumps(results, indent=2))
    else:
        print(summary_text(results))
        print(f"results written to {out}")
