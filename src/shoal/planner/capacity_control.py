"""The pure half of the capacity control loop: observed load in, replica targets out.

The loop (`shoal.runtime.capacity_loop`) runs collect -> optimize -> actuate. Everything it
decides is here, without I/O or clocks:

- `observed_load(previous, current)`: two samples of the runtime's counters -> arrival rate
  (requests per second, every outcome counted: offered load, not served load), inputs per
  request, mean batch size and mean latency per runtime variant over the window between them.
- `system_with_load(base, bindings, loads, ...)`: the base `CapacitySystem` with each bound
  server's load replaced by what was observed (and its current allocation filled in, so the
  planner's transition cost prefers staying where it is).
- `desired_replicas(plan, bindings)`: the planner's replica count per bound server.
- `decide_replicas(context, state) -> (decisions, state)`: hysteresis between what the planner
  wants and what runs. Scale-up and scale-down each wait until the wish has lasted a delay
  (`scale_up_delay_s`, `scale_down_delay_s`) and then go to the most conservative count seen
  while waiting (the smallest wish above, the largest wish below: like Kubernetes' HPA
  stabilisation window); changes within a dead band are ignored; one step moves at most
  `max_step_replicas`. Per-server bounds apply first and at once. The clock is `now_s` in
  the context; the state is passed in and returned.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from shoal.planner.capacity import CapacityPlan, CapacitySystem, CurrentAllocation

__all__ = [
    "VariantCounters",
    "MetricsSample",
    "ObservedLoad",
    "observed_load",
    "ServerBinding",
    "system_with_load",
    "desired_replicas",
    "HysteresisSettings",
    "ReplicaContext",
    "ReplicaDecision",
    "HysteresisState",
    "PendingChange",
    "decide_replicas",
]


# --------------------------------------------------------------------------------------------
# collected metrics -> load
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VariantCounters:
    """Cumulative counters of one runtime variant (`<family>.<variant>`) at one instant."""

    requests_by_outcome: Mapping[str, float] = field(default_factory=dict)
    num_batches: float = 0.0
    batch_items: float = 0.0  # sum of batch sizes
    num_answered: float = 0.0  # observations of the end-to-end latency histogram
    answered_seconds: float = 0.0  # their sum
    pending_requests: float = 0.0  # a gauge, not a counter
    admitted_inputs: float = 0.0  # inputs of the requests admitted to the queue (all outcomes but shed)

    @property
    def num_requests(self) -> float:
        return float(sum(self.requests_by_outcome.values()))


@dataclass(frozen=True)
class MetricsSample:
    """The runtime's counters per variant, read at `taken_at_s` (a monotonic clock)."""

    taken_at_s: float
    variants: Mapping[str, VariantCounters]


@dataclass(frozen=True)
class ObservedLoad:
    """What one variant saw between two samples (rates per second, times in ms)."""

    variant: str
    window_s: float
    arrival_rate_rps: float
    success_rate_rps: float
    rejected_rate_rps: float  # shed (429), dropped (deadline), failed and cancelled requests
    mean_batch_size: float | None
    mean_latency_ms: float | None
    pending_requests: float
    inputs_per_request: float = 1.0  # images per request, from the inputs of admitted requests
    counters_reset: bool = False

    @property
    def input_rate_rps(self) -> float:
        """Inputs (images) arriving per second: the planner's load, since batch latency is per input."""
        return self.arrival_rate_rps * self.inputs_per_request


def _delta(now: float, before: float) -> tuple[float, bool]:
    """Counter increase; a decrease means the runtime restarted and counts from zero again."""
    return (now, True) if now < before else (now - before, False)


def observed_load(previous: MetricsSample, current: MetricsSample) -> dict[str, ObservedLoad]:
    """Rates per variant over the window between two samples.

    A variant missing from `previous` counts from zero; a counter that went down means the
    runtime restarted, and the current value is taken as the increase (`counters_reset`).
    The window must be positive.
    """
    window_s = current.taken_at_s - previous.taken_at_s
    if not window_s > 0:
        raise ValueError(f"the second sample must be taken after the first (window {window_s!r} s)")
    loads: dict[str, ObservedLoad] = {}
    for key, now in current.variants.items():
        before = previous.variants.get(key, VariantCounters())
        requests, reset = _delta(now.num_requests, before.num_requests)
        if reset:  # a restart resets every counter of the process: take all current values
            before = VariantCounters()
        success, _ = _delta(now.requests_by_outcome.get("success", 0.0), before.requests_by_outcome.get("success", 0.0))
        batches, _ = _delta(now.num_batches, before.num_batches)
        items, _ = _delta(now.batch_items, before.batch_items)
        answered, _ = _delta(now.num_answered, before.num_answered)
        seconds, _ = _delta(now.answered_seconds, before.answered_seconds)
        inputs, _ = _delta(now.admitted_inputs, before.admitted_inputs)
        shed, _ = _delta(now.requests_by_outcome.get("shed", 0.0), before.requests_by_outcome.get("shed", 0.0))
        admitted = requests - shed
        loads[key] = ObservedLoad(
            variant=key,
            window_s=window_s,
            arrival_rate_rps=requests / window_s,
            success_rate_rps=success / window_s,
            rejected_rate_rps=max(requests - success, 0.0) / window_s,
            mean_batch_size=items / batches if batches > 0 else None,
            mean_latency_ms=1000.0 * seconds / answered if answered > 0 else None,
            pending_requests=now.pending_requests,
            # Of the admitted requests, whatever became of them: executed batch items over
            # successes counted the inputs of late and cancelled requests but not the requests.
            inputs_per_request=max(inputs / admitted, 1.0) if admitted > 0 and inputs > 0 else 1.0,
            counters_reset=reset,
        )
    return loads


# --------------------------------------------------------------------------------------------
# load -> the planner's system, plan -> desired replicas
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerBinding:
    """One runtime variant served as one planner server, with the replica bounds of actuation.

    `min_replicas` defaults to 1: a variant at 0 replicas is unloaded, answers nothing and
    therefore never shows the load that would bring it back.
    """

    variant: str
    server: str
    min_replicas: int = 1
    max_replicas: int | None = None

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise ValueError(f"variant {self.variant!r}: min_replicas must be >= 0")
        if self.max_replicas is not None and self.max_replicas < max(self.min_replicas, 1):
            raise ValueError(f"variant {self.variant!r}: max_replicas must be >= max(min_replicas, 1)")

    def bound(self, replicas: int) -> int:
        replicas = max(replicas, self.min_replicas)
        return replicas if self.max_replicas is None else min(replicas, self.max_replicas)


def system_with_load(
    base: CapacitySystem,
    bindings: tuple[ServerBinding, ...],
    loads: Mapping[str, ObservedLoad],
    *,
    current_replicas: Mapping[str, int | None] | None = None,
    current_accelerators: Mapping[str, str] | None = None,
) -> CapacitySystem:
    """`base` with each bound server's arrival rate set to its variant's observed input rate.

    Token counts of the base load are kept. A server whose variant was not observed gets rate
    0. Where both the current replica count and the accelerator chosen last time are known,
    the server's current allocation is filled in (cost from the system), so that the planner
    values staying put as Inferno's does. Servers without a binding keep their base load.
    """
    current_replicas = current_replicas or {}
    current_accelerators = current_accelerators or {}
    by_server = {binding.server: binding for binding in bindings}
    servers = []
    for server in base.servers:
        binding = by_server.get(server.name)
        if binding is None:
            servers.append(server)
            continue
        observed = loads.get(binding.variant)
        load = replace(server.load, arrival_rate_rps=observed.input_rate_rps if observed else 0.0)
        current = server.current
        accelerator_name = current_accelerators.get(server.name)
        replicas = current_replicas.get(server.name)
        accelerator = base.accelerator(accelerator_name) if accelerator_name else None
        if accelerator is not None and replicas is not None:
            perf = next((m for m in base.models if m.model == server.model and m.accelerator == accelerator.name), None)
            per_replica = perf.accelerators_per_replica if perf else 1
            current = CurrentAllocation(accelerator.name, replicas, accelerator.cost_cents_per_hour * per_replica * replicas)
        servers.append(replace(server, load=load, current=current))
    return replace(base, servers=tuple(servers))


def desired_replicas(plan: CapacityPlan, bindings: tuple[ServerBinding, ...]) -> dict[str, int | None]:
    """The planner's replica count per bound server; None where it could not serve the server
    (the loop then holds the current count rather than scaling to zero)."""
    wanted: dict[str, int | None] = {}
    by_name = {allocation.server: allocation for allocation in plan.allocations}
    for binding in bindings:
        allocation = by_name.get(binding.server)
        wanted[binding.server] = None if allocation is None or allocation.status == "unserved" else allocation.num_replicas
    return wanted


# --------------------------------------------------------------------------------------------
# hysteresis
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HysteresisSettings:
    """How eagerly the loop follows the planner (times in seconds of the context's clock).

    A change is ignored while |desired - current| <= max(dead_band_replicas,
    dead_band_fraction * current); with the defaults a change of one replica always counts
    below 10 replicas. `max_step_replicas` bounds one step (None: no bound).
    """

    scale_up_delay_s: float = 0.0
    scale_down_delay_s: float = 300.0
    dead_band_replicas: int = 0
    dead_band_fraction: float = 0.1
    max_step_replicas: int | None = None

    def __post_init__(self) -> None:
        for name in ("scale_up_delay_s", "scale_down_delay_s", "dead_band_fraction"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"hysteresis.{name} must be a finite number >= 0, got {value!r}")
        if not isinstance(self.dead_band_replicas, int) or self.dead_band_replicas < 0:
            raise ValueError(f"hysteresis.dead_band_replicas must be an integer >= 0, got {self.dead_band_replicas!r}")
        if self.max_step_replicas is not None and (not isinstance(self.max_step_replicas, int) or self.max_step_replicas < 1):
            raise ValueError(f"hysteresis.max_step_replicas must be an integer >= 1 or null, got {self.max_step_replicas!r}")

    def dead_band(self, current: int) -> float:
        return max(float(self.dead_band_replicas), self.dead_band_fraction * current)


@dataclass(frozen=True)
class ReplicaContext:
    """One tick: the planner's wish and what runs now, per server.

    `desired` None: the planner has no answer for the server (hold). `current` None: the
    count is unknown (e.g. patches only written to files, none yet): the bounded wish is
    taken as is.
    """

    now_s: float
    desired: Mapping[str, int | None]
    current: Mapping[str, int | None]
    settings: HysteresisSettings = field(default_factory=HysteresisSettings)
    bindings: Mapping[str, ServerBinding] = field(default_factory=dict)  # by server name


@dataclass(frozen=True)
class PendingChange:
    """A wish to move in one direction that has not lasted its delay yet."""

    direction: int  # +1 up, -1 down
    since_s: float
    stabilized: int  # the most conservative wish seen since then


@dataclass(frozen=True)
class HysteresisState:
    pending: Mapping[str, PendingChange] = field(default_factory=dict)


@dataclass(frozen=True)
class ReplicaDecision:
    server: str
    current: int | None
    desired: int | None
    target: int | None  # None: leave the server alone
    reason: str

    @property
    def changes(self) -> bool:
        return self.target is not None and self.target != self.current


def _hold(server: str, current: int | None, desired: int | None, reason: str) -> ReplicaDecision:
    return ReplicaDecision(server, current, desired, None if current is None else current, reason)


def _apply_step(current: int, target: int, max_step: int | None) -> int:
    if max_step is None:
        return target
    return current + max(-max_step, min(max_step, target - current))


def _decide_one(
    server: str, now_s: float, desired: int | None, current: int | None, settings: HysteresisSettings,
    binding: ServerBinding | None, pending: PendingChange | None,
) -> tuple[ReplicaDecision, PendingChange | None]:
    if binding is not None and current is not None and binding.bound(current) != current:
        target = binding.bound(current)
        return ReplicaDecision(server, current, desired, target, f"{current} is outside the bounds: moved to {target} at once"), None
    if desired is None:
        return _hold(server, current, desired, "the planner could not serve this server: holding"), None
    wanted = binding.bound(desired) if binding else desired
    bounded = f" (bounded from {desired})" if wanted != desired else ""
    if current is None:
        return ReplicaDecision(server, current, desired, wanted, f"current count unknown: set to {wanted}{bounded}"), None
    delta = wanted - current
    if delta == 0:
        return _hold(server, current, desired, f"at the planned count{bounded}"), None
    band = settings.dead_band(current)
    if abs(delta) <= band and current > 0:
        return _hold(server, current, desired, f"change of {delta:+d} is within the dead band of {band:g}"), None
    direction = 1 if delta > 0 else -1
    if pending is None or pending.direction != direction:
        pending = PendingChange(direction, now_s, wanted)
    else:  # the most conservative wish since the wish began: least added, least removed
        stabilized = min(pending.stabilized, wanted) if direction > 0 else max(pending.stabilized, wanted)
        pending = replace(pending, stabilized=stabilized)
    delay_s = settings.scale_up_delay_s if direction > 0 else settings.scale_down_delay_s
    waited_s = now_s - pending.since_s
    word = "scale-up" if direction > 0 else "scale-down"
    if waited_s < delay_s:
        reason = f"{word} to {wanted} waits {delay_s - waited_s:g} s more (delay {delay_s:g} s)"
        return _hold(server, current, desired, reason), pending
    target = _apply_step(current, pending.stabilized, settings.max_step_replicas)
    reason = f"{word} from {current} to {target}"
    if pending.stabilized != wanted:
        reason += f" (most conservative wish over the last {waited_s:g} s; now {wanted})"
    if target != pending.stabilized:
        reason += f" (max step {settings.max_step_replicas}; {pending.stabilized} wanted)"
        return ReplicaDecision(server, current, desired, target, reason + bounded), pending  # keep stepping next tick
    return ReplicaDecision(server, current, desired, target, reason + bounded), None


def decide_replicas(context: ReplicaContext, state: HysteresisState) -> tuple[tuple[ReplicaDecision, ...], HysteresisState]:
    """Targets per server (sorted by name) and the new state.

    Per server, in order: current outside the bounds (`bindings`) -> move into them at once;
    no planner answer -> hold; the bounds clamp the wish; unknown current -> take the wish;
    within the dead band -> hold (and forget any pending wish); otherwise the wish must last
    its direction's delay, and the target is the most conservative wish seen meanwhile, at
    most `max_step_replicas` away. A wish that changes direction restarts its delay.
    """
    decisions: list[ReplicaDecision] = []
    pending_out: dict[str, PendingChange] = {}
    for server in sorted(set(context.desired) | set(context.current)):
        decision, pending = _decide_one(
            server, context.now_s, context.desired.get(server), context.current.get(server), context.settings,
            context.bindings.get(server), state.pending.get(server),
        )
        decisions.append(decision)
        if pending is not None:
            pending_out[server] = pending
    return tuple(decisions), HysteresisState(pending_out)
