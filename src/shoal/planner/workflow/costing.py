"""The cost model, shared by every policy: rates, capacities, link prices and plan evaluation.

`resolve` fixes a variant per task and derives what a placement needs (request rate of every
node, capacity of every worker for its task, bytes per request on every edge). `link_price`
states the pricing rules that PlanOptions switch. `evaluate_placement` is the independent check
of any plan: it recomputes both costs from loads and routes and lists every broken rule, so the
exact solver and the baseline are judged by the same code.

Money: compute in $/hour (whole: each used worker's price; fractional: price x utilisation);
communication in $/hour = rate (req/s) x bytes per request x 3600 / 2**30 x price ($/GB).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from shoal.core.errors import InvalidInputError
from shoal.planner.workflow.model import DEFAULT_VARIANT, PlanOptions, Route, WorkflowProblem

__all__ = [
    "BYTES_PER_GB",
    "PlacementCost",
    "ResolvedWorkflow",
    "evaluate_placement",
    "link_price",
    "proportional_routes",
    "resolve",
    "route_cost_usd_per_hour",
]

BYTES_PER_GB = 2**30
SECONDS_PER_HOUR = 3600.0
_RATE_TOLERANCE = 1e-6


@dataclass(frozen=True, eq=False)
class ResolvedWorkflow:
    """A problem with one variant per task: what the placement needs, precomputed."""

    problem: WorkflowProblem
    assignment: Mapping[str, str]
    tasks: tuple[str, ...]
    rate_rps: Mapping[str, float]
    capacity_rps: Mapping[tuple[str, str], float]
    edge_bytes: Mapping[tuple[str, str], float]

    def workers_of(self, task: str) -> tuple[str, ...]:
        """Workers that can run the task's chosen variant, in the problem's worker order."""
        return tuple(w.name for w in self.problem.workers if (task, w.name) in self.capacity_rps)

    def is_source(self, node: str) -> bool:
        return node in self.problem.source_rates_rps


def _variant_keyed(table: Mapping, u: str, v: str, u_variant: str, v_variant: str):
    for key in ((u, v, u_variant, v_variant), (u, v, DEFAULT_VARIANT, v_variant),
                (u, v, u_variant, DEFAULT_VARIANT), (u, v, DEFAULT_VARIANT, DEFAULT_VARIANT)):
        if key in table:
            return table[key]
    return None


def check_message_sizes(problem: WorkflowProblem) -> None:
    """Every edge has a message size for every pair of variants its ends can run (exact, or by
    a `default` row). Without one, `resolve` priced that pair's traffic at 0 bytes: free, so the
    planner preferred the very variants whose sizes were not stated."""
    for u, v in problem.edges:
        for u_variant in problem.variants(u) or (DEFAULT_VARIANT,):
            for v_variant in problem.variants(v) or (DEFAULT_VARIANT,):
                if _variant_keyed(problem.message_bytes, u, v, u_variant, v_variant) is None:
                    raise InvalidInputError(
                        f"WorkflowProblem.message_bytes: no size for edge {u!r} -> {v!r} with variants {u_variant!r} -> {v_variant!r}; "
                        f"add that row or a {DEFAULT_VARIANT!r} one"
                    )


def resolve(problem: WorkflowProblem, assignment: Mapping[str, str]) -> ResolvedWorkflow:
    """Fix the variants; raises KeyError if `assignment` misses a task."""
    tasks = problem.tasks
    variant = {t: assignment[t] for t in tasks}
    variant.update({s: DEFAULT_VARIANT for s in problem.sources})
    rate: dict[str, float] = dict(problem.source_rates_rps)
    edge_bytes: dict[tuple[str, str], float] = {}
    for u, v in problem.edges:
        size = _variant_keyed(problem.message_bytes, u, v, variant[u], variant[v])
        edge_bytes[(u, v)] = 0.0 if size is None else float(size)
    for t in tasks:
        incoming = []
        for u in problem.parents(t):
            ratio = _variant_keyed(problem.rate_ratios_per_variant, u, t, variant[u], variant[t])
            if ratio is None:
                ratio = problem.rate_ratios.get((u, t), 1.0)
            incoming.append(rate[u] * ratio)
        rate[t] = min(incoming)
    capacity = {}
    for (t, var, w), latency in problem.latency_ms.items():
        if variant.get(t) == var and t in rate:
            capacity[(t, w)] = 1000.0 / latency
    return ResolvedWorkflow(
        problem=problem,
        assignment=MappingProxyType(dict(variant)),
        tasks=tasks,
        rate_rps=MappingProxyType(rate),
        capacity_rps=MappingProxyType(capacity),
        edge_bytes=MappingProxyType(edge_bytes),
    )


def link_price(problem: WorkflowProblem, options: PlanOptions, from_node: str,
               from_worker: str | None, to_worker: str) -> float | None:
    """$/GB from a worker (None: the source `from_node`) to `to_worker`; None if forbidden.

    With the tier rule (JellyBean): links into a lower tier are forbidden, same-tier links are
    free, sources (tier 0) pay only for workers above tier 0. Without it: the listed price.
    Unlisted links cost nothing, and a worker talking to itself is free.
    """
    to_tier = problem.worker(to_worker).tier
    if from_worker is None:
        listed = problem.source_link_usd_per_gb.get((from_node, to_worker), 0.0)
        if options.tier_rule and to_tier == 0:
            return 0.0
        return listed
    if from_worker == to_worker:
        return 0.0
    listed = problem.worker_link_usd_per_gb.get((from_worker, to_worker), 0.0)
    if options.tier_rule:
        from_tier = problem.worker(from_worker).tier
        if to_tier < from_tier:
            return None
        if to_tier == from_tier:
            return 0.0
    return listed


def route_cost_usd_per_hour(rate_rps: float, message_bytes: float, price_usd_per_gb: float) -> float:
    return rate_rps * message_bytes * SECONDS_PER_HOUR / BYTES_PER_GB * price_usd_per_gb


def proportional_routes(resolved: ResolvedWorkflow, options: PlanOptions,
                        load_shares_rps: Mapping[str, Mapping[str, float]]) -> tuple[Route, ...]:
    """Routes under weighted load balancing (JellyBean's executor): every upstream worker splits
    its output over the downstream workers in proportion to their load shares."""
    problem = resolved.problem
    routes = []
    for u, v in problem.edges:
        size = resolved.edge_bytes[(u, v)]
        if resolved.is_source(u):
            pairs = [(None, b, load) for b, load in load_shares_rps[v].items()]
        else:
            total_u = sum(load_shares_rps[u].values())
            pairs = [(a, b, load_a / total_u * load_b)
                     for a, load_a in load_shares_rps[u].items()
                     for b, load_b in load_shares_rps[v].items()]
        for a, b, rate in pairs:
            price = link_price(problem, options, u, a, b)
            cost = route_cost_usd_per_hour(rate, size, price if price is not None else 0.0)
            routes.append(Route(u, v, a, b, rate, cost))
    return tuple(routes)


@dataclass(frozen=True)
class PlacementCost:
    compute_cost_usd_per_hour: float
    communication_cost_usd_per_hour: float
    violations: tuple[str, ...]

    @property
    def total_cost_usd_per_hour(self) -> float:
        return self.compute_cost_usd_per_hour + self.communication_cost_usd_per_hour


def evaluate_placement(resolved: ResolvedWorkflow, options: PlanOptions,
                       load_shares_rps: Mapping[str, Mapping[str, float]],
                       routes: tuple[Route, ...]) -> PlacementCost:
    """Recompute a plan's costs from scratch and list every rule it breaks (empty = valid)."""
    problem = resolved.problem
    violations: list[str] = []
    tol = lambda x: _RATE_TOLERANCE * max(1.0, abs(x))  # noqa: E731
    utilisation: dict[str, float] = {}
    tasks_on: dict[str, list[str]] = {}
    for t in resolved.tasks:
        shares = load_shares_rps.get(t, {})
        if abs(sum(shares.values()) - resolved.rate_rps[t]) > tol(resolved.rate_rps[t]):
            violations.append(f"{t}: loads sum to {sum(shares.values()):.6g}, rate is {resolved.rate_rps[t]:.6g} req/s")
        for w, load in shares.items():
            cap = resolved.capacity_rps.get((t, w))
            if cap is None:
                violations.append(f"{t}: worker {w} cannot run variant {resolved.assignment[t]}")
                continue
            if load < -tol(cap) or load > cap + tol(cap):
                violations.append(f"{t}: load {load:.6g} on {w} exceeds its capacity {cap:.6g} req/s")
            utilisation[w] = utilisation.get(w, 0.0) + load / cap
            tasks_on.setdefault(w, []).append(t)
    for w, tasks in tasks_on.items():
        if not options.shared_workers and len(tasks) > 1:
            violations.append(f"worker {w} serves {tasks} but workers are not shared")
        if utilisation[w] > 1 + _RATE_TOLERANCE:
            violations.append(f"worker {w} is {utilisation[w]:.6g} busy (> 1)")
    if options.tier_rule:
        for u, v in problem.edges:
            if resolved.is_source(u):
                continue
            for a in load_shares_rps.get(u, {}):
                for b in load_shares_rps.get(v, {}):
                    if link_price(problem, options, u, a, b) is None:
                        violations.append(f"tier rule: {u} on {a} feeds {v} on lower-tier {b}")
    flow_out: dict[tuple[str, str, str | None], float] = {}
    flow_in: dict[tuple[str, str, str], float] = {}
    communication = 0.0
    for r in routes:
        if r.rate_rps < -_RATE_TOLERANCE:
            violations.append(f"route {r.upstream}->{r.downstream} has negative rate")
        price = link_price(problem, options, r.upstream, r.from_worker, r.to_worker)
        if price is None:
            if r.rate_rps > _RATE_TOLERANCE:
                violations.append(f"route {r.from_worker}->{r.to_worker} goes to a lower tier")
            price = problem.worker_link_usd_per_gb.get((r.from_worker, r.to_worker), 0.0)
        communication += route_cost_usd_per_hour(r.rate_rps, resolved.edge_bytes[(r.upstream, r.downstream)], price)
        key = (r.upstream, r.downstream, r.from_worker)
        flow_out[key] = flow_out.get(key, 0.0) + r.rate_rps
        key_in = (r.upstream, r.downstream, r.to_worker)
        flow_in[key_in] = flow_in.get(key_in, 0.0) + r.rate_rps
    for u, v in problem.edges:
        for b, load in load_shares_rps.get(v, {}).items():
            got = flow_in.get((u, v, b), 0.0)
            if abs(got - load) > tol(load):
                violations.append(f"{u}->{v}: {b} receives {got:.6g} req/s for a load of {load:.6g}")
        if resolved.is_source(u):
            continue
        scale = resolved.rate_rps[v] / resolved.rate_rps[u]
        for a, load in load_shares_rps.get(u, {}).items():
            sent = flow_out.get((u, v, a), 0.0)
            if abs(sent - scale * load) > tol(scale * load):
                violations.append(f"{u}->{v}: {a} sends {sent:.6g} req/s, its share is {scale * load:.6g}")
    compute = 0.0
    for w in tasks_on:
        price = problem.worker(w).price_usd_per_hour
        compute += price if options.billing == "whole" else price * utilisation[w]
    return PlacementCost(compute, communication, tuple(violations))
