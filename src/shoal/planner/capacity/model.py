"""Typed inputs and outputs of the capacity planner (frozen dataclasses, units in names).

The vocabulary is Inferno's: an *accelerator* is a named unit of allocation (`4xA100` is four
cards of type `A100`); a *server* serves one model for one service class; the *pool* counts
single cards per accelerator type. Costs are cents per hour, rates requests per second (the
Inferno reader converts its per-minute rates), times milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Mapping

from shoal.planner.queueing import Generation

__all__ = [
    "SATURATION_POLICIES",
    "SaturationPolicy",
    "SolverName",
    "AcceleratorSpec",
    "DecodePrefillParams",
    "IterationParams",
    "BatchLatencyTable",
    "PerfParams",
    "ModelPerf",
    "ModelTarget",
    "ServiceClass",
    "ServerLoad",
    "CurrentAllocation",
    "ServerSpec",
    "OptimizerOptions",
    "CapacitySystem",
    "Candidate",
    "ServerAllocation",
    "CapacityPlan",
]

SaturationPolicy = Literal["None", "PriorityExhaustive", "RoundRobin", "PriorityRoundRobin"]
SATURATION_POLICIES: tuple[str, ...] = ("None", "PriorityExhaustive", "RoundRobin", "PriorityRoundRobin")
SolverName = Literal["greedy", "milp"]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _finite_non_negative(value: float | None) -> bool:
    return value is None or (math.isfinite(value) and value >= 0)


@dataclass(frozen=True)
class AcceleratorSpec:
    """A unit of allocation: `multiplicity` cards of `type`, costing `cost_cents_per_hour` in all."""

    name: str
    type: str
    cost_cents_per_hour: float
    multiplicity: int = 1

    def __post_init__(self) -> None:
        _require(bool(self.name), "AcceleratorSpec.name must not be empty")
        _require(bool(self.type), f"accelerator {self.name!r}: type must not be empty")
        _require(self.multiplicity >= 1, f"accelerator {self.name!r}: multiplicity must be >= 1")
        _require(
            _finite_non_negative(self.cost_cents_per_hour),
            f"accelerator {self.name!r}: cost_cents_per_hour must be a finite number >= 0",
        )


@dataclass(frozen=True)
class DecodePrefillParams:
    """Inferno G1 (`decodeParms`, `prefillParms`): decode = alpha + beta*n, prefill = gamma + delta*in*n."""

    alpha_ms: float
    beta_ms: float
    gamma_ms: float
    delta_ms: float
    generation: Generation = field(default="G1", init=False)


@dataclass(frozen=True)
class IterationParams:
    """Inferno G2 (`perfParms`): iteration = alpha + n*(beta*compute tokens + gamma*memory tokens)."""

    alpha_ms: float
    beta_ms: float
    gamma_ms: float
    generation: Generation = field(default="G2", init=False)


@dataclass(frozen=True)
class BatchLatencyTable:
    """shoal's own profile of a DNN on one device: measured latency per batch size."""

    latency_ms_by_batch: tuple[tuple[int, float], ...]
    generation: Generation = field(default="profile", init=False)

    def __post_init__(self) -> None:
        _require(bool(self.latency_ms_by_batch), "BatchLatencyTable needs at least one batch size")

    @property
    def as_dict(self) -> dict[int, float]:
        return dict(self.latency_ms_by_batch)


PerfParams = DecodePrefillParams | IterationParams | BatchLatencyTable


@dataclass(frozen=True)
class ModelPerf:
    """Performance of one model on one accelerator.

    `params` is None when the data has no fitted parameters yet (Inferno's tuner learns them
    online); such an entry yields no candidate. `accelerators_per_replica` is Inferno's `accCount`. `max_batch_size` holds "at
    `at_tokens` tokens per request" when at_tokens is set (G1): the batch limit for a load of K
    output tokens is then max(floor(max_batch_size * at_tokens / K), 1).
    """

    model: str
    accelerator: str
    max_batch_size: int
    params: PerfParams | None
    accelerators_per_replica: int = 1
    at_tokens: int | None = None

    def __post_init__(self) -> None:
        where = f"model {self.model!r} on {self.accelerator!r}"
        _require(self.max_batch_size >= 1, f"{where}: max_batch_size must be >= 1")
        _require(self.accelerators_per_replica >= 1, f"{where}: accelerators_per_replica must be >= 1")
        _require(self.at_tokens is None or self.at_tokens >= 1, f"{where}: at_tokens must be >= 1")

    @property
    def generation(self) -> Generation | None:
        return self.params.generation if self.params is not None else None


@dataclass(frozen=True)
class ModelTarget:
    """SLO targets of a service class for one model (averages; None means no target)."""

    model: str
    itl_ms: float | None = None
    ttft_ms: float | None = None
    tokens_per_s: float | None = None
    latency_ms: float | None = None

    def __post_init__(self) -> None:
        for name in ("itl_ms", "ttft_ms", "tokens_per_s", "latency_ms"):
            _require(
                _finite_non_negative(getattr(self, name)),
                f"target for model {self.model!r}: {name} must be a finite number >= 0",
            )


@dataclass(frozen=True)
class ServiceClass:
    """A service class: lower `priority` is served first."""

    name: str
    priority: int
    targets: tuple[ModelTarget, ...] = ()

    def __post_init__(self) -> None:
        models = [target.model for target in self.targets]
        repeated = sorted({model for model in models if models.count(model) > 1})
        # The first target used to win silently, whichever the file meant.
        _require(not repeated, f"service class {self.name!r} has two targets for model {repeated[0]!r}: keep one" if repeated else "")

    def target_for(self, model: str) -> ModelTarget | None:
        for target in self.targets:
            if target.model == model:
                return target
        return None


@dataclass(frozen=True)
class ServerLoad:
    arrival_rate_rps: float
    avg_in_tokens: float = 0.0
    avg_out_tokens: float = 0.0

    def __post_init__(self) -> None:
        for name in ("arrival_rate_rps", "avg_in_tokens", "avg_out_tokens"):
            _require(_finite_non_negative(getattr(self, name)), f"ServerLoad.{name} must be a finite number >= 0")


@dataclass(frozen=True)
class CurrentAllocation:
    """What a server runs now; candidates are valued by the cost of moving away from it."""

    accelerator: str
    num_replicas: int
    cost_cents_per_hour: float


@dataclass(frozen=True)
class ServerSpec:
    name: str
    service_class: str
    model: str
    load: ServerLoad
    max_batch_size: int | None = None
    max_queue_size: int | None = None
    min_replicas: int = 0
    keep_accelerator: bool = False
    current: CurrentAllocation | None = None

    def __post_init__(self) -> None:
        _require(bool(self.name), "ServerSpec.name must not be empty")
        _require(self.max_batch_size is None or self.max_batch_size >= 1, f"server {self.name!r}: max_batch_size must be >= 1")
        _require(self.max_queue_size is None or self.max_queue_size >= 0, f"server {self.name!r}: max_queue_size must be >= 0")
        _require(self.min_replicas >= 0, f"server {self.name!r}: min_replicas must be >= 0")


@dataclass(frozen=True)
class OptimizerOptions:
    """How to solve: `unlimited` ignores the pool; the saturation policy shares what is left
    among servers that could not be served in full (Inferno's `saturationPolicy`); `solver` is
    the one the input asks for (Inferno's `milpSolver`), used when the caller names none."""

    unlimited: bool = False
    saturation_policy: SaturationPolicy = "None"
    delayed_best_effort: bool = False
    solver: SolverName = "greedy"
    max_queue_to_batch_ratio: int = 10
    accelerator_penalty_factor: float = 0.1

    def __post_init__(self) -> None:
        _require(
            self.saturation_policy in SATURATION_POLICIES,
            f"saturation_policy {self.saturation_policy!r} is unknown: use one of {', '.join(SATURATION_POLICIES)}",
        )
        _require(self.solver in ("greedy", "milp"), f"solver {self.solver!r} is unknown: use greedy or milp")
        _require(self.max_queue_to_batch_ratio >= 0, "max_queue_to_batch_ratio must be >= 0")


@dataclass(frozen=True)
class CapacitySystem:
    """Everything the planner needs; `capacity_by_type` counts single cards per accelerator type
    (a type that is not listed has none). Names are checked for duplicates here."""

    accelerators: tuple[AcceleratorSpec, ...]
    models: tuple[ModelPerf, ...]
    service_classes: tuple[ServiceClass, ...]
    servers: tuple[ServerSpec, ...]
    capacity_by_type: Mapping[str, int] = field(default_factory=dict)
    options: OptimizerOptions = field(default_factory=OptimizerOptions)

    def __post_init__(self) -> None:
        for what, names in (
            ("accelerator", [a.name for a in self.accelerators]),
            ("service class", [c.name for c in self.service_classes]),
            ("server", [s.name for s in self.servers]),
            ("model/accelerator pair", [f"{m.model}@{m.accelerator}" for m in self.models]),
        ):
            seen: set[str] = set()
            for name in names:
                _require(name not in seen, f"{what} {name!r} is defined twice: keep one definition")
                seen.add(name)
        for type_name, count in self.capacity_by_type.items():
            _require(isinstance(count, int) and count >= 0, f"capacity of type {type_name!r} must be an integer >= 0")

    def accelerator(self, name: str) -> AcceleratorSpec | None:
        return next((a for a in self.accelerators if a.name == name), None)

    def service_class(self, name: str) -> ServiceClass | None:
        return next((c for c in self.service_classes if c.name == name), None)


@dataclass(frozen=True)
class Candidate:
    """One way to serve a server in full on one accelerator."""

    server: str
    accelerator: str
    accelerator_type: str
    num_replicas: int
    units_per_replica: int
    max_batch_size: int
    cost_cents_per_hour: float
    value: float
    generation: Generation | None
    max_rate_per_replica_rps: float = 0.0
    itl_ms: float | None = None
    ttft_ms: float | None = None
    latency_ms: float | None = None
    blocking_probability: float | None = None
    """Share of the arrivals a replica refuses at the planned rate, its queue being full."""

    @property
    def units(self) -> int:
        return self.num_replicas * self.units_per_replica


@dataclass(frozen=True)
class ServerAllocation:
    """The decision for one server.

    status "served": the SLO-sized replicas are all allocated; "partial": a saturation policy
    gave `num_replicas` < `required_replicas` (cost scaled, latencies are those of the full
    allocation and will not hold); "unserved": nothing allocated, `reason` says why.
    """

    server: str
    service_class: str
    model: str
    priority: int
    load: ServerLoad
    status: Literal["served", "partial", "unserved"]
    accelerator: str = ""
    accelerator_type: str = ""
    num_replicas: int = 0
    required_replicas: int = 0
    units: int = 0
    max_batch_size: int = 0
    cost_cents_per_hour: float = 0.0
    itl_ms: float | None = None
    ttft_ms: float | None = None
    latency_ms: float | None = None
    generation: Generation | None = None
    reason: str = ""
    blocking_probability: float | None = None
    """Share of the load refused because a replica's queue is full, at the planned replicas
    (Inferno sizes replicas by latency targets alone, so a small queue or a loose target can
    leave a served plan refusing part of its load; this says how much)."""


@dataclass(frozen=True)
class CapacityPlan:
    """Result of a solve. `status`: "optimal" (MILP proven, or unlimited pool), "heuristic"
    (greedy), "time_limit" (MILP stopped early with a feasible answer) or "error" (`message`)."""

    solver: str
    status: Literal["optimal", "heuristic", "time_limit", "error"]
    allocations: tuple[ServerAllocation, ...]
    total_cost_cents_per_hour: float
    units_used_by_type: Mapping[str, int]
    units_available_by_type: Mapping[str, int] | None
    saturation_policy: str = "None"
    message: str = ""

    @property
    def success(self) -> bool:
        return self.status != "error"

    def allocation(self, server: str) -> ServerAllocation:
        for allocation in self.allocations:
            if allocation.server == server:
                return allocation
        raise KeyError(server)

    @property
    def served(self) -> tuple[str, ...]:
        return tuple(a.server for a in self.allocations if a.status == "served")

    @property
    def partial(self) -> tuple[str, ...]:
        return tuple(a.server for a in self.allocations if a.status == "partial")

    @property
    def unserved(self) -> tuple[str, ...]:
        return tuple(a.server for a in self.allocations if a.status == "unserved")

    @property
    def generations(self) -> tuple[str, ...]:
        return tuple(sorted({a.generation for a in self.allocations if a.generation}))
