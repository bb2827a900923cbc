"""`shoal demo`: the main job end to end on the built-in demo family.

1. Build the demo family if it is missing and profile the variants that have no CPU profile.
2. Print the family's accuracy / latency trade-off.
3. Start `shoal serve` and stream the family's held-out frames from emulated edge clients
   (each with its own uplink shaped by a bandwidth trace, LTE by default) over edge sessions:
   first with shoal's joint model and input-size adaptation, then with the static variants
   that could be the best fixed choice; a live table shows every client.
4. Print accuracy, miss rate and p99 latency for shoal and the best static variant and write
   the report (figures and HTML).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from shoal.cli._app import app
from shoal.cli._common import JsonOption, RepoOption, check_output_file, check_output_folder, console, error_console, family_table, open_repository, print_json, profile_with_progress, progress_bar, write_json
from shoal.core.errors import InvalidInputError
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


def _headline(run) -> dict:
    summary = run.summary()
    return {"setting": summary["setting"], "accuracy": summary["accuracy"], "miss_rate": summary["miss_rate"], "p99_ms": summary["p99_ms"]}


@app.command("demo")
def demo(
    repo: RepoOption = None,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed runs per batch size when profiling.")] = 30,
    trace: Annotated[str, typer.Option("--trace", help="Uplink bandwidth trace: lte, wifi, synthetic, or a file of Mbit/s per second.")] = "lte",
    clients: Annotated[int, typer.Option("--clients", min=1, max=64, help="Emulated edge clients.")] = 4,
    fps: Annotated[float, typer.Option("--fps", min=0.1, max=120.0, help="Frames per second per client.")] = 15.0,
    slo_ms: Annotated[float, typer.Option("--slo-ms", min=1.0, max=60_000.0, help="End-to-end SLO (upload + queue + compute + download).")] = 100.0,
    duration_s: Annotated[float, typer.Option("--duration-s", min=1.0, max=86_400.0, help="Seconds of streaming per compared setting (at most a day).")] = 50.0,
    statics: Annotated[str, typer.Option("--statics", help="Static baselines to run: 'auto' (the predicted best and its neighbours) or 'all'.")] = "auto",
    seed: Annotated[int, typer.Option("--seed", help="Seeds the clients' start points in the trace.")] = 1,
    report_dir: Annotated[Path | None, typer.Option("--report-dir", help="Where the report goes (default ./shoal-report).")] = None,
    serve: Annotated[bool, typer.Option("--serve/--no-serve", help="Run the serving comparison after the table.")] = True,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the JSON result here.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Build and profile the demo family if needed, then stream to it from emulated edge clients and compare shoal with static variants."""
    from shoal.client.network import load_trace

    if statics not in ("auto", "all"):
        raise InvalidInputError(f"--statics {statics!r}: use 'auto' or 'all'")
    load_trace(trace)  # a bad trace fails before minutes of building and profiling
    check_output_file(out, "--out")  # and so does a path the results could not be written to
    report_dir = report_dir or Path.cwd() / "shoal-report"
    if serve:
        check_output_folder(report_dir, "--report-dir")
    repository = open_repository(repo)
    _ensure_family(repository, repeats)
    table, rows = family_table(repository, DEMO_FAMILY, Device.parse("cpu"))
    if not json_output:
        console.print(table)
    result: dict = {"family": DEMO_FAMILY, "repository": str(repository.root), "variants": rows}
    if serve:
        from shoal.experiments.edge_live import compare_on_trace

        comparison = compare_on_trace(
            repository, DEMO_FAMILY, trace=trace, clients=clients, fps=fps, slo_ms=slo_ms, duration_s=duration_s, seed=seed, statics=statics,
            report_dir=report_dir, console=error_console if json_output else console,
        )
        best = comparison["best_static"]
        result["shoal"] = _headline(comparison["shoal"])
        result["best_static"] = _headline(best) if best else None
        result["runs"] = {run.setting: run.summary() for run in comparison["runs"]}
        result["configuration"] = comparison["configuration"]
        result["report"] = str(comparison["report"])
        if not json_output:
            summary = Table(
                title=f"{clients} edge clients, {fps:g} fps, SLO {slo_ms:g} ms, {trace} trace, {duration_s:g} s each",
                caption="* best static: the most accurate pinned variant with miss rate <= 1% (else the fewest misses)",
            )
            for column in ("setting", "frames", "accuracy", "miss rate", "p50 ms", "p99 ms", "input px sent"):
                summary.add_column(column, justify="left" if column in ("setting", "input px sent") else "right", no_wrap=column == "setting")
            for run in comparison["runs"]:
                stats = run.summary()
                marker = " *" if run is best else ""
                sizes = ", ".join(f"{size}:{count}" for size, count in sorted(stats["input_sizes"].items(), key=lambda kv: -kv[1])[:4])
                summary.add_row(
                    run.setting + marker,
                    str(stats["frames"]),
                    "-" if stats["accuracy"] is None else f"{stats['accuracy']:.1%}",
                    "-" if stats["miss_rate"] is None else f"{stats['miss_rate']:.1%}",
                    "-" if stats["p50_ms"] is None else f"{stats['p50_ms']:.1f}",
                    "-" if stats["p99_ms"] is None else f"{stats['p99_ms']:.1f}",
                    sizes,
                )
            console.print(summary)
            console.print(f"report: {comparison['report']}")
    if out:
        write_json(out, result)
    if json_output:
        print_json(result)
