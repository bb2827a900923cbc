"""Model-less serving: which variant answers a query, given what the user requires (pure).

A query names a task (a family) and requirements: a latency SLO, a minimum accuracy and a
maximum cost per 1000 queries. Every variant is described by its profile on one device (batch
latency table, load time), its accuracy and its device's price, plus live state: replicas
serving, replicas loading, queue length, arrival rate and measured latency. From the live
numbers each variant is in one state:

    inactive     no replica holds it
    loading      replicas are being loaded, none serves yet
    active       serving within its profile
    overloaded   arrival rate above what its replicas can carry (profiled peak x overload_factor)
    interfered   measured latency above the profile by more than interference_factor

Two selection procedures share these types:

* `infaas` (the baseline, after INFaaS's master): candidates meet the accuracy and cost limits and
  have a profiled batch-1 latency within the SLO; prefer an active (not overloaded, not
  interfered) one, cheapest first; else load the cheapest inactive one whose load time plus
  batch-1 latency fits the SLO; else none.
* `shoal`: the same preference order, but a variant "fits" only if the predicted time for *this*
  query does: the batch in flight, the queue ahead of it in full batches, then its own batch,
  on the least-loaded replica. Interfered replicas are judged on their measured slowdown
  rather than skipped outright; among fitting active variants the cheapest per query wins.

When nothing can meet the requirements the answer is a refusal listing what relaxing each
requirement would give (`alternatives`), never a silent downgrade.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from typing import Literal

__all__ = [
    "Alternative",
    "LiveVariant",
    "ModellessVariant",
    "Requirements",
    "SelectionDecision",
    "VariantState",
    "alternatives",
    "batch_size_for_slo",
    "capacity_at_slo_rps",
    "classify_state",
    "cost_per_1000_usd",
    "predicted_latency_ms",
    "replica_finish_ms",
    "select_variant",
    "within_limits",
]


class VariantState(str, Enum):
    INACTIVE = "inactive"
    LOADING = "loading"
    ACTIVE = "active"
    OVERLOADED = "overloaded"
    INTERFERED = "interfered"


@dataclass(frozen=True)
class ModellessVariant:
    """What is known of a variant before it serves: profile, accuracy, price of its device.

    latency_ms_by_batch[n - 1] is the profiled latency of a batch of n (non-decreasing).
    """

    name: str
    task: str
    accuracy: float
    device: str
    price_usd_per_hour: float
    latency_ms_by_batch: tuple[float, ...]
    load_time_ms: float

    def __post_init__(self) -> None:
        if not self.latency_ms_by_batch or any(not (v > 0 and math.isfinite(v)) for v in self.latency_ms_by_batch):
            raise ValueError(f"variant {self.name!r}: latency_ms_by_batch needs positive, finite latencies")
        if self.price_usd_per_hour < 0:
            raise ValueError(f"variant {self.name!r}: price_usd_per_hour must be >= 0")

    @property
    def max_batch_size(self) -> int:
        return len(self.latency_ms_by_batch)

    def batch_latency_ms(self, batch_size: int) -> float:
        return self.latency_ms_by_batch[min(max(batch_size, 1), self.max_batch_size) - 1]

    @cached_property  # asked per query and per replica check; the table never changes
    def peak_throughput_rps(self) -> float:
        """Requests/s of one replica running full batches back to back (ignores any SLO)."""
        return max(b * 1000.0 / self.batch_latency_ms(b) for b in range(1, self.max_batch_size + 1))


def capacity_at_slo_rps(variant: ModellessVariant, slo_ms: float) -> float:
    """Requests/s one replica carries with every request inside `slo_ms`.

    Worst case for a request under dynamic batching: it arrives just after a batch of b started,
    waits that batch out and then runs in the next batch of b, so 2 x latency(b) must fit. The
    best such b gives the capacity; 0 when even batch 1 cannot make it twice.
    """
    best = 0.0
    for b in range(1, variant.max_batch_size + 1):
        latency = variant.batch_latency_ms(b)
        if 2.0 * latency <= slo_ms:
            best = max(best, b * 1000.0 / latency)
    return best


def cost_per_1000_usd(variant: ModellessVariant) -> float:
    """Price of 1000 queries on a fully used replica (the device's $/hour over its peak rate)."""
    return variant.price_usd_per_hour / 3600.0 / variant.peak_throughput_rps * 1000.0


@dataclass(frozen=True)
class LiveVariant:
    """Live state of a variant, as the runtime or the simulator measures it."""

    variant: ModellessVariant
    replicas: int = 0
    loading_replicas: int = 0
    queue_lengths: tuple[int, ...] = ()
    """Requests waiting per serving replica (not counting the batch in flight)."""
    busy_ms: tuple[float, ...] = ()
    """Time left of the batch in flight per serving replica (0 when idle)."""
    arrival_rps: float = 0.0
    measured_latency_ms: float | None = None
    """Recent batch-1-equivalent latency (measured / profiled for the same batch sizes x profile)."""
    admission_margin_ms: float = 0.0
    """What the server's admission adds to a prediction for this variant now (the error it has
    learnt, see `shoal.runtime.variant_queue.VariantQueue.observe_finishes`): a variant is only worth
    choosing if admission will then take the query. The simulator leaves it at 0: it does not model
    the margin (its batch times vary only by a small log-normal noise)."""
    predicted_finish_ms: float | None = None
    """The server's own prediction of when a query admitted now would be answered (what its
    admission checks, before the margin), which replaces the per-replica estimate from
    `queue_lengths` and `busy_ms`: a variant chosen on a different estimate than admission's is
    refused by admission (when this one is lower) or passed over needlessly (when higher). The
    simulator leaves it None: its servers are the per-replica model."""


@dataclass(frozen=True)
class Requirements:
    slo_ms: float
    min_accuracy: float = 0.0
    max_cost_per_1000_usd: float | None = None

    def __post_init__(self) -> None:
        if not self.slo_ms > 0:
            raise ValueError(f"slo_ms must be > 0, got {self.slo_ms}")
        if not 0.0 <= self.min_accuracy <= 1.0:
            raise ValueError(f"min_accuracy must be within [0, 1], got {self.min_accuracy}")
        if self.max_cost_per_1000_usd is not None and not self.max_cost_per_1000_usd > 0:
            raise ValueError(f"max_cost_per_1000_usd must be > 0, got {self.max_cost_per_1000_usd}")


def classify_state(live: LiveVariant, *, overload_factor: float = 1.0, interference_factor: float = 1.5) -> VariantState:
    if live.replicas == 0:
        return VariantState.LOADING if live.loading_replicas > 0 else VariantState.INACTIVE
    if live.measured_latency_ms is not None and live.measured_latency_ms > live.variant.batch_latency_ms(1) * interference_factor:
        return VariantState.INTERFERED
    if live.arrival_rps > live.replicas * live.variant.peak_throughput_rps * overload_factor:
        return VariantState.OVERLOADED
    return VariantState.ACTIVE


def batch_size_for_slo(variant: ModellessVariant, slo_ms: float) -> int:
    """The batch a deadline-aware server runs under load: the largest b with 2 x latency(b) <= SLO."""
    best = 1
    for b in range(1, variant.max_batch_size + 1):
        if 2.0 * variant.batch_latency_ms(b) <= slo_ms:
            best = b
    return best


def replica_finish_ms(variant: ModellessVariant, waiting: int, busy_ms: float, slo_ms: float, slowdown: float = 1.0) -> float:
    """When a query joining a replica now is answered: the batch in flight, the queue ahead of it
    in batches of the size the deadline allows, then its own batch."""
    batch = batch_size_for_slo(variant, slo_ms)
    batches_ahead, position = divmod(waiting, batch)
    return busy_ms + (batches_ahead * variant.batch_latency_ms(batch) + variant.batch_latency_ms(position + 1)) * slowdown


def predicted_latency_ms(live: LiveVariant, slo_ms: float) -> float:
    """Time until a query admitted now is answered, on the replica that answers it soonest."""
    if live.replicas == 0:
        return math.inf
    if live.predicted_finish_ms is not None:
        return live.admission_margin_ms + live.predicted_finish_ms
    slowdown = 1.0
    if live.measured_latency_ms is not None:
        slowdown = max(1.0, live.measured_latency_ms / live.variant.batch_latency_ms(1))
    queues = live.queue_lengths or (0,) * live.replicas
    busy = live.busy_ms or (0.0,) * live.replicas
    return live.admission_margin_ms + min(replica_finish_ms(live.variant, waiting, busy_ms, slo_ms, slowdown) for waiting, busy_ms in zip(queues, busy))


@dataclass(frozen=True)
class Alternative:
    """What relaxing one requirement would give: the new value and the variant it would get."""

    relax: Literal["slo_ms", "min_accuracy", "max_cost_per_1000_usd"]
    value: float
    variant: str
    accuracy: float
    cost_per_1000_usd: float
    latency_ms: float


@dataclass(frozen=True)
class SelectionDecision:
    """`action` is "serve" (an active variant), "load" (start it, the query waits) or "reject"."""

    action: Literal["serve", "load", "reject"]
    variant: str | None
    reason: str
    states: Mapping[str, VariantState] = field(default_factory=dict)
    alternatives: tuple[Alternative, ...] = ()


def within_limits(variant: ModellessVariant, requirements: Requirements) -> bool:
    """Within the query's accuracy floor and price cap (variant selection and autoscaling alike)."""
    cap = requirements.max_cost_per_1000_usd
    return variant.accuracy >= requirements.min_accuracy - 1e-12 and (cap is None or cost_per_1000_usd(variant) <= cap + 1e-12)


def select_variant(
    requirements: Requirements,
    variants: Sequence[LiveVariant],
    *,
    policy: Literal["shoal", "infaas"] = "shoal",
    overload_factor: float = 1.0,
    interference_factor: float = 1.5,
) -> SelectionDecision:
    states = {live.variant.name: classify_state(live, overload_factor=overload_factor, interference_factor=interference_factor) for live in variants}
    allowed = [live for live in variants if within_limits(live.variant, requirements)]

    def by_cost(live: LiveVariant):
        return (cost_per_1000_usd(live.variant), -live.variant.accuracy, live.variant.name)

    if policy == "infaas":
        fitting = [live for live in allowed if live.variant.batch_latency_ms(1) <= requirements.slo_ms]
        running = [live for live in fitting if states[live.variant.name] is VariantState.ACTIVE]
        if running:
            chosen = min(running, key=by_cost)
            return SelectionDecision("serve", chosen.variant.name, "cheapest running variant meeting the profile", states)
        busy = [live for live in fitting if live.replicas > 0]
        if busy and not any(live.replicas == 0 and live.variant.load_time_ms + live.variant.batch_latency_ms(1) <= requirements.slo_ms for live in fitting):
            # INFaaS has no admission control: with nothing better to do it queues the query on
            # an overloaded or interfered variant and lets the autoscaler catch up.
            chosen = min(busy, key=by_cost)
            return SelectionDecision("serve", chosen.variant.name, f"cheapest running variant, {states[chosen.variant.name].value}", states)
    elif policy == "shoal":
        serving = [
            live for live in allowed
            if live.replicas > 0 and states[live.variant.name] is not VariantState.OVERLOADED
            and predicted_latency_ms(live, requirements.slo_ms) <= requirements.slo_ms
        ]
        if serving:
            chosen = min(serving, key=by_cost)
            return SelectionDecision(
                "serve", chosen.variant.name, f"cheapest active variant predicted in time ({predicted_latency_ms(chosen, requirements.slo_ms):.1f} ms)", states
            )
        fitting = allowed
    else:
        raise ValueError(f"unknown model-less policy {policy!r}: use shoal or infaas")
    loadable = [
        live for live in fitting
        if live.replicas == 0 and live.variant.load_time_ms + live.variant.batch_latency_ms(1) <= requirements.slo_ms
    ]
    if loadable:
        chosen = min(loadable, key=by_cost)
        verb = "already loading" if states[chosen.variant.name] is VariantState.LOADING else "load"
        return SelectionDecision("load", chosen.variant.name, f"{verb}: cheapest variant whose load time fits the SLO", states)
    return SelectionDecision(
        "reject", None, _refusal_reason(requirements, variants), states, alternatives(requirements, [live.variant for live in variants])
    )


def _refusal_reason(requirements: Requirements, variants: Sequence[LiveVariant]) -> str:
    if not variants:
        return "the task has no registered variants"
    accurate = [live for live in variants if live.variant.accuracy >= requirements.min_accuracy - 1e-12]
    if not accurate:
        best = max(live.variant.accuracy for live in variants)
        return f"no variant reaches min_accuracy {requirements.min_accuracy:g} (best: {best:g})"
    if not [live for live in accurate if within_limits(live.variant, requirements)]:
        cheapest = min(cost_per_1000_usd(live.variant) for live in accurate)
        return f"no accurate-enough variant costs at most {requirements.max_cost_per_1000_usd:g} $ per 1000 queries (cheapest: {cheapest:.4g})"
    return f"no variant within the limits can answer within {requirements.slo_ms:g} ms now (busy, or its load time does not fit)"


def alternatives(requirements: Requirements, variants: Sequence[ModellessVariant]) -> tuple[Alternative, ...]:
    """For each requirement, the least relaxation that makes some variant feasible on an idle replica."""
    found: list[Alternative] = []

    def option(relax, value, variant):
        return Alternative(relax, value, variant.name, variant.accuracy, cost_per_1000_usd(variant), variant.batch_latency_ms(1))

    slo_candidates = [v for v in variants if within_limits(v, requirements)]
    if slo_candidates:
        fastest = min(slo_candidates, key=lambda v: (v.batch_latency_ms(1), cost_per_1000_usd(v)))
        if fastest.batch_latency_ms(1) > requirements.slo_ms:
            found.append(option("slo_ms", math.ceil(fastest.batch_latency_ms(1) * 10) / 10, fastest))
    cap = requirements.max_cost_per_1000_usd
    in_time = [v for v in variants if v.batch_latency_ms(1) <= requirements.slo_ms]
    accuracy_candidates = [v for v in in_time if cap is None or cost_per_1000_usd(v) <= cap + 1e-12]
    if accuracy_candidates:
        best = max(accuracy_candidates, key=lambda v: (v.accuracy, -cost_per_1000_usd(v)))
        if best.accuracy < requirements.min_accuracy:
            found.append(option("min_accuracy", best.accuracy, best))
    cost_candidates = [v for v in in_time if v.accuracy >= requirements.min_accuracy - 1e-12]
    if cost_candidates and cap is not None:
        cheapest = min(cost_candidates, key=cost_per_1000_usd)
        if cost_per_1000_usd(cheapest) > cap:
            found.append(option("max_cost_per_1000_usd", cost_per_1000_usd(cheapest), cheapest))
    return tuple(found)
