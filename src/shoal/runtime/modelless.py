"""The service's side of model-less serving: live state in, `shoal.planner.modelless` decides.

The planner is pure; this module reads what it needs from the running service (profiles,
loaded replicas, queue lengths, the batch in flight, arrival rates kept by the controller),
calls `select_variant` and turns its answer into an action: serve, load then serve, or refuse
with the relaxations that would work (HTTP 422 / gRPC FAILED_PRECONDITION), or shed (429) when
the requirements are satisfiable but not at the current load.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import TYPE_CHECKING

from shoal.core.models import Device, Family
from shoal.planner.modelless import LiveVariant, ModellessVariant, Requirements, alternatives, cost_per_1000_usd, select_variant
from shoal.runtime.errors import BadRequestError, ModelNotReadyError, OverloadedError, RequirementsUnmetError
from shoal.runtime.scheduler import monotonic_ms

if TYPE_CHECKING:
    from shoal.runtime.inference_request import StatedRequirements
    from shoal.runtime.service import InferenceService, ServedVariant

__all__ = ["choose_modelless", "modelless_variant", "modelless_variants", "raise_unmet", "variant_cost_per_1000_usd"]


def modelless_variant(service: "InferenceService", served: "ServedVariant") -> ModellessVariant | None:
    """The planner's view of a variant: its worker-measured profile, else the repository's.

    Family requests ask for it per variant on every request; it changes only when a load
    brings a new profile, so it is kept on the served variant until then.
    """
    profile = served.latency or served.repository_profile
    if profile is None or served.variant.accuracy is None:
        return None
    if served.planner_view is not None and served.planner_view[0] is profile:
        return served.planner_view[1]
    top = min(service.config.max_batch_size, max(profile.batch_sizes))
    load_profile = served.repository_profile or profile
    view = ModellessVariant(
        name=served.key,
        task=served.family.name,
        accuracy=float(served.variant.accuracy),
        device=service.config.device,
        price_usd_per_hour=service.config.price_usd_per_hour(Device.parse(service.config.device).kind),
        latency_ms_by_batch=tuple(profile.batch_latency_ms(b, "p50") for b in range(1, top + 1)),
        load_time_ms=max(load_profile.load_time_ms, 1.0),
    )
    served.planner_view = (profile, view)
    return view


def modelless_variants(service: "InferenceService", family: Family, input_size_px: int | None = None) -> dict[str, ModellessVariant]:
    found = {}
    for key, served in service.variants.items():
        if served.family.name != family.name or (input_size_px is not None and served.variant.input_size_px > input_size_px):
            continue
        view = modelless_variant(service, served)
        if view is not None:
            found[key] = view
    return found


def variant_cost_per_1000_usd(service: "InferenceService", served: "ServedVariant") -> float:
    view = modelless_variant(service, served)
    return cost_per_1000_usd(view) if view else 0.0


def _live(service: "InferenceService", variant: ModellessVariant, now_ms: float, priority: int = 0) -> LiveVariant:
    """The variant's live state, its latency predicted exactly as admission will predict it
    (`Scheduler.predicted_finish_ms` and `admission_margin_ms`), as the other policies' options
    are (`InferenceService._choose`)."""
    queue = service.scheduler.queues[variant.name]
    replicas = len(service.scheduler.workers_for(variant.name))
    measured = variant.batch_latency_ms(1) * queue.slowdown if queue.slowdown > 1.0 else None
    return LiveVariant(
        variant,
        replicas=replicas,
        arrival_rps=service.arrival_rps_by_variant.get(variant.name, 0.0),
        measured_latency_ms=measured,
        admission_margin_ms=service.scheduler.admission_margin_ms(variant.name, now_ms, priority) if replicas else 0.0,
        predicted_finish_ms=service.scheduler.predicted_finish_ms(variant.name, now_ms, priority) if replicas else None,
    )


def raise_unmet(model_name: str, stated: "StatedRequirements", variants: list[ModellessVariant], reason: str, budget_ms: float) -> None:
    """422 with alternatives when no variant can meet the requirements even idle within
    `budget_ms` (the part of the SLO admission allows), else 429."""
    relaxations = alternatives(Requirements(max(budget_ms, 1e-3), stated.min_accuracy, stated.max_cost_per_1000_usd), variants)
    if relaxations:
        # An SLO suggestion is in the client's terms: the stated SLO that leaves that budget.
        scale = stated.slo_ms / budget_ms if budget_ms > 0 else 1.0
        suggestions = [
            {**asdict(item), "value": math.ceil(item.value * scale * 10) / 10} if item.relax == "slo_ms" else asdict(item)
            for item in relaxations
        ]
        raise RequirementsUnmetError(
            f"{model_name}: {reason}; see 'alternatives' for what relaxing each requirement would give", suggestions,
        )
    raise OverloadedError(f"{model_name}: {reason}", retry_after_s=1.0)


def _ask_for_a_load(service: "InferenceService", requirements: Requirements, variants: dict[str, ModellessVariant]) -> None:
    """With nothing of these variants loaded, a query whose SLO a load does not fit is refused,
    and nothing else would ever load one: count it as demand for the variant it would take
    loaded, which the controller's cache plan counts as use and loads (a 429 for good, before)."""
    if any(service.scheduler.workers_for(key) for key in variants):
        return
    wanted = select_variant(requirements, [LiveVariant(view, replicas=1) for view in variants.values()], policy="shoal")
    if wanted.action != "reject":  # its own count: the arrival rates must not see refused queries as served ones
        service.refused_demand_by_variant[wanted.variant] = service.refused_demand_by_variant.get(wanted.variant, 0) + 1


async def choose_modelless(service: "InferenceService", model_name: str, family: Family, stated: "StatedRequirements", input_size_px: int, remaining_slo_ms: float) -> "ServedVariant":
    """Pick (and if need be load) the variant that answers this query; raise when none can."""
    variants = modelless_variants(service, family, input_size_px)
    if not variants:
        raise BadRequestError(f"{model_name}: no variant takes a {input_size_px} px input or has a profile; send a larger image or run `shoal profile`")
    # An operator's unload holds until an explicit load, as for the controller and autoscaler:
    # selection would otherwise load the variant back for the next query that wants it.
    variants = {key: view for key, view in variants.items() if key not in service.operator_unloaded}
    if not variants:
        raise ModelNotReadyError(f"{model_name}: every variant that could answer was unloaded by an operator; POST /v2/repository/models/{model_name}/load")
    if remaining_slo_ms <= 0:
        raise OverloadedError(f"{model_name}: the request's SLO was spent before a variant could be chosen", retry_after_s=1.0)
    requirements = Requirements(remaining_slo_ms, stated.min_accuracy, stated.max_cost_per_1000_usd)
    now_ms = monotonic_ms()
    decision = select_variant(requirements, [_live(service, view, now_ms, stated.priority) for view in variants.values()], policy="shoal")
    if decision.action == "reject":
        _ask_for_a_load(service, requirements, variants)
        raise_unmet(model_name, stated, list(variants.values()), decision.reason, remaining_slo_ms)
    served = service.variants[decision.variant]
    if decision.action == "load":
        # INFaaS-style: the query waits for the load. Never fewer replicas than now: the
        # autoscaler may have added some since the decision.
        await service.manager.set_replicas(served, max(1, len(service.scheduler.workers_for(served.key))))
    return served
