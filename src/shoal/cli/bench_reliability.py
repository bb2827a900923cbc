"""`shoal bench reliability`: overload and soak, fuzzing and fault injection on a live server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shoal.cli._app import bench_app
from shoal.cli._common import error_console, print_json, progress_bar, write_json

SUMMARY_KEYS = ("requests_sent", "answered", "errors", "lost", "server_5xx", "fuzz_cases", "faults_injected", "rss_growth_pct")


@bench_app.command("reliability")
def bench_reliability_command(
    quick: Annotated[bool, typer.Option("--quick", help="10 s of 3x overload and few fuzz cases (under a minute); else 60 s.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON (the full report goes to --out).")] = False,
    out: Annotated[Path, typer.Option("--out", help="Full report JSON.")] = Path("benchmarks/results/reliability.json"),
) -> None:
    """Count every request sent as answered, an error or lost, under overload, fuzzing and faults."""
    from shoal.experiments.reliability import run_reliability

    with progress_bar(transient=True) as progress:
        task = progress.add_task("reliability", total=3)
        report = run_reliability(quick=quick, progress=lambda phase: (progress.update(task, description=phase), progress.advance(task)))
    write_json(out, report)
    summary = {key: report[key] for key in SUMMARY_KEYS}
    if json_output:
        print_json(summary)
        return
    for key in SUMMARY_KEYS:
        print(f"{key:16s} {summary[key]}")
    overload = report["overload"]
    print(f"overload: {overload['offered_rps']:.0f} req/s offered against {overload['capacity_rps']:.0f} measured; "
          f"admitted p99 {overload['admitted_p99_ms']:.1f} ms (server {overload['admitted_server_p99_ms']:.1f} ms) for a {overload['slo_ms']:.0f} ms SLO; "
          f"recovered {overload['recovered_after_s']:.1f} s after the burst")
    error_console.print(f"full report in {out}")
