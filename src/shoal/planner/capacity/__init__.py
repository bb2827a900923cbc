"""Inferno-style capacity planning (pure): accelerator type, replicas and max batch per server.

    system = CapacitySystem(...)                     # or shoal.formats.inferno.load_system(path)
    plan = plan_capacity(system, solver="greedy")    # or "milp"
    plan.allocation("Premium-llama_13b").num_replicas, plan.total_cost_cents_per_hour

`greedy` reproduces Inferno's greedy allocation (regret ordering and saturation policies) with
deterministic tie-breaking; `milp` (HiGHS) serves the most servers in full, priority level by
priority level, then minimises cost. With an unlimited pool both give every server its
cheapest candidate. A server that cannot be served is an allocation with status "unserved"
and a reason; it never fails the solve.
"""

from __future__ import annotations

from dataclasses import replace

from shoal.planner.capacity.assemble import make_plan
from shoal.planner.capacity.candidates import CandidateSet, build_candidates
from shoal.planner.capacity.greedy import solve_greedy, solve_unlimited
from shoal.planner.capacity.milp import MilpOutcome, min_cost_serving, solve_milp
from shoal.planner.capacity.model import (
    SATURATION_POLICIES,
    AcceleratorSpec,
    BatchLatencyTable,
    Candidate,
    CapacityPlan,
    CapacitySystem,
    CurrentAllocation,
    DecodePrefillParams,
    IterationParams,
    ModelPerf,
    ModelTarget,
    OptimizerOptions,
    SaturationPolicy,
    ServerAllocation,
    ServerLoad,
    ServerSpec,
    ServiceClass,
    SolverName,
)
from shoal.planner.capacity.saturation import Assignment

__all__ = [
    "SOLVERS",
    "SATURATION_POLICIES",
    "AcceleratorSpec",
    "Assignment",
    "BatchLatencyTable",
    "Candidate",
    "CandidateSet",
    "CapacityPlan",
    "CapacitySystem",
    "CurrentAllocation",
    "DecodePrefillParams",
    "IterationParams",
    "MilpOutcome",
    "ModelPerf",
    "ModelTarget",
    "OptimizerOptions",
    "SaturationPolicy",
    "ServerAllocation",
    "ServerLoad",
    "ServerSpec",
    "ServiceClass",
    "SolverName",
    "build_candidates",
    "min_cost_serving",
    "plan_capacity",
    "plan_from_assignments",
]

SOLVERS: tuple[str, ...] = ("greedy", "milp")


def plan_capacity(
    system: CapacitySystem,
    *,
    solver: SolverName | None = None,
    unlimited: bool | None = None,
    candidates: CandidateSet | None = None,
    time_limit_s: float | None = None,
) -> CapacityPlan:
    """Plan the allocation of `system`.

    `solver` defaults to `system.options.solver`; `unlimited` overrides `system.options.unlimited`; `candidates` (from `build_candidates`)
    may be passed to reuse them across solvers; `time_limit_s` bounds each HiGHS stage.
    """
    solver = solver or system.options.solver
    if solver not in SOLVERS:
        raise ValueError(f"solver {solver!r} is unknown: use one of {', '.join(SOLVERS)}")
    if unlimited is not None and unlimited != system.options.unlimited:
        system = replace(system, options=replace(system.options, unlimited=unlimited))
    if candidates is None:
        candidates = build_candidates(system)
    if system.options.unlimited:
        return make_plan(system, candidates, solve_unlimited(candidates, "value" if solver == "greedy" else "cost"), solver=solver,
                         status="optimal", unlimited=True)
    if solver == "greedy":
        return make_plan(system, candidates, solve_greedy(system, candidates), solver=solver,
                         status="heuristic", unlimited=False)
    outcome = solve_milp(system, candidates, time_limit_s=time_limit_s)
    return make_plan(system, candidates, outcome.assignments, solver=solver, status=outcome.status,
                     unlimited=False, message=outcome.message)


def plan_from_assignments(
    system: CapacitySystem, candidates: CandidateSet, assignments: dict[str, Assignment], *,
    solver: str, status: str = "optimal",
) -> CapacityPlan:
    """A plan from assignments chosen elsewhere (e.g. `min_cost_serving` for comparisons)."""
    return make_plan(system, candidates, assignments, solver=solver, status=status,
                     unlimited=system.options.unlimited)
