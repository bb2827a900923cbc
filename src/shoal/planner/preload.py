"""Which variants to keep loaded: the model cache's plan, decided from recent use.

Loading a variant costs a session build and warm-up (tens to hundreds of ms), too slow to do
when a request arrives. So the controller keeps loaded what was used recently and preloads
each used variant's neighbours in its family (the next more accurate and the next faster
variant), because those are what a policy switches to when load or bandwidth change. The
memory budget bounds the set; what does not fit is unloaded, least recently used first (the
most recently used variant stays, even alone past the budget).

Pure: `plan_cache(context, state) -> (plan, state)`; the clock is a field of the context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["CacheContext", "CachePlan", "CacheState", "VariantUsage", "plan_cache"]


@dataclass(frozen=True)
class VariantUsage:
    key: str
    family: str
    accuracy: float
    memory_bytes: int
    loaded: bool
    requests_since_last_tick: int = 0


@dataclass(frozen=True)
class CacheContext:
    now_s: float
    variants: Sequence[VariantUsage]
    memory_budget_bytes: int
    idle_unload_after_s: float = 60.0


@dataclass(frozen=True)
class CacheState:
    last_used_s: dict[str, float] = field(default_factory=dict)
    """When each variant last served a request."""
    loaded_since_s: dict[str, float] = field(default_factory=dict)
    """When the planner first saw each variant loaded; idle time of a never-used variant counts from here."""


@dataclass(frozen=True)
class CachePlan:
    load: tuple[str, ...]
    unload: tuple[str, ...]
    reasons: dict[str, str]


def plan_cache(context: CacheContext, state: CacheState) -> tuple[CachePlan, CacheState]:
    last_used = dict(state.last_used_s)
    loaded_since = {usage.key: state.loaded_since_s.get(usage.key, context.now_s) for usage in context.variants if usage.loaded}
    for usage in context.variants:
        if usage.requests_since_last_tick > 0:
            last_used[usage.key] = context.now_s

    def idle_s(key: str) -> float:
        return context.now_s - max(last_used.get(key, float("-inf")), loaded_since.get(key, float("-inf")))

    by_key = {usage.key: usage for usage in context.variants}
    hot = sorted(
        (key for key, used in last_used.items() if key in by_key and context.now_s - used <= context.idle_unload_after_s),
        key=lambda key: -last_used[key],
    )
    wanted: list[str] = []
    reasons: dict[str, str] = {}
    for key in hot:
        wanted.append(key)
        reasons[key] = "used recently"
    for key in hot:
        for neighbour in _neighbours(by_key[key], context.variants):
            if neighbour not in wanted:
                wanted.append(neighbour)
                reasons[neighbour] = f"next to {key}"
    # Keep other loaded variants while they fit: unloading costs a reload later for nothing.
    for usage in sorted(context.variants, key=lambda u: -last_used.get(u.key, float("-inf"))):
        if usage.loaded and usage.key not in wanted and idle_s(usage.key) <= context.idle_unload_after_s:
            wanted.append(usage.key)
            reasons[usage.key] = "loaded and not idle"
    kept: list[str] = []
    used_bytes = 0
    for key in wanted:
        # The most recently used variant stays whatever its size: the worker manager loads it
        # all the same (evicting the others), so unloading it here made it reload every tick.
        if used_bytes + by_key[key].memory_bytes <= context.memory_budget_bytes or (hot and key == hot[0]):
            kept.append(key)
            used_bytes += by_key[key].memory_bytes
        else:
            reasons[key] = "does not fit the memory budget"
    kept_set = set(kept)
    load = tuple(key for key in kept if not by_key[key].loaded)
    unload = tuple(usage.key for usage in context.variants if usage.loaded and usage.key not in kept_set)
    for key in unload:
        reasons.setdefault(key, f"idle for more than {context.idle_unload_after_s:.0f} s")
    return CachePlan(load, unload, {key: reasons[key] for key in (*load, *unload)}), CacheState(last_used, loaded_since)


def _neighbours(usage: VariantUsage, variants: Sequence[VariantUsage]) -> list[str]:
    family = sorted((v for v in variants if v.family == usage.family), key=lambda v: (v.accuracy, v.key))
    index = [v.key for v in family].index(usage.key)
    return [family[i].key for i in (index + 1, index - 1) if 0 <= i < len(family)]
