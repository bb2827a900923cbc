"""Edge scheduling: the typed instance and plan, the shared latency model, and its evaluator.

Every edge policy (`jellyfish`, `exact`, `shoal`) is judged by `evaluate_plan` and the model
below; policies may approximate it internally, but a plan is only as good as this says.

Latency model
-------------
A worker ``w`` on device ``d`` runs one variant ``v`` with a maximum batch size ``b``. Its
batch latency ``L(d, v, b)`` (ms) is read from the variant's table for ``d`` (the default table
``latency_ms`` applies to every device without a table of its own). Throughput at that batch
size is ``capacity_fps = 1000 * b / L(d, v, b)``.

A client ``c`` sends ``fps`` requests per second; each request is the frame resized to an input
size the variant accepts (its native ``input_size`` or one of its ``extra_inputs``, smaller
frames that the server scales up at some accuracy cost), of ``request_kbits`` kilobits
(1 kbit = 1000 bit). With the client's bandwidth estimate ``bandwidth_mbps`` (10**6 bit/s):

    upload_ms   = request_kbits / bandwidth_mbps
    download_ms = response_kbits(v) / bandwidth_mbps
    e2e_ms      = rtt_ms(c) + upload_ms + server_overhead_ms + 2 * L(d, v, b) + download_ms

The factor 2 is the worst case of a greedy batching worker that never holds more than ``b``
requests when a batch starts: a request that arrives just after a full batch started waits for
that batch (``L``) and then runs in the next one (``L``). The client is served iff

    1. e2e_ms <= slo_ms(c)                                     (latency SLO), and
    2. fps(c) * request_kbits <= 1000 * bandwidth_mbps(c)      (the uplink sustains the rate),

and the worker is stable iff the summed fps of its clients <= capacity_fps(d, v, b). A worker
whose load exceeds its capacity has an unbounded queue: all its clients count as unserved.

Objective
---------
``sum(fps * accuracy) over served clients / sum(fps) over all clients``, where accuracy is that
of the variant at the input size the client sends. A worker that must switch to a variant it
has not loaded is unavailable for ``load_ms`` (``cached_load_ms`` when the variant is in its
``cached_variants``); the terms of its clients are multiplied by
``max(0, 1 - switch_ms / plan_interval_ms)``, the fraction of the next plan interval it serves.
With the default load times of 0 this is exactly the request-weighted accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from shoal.core.errors import InvalidInputError

__all__ = [
    "InputOption",
    "EdgeVariant",
    "EdgeWorker",
    "EdgeClient",
    "EdgeSettings",
    "EdgeInstance",
    "WorkerDecision",
    "ClientAssignment",
    "EdgePlan",
    "ClientOutcome",
    "EdgeEvaluation",
    "PlanStatus",
    "upload_ms",
    "capacity_fps",
    "end_to_end_ms",
    "switch_ms",
    "switch_factor",
    "evaluate_plan",
    "validate_instance",
]

LATENCY_TOLERANCE_MS = 1e-6
CAPACITY_TOLERANCE = 1e-6  # relative; absorbs the MILP solver's feasibility tolerance

PlanStatus = Literal["all_served", "some_unserved", "none_served"]


@dataclass(frozen=True)
class InputOption:
    """One input size a variant accepts, the size of such a request, and the accuracy it gives."""

    input_size: int
    request_kbits: float
    accuracy: float


@dataclass(frozen=True)
class EdgeVariant:
    name: str
    accuracy: float
    input_size: int
    request_kbits: float
    latency_ms: Mapping[int, float]
    """Batch size -> batch latency (ms) on every device not in `latency_ms_by_device`."""
    latency_ms_by_device: Mapping[str, Mapping[int, float]] = field(default_factory=dict)
    response_kbits: float = 0.0
    load_ms: float = 0.0
    """Time a worker needs to load this variant from storage."""
    cached_load_ms: float = 0.0
    """Time to activate it when the worker holds it in its cache."""
    extra_inputs: tuple[InputOption, ...] = ()
    """Smaller inputs the variant also accepts (the server scales them up)."""

    @property
    def inputs(self) -> tuple[InputOption, ...]:
        """The native input first, then the extra ones."""
        native = InputOption(self.input_size, self.request_kbits, self.accuracy)
        return (native, *self.extra_inputs)

    def input_option(self, input_size: int) -> InputOption | None:
        return next((option for option in self.inputs if option.input_size == input_size), None)

    def latency_table(self, device: str) -> Mapping[int, float]:
        return self.latency_ms_by_device.get(device, self.latency_ms)


@dataclass(frozen=True)
class EdgeWorker:
    name: str
    device: str = "cpu"
    loaded_variant: str | None = None
    cached_variants: tuple[str, ...] = ()


@dataclass(frozen=True)
class EdgeClient:
    name: str
    slo_ms: float
    fps: float
    bandwidth_mbps: float
    rtt_ms: float = 0.0
    current_variant: str | None = None


@dataclass(frozen=True)
class EdgeSettings:
    server_overhead_ms: float = 0.0
    """Dispatch and pre-processing time added to every request."""
    plan_interval_ms: float = 500.0
    """How often plans are recomputed; the horizon over which a variant switch costs."""


@dataclass(frozen=True)
class EdgeInstance:
    variants: tuple[EdgeVariant, ...]
    workers: tuple[EdgeWorker, ...]
    clients: tuple[EdgeClient, ...]
    settings: EdgeSettings = EdgeSettings()

    def variant(self, name: str) -> EdgeVariant:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise KeyError(name)

    @property
    def total_fps(self) -> float:
        return sum(client.fps for client in self.clients)


@dataclass(frozen=True)
class WorkerDecision:
    variant: str | None
    """None only for an idle worker that holds no variant."""
    batch_size: int


@dataclass(frozen=True)
class ClientAssignment:
    worker: str
    variant: str
    input_size: int


@dataclass(frozen=True)
class EdgePlan:
    """A policy's decision, as scored by `evaluate_plan` (infeasible assignments become unserved)."""

    policy: str
    workers: Mapping[str, WorkerDecision]
    clients: Mapping[str, ClientAssignment | None]
    objective: float
    status: PlanStatus
    unserved: Mapping[str, str]
    """Client name -> why it is not served."""
    optimality: Literal["proven_optimal", "heuristic", "time_limit"] = "heuristic"
    stats: Mapping[str, float | int | str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The plan file format: objective, workers, clients (null when unserved), plus extras."""
        return {
            "objective": self.objective,
            "workers": {
                name: {"variant": decision.variant, "batch_size": decision.batch_size}
                for name, decision in self.workers.items()
            },
            "clients": {
                name: None
                if assignment is None
                else {"worker": assignment.worker, "variant": assignment.variant, "input_size": assignment.input_size}
                for name, assignment in self.clients.items()
            },
            "policy": self.policy,
            "status": self.status,
            "optimality": self.optimality,
            "unserved": dict(self.unserved),
            "stats": dict(self.stats),
        }


@dataclass(frozen=True)
class ClientOutcome:
    served: bool
    reason: str = ""
    e2e_ms: float | None = None
    """Worst-case end-to-end latency under the model (None when not assigned)."""


@dataclass(frozen=True)
class EdgeEvaluation:
    objective: float
    served_fraction: float
    """Served requests (fps) over all requests."""
    clients: Mapping[str, ClientOutcome]
    worker_load_fps: Mapping[str, float]
    worker_capacity_fps: Mapping[str, float]

    @property
    def unserved(self) -> dict[str, str]:
        return {name: outcome.reason for name, outcome in self.clients.items() if not outcome.served}


def upload_ms(request_kbits: float, bandwidth_mbps: float) -> float:
    """Transfer time of `request_kbits` kilobits at `bandwidth_mbps` (kbit / Mbit/s = ms)."""
    return request_kbits / bandwidth_mbps


def capacity_fps(batch_latency_ms: float, batch_size: int) -> float:
    return 1000.0 * batch_size / batch_latency_ms


def end_to_end_ms(
    client: EdgeClient, variant: EdgeVariant, option: InputOption, batch_latency_ms: float, settings: EdgeSettings
) -> float:
    """Worst-case latency of one request: network both ways, overhead, running batch, own batch."""
    return (
        client.rtt_ms
        + upload_ms(option.request_kbits, client.bandwidth_mbps)
        + settings.server_overhead_ms
        + 2.0 * batch_latency_ms
        + upload_ms(variant.response_kbits, client.bandwidth_mbps)
    )


def uplink_sustains(client: EdgeClient, option: InputOption) -> bool:
    return client.fps * option.request_kbits <= 1000.0 * client.bandwidth_mbps * (1 + CAPACITY_TOLERANCE)


def switch_ms(worker: EdgeWorker, variant: EdgeVariant) -> float:
    if worker.loaded_variant == variant.name:
        return 0.0
    if variant.name in worker.cached_variants:
        return variant.cached_load_ms
    return variant.load_ms


MIN_SWITCH_FACTOR = 0.01
"""What a switch that takes the whole plan interval or longer is still worth: the worker serves
from the intervals after it. At 0, a worker holding nothing was worth nothing with any variant
whose load takes an interval (500 ms by default), so shoal and exact planned no variant, nothing
was loaded, and every client stayed unserved for good."""


def switch_factor(worker: EdgeWorker, variant: EdgeVariant, settings: EdgeSettings) -> float:
    """Fraction of the next plan interval the worker serves after switching to `variant`
    (`MIN_SWITCH_FACTOR` at least)."""
    return max(MIN_SWITCH_FACTOR, 1.0 - switch_ms(worker, variant) / settings.plan_interval_ms)


def _check_positive(value: float, where: str) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise InvalidInputError(f"{where} must be a positive number, got {value!r}")


def validate_instance(instance: EdgeInstance) -> None:
    """Raise InvalidInputError naming the first bad field; planners call this once at entry."""
    if not instance.variants:
        raise InvalidInputError("variants: the instance needs at least one variant")
    if not instance.workers:
        raise InvalidInputError("workers: the instance needs at least one worker")
    for kind, items in (("variants", instance.variants), ("workers", instance.workers), ("clients", instance.clients)):
        seen: set[str] = set()
        for index, item in enumerate(items):
            if item.name in seen:
                raise InvalidInputError(f"{kind}[{index}].name: {item.name!r} is used twice; names must be unique")
            seen.add(item.name)
    names = {variant.name for variant in instance.variants}
    for index, variant in enumerate(instance.variants):
        where = f"variants[{index}]"
        if not 0.0 <= variant.accuracy <= 1.0:
            raise InvalidInputError(f"{where}.accuracy must be within [0, 1], got {variant.accuracy!r}")
        _check_positive(variant.request_kbits, f"{where}.request_kbits")
        tables = {"latency_ms": variant.latency_ms}
        tables.update({f"latency_ms_by_device.{d}": t for d, t in variant.latency_ms_by_device.items()})
        for label, table in tables.items():
            if not table:
                raise InvalidInputError(f"{where}.{label} needs at least one batch size, e.g. {{\"1\": 12.5}}")
            for batch, latency in table.items():
                if not isinstance(batch, int) or batch < 1:
                    raise InvalidInputError(f"{where}.{label}: batch size {batch!r} must be an integer >= 1")
                _check_positive(latency, f"{where}.{label}.{batch}")
        sizes = {variant.input_size}
        for position, option in enumerate(variant.extra_inputs):
            if option.input_size in sizes:
                raise InvalidInputError(f"{where}.extra_inputs[{position}].input_size {option.input_size} is listed twice")
            sizes.add(option.input_size)
            _check_positive(option.request_kbits, f"{where}.extra_inputs[{position}].request_kbits")
            if not 0.0 <= option.accuracy <= 1.0:
                raise InvalidInputError(f"{where}.extra_inputs[{position}].accuracy must be within [0, 1]")
    for index, worker in enumerate(instance.workers):
        for label, name in [("loaded_variant", worker.loaded_variant), *(("cached_variants", n) for n in worker.cached_variants)]:
            if name is not None and name not in names:
                raise InvalidInputError(f"workers[{index}].{label}: unknown variant {name!r}; use one of {sorted(names)}")
    for index, client in enumerate(instance.clients):
        for label in ("slo_ms", "fps", "bandwidth_mbps"):
            _check_positive(getattr(client, label), f"clients[{index}].{label}")
        if client.rtt_ms < 0:
            raise InvalidInputError(f"clients[{index}].rtt_ms must be >= 0, got {client.rtt_ms!r}")
    _check_positive(instance.settings.plan_interval_ms, "settings.plan_interval_ms")
    if instance.settings.server_overhead_ms < 0:
        raise InvalidInputError("settings.server_overhead_ms must be >= 0")


def evaluate_plan(
    instance: EdgeInstance,
    workers: Mapping[str, WorkerDecision],
    clients: Mapping[str, ClientAssignment | None],
) -> EdgeEvaluation:
    """Check every assignment against the shared model and compute the objective.

    Never raises for a bad assignment: an assignment that breaks the model makes its client
    unserved, with the reason. Workers and clients missing from the mappings are idle/unserved.
    """
    worker_by_name = {worker.name: worker for worker in instance.workers}
    variant_by_name = {variant.name: variant for variant in instance.variants}
    outcomes: dict[str, ClientOutcome] = {}
    members: dict[str, list[tuple[EdgeClient, float, float]]] = {name: [] for name in worker_by_name}
    capacity: dict[str, float] = {}
    latency: dict[str, float] = {}
    for name, worker in worker_by_name.items():
        decision = workers.get(name)
        capacity[name] = 0.0
        if decision is None or decision.variant is None or decision.variant not in variant_by_name:
            continue
        table = variant_by_name[decision.variant].latency_table(worker.device)
        if decision.batch_size in table:
            latency[name] = table[decision.batch_size]
            capacity[name] = capacity_fps(latency[name], decision.batch_size)
    for client in instance.clients:
        assignment = clients.get(client.name)
        if assignment is None:
            outcomes[client.name] = ClientOutcome(False, "not assigned to any worker")
            continue
        decision = workers.get(assignment.worker)
        if assignment.worker not in worker_by_name or decision is None:
            outcomes[client.name] = ClientOutcome(False, f"assigned to unknown worker {assignment.worker!r}")
            continue
        if decision.variant != assignment.variant:
            outcomes[client.name] = ClientOutcome(
                False, f"wants variant {assignment.variant!r} but worker {assignment.worker!r} runs {decision.variant!r}"
            )
            continue
        if assignment.worker not in latency:
            outcomes[client.name] = ClientOutcome(
                False, f"worker {assignment.worker!r} has no latency for batch size {decision.batch_size}"
            )
            continue
        variant = variant_by_name[assignment.variant]
        option = variant.input_option(assignment.input_size)
        if option is None:
            outcomes[client.name] = ClientOutcome(
                False, f"variant {variant.name!r} does not accept input size {assignment.input_size}"
            )
            continue
        e2e = end_to_end_ms(client, variant, option, latency[assignment.worker], instance.settings)
        if not uplink_sustains(client, option):
            outcomes[client.name] = ClientOutcome(False, "uplink too slow for its frame rate at this input size", e2e)
        elif e2e > client.slo_ms + LATENCY_TOLERANCE_MS:
            outcomes[client.name] = ClientOutcome(
                False, f"worst-case latency {e2e:.1f} ms exceeds its SLO of {client.slo_ms:g} ms", e2e
            )
        else:
            members[assignment.worker].append((client, option.accuracy, e2e))
    load: dict[str, float] = {}
    numerator = 0.0
    served_fps = 0.0
    for name, assigned in members.items():
        load[name] = sum(client.fps for client, _, _ in assigned)
        overloaded = load[name] > capacity[name] * (1 + CAPACITY_TOLERANCE)
        factor = 1.0
        if assigned and not overloaded:
            decision = workers[name]
            factor = switch_factor(worker_by_name[name], variant_by_name[decision.variant], instance.settings)
        for client, accuracy, e2e in assigned:
            if overloaded:
                reason = f"worker {name!r} overloaded: {load[name]:g} fps > capacity {capacity[name]:.1f} fps"
                outcomes[client.name] = ClientOutcome(False, reason, e2e)
            else:
                outcomes[client.name] = ClientOutcome(True, "", e2e)
                numerator += client.fps * accuracy * factor
                served_fps += client.fps
    total = instance.total_fps
    ordered = {client.name: outcomes[client.name] for client in instance.clients}
    return EdgeEvaluation(
        objective=numerator / total if total > 0 else 0.0,
        served_fraction=served_fps / total if total > 0 else 1.0,
        clients=ordered,
        worker_load_fps=load,
        worker_capacity_fps=capacity,
    )
