"""`shoal bench edge-serve`: the end-to-end edge benchmark (real server, emulated clients).

For every trace: shoal and every static Pareto variant stream over the same trace windows;
the verdict says whether shoal kept misses <= 1% and beat the accuracy of every static
variant that also kept misses <= 1%.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from shoal.cli._app import bench_app
from shoal.cli._common import RepoOption, check_output_file, console, open_repository, write_json
from shoal.core.errors import InvalidInputError
from shoal.zoo import DEMO_FAMILY


def verdict(summaries: list[dict]) -> dict:
    """shoal vs the statics of one trace: the issue's two conditions, computed from the runs."""
    shoal = next(s for s in summaries if s["setting"] == "shoal")
    statics_within = [s for s in summaries if s["setting"].startswith("static:") and s["miss_rate"] is not None and s["miss_rate"] <= 0.01]
    best = max(statics_within, key=lambda s: s["accuracy"] or 0.0, default=None)
    return {
        "shoal_miss_rate_within_1pct": shoal["miss_rate"] is not None and shoal["miss_rate"] <= 0.01,
        "best_static_within_1pct": best["setting"] if best else None,
        "shoal_more_accurate_than_every_static_within_1pct": all((shoal["accuracy"] or 0) > (s["accuracy"] or 0) for s in statics_within),
    }


@bench_app.command("edge-serve")
def bench_edge_serve(
    repo: RepoOption = None,
    family: Annotated[str, typer.Option("--family", help="Family to serve (default: the demo family).")] = DEMO_FAMILY,
    traces: Annotated[str, typer.Option("--traces", help="Comma-separated traces: lte, wifi, synthetic or files.")] = "lte,wifi",
    clients: Annotated[int, typer.Option("--clients", min=1, max=64)] = 4,
    fps: Annotated[float, typer.Option("--fps", min=0.1, max=120.0)] = 15.0,
    slo_ms: Annotated[float, typer.Option("--slo-ms", min=1.0, max=60_000.0)] = 100.0,
    duration_s: Annotated[float, typer.Option("--duration-s", min=1.0, max=86_400.0, help="Seconds per setting and trace (at most a day).")] = 60.0,
    statics: Annotated[str, typer.Option("--statics", help="'all' Pareto variants or 'auto' (predicted best and neighbours).")] = "all",
    seed: Annotated[int, typer.Option("--seed")] = 1,
    out: Annotated[Path, typer.Option("--out", help="Results JSON; per-trace reports go beside it.")] = Path("benchmarks/results/edge_serve.json"),
) -> None:
    """Run shoal and the static variants over each trace on a real server and write the comparison."""
    from shoal.client.network import load_trace
    from shoal.experiments.edge_live import compare_on_trace

    if statics not in ("auto", "all"):
        raise InvalidInputError(f"--statics {statics!r}: use 'auto' or 'all'")
    names = [name.strip() for name in traces.split(",") if name.strip()]
    for name in names:
        load_trace(name)
    check_output_file(out, "--out")
    repository = open_repository(repo)
    if not repository.has_family(family):
        raise InvalidInputError(f"family {family!r} is not in {repository.root} (run `shoal zoo build-demo` and `shoal profile`)")
    results = {}
    for name in names:
        comparison = compare_on_trace(
            repository, family, trace=name, clients=clients, fps=fps, slo_ms=slo_ms, duration_s=duration_s, seed=seed, statics=statics,
            report_dir=out.parent / f"{out.stem}-{Path(name).stem}", console=console,
        )
        summaries = [run.summary() for run in comparison["runs"]]
        results[name] = {"configuration": comparison["configuration"], "runs": summaries, "verdict": verdict(summaries), "report": str(comparison["report"])}
        table = Table(title=f"{name}: {clients} clients, {fps:g} fps, SLO {slo_ms:g} ms, {duration_s:g} s per setting")
        for column in ("setting", "accuracy", "miss rate", "p99 ms", "outcomes"):
            table.add_column(column, justify="left" if column in ("setting", "outcomes") else "right")
        for s in summaries:
            table.add_row(s["setting"], f"{s['accuracy']:.1%}" if s["accuracy"] is not None else "-", f"{s['miss_rate']:.2%}", f"{s['p99_ms']}", json.dumps(s["outcomes"]))
        console.print(table)
        console.print(results[name]["verdict"])
    write_json(out, results)
    console.print(f"wrote {out}")
