"""Capacity planner: Inferno's published sample solutions, greedy policies, exact MILP."""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import replace

import pytest

from shoal.formats.inferno import load_system
from shoal.planner.capacity import (
    AcceleratorSpec,
    BatchLatencyTable,
    Candidate,
    CandidateSet,
    CapacitySystem,
    CurrentAllocation,
    DecodePrefillParams,
    ModelPerf,
    ModelTarget,
    OptimizerOptions,
    ServerLoad,
    ServerSpec,
    ServiceClass,
    build_candidates,
    min_cost_serving,
    plan_capacity,
    plan_from_assignments,
)
from shoal.planner.capacity.greedy import solve_greedy
from shoal.planner.capacity.milp import solve_milp

# Servers where the published large solution picked another accelerator of the same cost
# (Inferno's Go map order decides such ties; shoal's order is fixed: fewer cards, then name).
LARGE_EQUAL_COST_TIES = {"Premium-granite_20b", "Premium-mistral_7b"}


@pytest.fixture(scope="module")
def sample(anchors_dir):
    def load(name: str):
        folder = anchors_dir / "inferno" / "sample-data@849e1e8" / name
        system = load_system(folder)
        published = json.loads((folder / "solution-data.json").read_text())["allocations"]
        return system, build_candidates(system), published

    return {name: load(name) for name in ("small", "large")}


def _as_published(allocation) -> tuple:
    return allocation.accelerator, allocation.num_replicas, allocation.max_batch_size, allocation.cost_cents_per_hour


@pytest.mark.parametrize("name, total", [("small", 43_819), ("large", 19_273)])
def test_greedy_reproduces_published_allocation(sample, name, total):
    system, candidates, published = sample[name]
    plan = plan_capacity(system, solver="greedy", candidates=candidates)
    assert plan.total_cost_cents_per_hour == pytest.approx(total)
    assert set(published) == {a.server for a in plan.allocations if a.status != "unserved"}
    for allocation in plan.allocations:
        theirs = published[allocation.server]
        expected = (theirs["accelerator"], theirs["numReplicas"], theirs["maxBatch"], theirs["cost"])
        if name == "large" and allocation.server in LARGE_EQUAL_COST_TIES:
            assert allocation.cost_cents_per_hour == theirs["cost"]
            continue
        assert _as_published(allocation) == pytest.approx(expected), allocation.server
        assert allocation.itl_ms == pytest.approx(theirs["itlAverage"], rel=1e-4)
        assert allocation.ttft_ms == pytest.approx(theirs["ttftAverage"], rel=1e-4)


def test_greedy_on_large_leaves_one_server_partial(sample):
    system, candidates, _ = sample["large"]
    plan = plan_capacity(system, solver="greedy", candidates=candidates)
    assert plan.partial == ("Free-mixtral_8_7b",)
    partial = plan.allocation("Free-mixtral_8_7b")
    assert (partial.num_replicas, partial.required_replicas) == (1, 38)
    assert plan.units_used_by_type["MI300X"] == system.capacity_by_type["MI300X"]


def test_milp_small_is_cheaper_with_every_server_served(sample):
    system, candidates, _ = sample["small"]
    plan = plan_capacity(system, solver="milp", candidates=candidates)
    assert plan.status == "optimal" and len(plan.served) == 15
    assert plan.total_cost_cents_per_hour == pytest.approx(41_857.75)
    assert plan.total_cost_cents_per_hour <= 0.956 * 43_819
    for type_name, used in plan.units_used_by_type.items():
        assert used <= system.capacity_by_type[type_name]


def test_milp_large_serves_all_27_in_full(sample):
    system, candidates, _ = sample["large"]
    plan = plan_capacity(system, solver="milp", candidates=candidates)
    assert len(plan.served) == 27 and not plan.partial and not plan.unserved


def test_like_for_like_large(sample):
    system, candidates, _ = sample["large"]
    greedy = plan_capacity(system, solver="greedy", candidates=candidates)
    outcome = min_cost_serving(system, candidates, greedy.served)
    exact = plan_from_assignments(system, candidates, outcome.assignments, solver="milp")
    greedy_cost = sum(a.cost_cents_per_hour for a in greedy.allocations if a.status == "served")
    assert outcome.status == "optimal" and set(exact.served) == set(greedy.served)
    assert exact.total_cost_cents_per_hour == pytest.approx(19_020.0)
    assert exact.total_cost_cents_per_hour < greedy_cost == pytest.approx(19_208.0)


def test_unlimited_gives_each_server_its_cheapest_candidate(sample):
    system, candidates, _ = sample["small"]
    plan = plan_capacity(system, unlimited=True, candidates=candidates)
    assert plan.status == "optimal" and plan.units_available_by_type is None
    for allocation in plan.allocations:
        assert allocation.cost_cents_per_hour == min(c.cost_cents_per_hour for c in candidates[allocation.server])
    assert plan_capacity(system, solver="milp", unlimited=True, candidates=candidates).allocations == plan.allocations


# --------------------------------------------------------------------------------------------
# small hand-made systems
# --------------------------------------------------------------------------------------------


def _system(servers, pool, policy="None", classes=None, **options) -> CapacitySystem:
    classes = classes or (ServiceClass("Gold", 1), ServiceClass("Free", 2))
    return CapacitySystem(
        accelerators=(), models=(), service_classes=tuple(classes),
        servers=tuple(ServerSpec(name, cls, "m", ServerLoad(1.0)) for name, cls in servers),
        capacity_by_type=pool, options=OptimizerOptions(saturation_policy=policy, **options),
    )


def _cand(server, acc, replicas, cost, units_per_replica=1) -> Candidate:
    return Candidate(server=server, accelerator=acc, accelerator_type=acc, num_replicas=replicas,
                     units_per_replica=units_per_replica, max_batch_size=8, cost_cents_per_hour=cost,
                     value=cost, generation="G1")


def _candidates(**by_server) -> CandidateSet:
    return CandidateSet({name: tuple(sorted(c, key=lambda x: x.value)) for name, c in by_server.items()}, {})


def test_regret_order_gives_the_scarce_type_to_the_server_that_loses_most_without_it():
    system = _system([("a", "Free"), ("b", "Free")], {"cheap": 4, "dear": 100})
    candidates = _candidates(
        a=[_cand("a", "cheap", 4, 10.0), _cand("a", "dear", 4, 12.0)],   # regret 2
        b=[_cand("b", "cheap", 4, 10.0), _cand("b", "dear", 4, 50.0)],   # regret 40: goes first
    )
    result = solve_greedy(system, candidates)
    assert result["b"].candidate.accelerator == "cheap"
    assert result["a"].candidate.accelerator == "dear"


def test_priority_comes_before_regret():
    system = _system([("gold", "Gold"), ("free", "Free")], {"cheap": 4, "dear": 100})
    candidates = _candidates(
        gold=[_cand("gold", "cheap", 4, 10.0), _cand("gold", "dear", 4, 11.0)],
        free=[_cand("free", "cheap", 4, 10.0), _cand("free", "dear", 4, 90.0)],
    )
    assert solve_greedy(system, candidates)["gold"].candidate.accelerator == "cheap"


@pytest.mark.parametrize(
    "policy, expected",
    [
        ("None", {}),
        ("PriorityExhaustive", {"gold": 7}),
        ("RoundRobin", {"gold": 3, "free1": 2, "free2": 2}),
        ("PriorityRoundRobin", {"gold": 7}),
    ],
)
def test_saturation_policies_share_what_is_left(policy, expected):
    # Nobody fits in full (each needs 10 cards of the only type, 7 exist).
    servers = [("gold", "Gold"), ("free1", "Free"), ("free2", "Free")]
    system = _system(servers, {"t": 7}, policy=policy, delayed_best_effort=True)
    candidates = _candidates(**{name: [_cand(name, "t", 10, 100.0)] for name, _ in servers})
    result = solve_greedy(system, candidates)
    assert {name: a.num_replicas for name, a in result.items()} == expected
    for assignment in result.values():
        assert assignment.partial
        assert assignment.cost_cents_per_hour == pytest.approx(10.0 * assignment.num_replicas)


def test_round_robin_never_gives_more_than_needed():
    system = _system([("a", "Free"), ("b", "Free")], {"t": 20}, policy="RoundRobin")
    candidates = _candidates(a=[_cand("a", "t", 30, 30.0)], b=[_cand("b", "t", 3, 3.0)])
    result = solve_greedy(system, candidates)
    assert result["b"].num_replicas == 3 and not result["b"].partial
    assert result["a"].num_replicas == 17


def test_greedy_is_deterministic_under_input_order():
    servers = [(f"s{i}", "Free") for i in range(6)]
    options = {f"s{i}": [_cand(f"s{i}", "x", 2, 10.0), _cand(f"s{i}", "y", 2, 10.0), _cand(f"s{i}", "z", 1, 30.0)]
               for i in range(6)}
    system = _system(servers, {"x": 4, "y": 4, "z": 10})
    first = solve_greedy(system, _candidates(**options))
    shuffled = list(system.servers)
    random.Random(3).shuffle(shuffled)
    second = solve_greedy(replace(system, servers=tuple(shuffled)), _candidates(**options))
    assert {k: v.candidate.accelerator for k, v in first.items()} == {k: v.candidate.accelerator for k, v in second.items()}


def _brute_force(system, candidates, priorities):
    """Lexicographic optimum over all assignments: served counts by priority, then cost."""
    names = [s.name for s in system.servers]
    best = None
    for choice in itertools.product(*[[None, *candidates[n]] for n in names]):
        used: dict[str, int] = {}
        for c in choice:
            if c is not None:
                used[c.accelerator_type] = used.get(c.accelerator_type, 0) + c.units
        if any(used[t] > system.capacity_by_type.get(t, 0) for t in used):
            continue
        counts = tuple(-sum(1 for n, c in zip(names, choice) if c is not None and priorities[n] == p)
                       for p in sorted(set(priorities.values())))
        key = (*counts, round(sum(c.cost_cents_per_hour for c in choice if c is not None), 6))
        best = key if best is None or key < best else best
    return best


@pytest.mark.parametrize("seed", range(6))
def test_milp_matches_brute_force(seed):
    rng = random.Random(seed)
    servers = [(f"s{i}", rng.choice(["Gold", "Free"])) for i in range(4)]
    system = _system(servers, {"x": rng.randint(2, 8), "y": rng.randint(2, 8), "z": rng.randint(0, 6)})
    candidates = _candidates(**{
        name: [_cand(name, acc, rng.randint(1, 4), float(rng.randint(5, 40)), rng.choice([1, 2]))
               for acc in rng.sample(["x", "y", "z"], rng.randint(1, 3))]
        for name, _ in servers
    })
    priorities = {name: (1 if cls == "Gold" else 2) for name, cls in servers}
    outcome = solve_milp(system, candidates)
    assert outcome.status == "optimal"
    got = tuple(-sum(1 for n, a in outcome.assignments.items() if priorities[n] == p) for p in (1, 2)
                if p in priorities.values())
    got = (*got, round(sum(a.cost_cents_per_hour for a in outcome.assignments.values()), 6))
    assert got == _brute_force(system, candidates, priorities)


# --------------------------------------------------------------------------------------------
# candidates from performance data
# --------------------------------------------------------------------------------------------

G1 = DecodePrefillParams(alpha_ms=20.58, beta_ms=0.41, gamma_ms=164.64, delta_ms=0.0128125)


def _llm_system(itl_ms: float, *, extra_servers=(), **server_fields) -> CapacitySystem:
    server = ServerSpec("chat", "Gold", "llm", ServerLoad(2.0, 128, 1024), **server_fields)
    return CapacitySystem(
        accelerators=(AcceleratorSpec("A100", "A100", 40.0), AcceleratorSpec("4xA100", "A100", 160.0, multiplicity=4)),
        models=(ModelPerf("llm", "A100", 32, G1, at_tokens=512),
                ModelPerf("llm", "4xA100", 32, replace(G1, alpha_ms=10.29), at_tokens=512)),
        service_classes=(ServiceClass("Gold", 1, (ModelTarget("llm", itl_ms=itl_ms, ttft_ms=2000),)),),
        servers=(server, *extra_servers),
        capacity_by_type={"A100": 64},
    )


def test_candidate_sizing_follows_inferno():
    candidates = build_candidates(_llm_system(40.0))["chat"]
    by_name = {c.accelerator: c for c in candidates}
    a100 = by_name["A100"]
    assert a100.max_batch_size == 16  # 32 at 512 tokens -> 16 at 1024 output tokens
    assert a100.units_per_replica == 1 and by_name["4xA100"].units_per_replica == 4
    assert a100.cost_cents_per_hour == 40.0 * a100.num_replicas
    assert a100.itl_ms <= 40.0 and a100.generation == "G1"
    assert a100.num_replicas * a100.max_rate_per_replica_rps >= 2.0
    assert (a100.num_replicas - 1) * a100.max_rate_per_replica_rps < 2.0


def test_infeasible_server_is_reported_and_does_not_fail_the_solve():
    other = ServerSpec("ghost", "Nope", "llm", ServerLoad(1.0, 128, 128))
    system = _llm_system(5.0, extra_servers=(other,))  # ITL 5 ms is below alpha on every accelerator
    for solver in ("greedy", "milp"):
        plan = plan_capacity(system, solver=solver)
        chat, ghost = plan.allocation("chat"), plan.allocation("ghost")
        assert chat.status == "unserved" and "itl target missed" in chat.reason
        assert ghost.status == "unserved" and "service class 'Nope' is not defined" in ghost.reason
        assert plan.total_cost_cents_per_hour == 0 and plan.success


def test_server_that_finds_the_pool_empty_is_unserved_with_reason():
    system = replace(_llm_system(40.0), capacity_by_type={"A100": 0})
    plan = plan_capacity(system, solver="greedy")
    assert plan.unserved == ("chat",) and "too few cards" in plan.allocation("chat").reason


def test_zero_load_server_needs_nothing():
    system = replace(_llm_system(40.0), servers=(ServerSpec("idle", "Gold", "llm", ServerLoad(0.0, 128, 1024)),))
    allocation = plan_capacity(system).allocation("idle")
    assert allocation.status == "served" and allocation.num_replicas == 0 and allocation.cost_cents_per_hour == 0


def test_current_allocation_makes_staying_cheaper_than_moving():
    current = CurrentAllocation("4xA100", 1, 160.0)
    plain = {c.accelerator: c for c in build_candidates(_llm_system(40.0))["chat"]}
    sticky = {c.accelerator: c for c in build_candidates(_llm_system(40.0, current=current))["chat"]}
    assert plain["A100"].value == pytest.approx(1.1 * plain["A100"].cost_cents_per_hour)
    assert sticky["A100"].value == pytest.approx(0.1 * (160 + plain["A100"].cost_cents_per_hour)
                                                 + plain["A100"].cost_cents_per_hour - 160)
    kept = build_candidates(_llm_system(40.0, current=current, keep_accelerator=True))["chat"]
    assert [c.accelerator for c in kept] == ["4xA100"]


def test_dnn_profile_model_plans_replicas_for_a_latency_target():
    system = CapacitySystem(
        accelerators=(AcceleratorSpec("cpu8", "cpu", 5.0), AcceleratorSpec("t4", "T4", 35.0)),
        models=(ModelPerf("resnet", "cpu8", 8, BatchLatencyTable(((1, 20.0), (4, 50.0), (8, 90.0)))),
                ModelPerf("resnet", "t4", 16, BatchLatencyTable(((1, 3.0), (8, 8.0), (16, 14.0))))),
        service_classes=(ServiceClass("Gold", 1, (ModelTarget("resnet", latency_ms=60.0),)),),
        servers=(ServerSpec("vision", "Gold", "resnet", ServerLoad(400.0)),),
        options=OptimizerOptions(unlimited=True),
    )
    plan = plan_capacity(system)
    allocation = plan.allocation("vision")
    assert allocation.generation == "profile" and allocation.latency_ms <= 60.0
    assert allocation.itl_ms is None
    chosen = {c.accelerator: c for c in build_candidates(system)["vision"]}[allocation.accelerator]
    assert allocation.num_replicas * chosen.max_rate_per_replica_rps >= 400.0


def test_unknown_solver_and_policy_are_refused():
    with pytest.raises(ValueError, match="solver 'cplex' is unknown"):
        plan_capacity(_llm_system(40.0), solver="cplex")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="saturation_policy 'Fair' is unknown"):
        OptimizerOptions(saturation_policy="Fair")  # type: ignore[arg-type]


def _one_server(sample, **server_changes):
    """The small sample with its first server changed and alone."""
    system, _, _ = sample["small"]
    server = replace(system.servers[0], **server_changes)
    return replace(system, servers=(server,))


def test_traffic_without_output_tokens_is_unserved_with_a_reason_not_planned_away(sample):
    """A misspelt or missing avgOutTokens reads as 0; planning that as 'no traffic' (0 replicas,
    served) silently dropped the load."""
    system = _one_server(sample, load=ServerLoad(arrival_rate_rps=100.0, avg_in_tokens=128))
    allocation = plan_capacity(system, solver="greedy").allocations[0]
    assert allocation.status == "unserved" and "avgOutTokens is 0" in allocation.reason


@pytest.mark.parametrize("token_model_first", [True, False])
@pytest.mark.parametrize("solver", ["greedy", "milp"])
def test_a_model_profiled_on_one_accelerator_and_token_modelled_on_another_is_sized_on_the_profile(token_model_first, solver):
    """Without avgOutTokens only the profiled accelerator can size the load. Whether the server
    was a token model was read from its first entry: listed second, the token model's entry was
    planned as 'no traffic' (0 replicas, cost 0, served); listed first, the server was refused."""
    profile = ModelPerf("resnet", "cpu8", 8, BatchLatencyTable(((1, 20.0), (4, 50.0), (8, 90.0))))
    token_model = ModelPerf("resnet", "A100", 8, DecodePrefillParams(10, 0.1, 10, 0.01))
    system = CapacitySystem(
        (AcceleratorSpec("cpu8", "cpu", 5), AcceleratorSpec("A100", "A100", 40)),
        (token_model, profile) if token_model_first else (profile, token_model),
        (ServiceClass("Gold", 1, (ModelTarget("resnet", latency_ms=200),)),),
        (ServerSpec("vision", "Gold", "resnet", ServerLoad(300.0, avg_in_tokens=128)),),  # only avgOutTokens missing
        {"cpu": 64, "A100": 8},
    )
    allocation = plan_capacity(system, solver=solver).allocation("vision")
    assert (allocation.status, allocation.accelerator) == ("served", "cpu8")
    (candidate,) = build_candidates(system)["vision"]  # none on the A100 without output tokens
    assert candidate.accelerator == "cpu8" and allocation.num_replicas == candidate.num_replicas
    assert allocation.num_replicas * candidate.max_rate_per_replica_rps >= 300 and allocation.cost_cents_per_hour > 0


@pytest.mark.parametrize("solver", ["greedy", "milp"])
def test_an_unlimited_pool_gives_what_a_large_enough_pool_gives(solver):
    """Unlimited used to take the lowest Inferno value whatever the solver: staying on X (40)
    was 'optimal' for the MILP, whose limited-pool answer moves to Y (37)."""
    model = DecodePrefillParams(20, 0.4, 100, 0.01)
    current = CurrentAllocation("X", 1, 40.0)
    system = CapacitySystem(
        (AcceleratorSpec("X", "X", 40), AcceleratorSpec("Y", "Y", 37)),
        (ModelPerf("m", "X", 16, model), ModelPerf("m", "Y", 16, model)),
        (ServiceClass("Gold", 0, (ModelTarget("m", itl_ms=50, ttft_ms=3000),)),),
        (ServerSpec("s", "Gold", "m", ServerLoad(2.0, 128, 256), current=current),),
        {"X": 100, "Y": 100},
    )
    unlimited = plan_capacity(system, solver=solver, unlimited=True).allocation("s")
    limited = plan_capacity(system, solver=solver, unlimited=False).allocation("s")
    assert (unlimited.accelerator, unlimited.num_replicas, unlimited.cost_cents_per_hour) == (
        limited.accelerator, limited.num_replicas, limited.cost_cents_per_hour)
    # Greedy values the move (Inferno's transition cost): it stays; the MILP takes the cheaper.
    assert unlimited.accelerator == ("X" if solver == "greedy" else "Y")


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"max_batch_size": 1_000_000}, "slots is more than the 20000 analysed"),
        ({"load": ServerLoad(arrival_rate_rps=1e300, avg_in_tokens=128, avg_out_tokens=1024)}, "replicas, more than"),
    ],
)
def test_numbers_too_large_to_plan_are_unserved_with_a_reason_at_once(sample, changes, reason):
    """Before: a batch of a million ran the queueing analysis for minutes at 500 MB; a huge
    load overflowed the cost to infinity, which JSON cannot carry."""
    allocation = plan_capacity(_one_server(sample, **changes), solver="greedy").allocations[0]
    assert allocation.status == "unserved" and reason in allocation.reason


def test_a_target_the_model_cannot_have_is_a_reason_not_an_exception():
    """An ITL target for a model profiled as batch latencies (no tokens) raised from the planner."""
    system = CapacitySystem(
        accelerators=(AcceleratorSpec("cpu8", "cpu", 1.0),),
        models=(ModelPerf("resnet", "cpu8", 8, BatchLatencyTable(((1, 20.0), (4, 50.0), (8, 90.0)))),),
        service_classes=(ServiceClass("gold", 0, (ModelTarget("resnet", itl_ms=50.0),)),),
        servers=(ServerSpec("s1", "gold", "resnet", ServerLoad(10.0)),),
        capacity_by_type={"cpu": 4},
    )
    allocation = plan_capacity(system, solver="greedy").allocations[0]
    assert allocation.status == "unserved" and "itl" in allocation.reason


def test_an_idle_server_kept_at_its_minimum_is_unserved_when_its_target_cannot_be_met():
    """With no load it was reported served at its minimum replicas, whatever its target; at
    1 req/s the same server was unserved."""
    def system(rate_rps):
        return CapacitySystem(
            accelerators=(AcceleratorSpec("cpu8", "cpu", 1.0),),
            models=(ModelPerf("resnet", "cpu8", 8, BatchLatencyTable(((1, 20.0), (4, 50.0), (8, 90.0)))),),
            service_classes=(ServiceClass("gold", 0, (ModelTarget("resnet", latency_ms=5.0),)),),  # below any batch's time
            servers=(ServerSpec("s1", "gold", "resnet", ServerLoad(rate_rps), min_replicas=1),),
            capacity_by_type={"cpu": 4},
        )

    for rate_rps in (0.0, 1.0):
        allocation = plan_capacity(system(rate_rps), solver="greedy").allocations[0]
        assert allocation.status == "unserved" and "target missed" in allocation.reason, rate_rps


def test_a_service_class_with_two_targets_for_one_model_is_refused():
    # The first one won silently: a file's later, stricter ITL target was never planned for.
    with pytest.raises(ValueError, match="service class 'Gold' has two targets for model 'm': keep one"):
        ServiceClass("Gold", 0, (ModelTarget("m", itl_ms=40), ModelTarget("m", itl_ms=21)))


@pytest.mark.parametrize("max_queue_size, replicas, blocking", [(0, 3, 0.25), (None, 2, 0.0)])
def test_a_served_plan_says_what_share_of_its_load_full_queues_refuse(max_queue_size, replicas, blocking):
    """Replicas are sized by the latency target alone (as Inferno's): with no queue, 3 replicas
    at 33 req/s each meet 20 ms but refuse a quarter of the load, which the plan did not say."""
    from shoal.formats.inferno import solution_json

    system = CapacitySystem(
        (AcceleratorSpec("cpu", "cpu", 5),),
        (ModelPerf("r", "cpu", 1, BatchLatencyTable(((1, 10.0),))),),
        (ServiceClass("c", 0, (ModelTarget("r", latency_ms=20.0),)),),
        (ServerSpec("s", "c", "r", ServerLoad(100.0), max_queue_size=max_queue_size),),
        {"cpu": 100},
    )
    plan = plan_capacity(system)
    allocation = plan.allocation("s")
    assert (allocation.status, allocation.num_replicas) == ("served", replicas)
    assert allocation.blocking_probability == pytest.approx(blocking, abs=1e-3)
    assert solution_json(plan)["allocations"]["s"]["blockingProbability"] == pytest.approx(blocking, abs=1e-3)
