"""Saturation policies: share what is left of the pool among servers not served in full.

A server that could not get any of its candidates in full may still get some replicas:

- `None`: nothing (the server stays unserved);
- `PriorityExhaustive`: servers in order, each takes as many replicas as it needs and the pool
  allows on its first candidate with at least one replica available;
- `RoundRobin`: one replica at a time to each server in turn, until none can take more;
- `PriorityRoundRobin`: round robin within each priority group, groups in priority order.

Unlike Inferno's round robin, a server never receives more replicas than its candidate needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, MutableMapping, Sequence

from shoal.planner.capacity.model import Candidate

__all__ = ["Assignment", "Waiting", "share_remaining", "priority_groups"]


@dataclass(frozen=True)
class Assignment:
    """`num_replicas` of `candidate` given to its server (fewer than needed when partial)."""

    candidate: Candidate
    num_replicas: int

    @property
    def partial(self) -> bool:
        return self.num_replicas < self.candidate.num_replicas

    @property
    def units(self) -> int:
        return self.num_replicas * self.candidate.units_per_replica

    @property
    def cost_cents_per_hour(self) -> float:
        if self.candidate.num_replicas == 0:
            return self.candidate.cost_cents_per_hour
        return self.candidate.cost_cents_per_hour * self.num_replicas / self.candidate.num_replicas


@dataclass(frozen=True)
class Waiting:
    """A server waiting for best-effort replicas: its priority and candidates in order."""

    server: str
    priority: int
    candidates: tuple[Candidate, ...]


def priority_groups(items: Sequence[Waiting]) -> list[list[Waiting]]:
    """Consecutive runs of equal priority (the input is already in priority order)."""
    groups: list[list[Waiting]] = []
    for item in items:
        if groups and groups[-1][0].priority == item.priority:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def _available(pool: MutableMapping[str, int] | None, type_name: str) -> float:
    return float("inf") if pool is None else pool.get(type_name, 0)


def _take(pool: MutableMapping[str, int] | None, type_name: str, units: int) -> None:
    if pool is not None:
        pool[type_name] = pool.get(type_name, 0) - units


def _exhaustive(waiting: Iterable[Waiting], pool: MutableMapping[str, int] | None) -> dict[str, Assignment]:
    result: dict[str, Assignment] = {}
    for item in waiting:
        for candidate in item.candidates:
            if candidate.units_per_replica <= 0:
                continue
            fit = min(int(_available(pool, candidate.accelerator_type) // candidate.units_per_replica),
                      candidate.num_replicas)
            if fit > 0:
                _take(pool, candidate.accelerator_type, fit * candidate.units_per_replica)
                result[item.server] = Assignment(candidate, fit)
                break
    return result


def _round_robin(waiting: Sequence[Waiting], pool: MutableMapping[str, int] | None) -> dict[str, Assignment]:
    chosen: dict[str, Candidate] = {}
    counts: dict[str, int] = {}
    active = [item.server for item in waiting]
    by_name = {item.server: item for item in waiting}
    while active:
        still_active = []
        for name in active:
            candidate = chosen.get(name)
            if candidate is None:
                candidate = next(
                    (c for c in by_name[name].candidates
                     if c.units_per_replica > 0 and _available(pool, c.accelerator_type) >= c.units_per_replica),
                    None,
                )
                if candidate is None:
                    continue
                chosen[name] = candidate
            given = counts.get(name, 0)
            if given < candidate.num_replicas and _available(pool, candidate.accelerator_type) >= candidate.units_per_replica:
                _take(pool, candidate.accelerator_type, candidate.units_per_replica)
                counts[name] = given + 1
                still_active.append(name)
        active = still_active
    return {name: Assignment(chosen[name], count) for name, count in counts.items()}


def share_remaining(
    policy: str, waiting: Sequence[Waiting], pool: MutableMapping[str, int] | None
) -> dict[str, Assignment]:
    """Best-effort assignments under `policy`; `pool` (units left per type) is updated in place."""
    if policy == "None" or not waiting:
        return {}
    if policy == "PriorityExhaustive":
        return _exhaustive(waiting, pool)
    if policy == "RoundRobin":
        return _round_robin(waiting, pool)
    if policy == "PriorityRoundRobin":
        result: dict[str, Assignment] = {}
        for group in priority_groups(waiting):
            result.update(_round_robin(group, pool))
        return result
    raise ValueError(f"saturation policy {policy!r} is unknown")
