"""Discrete-event simulation of model-less serving: per-query selection plus autoscaling.

Applications send Poisson queries to a task with their requirements; the load follows a step
schedule. Every query is placed by `shoal.planner.modelless.select_variant` (the same pure
function the runtime calls) and queued at a replica; replicas are batching servers (a batch
of up to max_batch_size starts whenever the replica is free; its time is the profiled batch
latency times a log-normal noise). Every `tick_s` the autoscaler
(`shoal.planner.autoscale.plan_autoscale`) sees the smoothed arrival rates and the replica
counts, and its plan is applied: new replicas serve after their variant's load time, removed
replicas stop taking queries and leave once drained. A replica costs its device's hourly price
from creation to removal.

Policies: `shoal` (queue-aware selection, cost-minimal horizontal/vertical autoscaling with
slack), `infaas` (the INFaaS procedures; its workers batch whatever is queued up to the
variant's maximum, first come first served, and never drop) and `static_peak` (each
application's cheapest variant meeting its requirements, replicas sized for the peak rate for
the whole run). Under `shoal` and `static_peak` replicas run shoal's server: earliest deadline
first, the batch size from `shoal.planner.batching.decide_batch` (the largest batch that meets
the earliest deadline in it) and requests that can no longer make their deadline dropped.

A query violates its SLO when it is answered late, dropped or refused.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from shoal.planner.batching import decide_batch
from shoal.planner.autoscale import AutoscaleState, Demand, plan_autoscale, smooth_rate
from shoal.planner.modelless import LiveVariant, ModellessVariant, Requirements, capacity_at_slo_rps, replica_finish_ms, select_variant
from shoal.sim.engine import Engine

__all__ = ["Application", "ModellessResult", "ModellessScenario", "per_phase_oracle_cost_usd", "simulate_modelless", "POLICIES"]

POLICIES = ("shoal", "infaas", "static_peak")


@dataclass(frozen=True)
class Application:
    name: str
    task: str
    requirements: Requirements
    base_rps: float


@dataclass(frozen=True)
class ModellessScenario:
    variants: tuple[ModellessVariant, ...]
    applications: tuple[Application, ...]
    multipliers: tuple[float, ...] = (1, 2, 3, 4, 3, 2, 1)
    """Load relative to each application's base rate, one value per equal-length phase."""
    phase_s: float = 40.0
    tick_s: float = 1.0
    slack: float = 1.05
    hold_s: float = 10.0
    latency_noise_sigma: float = 0.05
    rate_smoothing: float = 0.6
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.multipliers or not all(math.isfinite(m) and m >= 0 for m in self.multipliers):
            raise ValueError(f"multipliers {self.multipliers!r}: give one finite load multiplier >= 0 per phase, at least one")
        if not (math.isfinite(self.phase_s) and self.phase_s > 0):
            raise ValueError(f"phase_s {self.phase_s!r}: give a phase length > 0 s")

    @property
    def duration_s(self) -> float:
        return self.phase_s * len(self.multipliers)

    def multiplier_at(self, time_s: float) -> float:
        return self.multipliers[min(int(time_s // self.phase_s), len(self.multipliers) - 1)]


@dataclass(order=True)
class _Query:
    deadline_s: float
    arrival_s: float
    app: int


@dataclass(eq=False)
class _Replica:
    variant: ModellessVariant
    created_s: float
    ready_s: float
    queue: list = field(default_factory=list)
    busy_until_s: float = 0.0
    draining: bool = False
    removed_s: float | None = None


@dataclass
class ModellessResult:
    policy: str
    queries: int
    slo_violations: int
    late: int
    dropped: int
    refused: int
    cost_usd: float
    cost_usd_by_device: dict[str, float]
    accuracy: float
    per_application: dict[str, dict[str, float]]
    replica_timeline: list[tuple[float, dict[str, int]]]
    cost_rate_timeline: list[tuple[float, float]]
    decisions: int

    @property
    def slo_violation_rate(self) -> float:
        return self.slo_violations / self.queries if self.queries else 0.0

    def to_json_dict(self) -> dict:
        return {
            "slo_violation_rate": self.slo_violation_rate,
            "cost_usd": self.cost_usd,
            "cost_usd_by_device": self.cost_usd_by_device,
            "accuracy": self.accuracy,
            "queries": self.queries,
            "late": self.late,
            "dropped": self.dropped,
            "refused": self.refused,
            "autoscaling_decisions": self.decisions,
            "per_application": self.per_application,
        }


class _Simulation:
    def __init__(self, scenario: ModellessScenario, policy: str):
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}: use one of {', '.join(POLICIES)}")
        self.scenario = scenario
        self.policy = policy
        self.engine = Engine()
        self.rng = np.random.default_rng(scenario.seed)
        self.noise_rng = np.random.default_rng(scenario.seed + 1)
        self.replicas: list[_Replica] = []
        self.apps = scenario.applications
        self.by_task = {app.task: [v for v in scenario.variants if v.task == app.task] for app in self.apps}
        self.arrivals_this_tick = [0] * len(self.apps)
        self.arrivals_by_variant_this_tick: dict[str, int] = {}
        self._last_variant_rates: dict[str, int] = {}
        self.smoothed_rps = [app.base_rps for app in self.apps]
        self.autoscale_state: dict[str, AutoscaleState] = {}  # per task
        self.stats = {app.name: {"queries": 0, "late": 0, "dropped": 0, "refused": 0, "answered": 0, "accuracy_sum": 0.0} for app in self.apps}
        self.timeline: list[tuple[float, dict[str, int]]] = []
        self.cost_rate_timeline: list[tuple[float, float]] = []  # $/hour of the replicas kept
        self.decisions = 0
        self.static_variant: dict[int, ModellessVariant] = {}

    # -- replicas -------------------------------------------------------------------------------
    def _add_replica(self, variant: ModellessVariant, ready_now: bool = False) -> _Replica:
        now = self.engine.now
        replica = _Replica(variant, now, now if ready_now else now + variant.load_time_ms / 1000.0)
        self.replicas.append(replica)
        self.engine.at(replica.ready_s, lambda: self._maybe_start(replica))
        return replica

    def _live(self, variant: ModellessVariant) -> list[_Replica]:
        return [r for r in self.replicas if r.variant is variant and r.removed_s is None and not r.draining]

    def _count(self, variant: ModellessVariant) -> int:
        return len(self._live(variant))

    def _remove(self, variant: ModellessVariant, count: int) -> None:
        now = self.engine.now
        # Loading replicas go first (nothing lost), then the least busy ones.
        candidates = sorted(self._live(variant), key=lambda r: (r.ready_s <= now, len(r.queue), r.busy_until_s))
        for replica in candidates[:count]:
            replica.draining = True
            if replica.ready_s > now and not replica.queue:
                replica.removed_s = now
            else:
                self._retire_if_idle(replica)

    def _retire_if_idle(self, replica: _Replica) -> None:
        if replica.draining and not replica.queue and replica.busy_until_s <= self.engine.now and replica.removed_s is None:
            replica.removed_s = self.engine.now

    # -- queries --------------------------------------------------------------------------------
    def _schedule_arrival(self, app_index: int) -> None:
        app = self.apps[app_index]
        rate = app.base_rps * self.scenario.multiplier_at(self.engine.now)
        if rate <= 0.0:  # a silent phase: look again when the next one starts
            next_phase_s = (self.engine.now // self.scenario.phase_s + 1) * self.scenario.phase_s
            if next_phase_s < self.scenario.duration_s:
                self.engine.at(next_phase_s, lambda: self._schedule_arrival(app_index))
            return
        gap = self.rng.exponential(1.0 / rate)
        next_s = self.engine.now + gap
        if next_s < self.scenario.duration_s:
            self.engine.at(next_s, lambda: self._arrive(app_index))

    def _arrive(self, app_index: int) -> None:
        self._schedule_arrival(app_index)
        now = self.engine.now
        app = self.apps[app_index]
        stats = self.stats[app.name]
        stats["queries"] += 1
        self.arrivals_this_tick[app_index] += 1
        query = _Query(now + app.requirements.slo_ms / 1000.0, now, app_index)
        replica = self._place(app_index, query)
        if replica is None:
            stats["refused"] += 1
            return
        self.arrivals_by_variant_this_tick[replica.variant.name] = self.arrivals_by_variant_this_tick.get(replica.variant.name, 0) + 1
        if self.policy == "infaas":
            replica.queue.append(query)  # first come, first served
        else:
            bisect.insort(replica.queue, query)  # earliest deadline first, as the runtime's queues
        self._maybe_start(replica)

    def _live_view(self, variant: ModellessVariant, arrival_rps: float) -> LiveVariant:
        now = self.engine.now
        serving = [r for r in self._live(variant) if r.ready_s <= now]
        loading = [r for r in self._live(variant) if r.ready_s > now]
        return LiveVariant(
            variant,
            replicas=len(serving),
            loading_replicas=len(loading),
            queue_lengths=tuple(len(r.queue) for r in serving),
            busy_ms=tuple(max(0.0, r.busy_until_s - now) * 1000.0 for r in serving),
            arrival_rps=arrival_rps,
        )

    def _place(self, app_index: int, query: _Query) -> _Replica | None:
        now = self.engine.now
        if self.policy == "static_peak":
            replicas = self._live(self.static_variant[app_index])
            return min(replicas, key=lambda r: (len(r.queue), r.busy_until_s)) if replicas else None
        app = self.apps[app_index]
        rates = self._variant_rates()
        views = [self._live_view(v, rates.get(v.name, 0.0)) for v in self.by_task[app.task]]
        decision = select_variant(app.requirements, views, policy=self.policy)
        if decision.action == "reject":
            return None
        variant = next(v for v in self.by_task[app.task] if v.name == decision.variant)
        replicas = self._live(variant)
        if decision.action == "load":
            loading = [r for r in replicas if r.ready_s > now]
            return loading[0] if loading else self._add_replica(variant)
        serving = [r for r in replicas if r.ready_s <= now]
        if self.policy == "shoal":
            slo_ms = app.requirements.slo_ms
            return min(serving, key=lambda r: replica_finish_ms(variant, len(r.queue), max(0.0, r.busy_until_s - now) * 1000.0, slo_ms))
        return min(serving, key=lambda r: (len(r.queue), r.busy_until_s))

    def _variant_rates(self) -> dict[str, float]:
        return {name: count / self.scenario.tick_s for name, count in self._last_variant_rates.items()}

    def _maybe_start(self, replica: _Replica) -> None:
        now = self.engine.now
        if replica.removed_s is not None or replica.ready_s > now or replica.busy_until_s > now or not replica.queue:
            self._retire_if_idle(replica)
            return
        variant = replica.variant
        if self.policy == "infaas":  # TF-Serving-style batching: whatever is queued, up to the max
            size = min(len(replica.queue), variant.max_batch_size)
        else:  # shoal's server (also under static provisioning): the runtime's batching rule
            window = replica.queue[: variant.max_batch_size * 2]
            decision = decide_batch([q.deadline_s * 1000.0 for q in window], now * 1000.0, variant.batch_latency_ms, variant.max_batch_size)
            for dropped in replica.queue[: decision.num_expired]:
                self.stats[self.apps[dropped.app].name]["dropped"] += 1
            del replica.queue[: decision.num_expired]
            size = decision.batch_size
            if size == 0:
                self._retire_if_idle(replica)
                return
        batch = replica.queue[:size]
        del replica.queue[:size]
        noise = float(np.exp(self.noise_rng.normal(0.0, self.scenario.latency_noise_sigma))) if self.scenario.latency_noise_sigma else 1.0
        replica.busy_until_s = now + variant.batch_latency_ms(size) * noise / 1000.0
        self.engine.at(replica.busy_until_s, lambda: self._finish(replica, batch))

    def _finish(self, replica: _Replica, batch: list[_Query]) -> None:
        now = self.engine.now
        for query in batch:
            stats = self.stats[self.apps[query.app].name]
            if now > query.deadline_s + 1e-12:
                stats["late"] += 1
            else:
                stats["answered"] += 1
                stats["accuracy_sum"] += replica.variant.accuracy
        self._maybe_start(replica)

    # -- control --------------------------------------------------------------------------------
    def _demands(self) -> list[Demand]:
        return [Demand(app.name, app.requirements, rate) for app, rate in zip(self.apps, self.smoothed_rps)]

    def _tick(self) -> None:
        alpha = self.scenario.rate_smoothing
        for index, count in enumerate(self.arrivals_this_tick):
            self.smoothed_rps[index] = smooth_rate(self.smoothed_rps[index], count / self.scenario.tick_s, alpha)
        self.arrivals_this_tick = [0] * len(self.apps)
        self._last_variant_rates = self.arrivals_by_variant_this_tick
        self.arrivals_by_variant_this_tick = {}
        if self.policy != "static_peak":
            self._autoscale()
        counts = {v.name: self._count(v) for v in self.scenario.variants if self._count(v)}
        prices = {v.name: v.price_usd_per_hour for v in self.scenario.variants}
        self.timeline.append((self.engine.now, counts))
        self.cost_rate_timeline.append((self.engine.now, sum(count * prices[name] for name, count in counts.items())))
        if self.engine.now + self.scenario.tick_s < self.scenario.duration_s:
            self.engine.after(self.scenario.tick_s, self._tick)

    def _autoscale(self) -> None:
        for task in {app.task for app in self.apps}:
            variants = self.by_task[task]
            demands = [d for d, app in zip(self._demands(), self.apps) if app.task == task]
            current = {v.name: self._count(v) for v in variants}
            plan = plan_autoscale(
                demands, variants, current, self.autoscale_state.get(task, AutoscaleState()), self.engine.now,
                policy=self.policy, slack=self.scenario.slack, hold_s=self.scenario.hold_s,
                arrival_by_variant=self._variant_rates(),
                ready_replicas={v.name: sum(1 for r in self._live(v) if r.ready_s <= self.engine.now) for v in variants},
            )
            self.autoscale_state[task] = plan.state
            self.decisions += len(plan.decisions)
            for variant in variants:
                change = plan.replicas[variant.name] - current[variant.name]
                for _ in range(max(0, change)):
                    self._add_replica(variant)
                if change < 0:
                    self._remove(variant, -change)

    # -- run ------------------------------------------------------------------------------------
    def _provision_start(self) -> None:
        if self.policy == "static_peak":
            peak = max(self.scenario.multipliers)
            for index, app in enumerate(self.apps):
                variant, count = _cheapest_for(self.by_task[app.task], app.requirements, app.base_rps * peak, self.scenario.slack)
                self.static_variant[index] = variant
                for _ in range(count):
                    self._add_replica(variant, ready_now=True)
            return
        # Both dynamic policies start from the same warm state: what shoal provisions for the base load.
        for task in {app.task for app in self.apps}:
            variants = self.by_task[task]
            demands = [d for d, app in zip(self._demands(), self.apps) if app.task == task]
            plan = plan_autoscale(demands, variants, {}, AutoscaleState(), 0.0, policy="shoal", slack=self.scenario.slack)
            for variant in variants:
                for _ in range(plan.replicas[variant.name]):
                    self._add_replica(variant, ready_now=True)

    def run(self) -> ModellessResult:
        self._provision_start()
        for index in range(len(self.apps)):
            self._schedule_arrival(index)
        self.engine.at(self.scenario.tick_s, self._tick)
        self.engine.run(self.scenario.duration_s + 60.0)  # let queues drain; arrivals stop at the end
        end = self.scenario.duration_s
        cost_by_device: dict[str, float] = {}
        for r in self.replicas:
            seconds = min(end, r.removed_s if r.removed_s is not None else end) - min(end, r.created_s)
            cost_by_device[r.variant.device] = cost_by_device.get(r.variant.device, 0.0) + r.variant.price_usd_per_hour * seconds / 3600.0
        cost = sum(cost_by_device.values())
        per_app = {}
        totals = {"queries": 0, "late": 0, "dropped": 0, "refused": 0, "answered": 0, "accuracy_sum": 0.0}
        for name, stats in self.stats.items():
            for key in totals:
                totals[key] += stats[key]
            violations = stats["late"] + stats["dropped"] + stats["refused"]
            # Queries still queued when the run ended count as violations too.
            unanswered = stats["queries"] - stats["answered"] - violations
            per_app[name] = {
                "queries": stats["queries"],
                "slo_violation_rate": (violations + unanswered) / stats["queries"] if stats["queries"] else 0.0,
                "accuracy": stats["accuracy_sum"] / stats["answered"] if stats["answered"] else 0.0,
            }
        violations = totals["queries"] - totals["answered"]
        return ModellessResult(
            policy=self.policy,
            queries=totals["queries"],
            slo_violations=violations,
            late=totals["late"],
            dropped=totals["dropped"],
            refused=totals["refused"],
            cost_usd=cost,
            cost_usd_by_device=cost_by_device,
            accuracy=totals["accuracy_sum"] / totals["answered"] if totals["answered"] else 0.0,
            per_application=per_app,
            replica_timeline=self.timeline,
            cost_rate_timeline=self.cost_rate_timeline,
            decisions=self.decisions,
        )


def _cheapest_for(variants: Sequence[ModellessVariant], requirements: Requirements, rate_rps: float, slack: float) -> tuple[ModellessVariant, int]:
    """Static provisioning: the variant meeting the requirements that carries `rate_rps` cheapest.
    An idle application (rate 0: a silent phase, or no base load) gets no replicas of the variant
    that would serve it."""
    idle = rate_rps <= 0
    sizing_rps = 1e-9 if idle else rate_rps  # which variants the planner would serve it with at all
    options = []
    for variant in variants:
        plan = plan_autoscale([Demand("static", requirements, sizing_rps)], [variant], {}, AutoscaleState(), 0.0, slack=slack)
        count = plan.replicas[variant.name]
        if count and capacity_at_slo_rps(variant, requirements.slo_ms) > 0:
            options.append((0 if idle else count * variant.price_usd_per_hour, -variant.accuracy, variant.name, variant, 0 if idle else count))
    if not options:
        raise ValueError(f"no variant can meet {requirements} at any load")
    _, _, _, variant, count = min(options, key=lambda option: option[:3])
    return variant, count


def simulate_modelless(scenario: ModellessScenario, policy: str) -> ModellessResult:
    return _Simulation(scenario, policy).run()


def per_phase_oracle_cost_usd(scenario: ModellessScenario, sizing: Literal["static", "shoal"] = "static") -> float:
    """What provisioning costs when every phase gets, from its first instant, the replicas its
    rate needs (no load time, no hold, no smoothing): sized as static provisioning sizes (the
    cheapest single variant per application) or by shoal's own planner (applications of a task
    pooled on shared variants, horizontal or vertical).

    Static-peak cost divided by this is what perfect reaction alone could save over provisioning
    for the peak with the same sizing rule: the load shape's share of any saving."""
    total_usd_per_hour_s = 0.0
    for multiplier in scenario.multipliers:
        if sizing == "static":
            for app in scenario.applications:
                candidates = [v for v in scenario.variants if v.task == app.task]
                variant, count = _cheapest_for(candidates, app.requirements, app.base_rps * multiplier, scenario.slack)
                total_usd_per_hour_s += count * variant.price_usd_per_hour * scenario.phase_s
        else:
            for task in sorted({app.task for app in scenario.applications}):
                candidates = [v for v in scenario.variants if v.task == task]
                demands = [Demand(app.name, app.requirements, app.base_rps * multiplier) for app in scenario.applications if app.task == task]
                plan = plan_autoscale(demands, candidates, {}, AutoscaleState(), 0.0, policy="shoal", slack=scenario.slack)
                total_usd_per_hour_s += sum(plan.replicas[v.name] * v.price_usd_per_hour for v in candidates) * scenario.phase_s
    return total_usd_per_hour_s / 3600.0
