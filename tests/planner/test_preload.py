from shoal.planner.preload import CacheContext, CacheState, VariantUsage, plan_cache

MB = 1024 * 1024


def family(loaded=(), used=()):
    accuracies = {"a": 0.5, "b": 0.6, "c": 0.7, "d": 0.8, "e": 0.9}
    return [
        VariantUsage(key, "f", accuracy, 100 * MB, key in loaded, requests_since_last_tick=5 if key in used else 0)
        for key, accuracy in accuracies.items()
    ]


def test_used_variant_and_its_neighbours_are_preloaded():
    plan, state = plan_cache(CacheContext(now_s=10.0, variants=family(loaded=("c",), used=("c",)), memory_budget_bytes=10_000 * MB), CacheState())
    assert plan.load == ("d", "b")
    assert plan.unload == ()
    assert plan.reasons == {"d": "next to c", "b": "next to c"}
    assert state.last_used_s == {"c": 10.0}


def test_nothing_used_yet_keeps_what_is_loaded():
    plan, state = plan_cache(CacheContext(0.0, family(loaded=("a", "e")), 10_000 * MB), CacheState())
    assert (plan.load, plan.unload) == ((), ())
    assert state.last_used_s == {} and state.loaded_since_s == {"a": 0.0, "e": 0.0}


def test_idle_variants_are_unloaded_after_the_hold_time_tick_by_tick():
    variants = family(loaded=("a", "b", "c"), used=("a",))
    plan, state = plan_cache(CacheContext(0.0, variants, 10_000 * MB, idle_unload_after_s=30.0), CacheState())
    assert plan.unload == ()  # b is a's neighbour; c is loaded and not yet idle
    quiet = family(loaded=("a", "b", "c"))
    plan, state = plan_cache(CacheContext(20.0, quiet, 10_000 * MB, idle_unload_after_s=30.0), state)
    assert plan.unload == ()
    plan, state = plan_cache(CacheContext(31.0, quiet, 10_000 * MB, idle_unload_after_s=30.0), state)
    assert set(plan.unload) == {"a", "b", "c"}
    assert plan.reasons["c"] == "idle for more than 30 s"


def test_memory_budget_keeps_the_most_recent_first():
    variants = family(loaded=("a", "e"), used=("e",))
    plan, _ = plan_cache(CacheContext(5.0, variants, 150 * MB), CacheState(last_used_s={"a": 4.0}))
    assert plan.load == ()
    assert plan.unload == ("a",)  # only one variant fits: the one used now


def test_the_variant_in_use_stays_loaded_even_alone_past_the_budget():
    """Unloaded every tick for not fitting (while the worker manager loaded it back for each
    request), with a smaller neighbour loaded in its place."""
    variants = family(loaded=("e",), used=("e",))
    plan, _ = plan_cache(CacheContext(5.0, variants, 50 * MB), CacheState())
    assert plan.unload == () and plan.load == ()
