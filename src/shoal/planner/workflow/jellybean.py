"""The `jellybean` baseline: JellyBean's beam search over variants + greedy tiered placement.

Kept as the published system behaves (VLDB 2023, optimizer with the README configuration:
"multiple-tiers" placement, "greedy" or "greedy-backtrace" tier allocation), defects included,
so that comparisons can be re-run:

* the beam search works backwards from the sink on per-task accuracy samples and may return a
  combination whose real end-to-end accuracy is below the target (a better input model is not
  always a better workflow); such plans get status "below_target";
* when a requirement cannot be met the search gives up ("failed"; the original crashes);
* placement is greedy (first fit by price per request, one task per worker, whole workers).

Costs are judged by the shared evaluator with proportional routing and JellyBean's link rules,
which reproduces the original's numbers (7.5088 $/h on the VQA example).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from graphlib import TopologicalSorter
from typing import Iterator, Literal

from shoal.core.errors import InvalidInputError
from shoal.planner.workflow.accuracy import TARGET_TOLERANCE, AccuracySpec, end_to_end_accuracy
from shoal.planner.workflow.costing import (
    ResolvedWorkflow,
    evaluate_placement,
    link_price,
    proportional_routes,
    resolve,
    route_cost_usd_per_hour,
)
from shoal.planner.workflow.model import PlanOptions, WorkflowPlan, WorkflowProblem

__all__ = ["JellyBeanSettings", "beam_search", "plan_jellybean"]

_RAW_LINKS = PlanOptions(tier_rule=False)  # the greedy ranks workers by listed prices


@dataclass(frozen=True)
class JellyBeanSettings:
    """JellyBean's optimizer knobs (config.yaml names in brackets); defaults = its README config."""

    beam_width: int | None = 10  # BEAM_SEARCH.BEST_K
    accuracy_sample_limit: int | None = None  # BEAM_SEARCH.ACC_PROFILE_SAMPLE_LIMIT
    expansion_limit: int | None = None  # BEAM_SEARCH.PER_ASSIGNMENT_NODE_EXPANSION_LIMIT
    strategy: str = "multiple-tiers"  # WORKER_ASSIGNMENT.STRATEGY
    tier_allocation: Literal["greedy", "greedy-backtrace"] = "greedy"  # ...TIER_ALLOCATION_STRATEGY
    max_assign_orders: int | None = 10  # WORKER_ASSIGNMENT.MAX_NUM_ASSIGN_ORDERS
    best_k_assignments: int | None = 10  # WORKER_ASSIGNMENT.BEST_K_ASSIGNMENTS

    def __post_init__(self) -> None:
        if self.strategy != "multiple-tiers":
            raise InvalidInputError(
                f"WORKER_ASSIGNMENT.STRATEGY {self.strategy!r} is not implemented by the jellybean "
                "baseline; use 'multiple-tiers' (JellyBean's README configuration)."
            )
        if self.tier_allocation not in ("greedy", "greedy-backtrace"):
            raise InvalidInputError(
                f"WORKER_ASSIGNMENT.TIER_ALLOCATION_STRATEGY {self.tier_allocation!r} is not "
                "implemented by the jellybean baseline; use 'greedy' or 'greedy-backtrace'."
            )
        for name in ("beam_width", "accuracy_sample_limit", "expansion_limit",
                     "max_assign_orders", "best_k_assignments"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InvalidInputError(f"JellyBeanSettings.{name} must be >= 1 or None, got {value}.")


# ---- variant selection: beam search ------------------------------------------------------


def _assign_order(spec: AccuracySpec) -> list[str]:
    graph = {t: list(p.inputs) for t, p in spec.task_profiles.items()}
    order = list(reversed(list(TopologicalSorter(graph).static_order())))
    order.remove(spec.sink)
    return [spec.sink] + order


def beam_search(spec: AccuracySpec, settings: JellyBeanSettings) -> list[dict[str, str]] | None:
    """JellyBean's candidate combinations (cheapest by cost proxy first), or None if it gives up."""
    profiles = spec.task_profiles
    if spec.sink not in profiles:
        return None

    def proxy_cost(assignment: dict[str, str]) -> float:
        return sum(profiles[t].weight * profiles[t].cost_proxy_by_variant.get(v, 0.0)
                   for t, v in assignment.items())

    candidates: list[tuple[dict[str, str], dict[str, float]]] = [({}, {spec.sink: spec.target})]
    for task in _assign_order(spec):
        profile = profiles[task]
        expanded: list[tuple[dict[str, str], dict[str, float]]] = []
        for assignment, needs in candidates:
            need = needs.get(task, -math.inf)
            feasible = [v for v in profile.samples_by_variant if profile.standalone_accuracy(v) >= need]
            if not feasible:
                return None
            for variant in feasible:
                if not profile.inputs:
                    rest = dict(needs)
                    rest.pop(task, None)
                    expanded.append(({**assignment, task: variant}, rest))
                    continue
                samples = sorted(
                    (s for s in profile.samples_by_variant[variant] if s.output_accuracy >= need),
                    key=lambda s: (s.output_accuracy, s.input_accuracies),
                )[: settings.accuracy_sample_limit]
                if settings.expansion_limit:
                    samples = samples[: max(0, settings.expansion_limit - len(expanded))]
                for sample in samples:
                    rest = dict(needs)
                    for parent, accuracy in zip(profile.inputs, sample.input_accuracies):
                        rest[parent] = max(rest[parent], accuracy) if parent in rest else accuracy
                    rest.pop(task, None)
                    expanded.append(({**assignment, task: variant}, rest))
                if settings.expansion_limit and len(expanded) >= settings.expansion_limit:
                    break
        if not expanded:
            return None
        keys = list(expanded[0][1])
        expanded.sort(key=lambda c: (proxy_cost(c[0]), tuple(c[1].get(k, -math.inf) for k in keys)))
        candidates = expanded[: settings.beam_width]
    return [assignment for assignment, _ in candidates]


# ---- worker placement: greedy over tiers -------------------------------------------------


@dataclass
class _State:
    overall_usd_per_hour: float
    tier_of: dict[str, int]
    loads: dict[str, list[tuple[str, float]]]
    taken: frozenset[str]


def _topological_orders(problem: WorkflowProblem) -> Iterator[list[str]]:
    nodes = list(dict.fromkeys(n for e in problem.edges for n in e))
    parents = {n: set(problem.parents(n)) for n in nodes}

    def extend(prefix: list[str], placed: set[str]) -> Iterator[list[str]]:
        if len(prefix) == len(nodes):
            yield list(prefix)
            return
        for n in nodes:
            if n not in placed and parents[n] <= placed:
                prefix.append(n)
                placed.add(n)
                yield from extend(prefix, placed)
                placed.discard(n)
                prefix.pop()

    return extend([], set())


class _Greedy:
    """One task's allocation on tiers [low, high] given the placement of its inputs."""

    def __init__(self, resolved: ResolvedWorkflow, state: _State, task: str) -> None:
        self.r = resolved
        self.problem = resolved.problem
        self.state = state
        self.task = task
        self.rate = resolved.rate_rps[task]

    def cap(self, w: str) -> float:
        return self.r.capacity_rps[(self.task, w)]

    def tier(self, w: str) -> int:
        return self.problem.worker(w).tier

    def link_cost(self, w: str, scale: str, rest_rps: float = 0.0) -> float:
        """$/h of w's inputs, as JellyBean's greedy estimates it (listed prices, all tiers)."""
        total = 0.0
        for u in self.problem.parents(self.task):
            size = self.r.edge_bytes[(u, self.task)]
            if self.r.is_source(u):
                rate = {"whole": self.rate, "part": self.cap(w), "rest": rest_rps}[scale]
                total += route_cost_usd_per_hour(rate, size, link_price(self.problem, _RAW_LINKS, u, None, w))
                continue
            for a, load_a in self.state.loads[u]:
                sent = load_a * self.rate / self.r.rate_rps[u]  # a's share of the edge, in req/s
                if scale == "part":
                    sent *= self.cap(w) / self.rate
                total += route_cost_usd_per_hour(sent, size, link_price(self.problem, _RAW_LINKS, u, a, w))
        return total

    def rank_single(self, workers: list[str], rest_rps: float, tie_by_capacity: bool) -> list[str]:
        scale = "whole" if rest_rps == self.rate else "rest"
        key = lambda w: (self.problem.worker(w).price_usd_per_hour + self.link_cost(w, scale, rest_rps),  # noqa: E731
                         self.cap(w) if tie_by_capacity else 0.0)
        return sorted(workers, key=key)

    def rank_per_request(self, workers: list[str]) -> list[str]:
        def key(w: str) -> tuple[float, float]:
            total = self.problem.worker(w).price_usd_per_hour + self.link_cost(w, "part")
            return total / self.cap(w), total
        return sorted(workers, key=key)

    def allocate(self, low: int, high: int, backtrace: bool) -> list[tuple[str, float]] | None:
        available = [w.name for w in self.problem.workers
                     if low <= w.tier <= high and w.name not in self.state.taken
                     and (self.task, w.name) in self.r.capacity_rps]
        lowest = min((self.tier(w) for w in available), default=0)
        single = [w for w in available if self.tier(w) == lowest and self.cap(w) >= self.rate]
        ranking = (self.rank_single(single, self.rate, not backtrace) if single
                   else self.rank_per_request(available))
        chosen: list[tuple[str, float]] = []
        got = 0.0
        while got < self.rate and ranking:
            w = ranking.pop(0)
            load = self.cap(w) if backtrace or got + self.cap(w) <= self.rate else self.rate - got
            chosen.append((w, load))
            got += load
            if got < self.rate:
                lowest = min((self.tier(x) for x in ranking), default=0)
                single = [x for x in ranking if self.tier(x) == lowest and self.cap(x) > self.rate - got]
                if single:
                    ranking = self.rank_single(single, self.rate - got, not backtrace)
        if backtrace and got >= self.rate:
            chosen = self._drop_surplus(chosen, got)
            got = sum(load for _, load in chosen) if chosen else 0.0
        return chosen if got >= self.rate and chosen else None

    def _drop_surplus(self, chosen: list[tuple[str, float]], got: float) -> list[tuple[str, float]]:
        by_capacity = sorted(chosen, key=lambda item: item[1])
        surplus = got - self.rate
        start, removed = -1, 0.0
        while removed < surplus and by_capacity[start + 1][1] + removed <= surplus:
            start += 1
            removed += by_capacity[start][1]
        kept, total = [], 0.0
        for w, cap in by_capacity[start + 1:]:
            load = cap if total + cap <= self.rate else self.rate - total
            kept.append((w, load))
            total += load
        return kept


def _place(resolved: ResolvedWorkflow, settings: JellyBeanSettings) -> list[_State]:
    problem = resolved.problem
    num_tiers = 1 + max(w.tier for w in problem.workers)
    backtrace = settings.tier_allocation == "greedy-backtrace"
    finished: list[_State] = []
    for num_orders, order in enumerate(_topological_orders(problem)):
        if settings.max_assign_orders and num_orders >= settings.max_assign_orders:
            break
        states = [_State(0.0, {}, {}, frozenset())]
        for node in order:
            if resolved.is_source(node):
                for s in states:
                    s.tier_of[node] = -1
                continue
            grown: list[_State] = []
            for state in states:
                low = max(0, max(state.tier_of[u] for u in problem.parents(node)))
                greedy = _Greedy(resolved, state, node)
                for high in range(low, num_tiers):
                    chosen = greedy.allocate(low, high, backtrace)
                    if chosen is None:
                        continue
                    loads = {**state.loads, node: chosen}
                    added = sum(problem.worker(w).price_usd_per_hour for w, _ in chosen)
                    added += _inbound_cost(resolved, loads, node)
                    grown.append(_State(
                        state.overall_usd_per_hour + added,
                        {**state.tier_of, node: max(problem.worker(w).tier for w, _ in chosen)},
                        loads,
                        state.taken | {w for w, _ in chosen},
                    ))
            grown.sort(key=lambda s: s.overall_usd_per_hour)
            states = grown[: settings.best_k_assignments]
        finished.extend(states)
    finished.sort(key=lambda s: s.overall_usd_per_hour)
    return finished[: settings.best_k_assignments]


def _inbound_cost(resolved: ResolvedWorkflow, loads: dict[str, list[tuple[str, float]]],
                  node: str) -> float:
    """$/h of the traffic into `node` under proportional balancing at listed prices."""
    problem = resolved.problem
    total = 0.0
    for u in problem.parents(node):
        size = resolved.edge_bytes[(u, node)]
        for b, load_b in loads[node]:
            if resolved.is_source(u):
                price = link_price(problem, _RAW_LINKS, u, None, b)
                total += route_cost_usd_per_hour(load_b, size, price)
                continue
            for a, load_a in loads[u]:
                rate = load_a / resolved.rate_rps[u] * load_b
                total += route_cost_usd_per_hour(rate, size, link_price(problem, _RAW_LINKS, u, a, b))
    return total


# ---- the policy --------------------------------------------------------------------------


def plan_jellybean(problem: WorkflowProblem, settings: JellyBeanSettings) -> WorkflowPlan:
    """JellyBean's plan for the problem under its own rules (PlanOptions defaults)."""
    options = PlanOptions()
    spec = problem.accuracy
    common = dict(policy="jellybean", options=options, accuracy_target=spec.target)
    if not spec.task_profiles:
        return WorkflowPlan(status="failed", message="the jellybean baseline needs per-task accuracy "
                            "profiles for its beam search; only an end-to-end table was given.", **common)
    combos = beam_search(spec, settings)
    if combos is None:
        return WorkflowPlan(status="failed", message=f"JellyBean's beam search finds no variants for "
                            f"accuracy {spec.target:g} (the original crashes with a TypeError).", **common)
    best = None
    for assignment in combos:
        full = {t: assignment[t] if t in assignment else _only_variant(problem, t) for t in problem.tasks}
        resolved = resolve(problem, full)
        accuracy = end_to_end_accuracy(spec, full)
        for state in _place(resolved, settings):
            shares = {t: dict(chosen) for t, chosen in state.loads.items()}
            routes = proportional_routes(resolved, options, shares)
            cost = evaluate_placement(resolved, options, shares, routes)
            if any(v.startswith("tier rule") for v in cost.violations):
                continue  # JellyBean prices backward traffic at infinity
            total = cost.total_cost_usd_per_hour
            rank = accuracy if accuracy is not None else -math.inf
            better = best is None or total < best[0] or (
                abs(total - best[0]) <= 1e-8 + 1e-5 * abs(best[0]) and rank > best[1]
            )
            if better:
                best = (total, rank, accuracy, full, shares, routes, cost)
    if best is None:
        return WorkflowPlan(status="failed", message="JellyBean's greedy placement finds no workers "
                            "that carry the load for any candidate combination.", **common)
    _, _, accuracy, full, shares, routes, cost = best
    meets = accuracy is not None and accuracy >= spec.target - TARGET_TOLERANCE
    return WorkflowPlan(
        status="feasible" if meets else "below_target",
        message="JellyBean's plan" if meets else
        f"JellyBean's plan has end-to-end accuracy {accuracy} < target {spec.target:g}",
        end_to_end_accuracy=accuracy,
        compute_cost_usd_per_hour=cost.compute_cost_usd_per_hour,
        communication_cost_usd_per_hour=cost.communication_cost_usd_per_hour,
        model_assignment=full, load_shares_rps=shares, routes=routes,
        num_combinations_solved=len(combos), **common,
    )


def _only_variant(problem: WorkflowProblem, task: str) -> str:
    variants = problem.variants(task)
    if len(variants) != 1:
        raise InvalidInputError(
            f"task {task!r} has variants {list(variants)} but no accuracy profile: the jellybean "
            "baseline cannot choose among them; add the task to the accuracy profiles."
        )
    return variants[0]
