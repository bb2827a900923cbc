"""Applying `shoal.planner.autoscale` to the running service (`shoal serve --autoscale`).

Each tick: turn the service's per-class request counters into smoothed arrival rates, build
the planner's view of every profiled variant, ask `plan_autoscale` for replica counts and set
them through the worker manager (replicas of the local backend are worker processes holding
the variant, so a count is capped by `--workers`). Every decision is logged with its reason and
counted in `shoal_autoscale_decisions_total{variant,kind}`; `shoal_replicas{variant}` shows
the result. Counts are capped at the number of workers.
"""

from __future__ import annotations

import logging
import time
from collections import deque

from prometheus_client import Counter, Gauge

from shoal.planner.autoscale import AutoscaleDecision, AutoscaleState, Demand, plan_autoscale, smooth_rate
from shoal.planner.modelless import Requirements
from shoal.runtime.modelless import modelless_variants

__all__ = ["Autoscaler"]

logger = logging.getLogger(__name__)


class Autoscaler:
    def __init__(self, service, *, interval_s: float):
        self.service = service
        self.interval_s = interval_s
        self.states: dict[str, AutoscaleState] = {}  # per family
        self.rates_rps: dict[tuple, float] = {}  # per query class
        self.seen: dict[tuple, int] = {}
        self.seen_by_variant: dict[str, int] = {}
        self.seen_by_exact_variant: dict[str, int] = {}
        self.exact_rates_rps: dict[str, float] = {}  # per variant: requests that name it, not its family
        self.history: deque[AutoscaleDecision] = deque(maxlen=1000)  # the latest decisions, for inspection
        self._observed_at: float | None = None
        registry = service.metrics.registry
        self.decisions = Counter("shoal_autoscale_decisions", "Autoscaling decisions", ["variant", "kind"], registry=registry)
        self.replicas = Gauge("shoal_replicas", "Workers holding each variant", ["variant"], registry=registry)

    def observe(self) -> None:
        """Fold the request counters since the last call into smoothed rates (every tick, scaling or not)."""
        now = time.monotonic()
        # The real period: a tick that awaited model loads took longer than the nominal interval.
        elapsed_s = self.interval_s if self._observed_at is None else max(1e-3, now - self._observed_at)
        self._observed_at = now
        _fold_rates(self.service.requests_by_class, self.seen, self.rates_rps, elapsed_s, forget=True)
        _fold_rates(self.service.requests_by_variant, self.seen_by_variant, self.service.arrival_rps_by_variant, elapsed_s, forget=False)
        _fold_rates(self.service.requests_by_exact_variant, self.seen_by_exact_variant, self.exact_rates_rps, elapsed_s, forget=True)

    async def tick(self, now_s: float) -> list[AutoscaleDecision]:
        """Plan and apply replica counts; call `observe` first."""
        made: list[AutoscaleDecision] = []
        for family_name, family in self.service.families.items():
            # An operator's unload holds until an explicit load: planning on such a variant moved
            # the demand onto it (a scale-up then skipped) and scaled the serving one to 0.
            views = {key: view for key, view in modelless_variants(self.service, family).items() if key not in self.service.operator_unloaded}
            if not views:
                continue
            demands = self._demands(family_name)
            current = {key: count for key, count in self.service.replica_counts().items() if key in views}
            plan = plan_autoscale(
                demands, list(views.values()), current, self.states.get(family_name, AutoscaleState()), now_s,
                slack=self.service.config.autoscale_slack, hold_s=self.service.config.autoscale_hold_s,
                max_replicas=self.service.manager.live_workers, ready_replicas=current,  # a dead worker is not capacity
            )
            self.states[family_name] = plan.state
            for decision in plan.decisions:
                if decision.to_replicas < decision.from_replicas and self._still_asked_for(decision.variant):
                    # The planner sees family demand only, and not what these requests need.
                    continue
                reached = await self.service.set_replicas(decision.variant, decision.to_replicas, by_operator=False)
                logger.info("autoscaler: %s %s %d -> %d: %s", decision.kind, decision.variant, decision.from_replicas, reached, decision.reason)
                self.decisions.labels(decision.variant, decision.kind).inc()
                made.append(decision)
            for key, count in self.service.replica_counts().items():
                self.replicas.labels(key).set(count)
        self.history.extend(made)
        return made

    def _demands(self, family_name: str) -> list[Demand]:
        """The family's query classes as the planner's demands, at the budget admission holds
        them to (replicas must keep what admission promises). A class whose requirements the
        planner refuses is left out and logged, rather than failing the tick for every family."""
        headroom = self.service.config.admission_headroom
        demands = []
        for (name, slo_ms, accuracy, cost), rate in self.rates_rps.items():
            if name != family_name:
                continue
            try:
                demands.append(Demand(f"slo={slo_ms:g}ms,min_accuracy={accuracy:g},max_cost={cost}", Requirements(slo_ms * headroom, accuracy, cost), rate))
            except ValueError as error:
                logger.warning("autoscaler: query class %s of %s left out: %s", (slo_ms, accuracy, cost), family_name, error)
        return demands

    def _still_asked_for(self, key: str) -> bool:
        """Requests name the variant itself (recently, or queued or chosen for a batch now): it
        keeps its replicas whatever the family's demand (scaled up, not down), as the controller
        never unloads under waiting requests. (What those requests need is not known: their SLOs
        are not in the family's classes.)"""
        return self.exact_rates_rps.get(key, 0.0) > 0.0 or bool(self.service.scheduler.waiting(key))


def _fold_rates(totals: dict, seen: dict, rates_rps: dict, elapsed_s: float, *, forget: bool) -> None:
    """Fold what each running count in `totals` gained since `seen` into its smoothed rate; with
    `forget`, a rate that decayed below 0.001/s is dropped rather than kept (and grown) for ever."""
    for key, total in list(totals.items()):
        latest = (total - seen.get(key, 0)) / elapsed_s
        seen[key] = total
        rate = smooth_rate(rates_rps.get(key, 0.0), latest)
        if forget and rate < 1e-3:
            rates_rps.pop(key, None)
        else:
            rates_rps[key] = rate
