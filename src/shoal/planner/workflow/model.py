"""Typed inputs and outputs of the workflow planner (frozen dataclasses, validated once).

A workflow is a DAG whose roots are *sources* (data producers with an injection rate) and whose
other nodes are *tasks*. Every task has one or more *variants*; a variant's speed on a worker is
its profiled latency per request (batch 1), so a worker serves at most 1000 / latency_ms
requests/s of it. Traffic between nodes is `message_bytes` per downstream request, priced per GB
(2**30 bytes) on the link between the two workers (or source and worker).

Units are part of every name: `_rps` requests per second, `_ms` milliseconds, `_bytes`,
`_usd_per_hour`, `_usd_per_gb`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from graphlib import CycleError, TopologicalSorter
from types import MappingProxyType
from typing import Literal, Mapping

from shoal.core.errors import InvalidInputError
from shoal.planner.workflow.accuracy import AccuracySpec

__all__ = [
    "DEFAULT_VARIANT",
    "Billing",
    "PlanOptions",
    "PlanStatus",
    "Route",
    "Worker",
    "WorkflowPlan",
    "WorkflowProblem",
]

DEFAULT_VARIANT = "default"
"""The variant name of a node that has no alternatives (JellyBean's convention)."""

Billing = Literal["whole", "fractional"]
PlanStatus = Literal["optimal", "feasible", "below_target", "infeasible", "failed"]


def _frozen(mapping: Mapping) -> Mapping:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, eq=False)
class Worker:
    """A machine that can run tasks; billed per hour, placed in a network tier (0 = the sources')."""

    name: str
    price_usd_per_hour: float
    tier: int = 0

    def __post_init__(self) -> None:
        if not self.name:
            raise InvalidInputError("Worker.name is empty: give every worker a name.")
        if not (self.price_usd_per_hour >= 0 and math.isfinite(self.price_usd_per_hour)):
            raise InvalidInputError(
                f"Worker {self.name!r}: price_usd_per_hour must be a finite number >= 0, got {self.price_usd_per_hour}."
            )
        if self.tier < 0:
            raise InvalidInputError(f"Worker {self.name!r}: tier must be >= 0, got {self.tier}.")


@dataclass(frozen=True)
class PlanOptions:
    """Which of JellyBean's rules apply; the defaults reproduce its cost model exactly.

    tier_rule: a task's workers sit in tiers no lower than those of the workers feeding it, so
        traffic never flows back to a lower tier; same-tier links are free, a source only pays
        for links to workers above tier 0 (JellyBean). Off: any placement, every link charged at
        its listed price.
    shared_workers: a worker may serve several tasks, time-shared (the sum over its tasks of
        load x latency must fit in one second per second). Off: one task per worker.
    billing: "whole" pays a used worker's full hourly price; "fractional" pays price x utilisation.
    """

    tier_rule: bool = True
    shared_workers: bool = False
    billing: Billing = "whole"

    def __post_init__(self) -> None:
        if self.billing not in ("whole", "fractional"):
            raise InvalidInputError(
                f"PlanOptions.billing must be 'whole' or 'fractional', got {self.billing!r}."
            )

    @property
    def is_jellybean_default(self) -> bool:
        return self == PlanOptions()


@dataclass(frozen=True, eq=False)
class WorkflowProblem:
    """Everything the planner needs; built by a reader (see shoal.formats.jellybean) or by hand.

    latency_ms: (task, variant, worker) -> latency per request; a missing key means the worker
        cannot run that variant.
    message_bytes: (upstream, downstream, upstream_variant, downstream_variant) -> bytes per
        downstream request; lookups fall back to DEFAULT_VARIANT on either side, then both.
    rate_ratios: (upstream, downstream) -> downstream requests per upstream request (1.0 if absent);
        rate_ratios_per_variant, keyed like message_bytes, takes precedence when given.
    A task's rate is the minimum over its inputs of input rate x ratio (a join waits for all).
    """

    source_rates_rps: Mapping[str, float]
    edges: tuple[tuple[str, str], ...]
    workers: tuple[Worker, ...]
    latency_ms: Mapping[tuple[str, str, str], float]
    message_bytes: Mapping[tuple[str, str, str, str], float]
    accuracy: AccuracySpec
    source_link_usd_per_gb: Mapping[tuple[str, str], float] = field(default_factory=dict)
    worker_link_usd_per_gb: Mapping[tuple[str, str], float] = field(default_factory=dict)
    rate_ratios: Mapping[tuple[str, str], float] = field(default_factory=dict)
    rate_ratios_per_variant: Mapping[tuple[str, str, str, str], float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("source_rates_rps", "latency_ms", "message_bytes", "source_link_usd_per_gb",
                     "worker_link_usd_per_gb", "rate_ratios", "rate_ratios_per_variant"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        object.__setattr__(self, "edges", tuple((str(u), str(v)) for u, v in self.edges))
        object.__setattr__(self, "workers", tuple(self.workers))
        object.__setattr__(self, "_workers_by_name", {w.name: w for w in self.workers})
        _validate(self)

    # ---- derived views -------------------------------------------------------------------
    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(self.source_rates_rps)

    @property
    def tasks(self) -> tuple[str, ...]:
        """Non-source nodes in a topological order (stable: by first appearance in `edges`)."""
        return _topological_tasks(self)

    def parents(self, node: str) -> tuple[str, ...]:
        return tuple(u for u, v in self.edges if v == node)

    def variants(self, task: str) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for t, variant, _ in self.latency_ms:
            if t == task:
                seen.setdefault(variant, None)
        return tuple(seen)

    def worker(self, name: str) -> Worker:
        """The worker called `name` (KeyError if there is none)."""
        return self._workers_by_name[name]

    # ---- edits for sweeps (return new problems) --------------------------------------------
    def with_accuracy_target(self, target: float) -> "WorkflowProblem":
        return replace(self, accuracy=replace(self.accuracy, target=float(target)))

    def with_source_rates(self, rate_rps: float | Mapping[str, float]) -> "WorkflowProblem":
        """The same problem with every source injecting `rate_rps` (or a per-source mapping)."""
        if isinstance(rate_rps, Mapping):
            rates = {s: float(rate_rps.get(s, r)) for s, r in self.source_rates_rps.items()}
        else:
            rates = {s: float(rate_rps) for s in self.source_rates_rps}
        return replace(self, source_rates_rps=rates)


def _topological_tasks(problem: WorkflowProblem) -> tuple[str, ...]:
    order: dict[str, None] = {}
    for u, v in problem.edges:
        order.setdefault(u, None)
        order.setdefault(v, None)
    sorter = TopologicalSorter({n: [u for u, v in problem.edges if v == n] for n in order})
    ranked = list(sorter.static_order())
    position = {n: i for i, n in enumerate(order)}
    # Kahn layers can be reordered freely; keep the input order inside each dependency level.
    level: dict[str, int] = {}
    for n in ranked:
        level[n] = 1 + max((level[u] for u in problem.parents(n)), default=-1)
    tasks = [n for n in order if n not in problem.source_rates_rps]
    return tuple(sorted(tasks, key=lambda n: (level[n], position[n])))


def _validate(problem: WorkflowProblem) -> None:
    where = "WorkflowProblem"
    if not problem.source_rates_rps:
        raise InvalidInputError(f"{where}.source_rates_rps is empty: give every source an injection rate.")
    for s, rate in problem.source_rates_rps.items():
        if not rate > 0:
            raise InvalidInputError(f"{where}.source_rates_rps[{s!r}] must be > 0, got {rate}.")
    names = [w.name for w in problem.workers]
    if not names:
        raise InvalidInputError(f"{where}.workers is empty: list at least one worker.")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InvalidInputError(f"{where}.workers: duplicate worker names {dup}.")
    nodes = {n for e in problem.edges for n in e}
    for s in problem.source_rates_rps:
        if s not in nodes:
            raise InvalidInputError(f"{where}.source_rates_rps: source {s!r} is not in the graph edges.")
    if len(set(problem.edges)) != len(problem.edges):
        raise InvalidInputError(f"{where}.edges: an edge is listed twice.")
    try:
        tasks = _topological_tasks(problem)
    except CycleError as error:
        raise InvalidInputError(f"{where}.edges: the graph has a cycle through {error.args[1]}.") from None
    for u, v in problem.edges:
        if v in problem.source_rates_rps:
            raise InvalidInputError(f"{where}.edges: {u!r} -> {v!r} points into a source.")
    if not tasks:
        raise InvalidInputError(f"{where}.edges: the graph has no task besides its sources.")
    worker_names = set(names)
    for (task, variant, worker), latency in problem.latency_ms.items():
        if task not in tasks:
            raise InvalidInputError(f"{where}.latency_ms: task {task!r} is not a task of the graph.")
        if worker not in worker_names:
            raise InvalidInputError(f"{where}.latency_ms: worker {worker!r} (task {task!r}) is not listed.")
        if not latency > 0:
            raise InvalidInputError(
                f"{where}.latency_ms[{task!r}, {variant!r}, {worker!r}] must be > 0 ms, got {latency}."
            )
    for task in tasks:
        if not problem.variants(task):
            raise InvalidInputError(f"{where}.latency_ms: task {task!r} has no profile on any worker.")
        if not problem.parents(task):
            raise InvalidInputError(f"{where}.edges: task {task!r} has no input (no edge from a source).")
    for u, v in problem.edges:
        if not any(k[0] == u and k[1] == v for k in problem.message_bytes):
            raise InvalidInputError(f"{where}.message_bytes: no size for edge {u!r} -> {v!r}.")
    for key, size in problem.message_bytes.items():  # a negative size made a negative cost, a plan "cheaper" than free
        if not (size >= 0 and math.isfinite(size)):
            raise InvalidInputError(f"{where}.message_bytes[{key!r}] must be a finite number >= 0, got {size}.")
    for table, what in ((problem.source_link_usd_per_gb, "source_link_usd_per_gb"),
                        (problem.worker_link_usd_per_gb, "worker_link_usd_per_gb")):
        for (a, b), price in table.items():
            if not (price >= 0 and math.isfinite(price)):
                raise InvalidInputError(f"{where}.{what}[{a!r}, {b!r}] must be a finite number >= 0, got {price}.")
            if b not in worker_names or (what.startswith("worker") and a not in worker_names):
                raise InvalidInputError(f"{where}.{what}: link {a!r} -> {b!r} names an unknown worker.")
    for key, ratio in list(problem.rate_ratios.items()) + list(problem.rate_ratios_per_variant.items()):
        if not ratio > 0:
            raise InvalidInputError(f"{where}: rate ratio {key} must be > 0, got {ratio}.")
    problem.accuracy.validate_against({t: problem.variants(t) for t in tasks})


@dataclass(frozen=True)
class Route:
    """Requests/s of `downstream` whose input from `upstream` goes from one worker to another.

    `from_worker` is None when `upstream` is a source. Bytes moved = rate_rps x message size.
    """

    upstream: str
    downstream: str
    from_worker: str | None
    to_worker: str
    rate_rps: float
    cost_usd_per_hour: float


@dataclass(frozen=True, eq=False)
class WorkflowPlan:
    """A placement, or the reason there is none (status), with its cost in $/hour.

    status: "optimal" (proved by the exact solver), "feasible" (a heuristic plan meeting the
    target), "below_target" (a heuristic plan whose real accuracy misses the target: never a
    plan to run), "infeasible" (proved: no plan meets the target / carries the load), "failed"
    (a heuristic found nothing, or the solver stopped without a proof: this proves nothing).
    """

    status: PlanStatus
    policy: str
    message: str
    options: PlanOptions
    accuracy_target: float
    end_to_end_accuracy: float | None = None
    compute_cost_usd_per_hour: float = 0.0
    communication_cost_usd_per_hour: float = 0.0
    model_assignment: Mapping[str, str] = field(default_factory=dict)
    load_shares_rps: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    routes: tuple[Route, ...] = ()
    num_combinations_solved: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_assignment", _frozen(self.model_assignment))
        object.__setattr__(
            self, "load_shares_rps", _frozen({t: _frozen(s) for t, s in self.load_shares_rps.items()})
        )

    @property
    def success(self) -> bool:
        """True when the plan can be run: it exists and meets the accuracy target."""
        return self.status in ("optimal", "feasible")

    @property
    def total_cost_usd_per_hour(self) -> float:
        return self.compute_cost_usd_per_hour + self.communication_cost_usd_per_hour

    @property
    def worker_assignment(self) -> dict[str, list[str]]:
        return {t: list(shares) for t, shares in self.load_shares_rps.items()}

    def to_json_dict(self) -> dict:
        """JellyBean's output keys (costs in $/hour) plus status, load shares and routes."""
        return {
            "status": self.status,
            "policy": self.policy,
            "message": self.message,
            "compute_cost": self.compute_cost_usd_per_hour,
            "communication_cost": self.communication_cost_usd_per_hour,
            "total_cost": self.total_cost_usd_per_hour,
            "cost_unit": "usd_per_hour",
            "end_to_end_accuracy": self.end_to_end_accuracy,
            "accuracy_target": self.accuracy_target,
            "model_assignment": dict(self.model_assignment),
            "worker_assignment": self.worker_assignment,
            "load_shares_rps": {t: dict(s) for t, s in self.load_shares_rps.items()},
            "routes": [
                {"upstream": r.upstream, "downstream": r.downstream, "from_worker": r.from_worker,
                 "to_worker": r.to_worker, "rate_rps": r.rate_rps,
                 "cost_usd_per_hour": r.cost_usd_per_hour}
                for r in self.routes
            ],
            "options": {"tier_rule": self.options.tier_rule,
                        "shared_workers": self.options.shared_workers,
                        "billing": self.options.billing},
        }
