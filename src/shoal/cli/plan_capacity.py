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
        Path | None,
        typer.Option(
            "--system",
            help="Inferno system-data.json, a folder of Inferno's per-part JSON files, or a shoal .yaml.",
            show_default=False,
        ),
    ] = None,
    solver: Annotated[
        str | None,
        typer.Option("--solver", metavar="greedy|milp",
                     help="greedy (Inferno's) or milp (HiGHS, exact); default: what the input asks."),
    ] = None,
    unlimited: Annotated[
        bool, typer.Option("--unlimited", help="Ignore the pool's capacity: every server gets its cheapest candidate.")
    ] = False,
    serve: Annotated[
        bool, typer.Option("--serve", help="Run the control loop service (POST /optimize, GET /invoke); see docs/capacity.md.")
    ] = False,
    host: Annotated[str, typer.Option("--host", help="--serve: bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="--serve: HTTP port (0 picks a free one, named on stderr).")] = 8080,
    runtime_url: Annotated[
        str | None, typer.Option("--runtime-url", help="--serve: the shoal runtime to collect from (http://host:port).")
    ] = None,
    base_system: Annotated[
        Path | None,
        typer.Option("--base-system", help="--serve: control file: base system, variant->server map, hysteresis.",
                     show_default=False),
    ] = None,
    interval_s: Annotated[
        float, typer.Option("--interval-s", min=0.0, help="--serve: seconds between cycles (0: only on GET /invoke).")
    ] = 60.0,
    admin_token: Annotated[
        str | None, typer.Option("--admin-token", help="--serve: bearer token of the runtime's replica endpoint.")
    ] = None,
    emit_patches: Annotated[
        Path | None,
        typer.Option("--emit-patches", help="--serve: write Deployment replica patches to this folder.", show_default=False),
    ] = None,
    kubeconfig: Annotated[
        Path | None,
        typer.Option("--kubeconfig", help="--serve: apply the patches with the kubernetes client.", show_default=False),
    ] = None,
    namespace: Annotated[
        str | None, typer.Option("--namespace", help="--serve: Kubernetes namespace \\[default: default].", show_default=False)
    ] = None,
    label: Annotated[
        str | None,
        typer.Option("--label", help="--serve: label key selecting a server's Deployment \\[default: shoal.ai/server].",
                     show_default=False),
    ] = None,
) -> None:
    """Choose accelerator, replicas and max batch per server; print Inferno's solution JSON plus total_cost.

    With --serve, run the control loop service instead (collect -> optimize -> actuate).
    """
    from shoal.formats.inferno import load_system, solution_json
    from shoal.planner.capacity import SOLVERS, plan_capacity

    # Checked here rather than by a click Choice so that a typo is one `error:` line, exit 2.
    if solver is not None and solver not in SOLVERS:
        raise InvalidInputError(f"--solver {solver!r} is unknown: use one of {', '.join(SOLVERS)}")
    if serve:
        from shoal.runtime.capacity_loop import run_control_service

        if system is not None:
            raise InvalidInputError("--system does not apply with --serve: POST systems to /optimize, or give --base-system")
        run_control_service(
            host=host, port=port, runtime_url=runtime_url, base_system=base_system, interval_s=interval_s,
            admin_token=admin_token, emit_patches=emit_patches, kubeconfig=kubeconfig, namespace=namespace,
            label=label, solver=solver, unlimited=True if unlimited else None,
        )
        return
    serve_only = {"--runtime-url": runtime_url, "--base-system": base_system, "--admin-token": admin_token,
                  "--emit-patches": emit_patches, "--kubeconfig": kubeconfig, "--namespace": namespace, "--label": label}
    given = [name for name, value in serve_only.items() if value is not None]
    if given:
        raise InvalidInputError(f"{', '.join(given)} only apply with --serve")
    if system is None:
        raise InvalidInputError("--system PATH is required (or --serve to run the control loop)")
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
