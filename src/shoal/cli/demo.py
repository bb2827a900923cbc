"""`shoal demo`: the main job end to end on the built-in demo family.

1. Build the demo family if it is missing and profile the variants that have no CPU profile.
2. Print the family's accuracy / latency trade-off.
3. Serve it with `shoal serve` and drive it with closed-loop clients that send the held-out
   frames to the model-less family endpoint under an SLO, then the same load to each variant
   pinned (static baselines); print accuracy, miss rate and latency side by side.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from shoal.cli._app import app
from shoal.cli._common import JsonOption, RepoOption, console, error_console, family_table, open_repository, print_json, profile_with_progress, progress_bar
from shoal.core.models import Device
from shoal.zoo import DEMO_FAMILY


def _ensure_family(repository, repeats: int) -> None:
    from shoal.zoo.demo import build_demo_repository

    device = Device.parse("cpu")
    if not repository.has_family(DEMO_FAMILY):
        error_console.print(f"building the demo family into {repository.root} (a few minutes, once)")
        with progress_bar() as bar:
            task = bar.add_task("building", total=1.0)
            build_demo_repository(repository.root, progress=lambda stage, fraction: bar.update(task, description=stage, completed=fraction))
    missing = [name for name in repository.variant_names(DEMO_FAMILY) if repository.load_profile(DEMO_FAMILY, name, device) is None]
    if missing:
        profile_with_progress(repository, DEMO_FAMILY, device, missing, (1, 2, 4, 8, 16, 32), repeats)


def _serve_and_compare(repository, *, slo_ms: float, duration_s: float, concurrency: int) -> dict:
    from shoal.experiments.demo_serving import RunSummary, run_closed_loop, start_server_process

    frames, labels = repository.load_validation(DEMO_FAMILY)
    variants = sorted(repository.variants(DEMO_FAMILY), key=lambda v: v.multiply_adds)
    runs = [RunSummary("shoal", DEMO_FAMILY, slo_ms)] + [RunSummary(f"static:{v.name}", f"{DEMO_FAMILY}.{v.name}", slo_ms) for v in variants]
    error_console.print(f"starting shoal serve on {repository.root} ...")
    server = start_server_process(repository.root, "--idle-unload-s", "100000")
    try:
        with progress_bar() as bar:
            for run in runs:
                task = bar.add_task(f"{run.name:<24}", total=None)

                def show(summary, task=task):
                    bar.update(task, description=f"{summary.name:<24} {summary.answered:>5} answered, acc {summary.accuracy:.1%}, miss {summary.miss_rate:.1%}")

                asyncio.run(run_closed_loop(server.url, run, frames, labels, duration_s=duration_s, concurrency=concurrency, on_answer=show))
                show(run)
                bar.update(task, total=1, completed=1)
    finally:
        server.stop()
    statics = [run for run in runs[1:] if run.answered]
    within = [run for run in statics if run.miss_rate <= 0.01]
    best_static = max(within, key=lambda r: r.accuracy) if within else min(statics, key=lambda r: r.miss_rate)
    return {"shoal": runs[0], "best_static": best_static, "runs": runs}


@app.command("demo")
def demo(
    repo: RepoOption = None,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed runs per batch size when profiling.")] = 30,
    slo_ms: Annotated[float, typer.Option("--slo-ms", min=1.0, help="End-to-end SLO of the demo clients.")] = 25.0,
    duration_s: Annotated[float, typer.Option("--duration-s", min=1.0, help="Seconds of load per compared setting.")] = 6.0,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Closed-loop clients.")] = 8,
    serve: Annotated[bool, typer.Option("--serve/--no-serve", help="Run the serving comparison after the table.")] = True,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the JSON result here.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Build and profile the demo family if needed, show its trade-off, then serve it and compare shoal with static variants."""
    repository = open_repository(repo)
    _ensure_family(repository, repeats)
    table, rows = family_table(repository, DEMO_FAMILY, Device.parse("cpu"))
    if not json_output:
        console.print(table)
    result: dict = {"family": DEMO_FAMILY, "repository": str(repository.root), "variants": rows}
    if serve:
        comparison = _serve_and_compare(repository, slo_ms=slo_ms, duration_s=duration_s, concurrency=concurrency)
        result["shoal"] = comparison["shoal"].as_dict()
        result["best_static"] = {"name": comparison["best_static"].name, **comparison["best_static"].as_dict()}
        result["runs"] = {run.name: run.as_dict() for run in comparison["runs"]}
        if not json_output:
            summary = Table(
                title=f"{concurrency} closed-loop clients, SLO {slo_ms:.0f} ms, {duration_s:.0f} s each (full 128 px frames)",
                caption="* best static: the most accurate pinned variant with miss rate <= 1% (else the fewest misses)",
            )
            for column in ("setting", "answered", "accuracy", "miss rate", "p50 ms", "p99 ms", "variants used"):
                summary.add_column(column, justify="left" if column in ("setting", "variants used") else "right", no_wrap=column == "setting")
            for run in comparison["runs"]:
                stats = run.as_dict()
                marker = " *" if run is comparison["best_static"] else ""
                used = ", ".join(f"{name.split('.', 1)[-1]}:{count}" for name, count in sorted(stats["variants"].items(), key=lambda kv: -kv[1])[:3])
                summary.add_row(
                    run.name + marker,
                    str(stats["answered"]),
                    f"{stats['accuracy']:.1%}",
                    f"{stats['miss_rate']:.1%}",
                    "-" if stats["p50_ms"] is None else f"{stats['p50_ms']:.1f}",
                    "-" if stats["p99_ms"] is None else f"{stats['p99_ms']:.1f}",
                    used,
                )
            console.print(summary)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    if json_output:
        print_json(result)
