"""Candidate allocations: for each server and accelerator, the replicas that meet its SLOs.

For one (server, accelerator) the queue model of `shoal.planner.queueing` gives the largest
arrival rate per replica that meets the service class's targets; the server's load divided by
the throughput at that rate, rounded up, is the replica count; its cost is
accelerator cost x accelerators per replica x replicas. This is Inferno's sizing, including its
choices (batch limit scaled by `at_tokens`, queue = 10 x batch, replicas sized with the
throughput at the limiting rate, a throughput target replacing the arrival rate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from shoal.planner.capacity.model import (
    AcceleratorSpec,
    BatchLatencyTable,
    Candidate,
    CapacitySystem,
    DecodePrefillParams,
    IterationParams,
    ModelPerf,
    ModelTarget,
    ServerSpec,
)
from shoal.planner.queueing import (
    BatchLatencyModel,
    DecodePrefillModel,
    IterationModel,
    ServiceTimeModel,
    SloTargets,
    analyze,
    max_arrival_rate,
    rate_range_rps,
)

__all__ = ["CandidateSet", "build_candidates", "transition_value"]

# Replica counts are ceil(load / rate); a ratio within this of an integer is that integer, so
# that rounding noise in the bisection never adds a replica.
_CEIL_SLACK = 1e-9

MAX_REPLICAS = 1e9
"""Most replicas a candidate may need: beyond it (or an infinite count from overflowing
parameters) the numbers are a typo, and costs would overflow to infinity, which JSON cannot carry."""

MAX_ANALYSED_SLOTS = 20_000
"""Most batch plus queue slots one candidate's queueing analysis takes. The analysis holds
arrays of that size and loops over the batch sizes, so time and memory grow with it (measured:
1,000 slots 0.01 s, 10,000 0.33 s, 100,000 3.5 s and 500 MB); real servers batch hundreds of
requests at most, so a larger number is a typo, refused with a reason that names its fields
rather than tying up the planner."""


@dataclass(frozen=True)
class CandidateSet:
    """Candidates per server, cheapest value first, and why a server has none."""

    by_server: Mapping[str, tuple[Candidate, ...]]
    reasons: Mapping[str, str]

    def __getitem__(self, server: str) -> tuple[Candidate, ...]:
        return self.by_server.get(server, ())


def candidate_order(candidate: Candidate) -> tuple:
    """Deterministic order: value, then cost, then fewer cards, then accelerator name."""
    return (candidate.value, candidate.cost_cents_per_hour, candidate.units, candidate.accelerator)


def transition_value(server: ServerSpec, accelerator: str, num_replicas: int, cost: float, factor: float) -> float:
    """Inferno's value of a candidate: the cost of moving to it from the current allocation.

    Same accelerator: the cost difference (0 if the replica count is unchanged). Another
    accelerator (or none now): factor x (old + new cost) + (new - old cost).
    """
    current = server.current
    old_accelerator = current.accelerator if current else ""
    old_cost = current.cost_cents_per_hour if current else 0.0
    if old_accelerator and old_accelerator == accelerator:
        return 0.0 if current.num_replicas == num_replicas else cost - old_cost
    return factor * (old_cost + cost) + (cost - old_cost)


def _batch_limit(server: ServerSpec, perf: ModelPerf) -> int:
    if server.max_batch_size:
        return server.max_batch_size
    if perf.at_tokens and server.load.avg_out_tokens > 0:
        return max(int(perf.max_batch_size * perf.at_tokens // server.load.avg_out_tokens), 1)
    return perf.max_batch_size


def _service_model(server: ServerSpec, perf: ModelPerf, batch: int) -> ServiceTimeModel:
    params = perf.params
    load = server.load
    if isinstance(params, DecodePrefillParams):
        return DecodePrefillModel(
            alpha_ms=params.alpha_ms, beta_ms=params.beta_ms, gamma_ms=params.gamma_ms,
            delta_ms=params.delta_ms, avg_in_tokens=load.avg_in_tokens,
            avg_out_tokens=max(load.avg_out_tokens, 1.0), max_batch_size=batch,
        )
    if isinstance(params, IterationParams):
        return IterationModel(
            alpha_ms=params.alpha_ms, beta_ms=params.beta_ms, gamma_ms=params.gamma_ms,
            avg_in_tokens=load.avg_in_tokens, avg_out_tokens=max(load.avg_out_tokens, 1.0),
            max_batch_size=batch,
        )
    if isinstance(params, BatchLatencyTable):
        return BatchLatencyModel.from_table(params.as_dict, max_batch_size=batch)
    raise TypeError(f"unknown performance parameters {type(params).__name__}")


def _targets(target: ModelTarget) -> SloTargets:
    return SloTargets(
        ttft_ms=target.ttft_ms, itl_ms=target.itl_ms, latency_ms=target.latency_ms,
        tokens_per_s=target.tokens_per_s,
    )


def _candidate(
    system: CapacitySystem, server: ServerSpec, target: ModelTarget, perf: ModelPerf, accelerator: AcceleratorSpec
) -> Candidate | str:
    """The candidate on one accelerator, or a short reason why there is none."""
    if perf.params is None:
        return f"{accelerator.name}: no performance parameters yet"
    load = server.load
    if load.arrival_rate_rps > 0 and perf.generation != "profile" and load.avg_out_tokens == 0:
        # Every request of a token model generates a token at least: zero is a missing or
        # misspelt field (Inferno's avgOutTokens), which would otherwise plan no replicas. Per
        # entry: the same model may have a profile (no tokens needed) on another accelerator.
        return f"{accelerator.name}: arrival rate {load.arrival_rate_rps:g}/s but avgOutTokens is 0: state the mean output tokens per request"
    batch = _batch_limit(server, perf)
    queue_size = (
        server.max_queue_size if server.max_queue_size is not None
        else system.options.max_queue_to_batch_ratio * batch
    )
    if batch + queue_size > MAX_ANALYSED_SLOTS:
        return (
            f"{accelerator.name}: batch {batch} + queue {queue_size:g} slots is more than the {MAX_ANALYSED_SLOTS} analysed; "
            "lower maxBatchSize / atTokens (model) or maxQueueSize / max_queue_to_batch_ratio (server, options)"
        )
    try:
        model = _service_model(server, perf, batch)
    except ValueError as error:
        return f"{accelerator.name}: {error}"
    units_per_replica = perf.accelerators_per_replica * accelerator.multiplicity
    total_rate_rps = load.arrival_rate_rps
    if target.tokens_per_s and load.avg_out_tokens > 0:
        total_rate_rps = target.tokens_per_s / load.avg_out_tokens

    def build(num_replicas: int, metrics) -> Candidate:
        cost = accelerator.cost_cents_per_hour * perf.accelerators_per_replica * num_replicas
        return Candidate(
            server=server.name, accelerator=accelerator.name, accelerator_type=accelerator.type,
            num_replicas=num_replicas, units_per_replica=units_per_replica, max_batch_size=batch,
            cost_cents_per_hour=cost,
            value=transition_value(server, accelerator.name, num_replicas, cost,
                                   system.options.accelerator_penalty_factor),
            generation=model.generation, max_rate_per_replica_rps=rate_star,
            itl_ms=metrics.itl_ms if metrics else None, ttft_ms=metrics.ttft_ms if metrics else None,
            latency_ms=metrics.latency_ms if metrics else None,
            blocking_probability=metrics.queue.blocking_probability if metrics else None,
        )

    if total_rate_rps == 0:
        # No traffic: keep the minimum replicas, with the latencies of an idle server, if the
        # accelerator meets the targets at all (it was reported served when it could not).
        rate_star = 0.0
        if not server.min_replicas:
            return build(0, None)
        try:
            sizing = max_arrival_rate(model, _targets(target), max_queue_size=queue_size)
            idle = analyze(model, rate_range_rps(model)[0], max_queue_size=queue_size)
        except ValueError as error:
            return f"{accelerator.name}: {error}"
        if sizing.status != "ok":
            return f"{accelerator.name}: {sizing.missed.removesuffix('_ms')} target missed even at the lowest load"
        return build(server.min_replicas, idle)

    try:
        # ValueError: a target the model cannot have (an ITL for a batch-latency table), or
        # parameters so extreme that its service rates are not finite positive numbers.
        sizing = max_arrival_rate(model, _targets(target), max_queue_size=queue_size)
        if sizing.status != "ok":
            return f"{accelerator.name}: {sizing.missed.removesuffix('_ms')} target missed even at the lowest load"
        rate_star = sizing.throughput_rps
        replicas_needed = total_rate_rps / rate_star - _CEIL_SLACK
        if not math.isfinite(replicas_needed) or replicas_needed > MAX_REPLICAS:
            return f"{accelerator.name}: the load needs {replicas_needed:.3g} replicas, more than {MAX_REPLICAS:g}; check arrivalRate and the performance parameters"
        num_replicas = max(math.ceil(replicas_needed), server.min_replicas, 1)
        metrics = analyze(model, total_rate_rps / num_replicas, max_queue_size=queue_size)
    except ValueError as error:
        return f"{accelerator.name}: {error}"
    return build(num_replicas, metrics)


def _server_candidates(system: CapacitySystem, server: ServerSpec) -> tuple[tuple[Candidate, ...], str]:
    service_class = system.service_class(server.service_class)
    if service_class is None:
        return (), f"service class {server.service_class!r} is not defined"
    target = service_class.target_for(server.model)
    if target is None:
        return (), f"service class {server.service_class!r} has no target for model {server.model!r}"
    perfs = [perf for perf in system.models if perf.model == server.model]
    if not perfs:
        return (), f"model {server.model!r} has no performance data"
    if server.keep_accelerator and server.current and server.current.accelerator:
        perfs = [perf for perf in perfs if perf.accelerator == server.current.accelerator]
        if not perfs:
            return (), f"keep_accelerator is set but model {server.model!r} has no data on {server.current.accelerator!r}"
    if server.min_replicas == 0 and server.load.arrival_rate_rps == 0:
        # No traffic and no minimum: nothing to allocate, whichever accelerator.
        idle = Candidate(
            server=server.name, accelerator="", accelerator_type="", num_replicas=0, units_per_replica=0,
            max_batch_size=0, cost_cents_per_hour=0.0, value=0.0, generation=perfs[0].generation,
        )
        return (idle,), ""
    found: list[Candidate] = []
    misses: list[str] = []
    for perf in perfs:
        accelerator = system.accelerator(perf.accelerator)
        if accelerator is None:
            misses.append(f"{perf.accelerator}: accelerator not defined")
            continue
        result = _candidate(system, server, target, perf, accelerator)
        if isinstance(result, Candidate):
            found.append(result)
        else:
            misses.append(result)
    found.sort(key=candidate_order)
    reason = "" if found else "no accelerator meets the targets (" + "; ".join(sorted(misses)) + ")"
    return tuple(found), reason


def build_candidates(system: CapacitySystem) -> CandidateSet:
    """Candidates for every server; a server without any gets a reason instead."""
    by_server: dict[str, tuple[Candidate, ...]] = {}
    reasons: dict[str, str] = {}
    for server in system.servers:
        candidates, reason = _server_candidates(system, server)
        by_server[server.name] = candidates
        if reason:
            reasons[server.name] = reason
    return CandidateSet(by_server=by_server, reasons=reasons)
