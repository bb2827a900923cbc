"""Workflow planner: exact solver against brute force, rules, statuses, JellyBean's VQA anchors."""

from __future__ import annotations

import itertools
import json
import math
import warnings
from dataclasses import replace

import numpy as np
import pytest
from scipy.optimize import linprog

from shoal.core.errors import InvalidInputError
from shoal.planner.workflow import (
    AccuracySample,
    AccuracySpec,
    EndToEndAccuracyTable,
    JellyBeanSettings,
    PlanOptions,
    TaskAccuracyProfile,
    Worker,
    WorkflowProblem,
    check_plan,
    plan_workflow,
)

ALL_OPTIONS = [
    PlanOptions(tier_rule=tier, shared_workers=shared, billing=billing)
    for tier in (True, False) for shared in (False, True) for billing in ("whole", "fractional")
]
GB = 2**30


# ---- tiny random workflows and an independent brute force --------------------------------


def random_problem(seed: int, shape: str) -> WorkflowProblem:
    """A chain S->A->B (2x2 variants) or a join S1->A, S2->B, A->C, B->C (A has 2 variants)."""
    rng = np.random.default_rng(seed)
    num_workers = 4
    workers = tuple(Worker(f"w{i}", float(round(rng.uniform(0.5, 3.0), 2)), int(rng.integers(0, 2)))
                    for i in range(num_workers))
    if shape == "chain":
        sources = {"S": float(round(rng.uniform(4, 12), 1))}
        edges = (("S", "A"), ("A", "B"))
        variants = {"A": ("a1", "a2"), "B": ("b1", "b2")}
        ratios = {}
    else:
        rate = float(round(rng.uniform(2, 6), 1))
        sources = {"S1": rate, "S2": rate}
        edges = (("S1", "A"), ("S2", "B"), ("A", "C"), ("B", "C"))
        variants = {"A": ("a1", "a2"), "B": ("default",), "C": ("default",)}
        ratios = {("A", "C"): 0.5, ("B", "C"): 0.5}
    latency = {}
    for task, names in variants.items():
        for variant in names:
            capable = [w for w in workers if rng.uniform() < 0.8] or [workers[0]]
            for w in capable:
                latency[(task, variant, w.name)] = float(round(rng.uniform(40, 250), 1))
    message = {}
    for u, v in edges:
        for uv in variants.get(u, ("default",)):
            for vv in variants[v]:
                message[(u, v, uv, vv)] = float(rng.uniform(1e4, 5e5))
    links = {(a.name, b.name): float(round(rng.uniform(0.05, 2.0), 2))
             for a in workers for b in workers if a is not b and rng.uniform() < 0.7}
    source_links = {(s, w.name): float(round(rng.uniform(0.05, 1.0), 2)) for s in sources for w in workers}
    table_tasks = tuple(t for t, names in variants.items() if len(names) > 1)
    table = {combo: float(round(rng.uniform(50, 60), 2))
             for combo in itertools.product(*(variants[t] for t in table_tasks))}
    target = sorted(table.values())[len(table) // 2]  # about half the combinations qualify
    return WorkflowProblem(
        source_rates_rps=sources, edges=edges, workers=workers, latency_ms=latency,
        message_bytes=message, worker_link_usd_per_gb=links, source_link_usd_per_gb=source_links,
        rate_ratios=ratios,
        accuracy=AccuracySpec(sink=edges[-1][1], target=target,
                              table=EndToEndAccuracyTable(table_tasks, table)),
    )


def price_rule(problem: WorkflowProblem, options: PlanOptions, a, b, source=None):
    """$/GB written from the issue's wording, independently of the planner (None = forbidden)."""
    tier = {w.name: w.tier for w in problem.workers}
    if a is None:
        listed = problem.source_link_usd_per_gb.get((source, b), 0.0)
        return 0.0 if options.tier_rule and tier[b] == 0 else listed
    if a == b:
        return 0.0
    if options.tier_rule:
        if tier[b] < tier[a]:
            return None
        if tier[b] == tier[a]:
            return 0.0
    return problem.worker_link_usd_per_gb.get((a, b), 0.0)


def brute_force(problem: WorkflowProblem, options: PlanOptions) -> float:
    """Cheapest cost over every variant combination and every worker-to-task assignment; the
    continuous part (loads and traffic) of each assignment is a small LP solved by linprog."""
    tasks = [v for _, v in problem.edges if v not in problem.source_rates_rps]
    tasks = list(dict.fromkeys(tasks))
    parents = {t: [u for u, v in problem.edges if v == t] for t in tasks}
    variants = {t: sorted({k[1] for k in problem.latency_ms if k[0] == t}) for t in tasks}
    price = {w.name: w.price_usd_per_hour for w in problem.workers}
    names = [w.name for w in problem.workers]
    table = problem.accuracy.table
    best = math.inf
    for choice in itertools.product(*(variants[t] for t in tasks)):
        var = dict(zip(tasks, choice))
        if table.accuracy_by_variants[tuple(var[t] for t in table.tasks)] < problem.accuracy.target:
            continue
        rate = dict(problem.source_rates_rps)
        for t in tasks:
            rate[t] = min(rate[u] * problem.rate_ratios.get((u, t), 1.0) for u in parents[t])
        cap = {(t, w): 1000.0 / problem.latency_ms[(t, var[t], w)]
               for t in tasks for w in names if (t, var[t], w) in problem.latency_ms}

        def size(u, v):
            return problem.message_bytes[(u, v, var.get(u, "default"), var[v])] * 3600 / GB

        roles = [[()] + [(t,) for t in tasks] if not options.shared_workers else
                 [s for r in range(len(tasks) + 1) for s in itertools.combinations(tasks, r)]
                 for _ in names]
        for pick in itertools.product(*roles):
            sets = {t: [w for w, served in zip(names, pick) if t in served] for t in tasks}
            if any(not sets[t] or any((t, w) not in cap for w in sets[t]) for t in tasks):
                continue
            if any(sum(cap[(t, w)] for w in sets[t]) < rate[t] - 1e-9 for t in tasks):
                continue
            if options.tier_rule and any(
                price_rule(problem, options, a, b) is None
                for t in tasks for u in parents[t] if u in sets for a in sets[u] for b in sets[t]
            ):
                continue
            used = {w for ws in sets.values() for w in ws}
            fixed = sum(price[w] for w in used) if options.billing == "whole" else 0.0
            if fixed >= best:
                continue
            best = min(best, fixed + _continuous_part(problem, options, tasks, parents, sets, cap,
                                                      rate, size, price))
    return best


def _continuous_part(problem, options, tasks, parents, sets, cap, rate, size, price) -> float:
    loads = [(t, w) for t in tasks for w in sets[t]]
    flows = [(u, t, a, b) for t in tasks for u in parents[t] if u in sets
             for a in sets[u] for b in sets[t] if price_rule(problem, options, a, b) is not None]
    n = len(loads) + len(flows)
    li = {k: i for i, k in enumerate(loads)}
    fi = {k: len(loads) + i for i, k in enumerate(flows)}
    c = np.zeros(n)
    for (t, w), i in li.items():
        if options.billing == "fractional":
            c[i] += price[w] / cap[(t, w)]
        for u in parents[t]:
            if u not in sets:
                c[i] += size(u, t) * price_rule(problem, options, None, w, source=u)
    for (u, t, a, b), i in fi.items():
        c[i] = size(u, t) * price_rule(problem, options, a, b)
    a_eq, b_eq, a_ub, b_ub = [], [], [], []
    for t in tasks:
        row = np.zeros(n)
        for w in sets[t]:
            row[li[(t, w)]] = 1
        a_eq.append(row)
        b_eq.append(rate[t])
        for u in parents[t]:
            if u not in sets:
                continue
            for b in sets[t]:
                row = np.zeros(n)
                row[li[(t, b)]] = -1
                for a in sets[u]:
                    if (u, t, a, b) in fi:
                        row[fi[(u, t, a, b)]] = 1
                a_eq.append(row)
                b_eq.append(0)
            for a in sets[u]:
                row = np.zeros(n)
                row[li[(u, a)]] = -rate[t] / rate[u]
                for b in sets[t]:
                    if (u, t, a, b) in fi:
                        row[fi[(u, t, a, b)]] = 1
                a_eq.append(row)
                b_eq.append(0)
    if options.shared_workers:
        for w in {w for ws in sets.values() for w in ws}:
            row = np.zeros(n)
            for t in tasks:
                if w in sets[t]:
                    row[li[(t, w)]] = 1 / cap[(t, w)]
            a_ub.append(row)
            b_ub.append(1.0)
    bounds = [(0, cap[k]) for k in loads] + [(0, None)] * len(flows)
    result = linprog(c, A_ub=np.array(a_ub) if a_ub else None, b_ub=b_ub or None,
                     A_eq=np.array(a_eq), b_eq=b_eq, bounds=bounds, method="highs")
    return result.fun if result.status == 0 else math.inf


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("options", ALL_OPTIONS, ids=lambda o: f"tier{int(o.tier_rule)}-shared{int(o.shared_workers)}-{o.billing}")
def test_exact_plan_matches_brute_force_on_tiny_chains(seed, options):
    problem = random_problem(seed, "chain")
    expected = brute_force(problem, options)
    plan = plan_workflow(problem, options=options)
    if math.isinf(expected):
        assert plan.status == "infeasible"
        return
    assert plan.status == "optimal"
    assert plan.total_cost_usd_per_hour == pytest.approx(expected, abs=1e-6)
    audit = check_plan(problem, plan)
    assert audit.violations == ()
    assert audit.total_cost_usd_per_hour == pytest.approx(plan.total_cost_usd_per_hour, abs=1e-9)
    assert plan.end_to_end_accuracy >= problem.accuracy.target


@pytest.mark.parametrize("seed", [4, 5])
@pytest.mark.parametrize("options", [PlanOptions(), PlanOptions(tier_rule=False, billing="fractional"),
                                     PlanOptions(shared_workers=True)],
                         ids=["jellybean-rules", "no-tier-rule-fractional", "shared"])
def test_exact_plan_matches_brute_force_on_tiny_joins(seed, options):
    problem = random_problem(seed, "join")
    expected = brute_force(problem, options)
    plan = plan_workflow(problem, options=options)
    assert plan.status == ("infeasible" if math.isinf(expected) else "optimal")
    if plan.success:
        assert plan.total_cost_usd_per_hour == pytest.approx(expected, abs=1e-6)
        assert check_plan(problem, plan).violations == ()


# ---- crafted workflows: each rule, each status ---------------------------------------------


def two_task_problem(*, rate: float = 10.0, target: float = 0.0, **overrides) -> WorkflowProblem:
    """S -> A -> B on an edge worker (tier 0) and a cloud worker (tier 1)."""
    fields = dict(
        source_rates_rps={"S": rate},
        edges=(("S", "A"), ("A", "B")),
        workers=(Worker("edge", 1.0, 0), Worker("cloud", 4.0, 1), Worker("edge2", 1.5, 0)),
        latency_ms={("A", "default", "cloud"): 20.0, ("A", "default", "edge"): 100.0,
                    ("B", "default", "edge"): 50.0, ("B", "default", "edge2"): 50.0,
                    ("B", "default", "cloud"): 10.0},
        message_bytes={("S", "A", "default", "default"): 1e5, ("A", "B", "default", "default"): 1e5},
        worker_link_usd_per_gb={("cloud", "edge"): 1.0, ("cloud", "edge2"): 1.0, ("edge", "cloud"): 0.1},
        accuracy=AccuracySpec(sink="B", target=target,
                              table=EndToEndAccuracyTable(("A",), {("default",): 50.0})),
    )
    fields.update(overrides)
    return WorkflowProblem(**fields)


def test_tier_rule_forbids_sending_work_back_to_a_lower_tier():
    # At 15 req/s task A needs the cloud (the edge serves 10 req/s); B then cannot run below it.
    only_one_cloud = plan_workflow(two_task_problem(rate=15.0))
    assert only_one_cloud.status == "infeasible"
    problem = two_task_problem(
        rate=15.0,
        workers=(Worker("edge", 1.0, 0), Worker("cloud", 4.0, 1), Worker("edge2", 1.5, 0), Worker("cloud2", 4.0, 1)),
        latency_ms={("A", "default", "cloud"): 20.0, ("A", "default", "edge"): 100.0,
                    ("B", "default", "edge"): 50.0, ("B", "default", "cloud2"): 10.0},
        message_bytes={("S", "A", "default", "default"): 1e5, ("A", "B", "default", "default"): 1e4},
    )
    with_rule = plan_workflow(problem)
    assert with_rule.worker_assignment == {"A": ["cloud"], "B": ["cloud2"]}
    assert with_rule.communication_cost_usd_per_hour == 0.0  # same tier: free under JellyBean's rule
    relaxed = plan_workflow(problem, options=PlanOptions(tier_rule=False))
    assert relaxed.worker_assignment == {"A": ["cloud"], "B": ["edge"]}
    back = [r for r in relaxed.routes if r.from_worker == "cloud" and r.to_worker == "edge"]
    # 15 req/s x 1e5 bytes x 3600 s / 2**30 x $1/GB, the listed backward price.
    assert sum(r.cost_usd_per_hour for r in back) == pytest.approx(15 * 1e4 * 3600 / GB * 1.0)
    assert relaxed.total_cost_usd_per_hour < with_rule.total_cost_usd_per_hour


def test_shared_workers_time_share_one_machine_and_pay_it_once():
    problem = two_task_problem(rate=30.0, workers=(Worker("edge", 1.0, 0), Worker("cloud", 4.0, 1),
                                                   Worker("cloud2", 4.0, 1), Worker("edge2", 1.5, 0)),
                               latency_ms={("A", "default", "cloud"): 20.0, ("A", "default", "cloud2"): 20.0,
                                           ("B", "default", "cloud"): 10.0, ("B", "default", "cloud2"): 10.0})
    exclusive = plan_workflow(problem)
    assert exclusive.compute_cost_usd_per_hour == pytest.approx(8.0)
    shared = plan_workflow(problem, options=PlanOptions(shared_workers=True))
    # 30 req/s x (20 + 10) ms = 0.9 of one cloud worker: one machine serves both tasks.
    assert shared.compute_cost_usd_per_hour == pytest.approx(4.0)
    assert shared.worker_assignment["A"] == shared.worker_assignment["B"]
    assert check_plan(problem, shared).violations == ()


def test_fractional_billing_pays_price_times_utilisation():
    problem = two_task_problem(rate=5.0)
    plan = plan_workflow(problem, options=PlanOptions(billing="fractional"))
    expected = sum(
        problem.worker(w).price_usd_per_hour * load * problem.latency_ms[(t, "default", w)] / 1000
        for t, shares in plan.load_shares_rps.items() for w, load in shares.items()
    )
    assert plan.compute_cost_usd_per_hour == pytest.approx(expected)
    assert plan.compute_cost_usd_per_hour < plan_workflow(problem).compute_cost_usd_per_hour


def test_load_beyond_every_worker_is_an_infeasible_status_not_an_exception():
    plan = plan_workflow(two_task_problem(rate=1000.0))
    assert plan.status == "infeasible" and not plan.success
    assert "no placement carries the load" in plan.message and "S=1000 req/s" in plan.message


def test_unreachable_accuracy_target_is_infeasible_and_names_the_best_accuracy():
    plan = plan_workflow(two_task_problem(target=50.5))
    assert plan.status == "infeasible"
    assert plan.message.startswith("accuracy target 50.5 is unreachable") and "is 50" in plan.message


def non_monotone_problem(target: float) -> WorkflowProblem:
    """JellyBean's beam-search defect in miniature: the more accurate extractor `big` makes the
    sink *less* accurate (like resnet152 + wav2vec2-base in the VQA table), and is cheaper here."""
    profiles = {
        "A": TaskAccuracyProfile("A", (), {"small": (AccuracySample((), 90.0),),
                                           "big": (AccuracySample((), 95.0),)},
                                 cost_proxy_by_variant={"small": 1.0, "big": 2.0}),
        "B": TaskAccuracyProfile("B", ("A",), {"default": (AccuracySample((90.0,), 60.0),
                                                           AccuracySample((95.0,), 58.0))},
                                 cost_proxy_by_variant={"default": 1.0}),
    }
    return two_task_problem(
        target=target,
        latency_ms={("A", "small", "edge2"): 90.0, ("A", "big", "edge"): 50.0,
                    ("B", "default", "cloud"): 20.0},
        accuracy=AccuracySpec(sink="B", target=target, task_profiles=profiles),
    )


def test_jellybean_beam_search_can_return_a_plan_below_target_and_shoal_never_does():
    problem = non_monotone_problem(target=59.0)
    theirs = plan_workflow(problem, policy="jellybean")
    assert theirs.status == "below_target" and not theirs.success
    assert theirs.model_assignment["A"] == "big" and theirs.end_to_end_accuracy == 58.0
    ours = plan_workflow(problem)
    assert ours.status == "optimal" and ours.model_assignment["A"] == "small"
    assert ours.end_to_end_accuracy == 60.0


def test_propagation_uses_measured_points_only():
    problem = non_monotone_problem(target=0.0)
    spec = problem.accuracy
    from shoal.planner.workflow import end_to_end_accuracy

    assert end_to_end_accuracy(spec, {"A": "small", "B": "default"}) == 60.0
    unmeasured = replace(spec, task_profiles={**spec.task_profiles, "A": TaskAccuracyProfile(
        "A", (), {"small": (AccuracySample((), 91.0),)})})
    assert end_to_end_accuracy(unmeasured, {"A": "small", "B": "default"}) is None


def test_jellybean_gives_up_where_its_beam_search_finds_nothing():
    plan = plan_workflow(non_monotone_problem(target=61.0), policy="jellybean")
    assert plan.status == "failed" and "beam search" in plan.message


def test_policy_errors_name_the_fix():
    problem = two_task_problem()
    with pytest.raises(InvalidInputError, match="unknown; choose one of shoal, jellybean"):
        plan_workflow(problem, policy="greedy")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="JellyBean's own rules only"):
        plan_workflow(problem, policy="jellybean", options=PlanOptions(shared_workers=True))
    with pytest.raises(InvalidInputError, match="billing must be 'whole' or 'fractional'"):
        PlanOptions(billing="hourly")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="TIER_ALLOCATION_STRATEGY 'dp' is not implemented"):
        JellyBeanSettings(tier_allocation="dp")  # type: ignore[arg-type]


@pytest.mark.parametrize("edit, message", [
    ({"edges": (("S", "A"), ("A", "B"), ("B", "A"))}, "cycle"),
    ({"message_bytes": {("S", "A", "default", "default"): 1.0}}, "message_bytes: no size for edge 'A' -> 'B'"),
    ({"workers": (Worker("edge", 1.0), Worker("edge", 2.0))}, "duplicate worker names"),
    ({"source_rates_rps": {"S": 0.0}}, r"source_rates_rps\['S'\] must be > 0"),
    ({"latency_ms": {("A", "default", "edge"): 10.0}}, "task 'B' has no profile"),
    ({"worker_link_usd_per_gb": {("edge", "nowhere"): 1.0}}, "names an unknown worker"),
    # A negative size planned a negative communication cost; infinities reached the MILP.
    ({"message_bytes": {("S", "A", "default", "default"): -5.0, ("A", "B", "default", "default"): 1.0}}, "must be a finite number >= 0"),
    ({"source_link_usd_per_gb": {("S", "edge"): float("inf")}}, "must be a finite number >= 0"),
])
def test_invalid_problems_name_the_field(edit, message):
    with pytest.raises(InvalidInputError, match=message):
        two_task_problem(**edit)


def test_negative_or_infinite_worker_price_is_refused():
    for price in (-1.0, float("inf")):  # infinity reached the MILP, which refused it with a traceback
        with pytest.raises(InvalidInputError, match="price_usd_per_hour must be a finite number >= 0"):
            Worker("w", price)


# ---- JellyBean's VQA example (shared/anchors/jellybean) -------------------------------------


@pytest.fixture(scope="module")
def vqa(anchors_dir):
    from shoal.formats.jellybean import read_jellybean_inputs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_jellybean_inputs(anchors_dir / "jellybean" / "optimizer_inputs")


@pytest.mark.parametrize("options, total, compute", [
    # SOURCE.md: compute 6.242 + communication 1.2430184 (its total column says 7.4852184).
    (PlanOptions(), 6.242 + 1.2430184, 6.242),
    (PlanOptions(shared_workers=True), 7.0115, None),
    (PlanOptions(tier_rule=False), 5.5488981, 4.321),
    (PlanOptions(tier_rule=False, shared_workers=True), 5.3296433, 4.129),
], ids=["jellybean-rules", "shared", "no-tier-rule", "both"])
def test_vqa_exact_optima(vqa, options, total, compute):
    plan = plan_workflow(vqa.problem, options=options)
    assert plan.status == "optimal" and plan.end_to_end_accuracy == 56.59
    assert plan.total_cost_usd_per_hour == pytest.approx(total, abs=1e-4)
    if compute is not None:
        assert plan.compute_cost_usd_per_hour == pytest.approx(compute, abs=1e-9)
    assert check_plan(vqa.problem, plan).violations == ()


def test_vqa_jellybean_policy_reproduces_the_published_plan(vqa, anchors_dir):
    published = json.loads((anchors_dir / "jellybean" / "expected_output.json").read_text())
    plan = plan_workflow(vqa.problem, policy="jellybean", jellybean=vqa.jellybean)
    assert plan.status == "feasible"
    assert plan.compute_cost_usd_per_hour == pytest.approx(published["compute_cost"], abs=1e-12)
    assert plan.communication_cost_usd_per_hour == pytest.approx(published["communication_cost"], abs=1e-12)
    assert dict(plan.model_assignment) == published["model_assignment"]
    assert plan.worker_assignment == published["worker_assignment"]
    assert plan.end_to_end_accuracy == published["end_to_end_accuracy"]


@pytest.mark.parametrize("threshold, edit, total", [
    (56.0, {"tier_allocation": "greedy-backtrace"}, 7.4850184),
    (58.0, {}, 16.633),
    (58.3, {}, 17.942),
])
def test_vqa_jellybean_policy_reproduces_source_md_runs(vqa, threshold, edit, total):
    plan = plan_workflow(vqa.problem.with_accuracy_target(threshold), policy="jellybean",
                         jellybean=replace(vqa.jellybean, **edit))
    assert plan.total_cost_usd_per_hour == pytest.approx(total, abs=1e-3)


def test_vqa_threshold_above_every_combination(vqa):
    problem = vqa.problem.with_accuracy_target(58.4)
    ours = plan_workflow(problem)
    assert ours.status == "infeasible" and "best end-to-end accuracy of any variant combination is 58.33" in ours.message
    assert plan_workflow(problem, policy="jellybean", jellybean=vqa.jellybean).status == "failed"


@pytest.mark.parametrize("threshold, rate", [(55.5, 20.0), (55.8, 40.0), (57.0, 60.0), (58.2, 50.0)])
def test_vqa_shoal_meets_the_target_and_never_costs_more_than_jellybean(vqa, threshold, rate):
    problem = vqa.problem.with_accuracy_target(threshold).with_source_rates(rate)
    ours = plan_workflow(problem)
    theirs = plan_workflow(problem, policy="jellybean", jellybean=vqa.jellybean)
    assert ours.status == "optimal" and ours.end_to_end_accuracy >= threshold
    if theirs.success:
        assert ours.total_cost_usd_per_hour <= theirs.total_cost_usd_per_hour + 1e-9


def test_a_variant_pair_without_a_message_size_is_refused_not_priced_free():
    """Sizes stated for variant a1 only: a2's traffic was priced at 0 bytes, so the planner
    chose a2 for its free traffic, and the plan passed every check."""
    problem = WorkflowProblem(
        source_rates_rps={"S": 10.0}, edges=(("S", "A"), ("A", "B")), workers=(Worker("e", 1.0, 0), Worker("c", 1.0, 1)),
        latency_ms={("A", "a1", "e"): 10.0, ("A", "a2", "e"): 10.0, ("B", "default", "c"): 10.0},
        message_bytes={("S", "A", "default", "default"): 1e5, ("A", "B", "a1", "default"): 1e8}, worker_link_usd_per_gb={("e", "c"): 1.0},
        accuracy=AccuracySpec(sink="B", target=0.0, table=EndToEndAccuracyTable(("A",), {("a1",): 50.0, ("a2",): 60.0})),
    )  # fmt: skip
    with pytest.raises(InvalidInputError, match="no size for edge 'A' -> 'B' with variants 'a2' -> 'default'"):
        plan_workflow(problem)
