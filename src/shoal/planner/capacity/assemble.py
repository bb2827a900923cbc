"""Turn per-server assignments into a `CapacityPlan` (one allocation per server, totals)."""

from __future__ import annotations

from typing import Mapping

from shoal.planner.capacity.candidates import CandidateSet
from shoal.planner.capacity.greedy import server_priorities
from shoal.planner.capacity.model import CapacityPlan, CapacitySystem, ServerAllocation
from shoal.planner.capacity.saturation import Assignment

__all__ = ["make_plan"]


def _unserved_reason(server: str, candidates: CandidateSet) -> str:
    if server in candidates.reasons:
        return candidates.reasons[server]
    return "the pool has too few cards left for any of its candidates"


def make_plan(
    system: CapacitySystem,
    candidates: CandidateSet,
    assignments: Mapping[str, Assignment],
    *,
    solver: str,
    status: str,
    unlimited: bool,
    message: str = "",
) -> CapacityPlan:
    priorities = server_priorities(system)
    allocations: list[ServerAllocation] = []
    used: dict[str, int] = {}
    total = 0.0
    for server in sorted(system.servers, key=lambda s: s.name):
        common = dict(
            server=server.name, service_class=server.service_class, model=server.model,
            priority=priorities[server.name], load=server.load,
        )
        assignment = assignments.get(server.name)
        if assignment is None:
            allocations.append(ServerAllocation(**common, status="unserved",
                                                reason=_unserved_reason(server.name, candidates)))
            continue
        candidate = assignment.candidate
        cost = assignment.cost_cents_per_hour
        total += cost
        if assignment.units:
            used[candidate.accelerator_type] = used.get(candidate.accelerator_type, 0) + assignment.units
        partial = assignment.partial
        allocations.append(ServerAllocation(
            **common,
            status="partial" if partial else "served",
            accelerator=candidate.accelerator, accelerator_type=candidate.accelerator_type,
            num_replicas=assignment.num_replicas, required_replicas=candidate.num_replicas,
            units=assignment.units, max_batch_size=candidate.max_batch_size,
            cost_cents_per_hour=cost, itl_ms=candidate.itl_ms, ttft_ms=candidate.ttft_ms,
            latency_ms=candidate.latency_ms, generation=candidate.generation,
            blocking_probability=candidate.blocking_probability,
            reason=(f"saturated: {assignment.num_replicas} of {candidate.num_replicas} replicas; "
                    "the latencies and blocking shown assume all of them") if partial else "",
        ))
    return CapacityPlan(
        solver=solver,
        status=status,  # type: ignore[arg-type]
        allocations=tuple(allocations),
        total_cost_cents_per_hour=total,
        units_used_by_type=dict(sorted(used.items())),
        units_available_by_type=None if unlimited else dict(sorted(system.capacity_by_type.items())),
        saturation_policy=system.options.saturation_policy,
        message=message,
    )
