"""`shoal plan workflow` and `shoal bench planner workflow`: JellyBean-style workflow placement."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from shoal.cli._app import bench_planner_app, plan_app
from shoal.core.errors import InvalidInputError


class _Policy(str, Enum):
    shoal = "shoal"
    jellybean = "jellybean"


class _Billing(str, Enum):
    whole = "whole"
    fractional = "fractional"


@contextlib.contextmanager
def _solver_output_to_stderr():
    """HiGHS, inside SciPy, sometimes prints a debug line straight to file descriptor 1 while it
    solves (seen on generated instances): this command's stdout is JSON, so while the planner
    runs, descriptor 1 is stderr."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _print_warnings(caught: list[warnings.WarningMessage]) -> None:
    for item in caught:
        print(f"warning: {item.message}", file=sys.stderr)


@plan_app.command("workflow")
def plan_workflow_command(
    inputs: Annotated[
        Path, typer.Option("--inputs", help="JellyBean optimizer input folder (read as shipped).",
                           show_default=False),
    ],
    config: Annotated[
        Path | None,
        typer.Option("--config", help="JellyBean config.yaml (default: the folder's own, if any).",
                     show_default=False),
    ] = None,
    accuracy: Annotated[
        Path | None,
        typer.Option("--accuracy", help="nodes_accuracy_profiles.json (default: in the folder or ../derived).",
                     show_default=False),
    ] = None,
    policy: Annotated[_Policy, typer.Option("--policy", help="shoal (exact MILP) or jellybean (published).")]
    = _Policy.shoal,
    no_tier_rule: Annotated[
        bool, typer.Option("--no-tier-rule", help="Allow backward links, charged at their listed price.")
    ] = False,
    shared_workers: Annotated[
        bool, typer.Option("--shared-workers", help="A worker may serve several tasks, time-shared.")
    ] = False,
    billing: Annotated[
        _Billing, typer.Option("--billing", help="whole workers (JellyBean) or price x utilisation.")
    ] = _Billing.whole,
    accuracy_target: Annotated[
        float | None, typer.Option("--accuracy-target", help="Override accuracy_requirement.json's threshold, in the accuracy file's units (JellyBean's: percent).",
                                   show_default=False),
    ] = None,
    rate_rps: Annotated[
        float | None, typer.Option("--rate-rps", help="Override every source's injection rate (req/s).",
                                   show_default=False),
    ] = None,
) -> None:
    """Choose a variant per task and workers with load shares; print the plan as JSON ($/hour)."""
    from shoal.formats.jellybean import read_jellybean_inputs
    from shoal.planner.workflow import PlanOptions, plan_workflow

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = read_jellybean_inputs(inputs, config, accuracy)
    _print_warnings(caught)
    problem = loaded.problem
    if accuracy_target is not None:
        problem = problem.with_accuracy_target(_checked_accuracy_target(accuracy_target, problem, loaded.accuracy_path))
    if rate_rps is not None:
        if not rate_rps > 0:
            raise InvalidInputError(f"--rate-rps must be > 0, got {rate_rps}.")
        problem = problem.with_source_rates(rate_rps)
    options = PlanOptions(tier_rule=not no_tier_rule, shared_workers=shared_workers,
                          billing=billing.value)
    if policy is _Policy.jellybean and loaded.jellybean is None:
        raise InvalidInputError(loaded.jellybean_error or "the jellybean baseline settings are invalid.")
    with _solver_output_to_stderr():
        plan = plan_workflow(problem, policy.value, options, jellybean=loaded.jellybean)
    if not plan.success:
        raise InvalidInputError(f"no plan ({plan.status}): {plan.message}")
    output = plan.to_json_dict()
    output["inputs"] = {"folder": str(inputs), "config": str(loaded.config_path) if loaded.config_path else None,
                        "accuracy_profiles": str(loaded.accuracy_path)}
    print(json.dumps(output, indent=4))


@bench_planner_app.command("workflow")
def bench_workflow_command(
    quick: Annotated[bool, typer.Option("--quick", help="A coarser sweep and fewer timing repeats.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the results JSON instead of the summary.")]
    = False,
    anchors: Annotated[
        Path | None,
        typer.Option("--anchors", help="Reference data folder (default: $SHOAL_ANCHORS or ../shared/anchors).",
                     show_default=False),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Where the results JSON is written.")]
    = Path("benchmarks/results/workflow.json"),
) -> None:
    """JellyBean VQA: the published plan, the exact optima per rule set, a threshold x rate sweep."""
    from shoal.experiments.workflow_bench import run_workflow_bench, summary_text, write_results

    results = run_workflow_bench(anchors_dir=anchors, quick=quick)  # input warnings are in results
    write_results(results, out)
    if json_output:
        print(json.dumps(results, indent=2))
    else:
        print(summary_text(results))
        print(f"results written to {out}")


def _checked_accuracy_target(target: float, problem, accuracy_path: Path) -> float:
    """`--accuracy-target` in the accuracy file's units. `shoal workflow deploy` takes a fraction,
    so 0.56 here, against a table in percent, planned the cheapest (least accurate) variants."""
    if not math.isfinite(target):
        raise InvalidInputError(f"--accuracy-target {target}: give a number in the accuracy file's units")
    table = problem.accuracy.table
    values = list(table.accuracy_by_variants.values()) if table is not None else []
    if values and 0.0 < target < 1.0 < min(values):  # 0 (no floor) reads the same in either unit
        raise InvalidInputError(
            f"--accuracy-target {target:g} reads as a fraction, but {accuracy_path.name} gives accuracies in percent "
            f"({min(values):g} to {max(values):g}): give e.g. {100 * target:g}"
        )
    return target
