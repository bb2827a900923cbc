"""`shoal bench modelless`: shoal, INFaaS and static peak provisioning on stepped load (simulated)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shoal.cli._app import bench_app
from shoal.cli._common import RepoOption, error_console, open_repository, print_json, progress_bar, read_prices, write_json
from shoal.core.errors import InvalidInputError

def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for policy, timeline in results["_timelines"].items():
        axes[0].step([t for t, _ in timeline], [rate for _, rate in timeline], where="post", label=policy)
    axes[0].set_xlabel("time (s); load steps 1-2-3-4-3-2-1x")
    axes[0].set_ylabel("replicas' cost ($/hour)")
    axes[0].legend()
    policies = ["shoal", "infaas", "static_peak"]
    axes[1].bar(policies, [results[p]["slo_violation_rate"] * 100 for p in policies], color=["tab:blue", "tab:orange", "tab:green"])
    for index, policy in enumerate(policies):
        axes[1].annotate(f"${results[policy]['cost_usd']:.3f}", (index, results[policy]["slo_violation_rate"] * 100), ha="center", va="bottom")
    axes[1].set_ylabel("SLO violations (%), cost on top")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


@bench_app.command("modelless")
def bench_modelless_command(
    repo: RepoOption = None,
    family: Annotated[str, typer.Option("--family", help="Family whose profiles serve two of the three applications.")] = "demo",
    quick: Annotated[bool, typer.Option("--quick", help="6 s load phases instead of 30 s (under a minute).")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the results JSON instead of the summary.")] = False,
    prices: Annotated[Path | None, typer.Option("--prices", help="YAML table 'device: usd_per_hour'.", show_default=False)] = None,
    anchors: Annotated[
        Path | None, typer.Option("--anchors", help="Reference data (default: $SHOAL_ANCHORS or ../shared/anchors).", show_default=False)
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Results JSON; a plot is written beside it.")] = Path("benchmarks/results/modelless.json"),
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Three applications, load stepping 1-2-3-4-3-2-1x: SLO violations, cost and accuracy per policy."""
    from shoal.experiments.modelless_bench import run_modelless_bench

    repository = open_repository(repo)
    if not repository.has_family(family):
        raise InvalidInputError(f"--family {family!r} is not in {repository.root} (run `shoal zoo build-demo` or pass --repo)")
    from shoal.experiments.workflow_bench import default_anchors_dir

    anchors_dir = anchors or default_anchors_dir()
    price_table = read_prices(prices) if prices else None
    with progress_bar(transient=True) as progress:
        task = progress.add_task("simulating policies", total=3)
        results = run_modelless_bench(
            repository, anchors_dir, family=family, quick=quick, prices=price_table, seed=seed, on_policy=lambda _: progress.advance(task)
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    _plot(results, out.with_suffix(".png"))
    results.pop("_timelines")
    write_json(out, results)
    if json_output:
        print_json(results)
        return
    for policy in ("shoal", "infaas", "static_peak"):
        row = results[policy]
        print(f"{policy:12s} violations {row['slo_violation_rate']:7.2%}  cost ${row['cost_usd']:.4f}  accuracy {row['accuracy']:.3f}")
    targets = results["targets"]
    print(f"static_peak / shoal cost: {targets['static_over_shoal_cost']:.2f}x "
          f"(every phase provisioned instantly for its rate: ${results['per_phase_oracle']['cost_usd']:.4f}, {targets['static_over_oracle_cost']:.2f}x)")
    error_console.print(f"results written to {out} and {out.with_suffix('.png')}")
