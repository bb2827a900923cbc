"""shoal's exact workflow planner: one MILP (HiGHS) per accuracy-feasible variant combination.

For a fixed variant per task the placement is a mixed-integer linear programme:

    x[t,w] in {0,1}   worker w serves task t           l[t,w] >= 0   its load share (req/s)
    y[w]   in {0,1}   worker w is paid for (only with shared workers and whole billing)
    f[e,a,b] >= 0     requests/s of edge e's downstream task whose input goes from a to b

    sum_w l[t,w] = rate[t]                   every task carries its whole rate
    l[t,w] <= capacity[t,w] * x[t,w]         capacity = 1000 / latency_ms
    sum_t x[t,w] <= 1                        one task per worker (default), or, time-shared,
    sum_t l[t,w] / capacity[t,w] <= 1        with y[w] >= x[t,w] for whole billing
    sum_a f[e,a,b] = l[v,b];  sum_b f[e,a,b] = rate[v] / rate[u] * l[u,a]   (e = u -> v)
    x[u,a] + x[v,b] <= 1                     tier rule: a feeds no lower-tier b
    minimise  compute + sum over links of traffic x $/GB

Communication is linear because traffic is a flow between the two tasks' workers, not the
product of their load shares (which is what proportional balancing would charge). Under the
tier rule with tier-priced links, as in JellyBean's inputs, every routing costs the same, so
these costs compare one to one with JellyBean's; in general the routes are part of the plan.

Exactness across combinations: LP relaxations give each combination a lower bound; MILPs are
solved in bound order until the next bound cannot beat the incumbent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from shoal.planner.workflow.accuracy import (
    accuracy_feasible_combinations,
    best_reachable_accuracy,
)
from shoal.planner.workflow.costing import (
    BYTES_PER_GB,
    SECONDS_PER_HOUR,
    ResolvedWorkflow,
    evaluate_placement,
    link_price,
    resolve,
    route_cost_usd_per_hour,
)
from shoal.planner.workflow.model import PlanOptions, Route, WorkflowPlan, WorkflowProblem

__all__ = ["plan_exact"]

_MIP_REL_GAP = 1e-9
_HIGHS_OPTIMAL, _HIGHS_INFEASIBLE = 0, 2  # scipy.optimize.milp result statuses
_LOAD_EPS_RPS = 1e-9
_TIE_USD_PER_HOUR = 1e-9
_CUTOFF_SLACK_USD_PER_HOUR = 1e-7  # keeps equal-cost combinations (the more accurate one wins)


@dataclass
class _Formulation:
    """Index maps of one MILP; kept to read the solution back."""

    pairs: list[tuple[str, str]]
    flows: list[tuple[str, str, str, str]]
    num_vars: int
    c: np.ndarray
    integrality: np.ndarray
    upper: np.ndarray
    constraint: LinearConstraint | None

    def load_index(self, k: int) -> int:
        return len(self.pairs) + k


def _build(resolved: ResolvedWorkflow, options: PlanOptions) -> _Formulation:
    problem = resolved.problem
    pairs = [(t, w) for t in resolved.tasks for w in resolved.workers_of(t)]
    index = {pair: k for k, pair in enumerate(pairs)}
    num_pairs = len(pairs)
    x = lambda t, w: index[(t, w)]  # noqa: E731
    ld = lambda t, w: num_pairs + index[(t, w)]  # noqa: E731
    used_workers = list(dict.fromkeys(w for _, w in pairs))
    pay_per_worker = options.shared_workers and options.billing == "whole"
    y_index = {w: 2 * num_pairs + i for i, w in enumerate(used_workers)} if pay_per_worker else {}
    next_var = 2 * num_pairs + len(y_index)

    flows: list[tuple[str, str, str, str]] = []
    flow_cost: list[float] = []
    forbidden: list[tuple[str, str, str, str]] = []
    task_edges = [(u, v) for u, v in problem.edges if not resolved.is_source(u)]
    for u, v in task_edges:
        per_rps = resolved.edge_bytes[(u, v)] * SECONDS_PER_HOUR / BYTES_PER_GB
        for a in resolved.workers_of(u):
            for b in resolved.workers_of(v):
                price = link_price(problem, options, u, a, b)
                if price is None:
                    forbidden.append((u, a, v, b))
                else:
                    flows.append((u, v, a, b))
                    flow_cost.append(per_rps * price)
    flow_start = next_var
    num_vars = flow_start + len(flows)

    c = np.zeros(num_vars)
    upper = np.full(num_vars, np.inf)
    integrality = np.zeros(num_vars)
    upper[:num_pairs] = 1.0
    integrality[:num_pairs] = 1
    for w, j in y_index.items():
        upper[j] = 1.0
        integrality[j] = 1
        c[j] = problem.worker(w).price_usd_per_hour
    for t, w in pairs:
        cap = resolved.capacity_rps[(t, w)]
        upper[ld(t, w)] = cap
        price = problem.worker(w).price_usd_per_hour
        if options.billing == "fractional":
            c[ld(t, w)] += price / cap
        elif not pay_per_worker:
            c[x(t, w)] += price
    for u, v in problem.edges:
        if resolved.is_source(u):
            per_rps = resolved.edge_bytes[(u, v)] * SECONDS_PER_HOUR / BYTES_PER_GB
            for b in resolved.workers_of(v):
                c[ld(v, b)] += per_rps * link_price(problem, options, u, None, b)
    c[flow_start:] = flow_cost

    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    lo: list[float] = []
    hi: list[float] = []

    def add_row(terms: list[tuple[int, float]], low: float, high: float) -> None:
        r = len(lo)
        for col, val in terms:
            rows.append(r)
            cols.append(col)
            vals.append(val)
        lo.append(low)
        hi.append(high)

    for t in resolved.tasks:
        rate = resolved.rate_rps[t]
        add_row([(ld(t, w), 1.0) for w in resolved.workers_of(t)], rate, rate)
    for t, w in pairs:
        add_row([(ld(t, w), 1.0), (x(t, w), -resolved.capacity_rps[(t, w)])], -np.inf, 0.0)
    for w in used_workers:
        on_w = [t for t, w2 in pairs if w2 == w]
        if options.shared_workers:
            if len(on_w) > 1:
                add_row([(ld(t, w), 1.0 / resolved.capacity_rps[(t, w)]) for t in on_w], -np.inf, 1.0)
            for t in on_w if pay_per_worker else ():
                add_row([(x(t, w), 1.0), (y_index[w], -1.0)], -np.inf, 0.0)
        elif len(on_w) > 1:
            add_row([(x(t, w), 1.0) for t in on_w], -np.inf, 1.0)
    flow_of = {key: flow_start + k for k, key in enumerate(flows)}
    for u, v in task_edges:
        scale = resolved.rate_rps[v] / resolved.rate_rps[u]
        for b in resolved.workers_of(v):
            terms = [(flow_of[(u, v, a, b)], 1.0) for a in resolved.workers_of(u) if (u, v, a, b) in flow_of]
            add_row(terms + [(ld(v, b), -1.0)], 0.0, 0.0)
        for a in resolved.workers_of(u):
            terms = [(flow_of[(u, v, a, b)], 1.0) for b in resolved.workers_of(v) if (u, v, a, b) in flow_of]
            add_row(terms + [(ld(u, a), -scale)], 0.0, 0.0)
    for u, a, v, b in forbidden:
        add_row([(x(u, a), 1.0), (x(v, b), 1.0)], -np.inf, 1.0)

    constraint = None
    if lo:
        matrix = coo_array((vals, (rows, cols)), shape=(len(lo), num_vars)).tocsr()
        constraint = LinearConstraint(matrix, np.array(lo), np.array(hi))
    return _Formulation(pairs, flows, num_vars, c, integrality, upper, constraint)


def _solve(form: _Formulation, relax: bool, cutoff_usd_per_hour: float = np.inf):
    """Solve the MILP (or its LP relaxation); a finite cutoff only admits cheaper plans, which
    lets HiGHS prove quickly that a combination cannot beat the incumbent."""
    integrality = np.zeros_like(form.integrality) if relax else form.integrality
    constraints = [form.constraint] if form.constraint is not None else []
    if np.isfinite(cutoff_usd_per_hour):
        constraints.append(LinearConstraint(form.c.reshape(1, -1), -np.inf, cutoff_usd_per_hour))
    return milp(
        form.c,
        integrality=integrality,
        bounds=Bounds(np.zeros(form.num_vars), form.upper),
        constraints=constraints,
        options={"mip_rel_gap": _MIP_REL_GAP, "presolve": True},
    )


def _read_plan(resolved: ResolvedWorkflow, form: _Formulation, solution: np.ndarray,
               options: PlanOptions) -> tuple[dict[str, dict[str, float]], tuple[Route, ...]]:
    problem = resolved.problem
    shares: dict[str, dict[str, float]] = {t: {} for t in resolved.tasks}
    for k, (t, w) in enumerate(form.pairs):
        load = float(solution[form.load_index(k)])
        if load > _LOAD_EPS_RPS:
            shares[t][w] = min(load, resolved.capacity_rps[(t, w)])
    routes = []
    for u, v in problem.edges:
        if resolved.is_source(u):
            for b, load in shares[v].items():
                price = link_price(problem, options, u, None, b)
                routes.append(Route(u, v, None, b, load,
                                    route_cost_usd_per_hour(load, resolved.edge_bytes[(u, v)], price)))
    start = form.num_vars - len(form.flows)
    for k, (u, v, a, b) in enumerate(form.flows):
        rate = float(solution[start + k])
        if rate > _LOAD_EPS_RPS:
            price = link_price(problem, options, u, a, b)
            routes.append(Route(u, v, a, b, rate,
                                route_cost_usd_per_hour(rate, resolved.edge_bytes[(u, v)], price)))
    return shares, tuple(routes)


def plan_exact(problem: WorkflowProblem, options: PlanOptions) -> WorkflowPlan:
    """The cheapest plan meeting the accuracy target, or a proof that none exists (status)."""
    spec = problem.accuracy
    variants = {t: problem.variants(t) for t in problem.tasks}
    combos = accuracy_feasible_combinations(spec, variants)
    if not combos:
        best = best_reachable_accuracy(spec, variants)
        known = "no combination has a known accuracy" if best is None else \
            f"the best end-to-end accuracy of any variant combination is {best:g}"
        return WorkflowPlan(
            status="infeasible", policy="shoal", options=options, accuracy_target=spec.target,
            message=f"accuracy target {spec.target:g} is unreachable: {known}; lower the target "
                    "or profile more accurate variants.",
        )
    candidates = []
    for assignment, accuracy in combos:
        resolved = resolve(problem, assignment)
        form = _build(resolved, options)
        relaxed = _solve(form, relax=True)
        if relaxed.status != _HIGHS_INFEASIBLE:  # no bound unless the LP solved: solve the MILP
            bound = relaxed.fun if relaxed.status == _HIGHS_OPTIMAL else -np.inf
            candidates.append((bound, -accuracy, resolved, form, accuracy))
    candidates.sort(key=lambda item: (item[0], item[1]))
    best_plan = None
    best_key = (np.inf, 0.0)
    solved = 0
    for bound, neg_accuracy, resolved, form, accuracy in candidates:
        if bound > best_key[0] + _TIE_USD_PER_HOUR:
            break
        result = _solve(form, relax=False, cutoff_usd_per_hour=best_key[0] + _CUTOFF_SLACK_USD_PER_HOUR)
        solved += 1
        if result.status == _HIGHS_INFEASIBLE:
            continue  # this combination cannot carry the load (or cannot beat the incumbent)
        if result.status != _HIGHS_OPTIMAL or result.x is None:
            return WorkflowPlan(
                status="failed", policy="shoal", options=options, accuracy_target=spec.target,
                num_combinations_solved=solved,
                message=f"HiGHS stopped without an optimality proof on variants "
                        f"{ {t: resolved.assignment[t] for t in resolved.tasks} }: "
                        f"{result.message}",
            )
        key = (result.fun, neg_accuracy)
        if key[0] < best_key[0] - _TIE_USD_PER_HOUR or (
            abs(key[0] - best_key[0]) <= _TIE_USD_PER_HOUR and key[1] < best_key[1]
        ):
            best_key = key
            best_plan = (resolved, form, result.x, accuracy)
    if best_plan is None:
        rates = ", ".join(f"{s}={r:g} req/s" for s, r in problem.source_rates_rps.items())
        return WorkflowPlan(
            status="infeasible", policy="shoal", options=options, accuracy_target=spec.target,
            num_combinations_solved=solved,
            message=f"no placement carries the load ({rates}) with any of the {len(combos)} variant "
                    "combinations that meet the accuracy target; add workers, lower the rates or "
                    "relax a rule (--shared-workers, --no-tier-rule).",
        )
    resolved, form, solution, accuracy = best_plan
    shares, routes = _read_plan(resolved, form, solution, options)
    cost = evaluate_placement(resolved, options, shares, routes)
    if cost.violations:  # a bug, not an outcome: the model and the evaluator disagree
        raise AssertionError(f"exact plan breaks its own rules: {cost.violations}")
    return WorkflowPlan(
        status="optimal", policy="shoal", options=options, accuracy_target=spec.target,
        message=f"optimal over {len(combos)} accuracy-feasible variant combinations",
        end_to_end_accuracy=accuracy,
        compute_cost_usd_per_hour=cost.compute_cost_usd_per_hour,
        communication_cost_usd_per_hour=cost.communication_cost_usd_per_hour,
        model_assignment={t: resolved.assignment[t] for t in resolved.tasks},
        load_shares_rps=shares, routes=routes, num_combinations_solved=solved,
    )
