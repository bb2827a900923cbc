"""`shoal bench serve`: shoal against Ray Serve, a lean server and bare ONNX Runtime under load."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shoal.cli._app import bench_app
from shoal.cli._common import RepoOption, error_console, open_repository, print_json, progress_bar
from shoal.profiler.session import MAX_INTRA_OP_THREADS


@bench_app.command("serve")
def bench_serve_command(
    repo: RepoOption = None,
    model: Annotated[
        str,
        typer.Option("--model", help="A family (its heaviest variant, plus its lightest unless --quick) or <family>.<variant>."),
    ] = "demo",
    slo_ms: Annotated[float, typer.Option("--slo-ms", min=0.001, max=3.6e6, help="Latency SLO of every request.")] = 50.0,
    quick: Annotated[bool, typer.Option("--quick", help="Heaviest variant only, short points (about a minute).")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the results JSON instead of the summary.")] = False,
    out: Annotated[Path, typer.Option("--out", help="Folder for serve.json, serve.csv and serve.png.")] = Path("benchmarks/results"),
    systems: Annotated[
        str, typer.Option("--systems", help="Comma-separated subset of shoal,lean_http,ray_serve,onnxruntime.")
    ] = "shoal,lean_http,ray_serve,onnxruntime",
    max_batch_size: Annotated[int, typer.Option("--max-batch-size", min=1, max=1024, help="Same for every system.")] = 32,
    threads: Annotated[int, typer.Option("--threads", min=1, max=MAX_INTRA_OP_THREADS, help="ONNX Runtime intra-op threads, same for every system.")] = 2,
    shoal_workers: Annotated[
        int, typer.Option("--shoal-workers", min=0, help="shoal's worker processes, sharing the --threads budget (0: one per thread; 1: one worker with all of them).")
    ] = 0,
    shoal_burst: Annotated[
        bool, typer.Option("--shoal-burst/--no-shoal-burst", help="With several shoal workers: a batch that runs while the others idle uses the whole --threads budget.")
    ] = True,
    point_s: Annotated[float | None, typer.Option("--point-s", min=0.1, max=3600.0, help="Seconds per load point (default 1.5 quick, 5 full).")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the Poisson arrivals and the input tensor.")] = 0,
) -> None:
    """Goodput, shed/drop rates and latency of four systems at one SLO, load swept past saturation."""
    from shoal.experiments.serve_bench import BenchConfig, run_serve_bench
    from shoal.experiments.serve_bench_report import summary_text, write_results

    config = BenchConfig(
        repository=open_repository(repo).root,
        model=model,
        slo_ms=slo_ms,
        quick=quick,
        systems=tuple(part.strip() for part in systems.split(",") if part.strip()),
        max_batch_size=max_batch_size,
        ort_threads=threads,
        shoal_workers=shoal_workers,
        shoal_burst=shoal_burst,
        seed=seed,
        point_duration_s=point_s,
    )
    with progress_bar(transient=json_output) as progress:
        task = progress.add_task("serve benchmark", total=None)

        def on_step(description: str, completed: float, total: float) -> None:
            progress.update(task, description=description, completed=completed, total=total)

        results = run_serve_bench(config, progress=on_step)
    files = write_results(results, out)
    if json_output:
        print_json(results)
    else:
        print(summary_text(results))
        error_console.print(f"results written to {files['json']}, {files['csv']}, {files['png']}")
