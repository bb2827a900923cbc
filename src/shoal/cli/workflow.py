"""`shoal workflow deploy | run`: place a family as a two-stage workflow and run the placement."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from shoal.cli._app import app
from shoal.cli._common import JsonOption, RepoOption, console, open_repository, print_json, progress_bar, write_json
from shoal.core.errors import InvalidInputError
from shoal.core.models import Device

workflow_app = typer.Typer(help="Deploy a planned multi-stage workflow and run it on worker processes.", no_args_is_help=True)
app.add_typer(workflow_app, name="workflow")

DEFAULT_WORKERS = ["edge-0:0.05:0", "edge-1:0.05:0", "cloud-0:0.20:1", "cloud-1:0.20:1", "cloud-2:0.20:1"]


def parse_worker(text: str):
    """NAME:PRICE_USD_PER_HOUR[:TIER[:DEVICE]] -> PipelineWorker."""
    from shoal.runtime.workflow.deploy import PipelineWorker

    parts = text.split(":")
    if not 2 <= len(parts) <= 5:
        raise InvalidInputError(f"--worker {text!r}: write NAME:PRICE_USD_PER_HOUR[:TIER[:DEVICE]], e.g. edge-0:0.05:0:cpu")
    name, price = parts[0], parts[1]
    try:
        price_usd_per_hour = float(price)
        tier = int(parts[2]) if len(parts) > 2 else 0
    except ValueError:
        raise InvalidInputError(f"--worker {text!r}: the price must be a number and the tier an integer") from None
    if not (math.isfinite(price_usd_per_hour) and price_usd_per_hour >= 0):
        raise InvalidInputError(f"--worker {text!r}: the price must be a finite number >= 0 (USD per hour)")
    device = ":".join(parts[3:]) if len(parts) > 3 else "cpu"
    try:
        Device.parse(device)
    except ValueError as error:
        raise InvalidInputError(f"--worker {text!r}: {error}") from None
    return PipelineWorker(name, price_usd_per_hour, tier, device)


@workflow_app.command("deploy")
def deploy_command(
    out: Annotated[Path, typer.Option("--out", help="Folder for deployment.json and the stage models.")],
    repo: RepoOption = None,
    family: Annotated[str, typer.Option("--family", help="Family whose variants are cut into features + classify.")] = "demo",
    worker: Annotated[
        list[str] | None, typer.Option("--worker", help="NAME:PRICE_USD_PER_HOUR[:TIER[:DEVICE]], repeatable.", show_default=False)
    ] = None,
    rate_rps: Annotated[float, typer.Option("--rate-rps", min=0.001, help="Camera injection rate the plan must carry.")] = 1000.0,
    accuracy_target: Annotated[float, typer.Option("--accuracy-target", min=0.0, max=1.0, help="End-to-end top-1 the plan must reach.")] = 0.9,
    slo_ms: Annotated[float, typer.Option("--slo-ms", min=1.0, help="End-to-end latency objective of a request.")] = 500.0,
    link_usd_per_gb: Annotated[float, typer.Option("--link-usd-per-gb", min=0.0, help="Price of traffic between tiers.")] = 0.09,
    shared_workers: Annotated[bool, typer.Option("--shared-workers", help="A worker may serve several tasks, time-shared.")] = False,
    no_tier_rule: Annotated[bool, typer.Option("--no-tier-rule", help="Allow backward links, charged at their price.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Cut the family into stages, measure them, plan the placement (exact MILP) and write it."""
    from shoal.planner.workflow import PlanOptions
    from shoal.runtime.workflow import save_deployment
    from shoal.runtime.workflow.deploy import build_classifier_pipeline

    repository = open_repository(repo)
    if not repository.has_family(family):
        raise InvalidInputError(f"--family {family!r} is not in {repository.root} (run `shoal zoo build-demo` or pass --repo)")
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {out}: is a file; give a folder (new or existing) for deployment.json and the stage models")
    workers = [parse_worker(text) for text in (worker or DEFAULT_WORKERS)]
    names = [w.name for w in workers]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"--worker: names must be unique, got {names}")
    options = PlanOptions(tier_rule=not no_tier_rule, shared_workers=shared_workers)
    deployment, _, plan = build_classifier_pipeline(
        repository, family, out, workers=workers, rate_rps=rate_rps, accuracy_target=accuracy_target,
        slo_ms=slo_ms, link_usd_per_gb=link_usd_per_gb, options=options,
    )
    path = out / "deployment.json"
    save_deployment(deployment, path)
    if json_output:
        print_json({"deployment": str(path), "plan": plan.to_json_dict()})
        return
    table = Table(title=f"{deployment.name}: {plan.total_cost_usd_per_hour:.4f} $/h, accuracy {plan.end_to_end_accuracy:.3f}")
    for column in ("task", "variant", "worker", "planned req/s"):
        table.add_column(column)
    for task_name, task in deployment.tasks.items():
        for worker_name, share in task.load_shares_rps.items():
            table.add_row(task_name, task.variant, worker_name, f"{share:.1f}")
    console.print(table)
    console.print(f"written to {path}; run it with `shoal workflow run --deployment {path}` or `shoal serve --workflow {path}`")


@workflow_app.command("run")
def run_command(
    deployment: Annotated[Path, typer.Option("--deployment", help="deployment.json written by `shoal workflow deploy`.")],
    repo: RepoOption = None,
    requests: Annotated[int, typer.Option("--requests", min=1, help="Requests to send (one item each).")] = 2000,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Requests outstanding at once.")] = 8,
    slo_ms: Annotated[float | None, typer.Option("--slo-ms", min=1.0, help="Override the deployment's SLO.", show_default=False)] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the results JSON here.", show_default=False)] = None,
    json_output: JsonOption = False,
) -> None:
    """Run the deployment on local worker processes; compare per-worker traffic with the plan."""
    from shoal.experiments.workflow_run import run_workflow_load

    repository = open_repository(repo)
    with progress_bar(transient=True) as progress:
        task = progress.add_task("workflow requests", total=requests)
        result = run_workflow_load(
            deployment, requests=requests, concurrency=concurrency, slo_ms=slo_ms, repository=repository,
            on_done=lambda: progress.advance(task),
        )
    if out is not None:
        write_json(out, result)
    if json_output:
        print_json(result)
        return
    table = Table(title=f"{result['workflow']}: {result['answered']}/{requests} answered, {result['throughput_rps']:.0f} req/s")
    for column in ("task", "worker", "planned share", "measured share", "items"):
        table.add_column(column)
    for task_name, workers in result["traffic"].items():
        for worker_name, row in workers.items():
            table.add_row(task_name, worker_name, f"{row['planned_share']:.3f}", f"{row['measured_share']:.3f}", str(row["items"]))
    console.print(table)
    latency = result["latency_ms"]
    if latency["p50"] is None:
        console.print(f"no request was answered; failures {result['failures'] or 'none'}")
        return
    console.print(f"latency p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms; within SLO {result['within_slo']:.1%}; failures {result['failures'] or 'none'}")
    if "measured_accuracy" in result:
        console.print(f"accuracy: measured {result['measured_accuracy']:.3f}, planned {result['planned_accuracy']:.3f}")
