"""The typer apps every command module registers on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="shoal",
    help="SLO-aware, model-less inference serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
zoo_app = typer.Typer(help="Register, list and remove model variants; build the demo family.", no_args_is_help=True)
plan_app = typer.Typer(help="Run a planner on a file and print the plan as JSON.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks; results go to files and a summary to stdout.", no_args_is_help=True)
bench_planner_app = typer.Typer(help="Planner quality and speed benchmarks.", no_args_is_help=True)

app.add_typer(zoo_app, name="zoo")
app.add_typer(plan_app, name="plan")
app.add_typer(bench_app, name="bench")
bench_app.add_typer(bench_planner_app, name="planner")
