"""The control loop: every interval, observe the service, ask the planner, apply the plan.

By default the loop manages the model cache (`shoal.planner.preload`): it preloads the variants
a policy is likely to switch to next and unloads idle ones within the memory budget. With
`--autoscale` it sets replica counts instead (`shoal.runtime.autoscaler`, horizontal and
vertical scaling from `shoal.planner.autoscale`). Every decision is logged with its reason and
counted in a metric.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from prometheus_client import Counter

from shoal.planner.preload import CacheContext, CacheState, VariantUsage, plan_cache
from shoal.runtime.autoscaler import Autoscaler
from shoal.runtime.service import InferenceService
from shoal.runtime.supervisor import Heartbeat

__all__ = ["Controller"]

logger = logging.getLogger(__name__)


class Controller:
    def __init__(self, service: InferenceService, *, interval_s: float = 0.5, idle_unload_after_s: float = 300.0):
        self.service = service
        self.interval_s = interval_s
        self.idle_unload_after_s = idle_unload_after_s
        self.state = CacheState()
        self._seen_requests: dict[str, int] = {}
        self._missing_files: set[str] = set()  # variants whose model file was removed (warned once)
        self.autoscaler = Autoscaler(service, interval_s=interval_s)  # keeps arrival rates even when not scaling
        self.decisions = Counter(
            "shoal_controller_decisions", "Model-cache decisions of the controller", ["action", "variant"], registry=service.metrics.registry
        )
        self.ticks = Counter("shoal_controller_ticks", "Control-loop iterations completed", registry=service.metrics.registry)

    def observe(self, now_s: float) -> CacheContext:
        usages = []
        for key, served in self.service.variants.items():
            # Queries refused for want of a loaded variant are use too (`modelless._ask_for_a_load`).
            total = self.service.requests_by_variant.get(key, 0) + self.service.refused_demand_by_variant.get(key, 0)
            try:
                model_bytes = os.path.getsize(served.model_path)
            except OSError:  # removed from the repository under the running server (`shoal zoo remove`)
                if key not in self._missing_files:
                    logger.warning("controller: %s's model file %s is gone; it is left out of cache planning", key, served.model_path)
                    self._missing_files.add(key)
                continue
            self._missing_files.discard(key)
            usages.append(
                VariantUsage(
                    key=key,
                    family=served.family.name,
                    accuracy=served.variant.accuracy or 0.0,
                    memory_bytes=3 * model_bytes,
                    loaded=bool(self.service.scheduler.workers_for(key)),
                    requests_since_last_tick=total - self._seen_requests.get(key, 0),
                )
            )
            self._seen_requests[key] = total
        return CacheContext(now_s, usages, self.service.config.cache_bytes_per_worker, self.idle_unload_after_s)

    async def tick(self, now_s: float | None = None) -> None:
        now_s = time.monotonic() if now_s is None else now_s
        self.autoscaler.observe()  # model-less selection reads the arrival rates (overload detection)
        if self.service.config.autoscale:
            await self.autoscaler.tick(now_s)
            return
        plan, self.state = plan_cache(self.observe(now_s), self.state)
        for key in plan.load:
            if key in self.service.operator_unloaded:
                continue  # an operator unloaded it; only an explicit load brings it back
            logger.info("controller: load %s (%s)", key, plan.reasons[key])
            self.decisions.labels("load", key).inc()
            await self.service.manager.ensure_loaded(self.service.variants[key])
        for key in plan.unload:
            if self.service.scheduler.waiting(key):
                continue  # never unload under requests not yet sent to a worker; the next tick decides again
            logger.info("controller: unload %s (%s)", key, plan.reasons[key])
            self.decisions.labels("unload", key).inc()
            await self.service.manager.unload(key)

    async def run(self, heartbeat: Heartbeat | None = None) -> None:
        """Tick every interval; `heartbeat` (from the server's supervisor) is touched after each tick."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.tick()
            except Exception:  # a failed tick is logged and retried; the loop must not die
                logger.exception("controller tick failed")
            self.ticks.inc()
            if heartbeat is not None:
                heartbeat.beat()
