"""`shoal bench ray`: goodput of the Ray backend against the local one on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shoal.cli._app import bench_app
from shoal.cli._common import error_console, print_json, progress_bar, write_json
from shoal.core.errors import InvalidInputError
from shoal.profiler.session import MAX_WORKER_PROCESSES


@bench_app.command("ray")
def bench_ray_command(
    quick: Annotated[bool, typer.Option("--quick", help="8 s per backend instead of 30 s.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the results JSON.")] = False,
    workers: Annotated[int, typer.Option("--workers", min=1, max=MAX_WORKER_PROCESSES)] = 2,
    out: Annotated[Path, typer.Option("--out", help="Results JSON.")] = Path("benchmarks/results/ray.json"),
) -> None:
    """The same closed-loop workload on `--backend local` and `--backend ray`, same workers."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise InvalidInputError("shoal bench ray needs Ray: pip install 'shoal[ray]'") from None
    from shoal.experiments.ray_bench import run_ray_bench

    with progress_bar(transient=True) as progress:
        task = progress.add_task("backends", total=2)
        results = run_ray_bench(quick=quick, workers=workers, progress=lambda name: (progress.update(task, description=name), progress.advance(task)))
    write_json(out, results)
    if json_output:
        print_json(results)
        return
    for backend in ("local", "ray"):
        row = results[backend]
        print(f"{backend:6s} goodput {row['goodput_rps']:8.1f} req/s  p50 {row['p50_ms']:.1f} ms  p99 {row['p99_ms']:.1f} ms  errors {row['errors']}")
    print(f"ray / local goodput: {results['ratio']:.2f}")
    error_console.print(f"results written to {out}")
