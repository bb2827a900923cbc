"""From live serving state to an edge instance, and from a plan to what each client is told.

Pure helpers of the edge controller (runtime) and, later, the simulator: they read typed
snapshots, never sockets or clocks, so that what is simulated is what is served.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from shoal.planner.edge.model import EdgeClient, EdgeInstance, EdgePlan, EdgeSettings, EdgeVariant, EdgeWorker

__all__ = [
    "ClientInstruction",
    "LadderStep",
    "LiveVariant",
    "build_edge_instance",
    "edge_variant",
    "fallback_ladder",
    "instructions_from_plan",
    "needs_replan",
    "raw_frame_kbits",
]

FRAME_HEADER_KBITS = 0.8
"""The binary frame's length prefix and JSON header (~100 bytes)."""
RESPONSE_KBITS = 2.0
"""A JSON result message (~250 bytes)."""


def raw_frame_kbits(input_size_px: int, channels: int = 3) -> float:
    """Kilobits (10**3 bit) of one uint8 frame of input_size_px^2 pixels, header included."""
    return input_size_px * input_size_px * channels * 8 / 1000.0 + FRAME_HEADER_KBITS


@dataclass(frozen=True)
class LiveVariant:
    key: str
    accuracy: float
    input_size_px: int
    channels: int
    latency_ms: Mapping[int, float]
    """Batch size -> batch latency on the serving device, non-decreasing in batch size."""
    load_ms: float = 0.0


@dataclass(frozen=True)
class LadderStep:
    input_size_px: int
    variant: str
    accuracy: float
    server_ms: float
    """Predicted server time (overhead, waiting for a running batch, own batch of one)."""


@dataclass(frozen=True)
class ClientInstruction:
    variant: str
    input_size_px: int
    server_ms: float
    served: bool
    reason: str = ""


def edge_variant(variant: LiveVariant) -> EdgeVariant:
    """The planner's view of a served variant: raw uint8 frames at its native input size."""
    return EdgeVariant(
        name=variant.key,
        accuracy=variant.accuracy,
        input_size=variant.input_size_px,
        request_kbits=raw_frame_kbits(variant.input_size_px, variant.channels),
        latency_ms=dict(variant.latency_ms),
        response_kbits=RESPONSE_KBITS,
        load_ms=variant.load_ms,
    )


def build_edge_instance(
    variants: Sequence[LiveVariant],
    workers: Sequence[EdgeWorker],
    clients: Sequence[EdgeClient],
    *,
    server_overhead_ms: float,
    plan_interval_ms: float,
) -> EdgeInstance:
    return EdgeInstance(
        variants=tuple(edge_variant(variant) for variant in variants),
        workers=tuple(workers),
        # A reported bandwidth can round to 0; the model divides by it.
        clients=tuple(replace(c, bandwidth_mbps=max(c.bandwidth_mbps, 1e-3)) for c in clients),
        settings=EdgeSettings(server_overhead_ms=server_overhead_ms, plan_interval_ms=plan_interval_ms),
    )


def _server_ms(variant: LiveVariant, batch_size: int, overhead_ms: float) -> float:
    table = variant.latency_ms
    size = min((b for b in table if b >= batch_size), default=max(table))
    return overhead_ms + 2.0 * table[size]


def fallback_ladder(variants: Sequence[LiveVariant], server_overhead_ms: float) -> list[LadderStep]:
    """Per input size the most accurate variant that takes it, smallest size first.

    A client whose own estimate says its assigned size would miss the SLO steps down this
    ladder until a size fits (local back-off between two plans).
    """
    best: dict[int, LiveVariant] = {}
    for variant in variants:
        current = best.get(variant.input_size_px)
        if current is None or (variant.accuracy, -variant.latency_ms[min(variant.latency_ms)]) > (
            current.accuracy,
            -current.latency_ms[min(current.latency_ms)],
        ):
            best[variant.input_size_px] = variant
    return [
        LadderStep(size, variant.key, variant.accuracy, round(_server_ms(variant, 1, server_overhead_ms), 3))
        for size, variant in sorted(best.items())
    ]


def instructions_from_plan(
    plan: EdgePlan, variants: Sequence[LiveVariant], server_overhead_ms: float
) -> dict[str, ClientInstruction]:
    """What each planned client is told. An unserved client gets a best-effort instruction
    (the smallest, fastest variant) with the planner's reason: its own back-off then decides
    whether a frame is worth sending, and nothing is dropped without the client knowing why."""
    by_key = {variant.key: variant for variant in variants}
    fallback = min(variants, key=lambda v: (v.input_size_px, v.latency_ms[min(v.latency_ms)], -v.accuracy))
    instructions = {}
    for name, assignment in plan.clients.items():
        if assignment is None:
            instructions[name] = ClientInstruction(
                fallback.key, fallback.input_size_px, _server_ms(fallback, 1, server_overhead_ms), False, plan.unserved.get(name, "not served")
            )
            continue
        batch_size = plan.workers[assignment.worker].batch_size
        variant = by_key[assignment.variant]
        instructions[name] = ClientInstruction(
            assignment.variant, assignment.input_size, _server_ms(variant, batch_size, server_overhead_ms), True
        )
    return instructions


def needs_replan(planned_mbps: Mapping[str, float], current_mbps: Mapping[str, float], relative_change: float) -> bool:
    """Re-plan before the next tick when a client appeared, left, or its bandwidth moved by
    more than `relative_change` (as a fraction of the bandwidth the last plan assumed)."""
    if set(planned_mbps) != set(current_mbps):
        return True
    return any(abs(current_mbps[name] - planned) > relative_change * planned for name, planned in planned_mbps.items())
