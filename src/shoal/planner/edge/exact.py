"""`exact`: the edge scheduling problem solved to optimality with HiGHS (scipy.optimize.milp).

Optimal for the shared model of `model.py` (within `mip_rel_gap`), so it is the yardstick of
the other policies and can run online for small instances (2 workers: about a second).

A *configuration* (v, k) is a variant v at batch size batches[k]; a client on a worker of
device d running (v, k) sends its best feasible input option, worth
``fps * accuracy * switch factor``; the formulation is in `_exact_milp`. Two reductions keep
the optimum: a configuration is dropped when another on the same device carries at least its
capacity, serves every client at least as accurately and costs no more to switch to on any
worker (`_tables.useful_configs`); interchangeable workers (same device, same switching
costs) get their configurations in a fixed order.

`optimality` is "proven_optimal" when HiGHS proves the gap closed, "time_limit" otherwise (the
best plan found, possibly none, is returned).
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.planner.edge._exact_milp import solve_compact
from shoal.planner.edge._tables import EdgeTables, keep_loaded_variants, tighten_batches, useful_configs

__all__ = ["ExactOptions", "ExactResult", "solve_exact"]


@dataclass(frozen=True)
class ExactOptions:
    time_limit_s: float = 60.0
    mip_rel_gap: float = 1e-6
    break_symmetry: bool = True
    prune_dominated: bool = True


@dataclass(frozen=True)
class ExactResult:
    configs: list[tuple[int, int] | None]
    assignment: list[tuple[int, int] | None]
    optimality: str  # "proven_optimal" | "time_limit"
    solver_message: str
    mip_gap: float


def solve_exact(tables: EdgeTables, options: ExactOptions = ExactOptions()) -> ExactResult:
    configs_by_device = {
        d: useful_configs(tables, d, options.prune_dominated) for d in set(tables.worker_device.tolist())
    }
    configs, assignment, status, message, gap = solve_compact(
        tables,
        configs_by_device,
        time_limit_s=options.time_limit_s,
        mip_rel_gap=options.mip_rel_gap,
        break_symmetry=options.break_symmetry,
    )
    configs = tighten_batches(tables, configs, assignment)
    configs, assignment = keep_loaded_variants(tables, configs, assignment)
    optimality = "proven_optimal" if status == "optimal" else "time_limit"
    return ExactResult(configs, assignment, optimality, message, gap)
