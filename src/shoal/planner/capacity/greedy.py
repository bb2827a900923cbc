"""Inferno's greedy allocation with regret ordering, made deterministic.

Every server lists its candidates from lowest value (cost, or cost of moving from the current
allocation) up. Servers wait in a queue ordered by priority, then by *regret*: the value lost
if the current candidate is refused and the next one has to be taken (infinite for a last
candidate), then by the value of the current candidate, largest first. The head of the queue
takes its current candidate if the pool still holds enough cards of that type; otherwise it
moves on to its next candidate and is re-queued by its new regret. A server that runs out of
candidates waits for the saturation policy. Without `delayed_best_effort`, each priority group
is allocated and then given its best effort before the next group starts.

Inferno breaks ties in candidate and queue order by Go's map iteration and unstable sort;
here they fall to cost, card count and names, so one input always gives one answer.
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass, field
from typing import Mapping, MutableMapping

from shoal.planner.capacity.candidates import CandidateSet, candidate_order
from shoal.planner.capacity.model import Candidate, CapacitySystem
from shoal.planner.capacity.saturation import Assignment, Waiting, share_remaining

__all__ = ["solve_greedy", "solve_unlimited", "server_priorities"]


@dataclass
class _Entry:
    server: str
    priority: int
    candidates: tuple[Candidate, ...]
    index: int = 0
    key: tuple = field(default=())

    def refresh_key(self) -> None:
        current = self.candidates[self.index]
        if self.index + 1 < len(self.candidates):
            regret = self.candidates[self.index + 1].value - current.value
        else:
            regret = math.inf
        self.key = (self.priority, -regret, -current.value, self.server)

    def waiting(self) -> Waiting:
        return Waiting(self.server, self.priority, self.candidates)


def server_priorities(system: CapacitySystem) -> dict[str, int]:
    """Priority of each server's service class (0, the highest, when the class is unknown)."""
    priorities = {c.name: c.priority for c in system.service_classes}
    return {s.name: priorities.get(s.service_class, 0) for s in system.servers}


def solve_unlimited(candidates: CandidateSet, objective: str = "value") -> dict[str, Assignment]:
    """Unlimited pool: every server takes its best candidate by the solver's own objective:
    Inferno's value (the cost of moving from the current allocation, so staying put can beat a
    slightly cheaper move) for greedy, the cost alone for the MILP, whose limited-pool answer
    minimises cost; so that a large enough pool gives the same plan as no limit."""
    if objective not in ("value", "cost"):
        raise ValueError(f"objective {objective!r} is unknown: use value or cost")
    chosen = {
        server: options[0] if objective == "value" else min(options, key=lambda c: (c.cost_cents_per_hour, candidate_order(c)))
        for server, options in candidates.by_server.items() if options
    }
    return {server: Assignment(candidate, candidate.num_replicas) for server, candidate in chosen.items()}


def _allocate(entries: list[_Entry], pool: MutableMapping[str, int], result: dict[str, Assignment]) -> list[_Entry]:
    """Serve entries in regret order; return those that got none of their candidates."""
    for entry in entries:
        entry.refresh_key()
    queue = sorted(entries, key=lambda e: e.key)
    keys = [e.key for e in queue]
    left_out: list[_Entry] = []
    while queue:
        entry = queue.pop(0)
        keys.pop(0)
        candidate = entry.candidates[entry.index]
        if pool.get(candidate.accelerator_type, 0) >= candidate.units or candidate.units == 0:
            if candidate.units:
                pool[candidate.accelerator_type] -= candidate.units
            result[entry.server] = Assignment(candidate, candidate.num_replicas)
            continue
        entry.index += 1
        if entry.index == len(entry.candidates):
            left_out.append(entry)
            continue
        entry.refresh_key()
        position = bisect.bisect_left(keys, entry.key)
        keys.insert(position, entry.key)
        queue.insert(position, entry)
    return left_out


def solve_greedy(
    system: CapacitySystem, candidates: CandidateSet, pool: Mapping[str, int] | None = None
) -> dict[str, Assignment]:
    """Greedy assignment on the limited pool (`system.capacity_by_type` unless `pool` is given)."""
    remaining: dict[str, int] = dict(system.capacity_by_type if pool is None else pool)
    priorities = server_priorities(system)
    entries = [
        _Entry(server.name, priorities[server.name], candidates[server.name])
        for server in system.servers if candidates[server.name]
    ]
    for entry in entries:
        entry.refresh_key()
    entries.sort(key=lambda e: e.key)
    policy = system.options.saturation_policy
    result: dict[str, Assignment] = {}
    if system.options.delayed_best_effort:
        groups = [entries]
    else:
        groups = [list(group) for _, group in itertools.groupby(entries, key=lambda e: e.priority)]
    for group in groups:
        left_out = _allocate(group, remaining, result)
        result.update(share_remaining(policy, [e.waiting() for e in left_out], remaining))
    return result
