"""Edge scheduling (Jellyfish's problem): a variant and batch size per worker, a worker and an
input size per client, under end-to-end latency SLOs, maximising request-weighted accuracy.

    plan = plan_edge(instance, "shoal")          # or "jellyfish", "exact"
    plan.objective, plan.workers, plan.clients, plan.unserved

The latency model every policy is judged by is defined in `shoal.planner.edge.model`; every
plan returned here has been scored by `evaluate_plan`, and an assignment that breaks the
model is reported in `unserved` instead of being kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from shoal.core.errors import InvalidInputError
from shoal.planner.edge._tables import EdgeTables, build_tables
from shoal.planner.edge.exact import ExactOptions, solve_exact
from shoal.planner.edge.jellyfish import JellyfishConfig, solve_jellyfish
from shoal.planner.edge.model import (
    ClientAssignment,
    ClientOutcome,
    EdgeClient,
    EdgeEvaluation,
    EdgeInstance,
    EdgePlan,
    EdgeSettings,
    EdgeVariant,
    EdgeWorker,
    InputOption,
    WorkerDecision,
    capacity_fps,
    end_to_end_ms,
    evaluate_plan,
    upload_ms,
    validate_instance,
)
from shoal.planner.edge.shoal_policy import ShoalOptions, solve_shoal

__all__ = [
    "POLICIES",
    "ClientAssignment",
    "ClientOutcome",
    "EdgeClient",
    "EdgeEvaluation",
    "EdgeInstance",
    "EdgePlan",
    "EdgeSettings",
    "EdgeVariant",
    "EdgeWorker",
    "ExactOptions",
    "InputOption",
    "JellyfishConfig",
    "Policy",
    "ShoalOptions",
    "WorkerDecision",
    "capacity_fps",
    "end_to_end_ms",
    "evaluate_plan",
    "plan_edge",
    "upload_ms",
    "validate_instance",
]

Policy = Literal["shoal", "jellyfish", "exact"]
POLICIES: tuple[str, ...] = ("shoal", "jellyfish", "exact")


def plan_edge(
    instance: EdgeInstance,
    policy: Policy = "shoal",
    *,
    seed: int = 0,
    exact_options: ExactOptions | None = None,
    jellyfish_config: JellyfishConfig | None = None,
    shoal_options: ShoalOptions | None = None,
) -> EdgePlan:
    """Plan with one policy and score the result with the shared model.

    `seed` drives Jellyfish's simulated annealing (the other policies are deterministic).
    Raises InvalidInputError for a malformed instance or an unknown policy; an instance in
    which some or all clients cannot be served is a plan with that status, not an error.
    """
    validate_instance(instance)
    solvers: dict[str, Callable[[EdgeTables], tuple[list, list, str, dict]]] = {
        "shoal": lambda tables: _run_shoal(tables, shoal_options or ShoalOptions()),
        "jellyfish": lambda tables: _run_jellyfish(tables, jellyfish_config or JellyfishConfig(), seed),
        "exact": lambda tables: _run_exact(tables, exact_options or ExactOptions()),
    }
    if policy not in solvers:
        raise InvalidInputError(f"policy {policy!r} is not known; use one of {', '.join(POLICIES)}")
    tables = build_tables(instance)
    configs, assignment, optimality, stats = solvers[policy](tables)
    workers, clients = tables.decode(configs, assignment)
    return score_plan(instance, policy, workers, clients, optimality=optimality, stats=stats)


def score_plan(
    instance: EdgeInstance,
    policy: str,
    workers: dict[str, WorkerDecision],
    clients: dict[str, ClientAssignment | None],
    *,
    optimality: str = "heuristic",
    stats: dict | None = None,
) -> EdgePlan:
    """Evaluate a proposed plan; assignments the shared model rejects become unserved."""
    evaluation = evaluate_plan(instance, workers, clients)
    unserved = evaluation.unserved
    kept = {name: (None if name in unserved else assignment) for name, assignment in clients.items()}
    served = len(instance.clients) - len(unserved)
    if not unserved:
        status = "all_served"
    elif served == 0:
        status = "none_served"
    else:
        status = "some_unserved"
    return EdgePlan(
        policy=policy,
        workers=workers,
        clients=kept,
        objective=evaluation.objective,
        status=status,
        unserved=unserved,
        optimality=optimality,  # type: ignore[arg-type]
        stats={"served_fraction": evaluation.served_fraction, **(stats or {})},
    )


def _run_shoal(tables: EdgeTables, options: ShoalOptions):
    result = solve_shoal(tables, options)
    return result.configs, result.assignment, "heuristic", {"moves": result.moves, "pair_work": result.work}


def _run_jellyfish(tables: EdgeTables, config: JellyfishConfig, seed: int):
    result = solve_jellyfish(tables, config, seed=seed)
    stats = {"sa_iterations": result.iterations, "mappings_computed": result.mappings_computed}
    return result.configs, result.assignment, "heuristic", stats


def _run_exact(tables: EdgeTables, options: ExactOptions):
    result = solve_exact(tables, options)
    return result.configs, result.assignment, result.optimality, {"solver": result.solver_message, "mip_gap": result.mip_gap}
