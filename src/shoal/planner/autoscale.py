"""How many replicas of which variant: horizontal and vertical autoscaling (pure).

Input: the demand of each query class (its requirements and smoothed arrival rate), the
variants of the task and the replicas running now. Output: a replica count per variant, every
change with its kind and reason, and the state the next call needs (when each variant's
demand first fell below its replicas, for the hold before scaling down).

`shoal`: every class is served by the variant that carries its load at the least cost. For a
rate R with slack s, a variant v needs ceil(R x s / capacity_at_slo(v)) replicas: more replicas
of the same variant is horizontal scaling, a higher-throughput variant (smaller model, or the
same model on another device) with fewer replicas is vertical; both are priced in one
comparison, so the cheaper one wins. Classes that can share a variant are pooled (a replica
serves both), which the per-class choice alone would miss. Capacity is judged at the tightest
SLO of the classes on a variant, so added replicas are replicas that keep the SLO. A class
stays on the variant serving it unless another is cheaper by more than `switch_margin`
(default 15%): a move costs a load and risks the SLO while it happens.

`infaas` (the baseline, after INFaaS's autoscaler): reactive per variant; one more replica
when the arrival rate exceeds what the replicas carry at their profiled peak (full batches,
whatever the SLO), one fewer after the rate has fit in one replica less for the hold time.
Vertical moves happen through query-time selection (new queries go to another variant).

Scale-ups apply at once; scale-downs only after `hold_s` of lower demand (no flapping), except
for a variant every class has moved away from, which goes once its replacement serves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from shoal.planner.modelless import ModellessVariant, Requirements, capacity_at_slo_rps, within_limits

__all__ = ["AutoscaleDecision", "AutoscaleState", "Demand", "ScalePlan", "plan_autoscale", "smooth_rate"]


def smooth_rate(previous_rps: float, latest_rps: float, smoothing: float = 0.6) -> float:
    """Fast up, slow down: a step up is provisioned for at once, a dip only gradually (the
    hold time guards scale-downs on top of that)."""
    return max(latest_rps, previous_rps + smoothing * (latest_rps - previous_rps))


@dataclass(frozen=True)
class Demand:
    """One query class: its requirements and its arrival rate (smoothed by the caller)."""

    name: str
    requirements: Requirements
    arrival_rps: float


@dataclass(frozen=True)
class AutoscaleDecision:
    variant: str
    from_replicas: int
    to_replicas: int
    kind: Literal["scale-up", "scale-down", "vertical-in", "vertical-out"]
    reason: str


@dataclass(frozen=True)
class AutoscaleState:
    below_since_s: Mapping[str, float] = field(default_factory=dict)
    """Per variant: since when the wanted replica count has been below the running one."""
    assignment: Mapping[str, str] = field(default_factory=dict)
    """Per query class: the variant provisioned for it last time (shoal)."""
    moved_from: Mapping[str, str] = field(default_factory=dict)
    """Per query class that moved: the variant it left, while that one still has replicas."""
    moved_at_s: Mapping[str, float] = field(default_factory=dict)
    """Per query class: when it last moved to another variant. It stays put for `hold_s` after:
    a rate wobbling across a replica step made the cheaper side swap every tick."""


@dataclass(frozen=True)
class ScalePlan:
    replicas: Mapping[str, int]
    decisions: tuple[AutoscaleDecision, ...]
    state: AutoscaleState
    assignment: Mapping[str, str] = field(default_factory=dict)
    """Query class -> the variant the plan provisions for it (shoal only)."""


def _options(variants: Sequence[ModellessVariant], requirements: Requirements) -> list[ModellessVariant]:
    """The variants a class may be provisioned on: within its accuracy and cost limits, and able
    to meet its SLO under load (twice a batch's latency fits). Failing that, those that meet it
    at least alone (batch 1 within the SLO), which `select_variant` serves: without them such a
    class had no variant, and the one serving it was scaled to 0."""
    within = [v for v in variants if within_limits(v, requirements)]
    under_load = [v for v in within if capacity_at_slo_rps(v, requirements.slo_ms) > 0]
    return under_load or [v for v in within if v.batch_latency_ms(1) <= requirements.slo_ms]


def _pool_replicas(variant: ModellessVariant, members: Sequence[Demand], slack: float) -> int:
    if not members:
        return 0
    rate = sum(d.arrival_rps for d in members)
    # Best effort for an SLO under twice the batch-1 latency: batch-1 throughput.
    capacity = capacity_at_slo_rps(variant, min(d.requirements.slo_ms for d in members)) or 1000.0 / variant.batch_latency_ms(1)
    return max(1, math.ceil(rate * slack / capacity - 1e-9))


def _shoal_targets(
    demands: Sequence[Demand],
    variants: Sequence[ModellessVariant],
    current: Mapping[str, int],
    previous: Mapping[str, str],
    slack: float,
    switch_margin: float,
    settled: frozenset[str] = frozenset(),
):
    by_name = {v.name: v for v in variants}
    active = [d for d in demands if d.arrival_rps > 0]
    options = {d.name: _options(variants, d.requirements) for d in active}

    def total_cost(assignment: Mapping[str, str]) -> float:
        cost = 0.0
        for name, variant in by_name.items():
            members = [d for d in active if assignment.get(d.name) == name]
            cost += _pool_replicas(variant, members, slack) * variant.price_usd_per_hour
        return cost

    # Start from where each class is served now (when that is still allowed and running): a
    # move costs a load and risks the SLO while it happens, so it must pay for itself.
    assignment: dict[str, str] = {}
    for demand in active:
        running = [v for v in options[demand.name] if current.get(v.name, 0) > 0]
        if previous.get(demand.name) in {v.name for v in running}:
            assignment[demand.name] = previous[demand.name]
        elif running:  # first call (or the old variant is gone): what already runs counts as current
            assignment[demand.name] = min(running, key=lambda v: (v.price_usd_per_hour, -v.accuracy, v.name)).name
    for demand in active:
        if demand.name not in assignment and options[demand.name]:
            assignment[demand.name] = min(
                options[demand.name],
                key=lambda v: (total_cost({**assignment, demand.name: v.name}), -v.accuracy, v.name),
            ).name
    improved = True
    while improved:  # move a class (onto another class's variant, or another device) when clearly cheaper
        improved = False
        for demand in active:
            if demand.name not in assignment or demand.name in settled:
                continue
            best_cost = total_cost(assignment)
            for variant in options[demand.name]:
                trial = {**assignment, demand.name: variant.name}
                if total_cost(trial) < best_cost * (1.0 - switch_margin) - 1e-12:
                    assignment, best_cost, improved = trial, total_cost(trial), True
    targets = {
        name: _pool_replicas(variant, [d for d in active if assignment.get(d.name) == name], slack)
        for name, variant in by_name.items()
    }
    return targets, assignment


def _infaas_targets(variants: Sequence[ModellessVariant], current: Mapping[str, int], arrival_by_variant: Mapping[str, float]):
    targets = {}
    for variant in variants:
        replicas = current.get(variant.name, 0)
        rate = arrival_by_variant.get(variant.name, 0.0)
        peak = variant.peak_throughput_rps
        if replicas and rate > replicas * peak:
            targets[variant.name] = replicas + 1
        elif replicas and rate <= (replicas - 1) * peak:
            targets[variant.name] = replicas - 1
        else:
            targets[variant.name] = replicas
    return targets


def plan_autoscale(
    demands: Sequence[Demand],
    variants: Sequence[ModellessVariant],
    current_replicas: Mapping[str, int],
    state: AutoscaleState,
    now_s: float,
    *,
    policy: Literal["shoal", "infaas"] = "shoal",
    slack: float = 1.05,
    hold_s: float = 10.0,
    switch_margin: float = 0.15,
    arrival_by_variant: Mapping[str, float] | None = None,
    max_replicas: int | None = None,
    ready_replicas: Mapping[str, int] | None = None,
) -> ScalePlan:
    """The replica count per variant; `arrival_by_variant` (queries routed to each) drives `infaas`;
    `max_replicas` caps every count (the workers a local pool has); `ready_replicas` (serving,
    not loading) lets a variant that every class has left go without waiting for the hold."""
    if slack < 1.0:
        raise ValueError(f"slack must be >= 1, got {slack}")
    assignment: dict[str, str] = {}
    moved_at = {name: at_s for name, at_s in state.moved_at_s.items() if now_s - at_s < hold_s}
    if policy == "shoal":
        settled = frozenset(name for name in moved_at if state.assignment.get(name) is not None)
        wanted, assignment = _shoal_targets(demands, variants, current_replicas, state.assignment, slack, switch_margin, settled)
    elif policy == "infaas":
        wanted = _infaas_targets(variants, current_replicas, arrival_by_variant or {})
    else:
        raise ValueError(f"unknown autoscaling policy {policy!r}: use shoal or infaas")
    if max_replicas is not None:  # a pool with a fixed number of workers cannot hold more
        wanted = {name: min(count, max_replicas) for name, count in wanted.items()}
    replicas: dict[str, int] = {}
    decisions: list[AutoscaleDecision] = []
    below_since = dict(state.below_since_s)
    moved_from = dict(state.moved_from)
    for demand_name, variant_name in assignment.items():
        previous = state.assignment.get(demand_name)
        if previous is not None and previous != variant_name:
            moved_from[demand_name] = previous
            moved_at[demand_name] = now_s
    for variant in variants:
        name, now = variant.name, current_replicas.get(variant.name, 0)
        target = wanted.get(name, 0)
        if target >= now:
            below_since.pop(name, None)
            replicas[name] = target
            if target > now:
                users = sorted(d for d, v in assignment.items() if v == name)
                kind = "vertical-in" if now == 0 and policy == "shoal" else "scale-up"
                reason = (f"carries {', '.join(users)} at the least cost" if users else "arrivals above the replicas' peak throughput")
                decisions.append(AutoscaleDecision(name, now, target, kind, f"{reason}: {now} -> {target} replicas"))
            continue
        since = below_since.setdefault(name, now_s)
        moved = [d for d, v in moved_from.items() if v == name and assignment.get(d) not in (None, name)]
        replaced = bool(moved) and target == 0 and ready_replicas is not None and all(
            ready_replicas.get(assignment[d], 0) >= wanted.get(assignment[d], 0) for d in moved
        )
        if replaced:
            # A vertical move already had to beat the switch margin; once its new replicas
            # serve, keeping the old ones through the hold only doubles the bill.
            replicas[name] = 0
            below_since.pop(name, None)
            for demand_name in moved:
                moved_from.pop(demand_name, None)
            destinations = ", ".join(sorted({assignment[d] for d in moved}))
            decisions.append(AutoscaleDecision(name, now, 0, "vertical-out", f"{', '.join(sorted(moved))} moved to {destinations}, which now serves"))
        elif now_s - since >= hold_s:
            replicas[name] = target
            below_since.pop(name, None)
            decisions.append(AutoscaleDecision(name, now, target, "scale-down", f"demand fits {target} replicas for {now_s - since:.0f} s (hold {hold_s:g} s)"))
        else:
            replicas[name] = now
    moved_from = {d: v for d, v in moved_from.items() if replicas.get(v, 0) > 0}
    return ScalePlan(replicas, tuple(decisions), AutoscaleState(below_since, assignment, moved_from, moved_at), assignment)
