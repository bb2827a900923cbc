"""Prometheus metrics of the serving runtime (one registry per server, exposed at /metrics)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, GCCollector, Histogram, generate_latest

from shoal.runtime.statistics import VariantStatistics

__all__ = ["ServingMetrics"]

_LATENCY_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("shoal_requests", "Inference requests by outcome", ["model", "variant", "outcome"], registry=self.registry)
        self.queue_seconds = Histogram("shoal_queue_seconds", "Time from admission to batch start", ["variant"], buckets=_LATENCY_BUCKETS_S, registry=self.registry)
        self.compute_seconds = Histogram("shoal_compute_seconds", "Batch execution time in the worker", ["variant"], buckets=_LATENCY_BUCKETS_S, registry=self.registry)
        self.end_to_end_seconds = Histogram("shoal_request_seconds", "Server-side end-to-end latency of answered requests", ["variant"], buckets=_LATENCY_BUCKETS_S, registry=self.registry)
        self.request_inputs = Counter(
            "shoal_request_inputs", "Inputs (rows of the batch axis) of the requests admitted to each variant's queue", ["variant"], registry=self.registry
        )
        self.batch_size = Histogram("shoal_batch_size", "Requests per executed batch", ["variant"], buckets=_BATCH_BUCKETS, registry=self.registry)
        self.pending = Gauge("shoal_pending_requests", "Requests waiting in the queue", ["variant"], registry=self.registry)
        self.loaded = Gauge("shoal_variant_loaded", "1 when the variant is loaded on at least one worker", ["variant"], registry=self.registry)
        self.loop_lag = Gauge("shoal_event_loop_lag_seconds", "Smoothed lateness of the frontend event loop", registry=self.registry)
        self.loop_busy_share = Gauge("shoal_event_loop_busy_share", "Smoothed share of the time the frontend event loop's thread wants a CPU (runs on one or waits for one)", registry=self.registry)
        self.slowdown = Gauge("shoal_batch_slowdown", "Measured batch time over profiled batch time (smoothed)", ["variant"], registry=self.registry)
        self.tail_slowdown = Gauge(
            "shoal_batch_slowdown_p90", "90th percentile of measured over profiled batch time, last 64 batches (sizes batches)", ["variant"], registry=self.registry
        )
        self.admission_error = Gauge(
            "shoal_admission_error_seconds", "How much later than admission predicted recent requests finished (98th percentile per priority, added at admission)", ["variant", "priority"],
            registry=self.registry,
        )
        self.worker_busy_seconds = Counter(
            "shoal_worker_busy_seconds", "Wall time each worker spent running batches (its utilisation over a window)", ["worker"], registry=self.registry
        )
        self.worker_restarts = Counter("shoal_worker_restarts", "Worker processes restarted after a crash", registry=self.registry)
        self.worker_replacements_failed = Counter(
            "shoal_worker_replacements_failed", "Attempts to start a dead worker's replacement that failed (retried)", registry=self.registry
        )
        self.gc_frozen_objects = Gauge(
            "shoal_gc_frozen_objects", "Objects moved out of the garbage collector's sight once the server had started (gc.freeze)", registry=self.registry
        )
        GCCollector(registry=self.registry)  # python_gc_*: collections per generation, to see their pauses' cause
        self.policy_decisions = Counter("shoal_policy_decisions", "Variant chosen by the policy for family requests", ["family", "variant", "policy"], registry=self.registry)
        # Children of the per-request metrics by label values: `labels()` takes a lock and builds
        # the key on every call, a few microseconds each, several times per request. The label
        # values are served model and variant names, so this stays as small as the repository.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        # Triton's statistics extension, per variant (shoal.runtime.statistics).
        self.statistics: dict[str, VariantStatistics] = {}

    def child(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, looked up once (the metrics live as long as this object)."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def variant_statistics(self, variant: str) -> VariantStatistics:
        found = self.statistics.get(variant)
        if found is None:
            found = self.statistics[variant] = VariantStatistics()
        return found

    def outcome(self, model: str, variant: str, outcome: str, elapsed_ms: float | None = None) -> None:
        """A request that was not answered (shed, dropped, failure, cancelled); with `elapsed_ms` and a
        variant it also counts as a failure in the variant's statistics."""
        self.child(self.requests, model, variant, outcome).inc()
        if variant and elapsed_ms is not None:
            self.variant_statistics(variant).failed(elapsed_ms)

    def watch_queue(self, variant: str, pending: Callable[[], float], slowdown: Callable[[], float], tail_slowdown: Callable[[], float]) -> None:
        """The variant's queue gauges, read when scraped: setting them on every request and
        batch cost ~2% of the frontend's CPU on a light model at its peak rate."""
        self.child(self.pending, variant).set_function(pending)
        self.child(self.slowdown, variant).set_function(slowdown)
        self.child(self.tail_slowdown, variant).set_function(tail_slowdown)

    def batch(self, variant: str, size: int, compute_ms: float) -> None:
        self.child(self.batch_size, variant).observe(size)
        self.child(self.compute_seconds, variant).observe(compute_ms / 1000.0)
        self.variant_statistics(variant).batch_ran(size, compute_ms)

    def answered(self, model: str, variant: str, queue_ms: float, total_ms: float, items: int = 1, compute_ms: float = 0.0) -> None:
        self.variant_statistics(variant).answered(items, queue_ms, compute_ms, total_ms)
        self.child(self.requests, model, variant, "success").inc()
        self.child(self.queue_seconds, variant).observe(queue_ms / 1000.0)
        self.child(self.end_to_end_seconds, variant).observe(total_ms / 1000.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
