"""Workflow planning (JellyBean-style): a variant per task and workers with load shares.

    plan = plan_workflow(problem)                                   # shoal: exact MILP
    plan = plan_workflow(problem, options=PlanOptions(shared_workers=True, tier_rule=False))
    plan = plan_workflow(problem, policy="jellybean")               # the published heuristic

The result is a WorkflowPlan whose `status` says whether it can run ("optimal"/"feasible") or
why not ("infeasible", "failed", "below_target"); an unreachable target is a status, never an
exception. Pure: no I/O; files are read by shoal.formats.jellybean.
"""

from __future__ import annotations

from typing import Literal

from shoal.core.errors import InvalidInputError
from shoal.planner.workflow.accuracy import (
    AccuracySample,
    AccuracySpec,
    EndToEndAccuracyTable,
    TaskAccuracyProfile,
    end_to_end_accuracy,
)
from shoal.planner.workflow.costing import PlacementCost, check_message_sizes, evaluate_placement, resolve
from shoal.planner.workflow.jellybean import JellyBeanSettings, plan_jellybean
from shoal.planner.workflow.milp import plan_exact
from shoal.planner.workflow.model import (
    DEFAULT_VARIANT,
    PlanOptions,
    Route,
    Worker,
    WorkflowPlan,
    WorkflowProblem,
)

__all__ = [
    "DEFAULT_VARIANT",
    "POLICIES",
    "AccuracySample",
    "AccuracySpec",
    "EndToEndAccuracyTable",
    "JellyBeanSettings",
    "PlacementCost",
    "PlanOptions",
    "Route",
    "TaskAccuracyProfile",
    "Worker",
    "WorkflowPlan",
    "WorkflowProblem",
    "check_plan",
    "end_to_end_accuracy",
    "plan_workflow",
]

Policy = Literal["shoal", "jellybean"]
POLICIES: tuple[str, ...] = ("shoal", "jellybean")


def plan_workflow(
    problem: WorkflowProblem,
    policy: Policy = "shoal",
    options: PlanOptions | None = None,
    *,
    jellybean: JellyBeanSettings | None = None,
) -> WorkflowPlan:
    """Plan the workflow with `policy`; `options` relax JellyBean's rules (shoal only)."""
    options = options or PlanOptions()
    check_message_sizes(problem)
    if policy == "shoal":
        return plan_exact(problem, options)
    if policy == "jellybean":
        if not options.is_jellybean_default:
            raise InvalidInputError(
                "policy 'jellybean' follows JellyBean's own rules only; drop --no-tier-rule, "
                "--shared-workers and --billing fractional, or use policy 'shoal'."
            )
        return plan_jellybean(problem, jellybean or JellyBeanSettings())
    raise InvalidInputError(f"policy {policy!r} is unknown; choose one of {', '.join(POLICIES)}.")


def check_plan(problem: WorkflowProblem, plan: WorkflowPlan) -> PlacementCost:
    """Recompute a plan's costs independently and list the rules it breaks (for tests, audits)."""
    resolved = resolve(problem, plan.model_assignment)
    return evaluate_placement(resolved, plan.options, plan.load_shares_rps, plan.routes)
